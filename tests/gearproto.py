"""A tiny raw-socket Gearman client for wire-level tests (no client library in between).

`pack` builds request bytes; `Conn` sends packets or raw bytes and parses replies by the
argument counts of PROTOCOL.md §2 (the last field takes the rest of the body, NULs
included). Every receive has a deadline; `expect_nothing` is the only timed wait that
passes by itself. Text admin lines go through `Conn.admin`, which reads one reply line,
or a whole listing up to its `.` terminator.
"""
import select
import socket
import ssl
import struct
import time

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")

# Packet types, names as in PROTOCOL.md §2 (type 5 is unused and has no name).
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

NAMES = {v: k for k, v in dict(globals()).items()
         if k.isupper() and isinstance(v, int) and 0 < v < 43}

# Number of fields in a server reply body (the last one takes the rest, NULs included).
FIELDS = {
    JOB_CREATED: 1, NOOP: 0, NO_JOB: 0, JOB_ASSIGN: 3, JOB_ASSIGN_UNIQ: 4,
    JOB_ASSIGN_ALL: 5, WORK_STATUS: 3, WORK_COMPLETE: 2, WORK_DATA: 2, WORK_WARNING: 2,
    WORK_EXCEPTION: 2, WORK_FAIL: 1, ECHO_RES: 1, ERROR: 2, STATUS_RES: 5,
    STATUS_RES_UNIQUE: 6, OPTION_RES: 1,
}

SUBMITS = (SUBMIT_JOB, SUBMIT_JOB_BG, SUBMIT_JOB_HIGH, SUBMIT_JOB_HIGH_BG,
           SUBMIT_JOB_LOW, SUBMIT_JOB_LOW_BG)
BACKGROUND = (SUBMIT_JOB_BG, SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_LOW_BG)


def _b(value):
    return value if isinstance(value, bytes) else str(value).encode()


def pack(magic, ptype, *args, data=None):
    """One packet: `args` joined with NUL; with `data`, every arg is NUL-terminated and
    `data` follows (the has-data layout)."""
    parts = [_b(a) for a in args]
    if data is None:
        body = b"\0".join(parts)
    else:
        body = b"".join(p + b"\0" for p in parts) + _b(data)
    return HEADER.pack(magic, ptype, len(body)) + body


def packet(ptype, *args, magic=REQ):
    """`pack` with the request magic first-class: packet(ECHO_REQ, b"x")."""
    return pack(magic, ptype, *args)


def split(ptype, body):
    """Split a reply body into its fields by the type's argument count."""
    n = FIELDS.get(ptype)
    if n is None:
        return [body]
    if n == 0:
        return []
    return body.split(b"\0", n - 1)


class Closed(Exception):
    """The server closed the connection."""


class Conn:
    """One raw connection. Conn(server), Conn(host, port), or Conn().connect(host, port)."""

    LISTINGS = (b"status", b"prioritystatus", b"workers")

    @classmethod
    def _is_listing(cls, line):
        """Whether the server answers `line` with a `.`-terminated listing (its tokenizer:
        single spaces separate words, a leading space makes an empty first word)."""
        if line.startswith(b" "):
            return False
        words = [w for w in line.lower().split(b" ") if w]
        if not words:
            return False
        if words[0] in cls.LISTINGS:
            return True
        return words[0] == b"show" and words[1:] in ([b"jobs"], [b"unique", b"jobs"])

    def __init__(self, host=None, port=None):
        self.sock = None
        self.buf = b""
        self.eof = False
        self.discarded = b""   # what `closed()` read and threw away before the EOF
        self.ssl_context = None
        if host is not None:
            if port is None:  # a conftest Server object; a TLS kind gives its context
                self.ssl_context = getattr(host, "ssl_context", None)
                host, port = host.host, host.port
            self.connect(host, port)

    def connect(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            self.sock = self.ssl_context.wrap_socket(self.sock, server_hostname="localhost")
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass

    # -- sending ---------------------------------------------------------------------
    def send(self, ptype, *args):
        """Send a request; `args` (bytes or str) are joined with NUL."""
        self.sock.sendall(pack(REQ, ptype, *args))

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
        # Over TLS, bytes already decrypted wait in the SSL object, not the socket.
        pending = self.ssl_context is not None and self.sock.pending()
        ready, _, _ = select.select([self.sock], [], [], 0 if pending else remaining)
        if not ready and not pending:
            raise TimeoutError("no data from server")
        try:
            data = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
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

    def recv_raw_packet(self, timeout=5):
        """Next binary packet as (magic, type, body), unparsed."""
        deadline = time.monotonic() + timeout
        magic, ptype, size = HEADER.unpack(self._read_exact(12, deadline))
        return magic, ptype, self._read_exact(size, deadline)

    def recv(self, timeout=5):
        """Next binary reply as (type, [fields]); raises Closed / TimeoutError."""
        magic, ptype, body = self.recv_raw_packet(timeout)
        assert magic == RES, f"bad reply magic {magic!r} (type {ptype})"
        return ptype, split(ptype, body)

    def recv_raw(self, n, timeout=5):
        return self._read_exact(n, time.monotonic() + timeout)

    def readline(self, timeout=5):
        """One text line including its `\\n`."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def expect(self, ptype, timeout=5):
        """Receive one reply, assert its type, return its fields."""
        t, args = self.recv(timeout)
        assert t == ptype, f"expected {NAMES.get(ptype)}, got {NAMES.get(t, t)} {args!r}"
        return args

    def expect_nothing(self, window=0.3):
        """Assert that nothing arrives within `window` seconds and the link stays open."""
        if self.buf:
            raise AssertionError(f"unexpected data {self.buf[:200]!r}")
        ready, _, _ = select.select([self.sock], [], [], window)
        if ready:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                self.eof = True
                raise AssertionError("connection closed, expected it to stay open")
            raise AssertionError(f"unexpected data {data[:200]!r}")

    def closed(self, timeout=5):
        """True once the server has closed the connection, False if it is still open after
        `timeout`. Bytes read on the way are kept in `self.discarded`."""
        deadline = time.monotonic() + timeout
        while True:
            self.discarded += self.buf
            self.buf = b""
            try:
                self._fill(deadline)
            except Closed:
                return True
            except TimeoutError:
                return False

    # -- text admin protocol -----------------------------------------------------------
    def admin(self, line, timeout=5):
        """Send one admin line (CRLF added); return the reply bytes: through `.\\n` for the
        listing commands, else one line."""
        line = _b(line)
        self.sock.sendall(line + b"\r\n")
        deadline = time.monotonic() + timeout
        is_list = self._is_listing(line)
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

    def worker(self, *funcs):
        """CAN_DO every function; returns self."""
        for f in funcs:
            self.send(CAN_DO, f)
        return self

    can_do = worker

    def grab(self, kind=GRAB_JOB, timeout=5):
        """Send a GRAB_JOB* and return the reply (type, [fields])."""
        self.send(kind)
        return self.recv(timeout)

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
    """How many worker registrations `status` shows for `func`."""
    return status_table(conn).get(func, (0, 0, 0))[2]


def drain(server, func, limit=1000):
    """Grab and complete every queued job of `func` with one worker (`server`: anything
    Conn takes alone); payloads in grab order. More than `limit` jobs fails the test
    rather than returning a partial list."""
    done = []
    with Conn(server) as w:
        w.worker(func)
        for _ in range(limit + 1):
            t, args = w.grab(GRAB_JOB)
            if t == NO_JOB:
                break
            assert t == JOB_ASSIGN, (t, args)
            w.send(WORK_COMPLETE, args[0], b"")
            done.append(bytes(args[2]))
        else:
            raise AssertionError(f"more than {limit} jobs of {func!r} queued")
        w.echo()
    return done


def delayed_acks():
    """The kernel's count of ACKs that waited for the delayed-ACK timer, all sockets of
    this network namespace (TcpExt DelayedACKs in /proc/net/netstat)."""
    with open("/proc/net/netstat") as f:
        rows = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(rows[1][rows[0].index("DelayedACKs")])


def upload_like_libgearman(server, func, size):
    """Send one SUBMIT_JOB_BG of `size` bytes as libgearman's clients and workers do,
    and return how many delayed ACKs the kernel counted until its JOB_CREATED: a
    32 KiB send buffer (libgearman sets SO_SNDBUF and SO_RCVBUF to 32 KiB), so the
    packet goes out in parts, each sent once the previous one is ACKed; and a request
    answered first (PHP sends OPTION_REQ `exceptions` on every connection), which puts
    the server's side of the connection in the kernel's request-response mode."""
    with Conn(server) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        c.send(OPTION_REQ, b"exceptions")
        assert c.expect(OPTION_RES) == [b"exceptions"]
        before = delayed_acks()
        c.sock.settimeout(60)
        c.send(SUBMIT_JOB_BG, func, b"", b"u" * size)
        c.expect(JOB_CREATED, timeout=60)
        return delayed_acks() - before
