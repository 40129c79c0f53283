"""A tiny raw-socket Gearman client for wire-level tests (no client library in between)."""
import select
import socket
import struct
import time

REQ = b"\0REQ"
RES = b"\0RES"

CAN_DO = 1
CANT_DO = 2
RESET_ABILITIES = 3
PRE_SLEEP = 4
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_STATUS = 12
WORK_COMPLETE = 13
WORK_FAIL = 14
GET_STATUS = 15
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB_BG = 18
ERROR = 19
STATUS_RES = 20
SUBMIT_JOB_HIGH = 21
SET_CLIENT_ID = 22
CAN_DO_TIMEOUT = 23
ALL_YOURS = 24
WORK_EXCEPTION = 25
OPTION_REQ = 26
OPTION_RES = 27
WORK_DATA = 28
WORK_WARNING = 29
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31
SUBMIT_JOB_HIGH_BG = 32
SUBMIT_JOB_LOW = 33
SUBMIT_JOB_LOW_BG = 34
SUBMIT_JOB_SCHED = 35
SUBMIT_JOB_EPOCH = 36
SUBMIT_REDUCE_JOB = 37
SUBMIT_REDUCE_JOB_BACKGROUND = 38
GRAB_JOB_ALL = 39
JOB_ASSIGN_ALL = 40
GET_STATUS_UNIQUE = 41
STATUS_RES_UNIQUE = 42

NAMES = {v: k for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)}

# Number of fields in a server reply body (the last one takes the rest, NULs included).
FIELDS = {
    JOB_CREATED: 1, NOOP: 0, NO_JOB: 0, JOB_ASSIGN: 3, JOB_ASSIGN_UNIQ: 4,
    JOB_ASSIGN_ALL: 5, WORK_STATUS: 3, WORK_COMPLETE: 2, WORK_DATA: 2, WORK_WARNING: 2,
    WORK_EXCEPTION: 2, WORK_FAIL: 1, ECHO_RES: 1, ERROR: 2, STATUS_RES: 5,
    STATUS_RES_UNIQUE: 6, OPTION_RES: 1,
}


def packet(ptype, *args, magic=REQ):
    body = b"\0".join(a if isinstance(a, bytes) else str(a).encode() for a in args)
    return magic + struct.pack(">II", ptype, len(body)) + body


def split(ptype, body):
    n = FIELDS.get(ptype)
    if n is None:
        return [body]
    if n == 0:
        return []
    return body.split(b"\0", n - 1)


class Closed(Exception):
    """The server closed the connection."""


class Conn:
    """One raw connection: `send`, `recv`, `admin`, `expect_nothing`, `closed`."""

    def __init__(self, host, port=None):
        if port is None:  # a Server object
            host, port = host.host, host.port
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- sending ---------------------------------------------------------------------
    def send(self, ptype, *args):
        self.sock.sendall(packet(ptype, *args))

    def send_raw(self, data):
        self.sock.sendall(data)

    # -- receiving -------------------------------------------------------------------
    def _fill(self, deadline):
        """Read more bytes into the buffer; raise Closed on EOF, TimeoutError on timeout."""
        if self.eof:
            raise Closed("connection closed by server")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from server")
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            raise TimeoutError("no data from server")
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError) as e:
            self.eof = True
            raise Closed(str(e)) from e
        if not data:
            self.eof = True
            raise Closed("connection closed by server")
        self.buf += data

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout=5):
        """Next binary reply as (type, [fields]); raises Closed / TimeoutError."""
        deadline = time.monotonic() + timeout
        header = self._read_exact(12, deadline)
        magic, ptype, size = header[:4], *struct.unpack(">II", header[4:])
        assert magic == RES, f"bad reply magic {header!r}"
        body = self._read_exact(size, deadline)
        return ptype, split(ptype, body)

    def recv_raw(self, n, timeout=5):
        return self._read_exact(n, time.monotonic() + timeout)

    def readline(self, timeout=5):
        """One text line including its `\n`."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def expect(self, ptype, timeout=5):
        t, args = self.recv(timeout)
        assert t == ptype, f"expected {NAMES.get(ptype)}, got {NAMES.get(t, t)} {args!r}"
        return args

    def expect_nothing(self, window=0.3):
        """Assert that nothing arrives within `window` seconds (and the link is open)."""
        if self.buf:
            raise AssertionError(f"unexpected data {self.buf[:200]!r}")
        ready, _, _ = select.select([self.sock], [], [], window)
        if ready:
            data = self.sock.recv(65536)
            if not data:
                self.eof = True
                raise AssertionError("connection closed, expected it to stay open")
            raise AssertionError(f"unexpected data {data[:200]!r}")

    def closed(self, timeout=5):
        """True once the server has closed the connection (other data is discarded)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(deadline)
            except Closed:
                return True
            except TimeoutError:
                return False
            self.buf = b""

    # -- text admin protocol -----------------------------------------------------------
    LIST_COMMANDS = ("status", "prioritystatus", "workers", "show jobs", "show unique jobs")

    def admin(self, line, timeout=5):
        """Send one admin line; return the reply bytes (to `\\n.\\n` for list commands)."""
        if isinstance(line, str):
            line = line.encode()
        self.sock.sendall(line + b"\r\n")
        deadline = time.monotonic() + timeout
        is_list = line.strip().lower().decode(errors="replace") in self.LIST_COMMANDS
        while True:
            if is_list:
                if self.buf.startswith(b".\n"):
                    end = 2
                    break
                idx = self.buf.find(b"\n.\n")
                if idx >= 0:
                    end = idx + 3
                    break
            else:
                idx = self.buf.find(b"\n")
                if idx >= 0:
                    end = idx + 1
                    break
            self._fill(deadline)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    # -- helpers -----------------------------------------------------------------------
    def submit(self, func, data=b"", unique=b"", kind=SUBMIT_JOB):
        """Submit a job and return its handle (asserts JOB_CREATED)."""
        self.send(kind, func, unique, data)
        return self.expect(JOB_CREATED)[0]

    def can_do(self, *funcs):
        for f in funcs:
            self.send(CAN_DO, f)

    def echo(self, data=b"sync"):
        """Round trip an ECHO: every earlier packet of this connection has been handled."""
        self.send(ECHO_REQ, data)
        assert self.expect(ECHO_RES) == [data]


def status_table(conn):
    """Parse `status` into {func: (total, running, workers)}."""
    out = {}
    for line in conn.admin("status").split(b"\n"):
        if line and line != b".":
            f, total, running, workers = line.split(b"\t")
            out[f] = (int(total), int(running), int(workers))
    return out


def workers_of(conn, func):
    return status_table(conn).get(func, (0, 0, 0))[2]
