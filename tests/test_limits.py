"""Limits on what one peer can make the server hold, and peers that go away (issue 7).

fastgear bounds each peer where its cost arises: a packet larger than --max-packet is
refused from its header (ERROR ARGUMENT_TOO_LARGE, after the replies already due) and a
header alone reserves nothing; a connection whose unsent output passes --max-output is
no longer read until it drains, so a client that submits and never reads stops being
able to submit; past --max-output-hard it is disconnected with a log line naming it;
connections beyond --max-connections get ERROR SERVER_BUSY and are closed; the engine
refuses jobs past --max-queued-bytes, --max-unique and --max-function-name. gearmand
1.1.20 has none of these (it buffers without bound), so those tests are marked
`difference`. Keepalive, the listen backlog, many connections and workers whose link
dies are tested against both servers where they behave alike.

Every loop here is bounded in count and time; waits are on conditions (`wait_for`).
"""
import os
import re
import resource
import select
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest
from conftest import missing, wait_for
from gearproto import (
    CAN_DO,
    ECHO_REQ,
    ERROR,
    GRAB_JOB,
    JOB_ASSIGN,
    JOB_CREATED,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    REQ,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH,
    WORK_COMPLETE,
    Closed,
    Conn,
    pack,
    status_table,
    workers_of,
)

SERVER_BUSY = [b"SERVER_BUSY", b"Connection limit reached (--max-connections)"]
TOO_LARGE = [b"ARGUMENT_TOO_LARGE", b"Packet larger than the server allows (--max-packet)"]


def proc_status(pid, field):
    """A /proc/PID/status field in KiB (VmRSS, VmData)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")




def header(ptype, size):
    return REQ + struct.pack(">II", ptype, size)


class FastWorker(threading.Thread):
    """A raw worker that completes every job of `funcs` at once with `result`, sleeping
    (PRE_SLEEP) when there is none, until stop() or its time bound."""

    def __init__(self, srv, funcs, result, limit_s=120):
        super().__init__(daemon=True)
        self.conn = Conn(srv)
        self.conn.worker(*funcs)
        self.result = result
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + limit_s
        self.done = 0
        self.error = None

    def run(self):
        try:
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                ptype, args = self.conn.grab(GRAB_JOB, timeout=10)
                if ptype == JOB_ASSIGN:
                    self.conn.send(WORK_COMPLETE, args[0], self.result)
                    self.done += 1
                elif ptype == NO_JOB:
                    self.conn.send(PRE_SLEEP)
                    while not self.stopping.is_set() and time.monotonic() < self.deadline:
                        try:
                            if self.conn.recv(timeout=0.2)[0] == NOOP:
                                break
                        except TimeoutError:
                            continue
        except (Closed, OSError, TimeoutError) as exc:
            if not self.stopping.is_set():
                self.error = exc

    def stop(self):
        self.stopping.set()
        self.join(15)
        self.conn.close()


@pytest.fixture
def raised_nofile():
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (servers started after
    this inherit it); skip when the hard limit is too low for 10,000 connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 10_000 + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            # Root may raise the hard limit itself (CI runs as root).
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, need))
            hard = need
        except (ValueError, OSError):
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need} and cannot be raised")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                else need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_many(srv, count, first=b"", batch=1000, timeout=60):
    """Open `count` connections at once (non-blocking connects, `batch` in flight), each
    sending `first` as soon as it is connected; returns the sockets."""
    socks = []
    deadline = time.monotonic() + timeout
    try:
        while len(socks) < count:
            pending = {}
            poller = select.poll()
            for _ in range(min(batch, count - len(socks))):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((srv.host, srv.port))
                pending[s.fileno()] = s
                poller.register(s, select.POLLOUT)
            while pending:
                assert time.monotonic() < deadline, f"connecting took over {timeout}s"
                for fd, _ in poller.poll(1000):
                    s = pending.pop(fd)
                    poller.unregister(fd)
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert err == 0, f"connect failed: {os.strerror(err)}"
                    if first:
                        s.send(first)
                    socks.append(s)
        return socks
    except BaseException:
        for s in socks + list(pending.values()):
            s.close()
        raise


def close_all(socks):
    for s in socks:
        s.close()


class LowFds:
    """Descriptors below 1024 kept free for connections made after thousands of others
    (gearproto.Conn waits with select(), which cannot take higher ones): new sockets
    take the lowest free number, so closing a placeholder just before makes room."""

    def __init__(self, n):
        self.fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(n)]

    def conn(self, srv):
        os.close(self.fds.pop())
        return Conn(srv)

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def listing(conn, command, timeout=30):
    return [ln for ln in conn.admin(command, timeout=timeout).split(b"\n")
            if ln and ln != b"."]


def admin_lines(srv, command, timeout=30):
    with Conn(srv) as c:
        return listing(c, command, timeout)


def read_int(path):
    with open(path) as f:
        return int(f.read())


# -- --max-packet --------------------------------------------------------------------------

@pytest.mark.difference
def test_packet_larger_than_max_packet_gets_error_after_the_replies_already_due(
        kind, start_server):
    srv = start_server(kind, "--max-packet", "4096", "--verbose", "WARNING")
    with Conn(srv) as bad, Conn(srv) as other:
        port = bad.sock.getsockname()[1]
        bad.send_raw(pack(REQ, ECHO_REQ, data=b"due") + header(ECHO_REQ, 4097))
        assert bad.recv() == (17, [b"due"])
        assert bad.expect(ERROR) == TOO_LARGE
        assert bad.closed()
        other.echo(b"still served")
    wait_for(lambda: f"protocol error from 127.0.0.1:{port} (connection" in srv.log_text()
             and "ARGUMENT_TOO_LARGE; connection closed" in srv.log_text(),
             what="protocol error logged")


@pytest.mark.difference
def test_packet_of_exactly_max_packet_is_served(kind, start_server):
    srv = start_server(kind, "--max-packet", "4096")
    with Conn(srv) as c:
        c.echo(b"x" * 4096)


@pytest.mark.difference
def test_header_announcing_four_gib_is_refused_at_the_default_max_packet(kind, start_server):
    # gearmand accepts it and waits for the bytes (PROTOCOL.md §1.4).
    srv = start_server(kind)
    with Conn(srv) as c:
        c.send_raw(header(ECHO_REQ, 0xFFFFFFFF))
        assert c.expect(ERROR) == TOO_LARGE
        assert c.closed()


@pytest.mark.difference
def test_headers_announcing_large_bodies_reserve_memory_only_as_bytes_arrive(
        kind, start_server):
    srv = start_server(kind)          # --max-packet 256 MiB
    before = proc_status(srv.pid, "VmData")
    conns = [Conn(srv) for _ in range(40)]
    try:
        for c in conns:
            c.send_raw(header(ECHO_REQ, 200 << 20) + b"abc")
        # Connections go to the loops in turn: one probe per loop (4 at most) is answered
        # only after that loop has read what was sent to it before.
        probes = [Conn(srv) for _ in range(5)]
        for p in probes:
            p.echo()
            p.close()
        grown_mib = (proc_status(srv.pid, "VmData") - before) / 1024
        # Reserving the announced size would be 40 x 200 MiB of address space.
        assert grown_mib < 400, f"VmData grew {grown_mib:.0f} MiB for 120 bytes of bodies"
    finally:
        for c in conns:
            c.close()


# -- --max-connections ---------------------------------------------------------------------

@pytest.mark.difference
def test_connections_beyond_max_connections_get_server_busy_and_are_closed(
        kind, start_server):
    srv = start_server(kind, "--max-connections", "4", "--verbose", "WARNING")
    first = Conn(srv)
    # The start-up probe of the fixture may still be counted for a moment.
    wait_for(lambda: len(listing(first, "workers")) == 1, what="only our connection")
    held = [first] + [Conn(srv) for _ in range(3)]
    try:
        for c in held:
            c.echo()
        with Conn(srv) as refused:
            assert refused.expect(ERROR) == SERVER_BUSY
            assert refused.closed()
        for c in held:
            c.echo(b"others unaffected")
        wait_for(lambda: re.search(r"refused \d+ connection\(s\): connection limit 4",
                                   srv.log_text()), what="refusal logged")
        # A freed slot is usable again.
        held.pop().close()

        def slot_free():
            # Refused until the server has seen the close.
            with Conn(srv) as c:
                c.send(ECHO_REQ, b"again")
                return c.recv() == (17, [b"again"])
        wait_for(slot_free, what="a connection accepted after one closed")
    finally:
        for c in held:
            c.close()


def test_max_connections_zero_means_the_descriptor_limit_less_a_reserve():
    from fastgear.config import Config
    from fastgear.server import FD_RESERVE, connection_limit

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    expected = 0 if soft == resource.RLIM_INFINITY else max(1, soft - FD_RESERVE)
    assert connection_limit(Config()) == expected
    assert connection_limit(Config(max_connections=7)) == 7


@pytest.mark.difference
def test_default_connection_limit_follows_the_file_descriptor_flag(kind, start_server):
    srv = start_server(kind, "-f", "100")     # 100 - 64 = 36 connections
    first = Conn(srv)
    wait_for(lambda: len(listing(first, "workers")) == 1, what="only our connection")
    held = [first]
    try:
        for _ in range(35):
            held.append(Conn(srv))
            held[-1].echo()
        with Conn(srv) as refused:
            assert refused.expect(ERROR) == SERVER_BUSY
    finally:
        for c in held:
            c.close()


@pytest.mark.difference
def test_out_of_descriptors_a_peer_is_refused_with_server_busy_and_others_are_served(
        kind, start_server):
    # A connection limit above the descriptor limit: accept() itself fails (EMFILE).
    srv = start_server(kind, "-f", "64", "--max-connections", "1000", "--verbose", "WARNING")
    held = []
    try:
        refused = None
        for _ in range(64):
            c = Conn(srv)
            c.send(ECHO_REQ, b"x")
            reply = c.recv()
            if reply[0] == ERROR:
                refused = reply
                c.close()
                break
            held.append(c)
        assert refused == (ERROR, SERVER_BUSY)
        for c in held:
            c.echo(b"still served")
        wait_for(lambda: "accept failed: Too many open files" in srv.log_text(),
                 what="descriptor exhaustion logged")
    finally:
        for c in held:
            c.close()


# -- --max-output / --max-output-hard -------------------------------------------------------

@pytest.mark.difference
def test_slow_reader_stops_being_read_and_others_keep_being_served(kind, start_server):
    srv = start_server(kind, "--max-output", str(256 << 10),
                       "--max-output-hard", str(1 << 30))
    worker = FastWorker(srv, [b"f", b"probe"], b"r" * 100)
    worker.start()
    slow = probe = None
    try:
        with Conn(srv) as adm:
            wait_for(lambda: workers_of(adm, b"probe") == 1, what="worker registered")
        base_rss = proc_status(srv.pid, "VmRSS")
        # What the kernel buffers for a reader is not the server's to bound (loopback
        # autotuning goes to tcp_rmem's maximum, 32 MiB here): keep it small, so what
        # the server holds past it shows. Every submission read before the pause can
        # leave a queued job, so the server's share is (max-output + its socket's send
        # buffer, 4 MiB at most here) / the size of a JOB_CREATED, times a job's size;
        # --max-queued-bytes bounds that part.
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        slow.connect((srv.host, srv.port))
        slow.setblocking(False)
        chunk = pack(REQ, SUBMIT_JOB, b"f", b"", b"x" * 20) * 2000
        # A server that kept reading would take all of it; one that pauses blocks the
        # client after 25-60 MB here, most of it in the kernel's buffers (the server's
        # receive buffer autotunes up to tcp_rmem's 32 MiB before the pause).
        cap = 160 << 20
        sent, pending, blocked = 0, b"", False
        deadline = time.monotonic() + 60
        while sent < cap and time.monotonic() < deadline:
            pending = pending or chunk
            try:
                n = slow.send(pending)
                sent += n
                pending = pending[n:]
            except BlockingIOError:
                _, writable, _ = select.select([], [slow], [], 2.0)
                if not writable:
                    blocked = True
                    break
        assert blocked, f"the server kept reading the slow client ({sent} bytes)"
        blocked_rss = proc_status(srv.pid, "VmRSS")
        assert sent < cap
        probe = Conn(srv)
        worst_rss = 0
        for i in range(20):
            probe.echo(b"probe %d" % i)
            probe.send(SUBMIT_JOB_HIGH, b"probe", b"", b"p")
            handle = probe.expect(JOB_CREATED, timeout=10)[0]
            assert probe.expect(WORK_COMPLETE, timeout=10) == [handle, b"r" * 100]
            worst_rss = max(worst_rss, proc_status(srv.pid, "VmRSS"))
        # Still not read: its output has not drained.
        assert not select.select([], [slow], [], 0.2)[1]
        grown_mib = (worst_rss - base_rss) / 1024
        # ~530 bytes per queued job at 4 MiB of send buffer: ~100 MiB measured; a server
        # that kept reading would hold every one of up to 1.8 million submissions.
        assert grown_mib < 200, (f"server RSS grew {grown_mib:.0f} MiB after {sent} bytes "
                                 f"of submissions: {status_table(probe)}")
        # And it stays there while the slow client keeps not reading.
        assert (worst_rss - blocked_rss) / 1024 < 20
        assert worker.error is None, worker.error
    finally:
        worker.stop()
        for s in (slow, probe):
            if s is not None:
                s.close()


@pytest.mark.difference
def test_output_past_the_hard_bound_disconnects_the_peer_with_a_log_line(kind, start_server):
    srv = start_server(kind, "--max-output", str(64 << 10), "--max-packet", str(512 << 10),
                       "--max-output-hard", str(1 << 20), "--verbose", "WARNING")
    worker = FastWorker(srv, [b"big"], b"R" * (128 << 10))
    worker.start()
    slow = socket.socket()
    try:
        with Conn(srv) as adm:
            wait_for(lambda: workers_of(adm, b"big") == 1, what="worker registered")
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect((srv.host, srv.port))
        port = slow.getsockname()[1]
        slow.sendall(pack(REQ, SUBMIT_JOB, b"big", b"", b"x") * 100)   # 12.5 MiB of results
        line = wait_for(lambda: re.search(
            rf"ERROR disconnected 127\.0\.0\.1:{port} \(connection \d+\): (\d+) bytes of "
            rf"output it does not read \(--max-output-hard {1 << 20}\)", srv.log_text()),
            timeout=30, what="hard-bound disconnect logged")
        assert int(line.group(1)) > 1 << 20
        # Its jobs went as for any disconnect; everyone else is served.
        with Conn(srv) as other:
            wait_for(lambda: status_table(other).get(b"big", (0,))[0] == 0,
                     what="the dropped client's jobs gone")
            other.echo(b"still served")
        assert srv.alive()
    finally:
        worker.stop()
        slow.close()


# -- many connections, reconnect storms, the listen backlog ----------------------------------

def test_ten_thousand_connections_and_a_new_client_is_still_answered(
        kind, start_server, raised_nofile):
    # An explicit backlog for both: gearmand's default of 32 loses handshakes when
    # thousands connect at once (bench/reconnect_storm.py measures that case).
    srv = start_server(kind, "-f", "12000", "-b", "4096")
    low = LowFds(4)
    socks = open_many(srv, 10_000)
    try:
        with low.conn(srv) as adm:
            wait_for(lambda: len(listing(adm, "workers")) >= 10_001, timeout=60,
                     interval=0.5, what="10,000 connections accepted")
        with low.conn(srv) as fresh, low.conn(srv) as w:
            fresh.echo(b"hello")
            w.worker(b"f")
            w.echo()
            fresh.send(SUBMIT_JOB, b"f", b"", b"x")
            handle = fresh.expect(JOB_CREATED)[0]
            assert w.grab()[0] == JOB_ASSIGN
            w.send(WORK_COMPLETE, handle, b"ok")
            assert fresh.expect(WORK_COMPLETE) == [handle, b"ok"]
    finally:
        close_all(socks)
        low.close()


@pytest.mark.difference
def test_two_thousand_workers_connecting_at_once_are_all_registered_and_a_job_flows(
        kind, start_server, raised_nofile):
    srv = start_server(kind, "-f", "12000")
    low = LowFds(4)
    socks = open_many(srv, 2000, first=pack(REQ, CAN_DO, b"storm"), batch=2000)
    try:
        with low.conn(srv) as adm:
            wait_for(lambda: workers_of(adm, b"storm") == 2000, timeout=60, interval=0.2,
                     what="every worker registered")
        with low.conn(srv) as client, low.conn(srv) as w:
            w.worker(b"storm")
            w.echo()
            client.send(SUBMIT_JOB, b"storm", b"", b"x")
            handle = client.expect(JOB_CREATED)[0]
            assert w.grab() == (JOB_ASSIGN, [handle, b"storm", b"x"])
            w.send(WORK_COMPLETE, handle, b"done")
            assert client.expect(WORK_COMPLETE) == [handle, b"done"]
    finally:
        close_all(socks)
        low.close()


def listen_backlog(srv):
    out = subprocess.run(["ss", "-ltnH", f"( sport = :{srv.port} )"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    return int(out.split()[2])      # Send-Q of a listener: its backlog


@pytest.fixture
def ss_tool():
    if shutil.which("ss") is None:
        missing("ss", debian="iproute2")


needs_ss = pytest.mark.usefixtures("ss_tool")


@needs_ss
@pytest.mark.difference
def test_listen_backlog_defaults_to_4096_capped_by_somaxconn(kind, start_server):
    somaxconn = read_int("/proc/sys/net/core/somaxconn")
    assert listen_backlog(start_server(kind)) == min(4096, somaxconn)


@needs_ss
@pytest.mark.gearmand_quirk
def test_gearmand_listen_backlog_defaults_to_32(kind, start_server):
    assert listen_backlog(start_server(kind)) == 32


@needs_ss
def test_explicit_backlog_flag_is_honoured(kind, start_server):
    assert listen_backlog(start_server(kind, "-b", "77")) == 77


# -- keepalive and dead peers ------------------------------------------------------------------

def keepalive_timer_s(srv, client):
    """The keepalive timer of the server's end of `client`, from `ss -tnoi` (seconds
    left), or None when the socket has no keepalive timer."""
    cport = client.sock.getsockname()[1]
    out = subprocess.run(["ss", "-tnoH", "state", "established",
                          f"( sport = :{srv.port} and dport = :{cport} )"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    m = re.search(r"timer:\(keepalive,(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)ms)?", out)
    if not m:
        return None
    mins, secs, ms = (int(g or 0) for g in m.groups())
    return mins * 60 + secs + ms / 1000


@needs_ss
def test_accepted_sockets_have_keepalive_on_with_the_system_idle_time(kind, start_server):
    srv = start_server(kind)
    idle = read_int("/proc/sys/net/ipv4/tcp_keepalive_time")
    with Conn(srv) as c:
        c.echo()
        left = wait_for(lambda: keepalive_timer_s(srv, c), what="keepalive timer")
        assert idle - 120 < left <= idle


@needs_ss
def test_keepalive_idle_flag_sets_the_idle_time_of_accepted_sockets(kind, start_server):
    # What is checked: the idle time (the kernel's keepalive timer shows it). The probe
    # interval and count are set by the same code but are not visible from outside
    # until probes go unanswered, which loopback cannot arrange.
    srv = start_server(kind, "--keepalive", "--keepalive-idle", "37",
                       "--keepalive-interval", "11", "--keepalive-count", "4")
    with Conn(srv) as c:
        c.echo()
        left = wait_for(lambda: keepalive_timer_s(srv, c), what="keepalive timer")
        assert 30 < left <= 37


def reset(conn):
    """Close with SO_LINGER 0: the server gets an RST, as from a crashed host's reboot."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.sock.close()


def half_close(conn):
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.sock.close()


@pytest.mark.parametrize("dies", [reset, half_close], ids=["reset", "shutdown"])
def test_worker_dying_while_holding_a_job_gives_the_job_to_another_worker(
        kind, start_server, dies):
    srv = start_server(kind)
    with Conn(srv) as client, Conn(srv) as w2:
        w1 = Conn(srv).worker(b"f")
        w1.echo()
        handle = client.submit(b"f", b"payload")
        assert w1.grab() == (JOB_ASSIGN, [handle, b"f", b"payload"])
        w2.worker(b"f")
        w2.send(PRE_SLEEP)
        w2.echo()
        dies(w1)
        w2.expect(NOOP, timeout=10)
        assert w2.grab() == (JOB_ASSIGN, [handle, b"f", b"payload"])
        w2.send(WORK_COMPLETE, handle, b"done")
        assert client.expect(WORK_COMPLETE) == [handle, b"done"]


@pytest.mark.parametrize("dies", [reset, half_close], ids=["reset", "shutdown"])
def test_worker_dying_while_sleeping_is_forgotten(kind, start_server, dies):
    srv = start_server(kind)
    with Conn(srv) as adm:
        w = Conn(srv).worker(b"f")
        w.send(PRE_SLEEP)
        w.echo()
        assert workers_of(adm, b"f") == 1
        dies(w)
        wait_for(lambda: workers_of(adm, b"f") == 0, what="dead worker forgotten")

# -- what a submission may hold: --max-queued-bytes, --max-unique, --max-function-name --
# A submission over a limit gets an ERROR packet and the connection stays usable;
# nothing already queued is touched, and other clients are unaffected. gearmand has none
# of these flags (its unique limit is a fixed 64 bytes, fastgear's default too).

@pytest.fixture(params=["fastgear", "fastgear-t0"])
def fg_kind(request):
    return request.param


@pytest.mark.difference
def test_submissions_past_the_memory_budget_get_queue_error_and_others_keep_working(
        fg_kind, start_server):
    srv = start_server(fg_kind, "--max-queued-bytes", "200000")
    with Conn(srv) as c, Conn(srv) as other, Conn(srv) as w:
        accepted = 0
        for _ in range(100):
            c.send(SUBMIT_JOB_BG, b"budget", b"", b"x" * 10000)
            t, args = c.recv()
            if t == ERROR:
                assert args == [b"QUEUE_ERROR", b"Job memory budget exhausted"]
                break
            assert t == JOB_CREATED
            accepted += 1
        assert 10 <= accepted < 20     # 10 kB payloads plus bookkeeping in 200 kB
        assert status_table(other)[b"budget"][0] == accepted
        # Small jobs are refused too while the budget is used up...
        other.send(SUBMIT_JOB_BG, b"budget", b"", b"y" * 10000)
        assert other.recv()[0] == ERROR
        # ...and accepted again once workers have made room.
        w.send(CAN_DO, b"budget")
        for _ in range(5):
            h = w.grab()[1][0]
            w.send(WORK_COMPLETE, h, b"")
        w.echo()
        assert other.submit(b"budget", b"z" * 10000, kind=SUBMIT_JOB_BG)


@pytest.mark.difference
def test_a_unique_key_longer_than_max_unique_is_refused(fg_kind, start_server):
    srv = start_server(fg_kind, "--max-unique", "16")
    with Conn(srv) as c:
        c.send(SUBMIT_JOB, b"f", b"u" * 17, b"x")
        assert c.expect(ERROR) == [b"ARGUMENT_TOO_LARGE", b"Unique value too large"]
        assert c.submit(b"f", b"x", unique=b"u" * 16)


@pytest.mark.difference
def test_max_unique_can_be_raised_past_gearmands_64_bytes(fg_kind, start_server):
    srv = start_server(fg_kind, "--max-unique", "200")
    with Conn(srv) as c, Conn(srv) as w:
        key = b"k" * 200
        h = c.submit(b"f", b"x", unique=key, kind=SUBMIT_JOB_BG)
        assert c.submit(b"f", b"x", unique=key, kind=SUBMIT_JOB_BG) == h   # coalesces
        w.send(CAN_DO, b"f")
        assert w.grab() == (JOB_ASSIGN, [h, b"f", b"x"])


@pytest.mark.difference
def test_a_function_name_longer_than_the_limit_is_refused_for_submit_and_can_do(
        fg_kind, start_server):
    srv = start_server(fg_kind, "--max-function-name", "32")
    with Conn(srv) as c, Conn(srv) as w:
        c.send(SUBMIT_JOB_BG, b"f" * 33, b"", b"x")
        assert c.expect(ERROR) == [b"ARGUMENT_TOO_LARGE", b"Function name too large"]
        w.send(CAN_DO, b"g" * 33)
        assert w.expect(ERROR) == [b"ARGUMENT_TOO_LARGE", b"Function name too large"]
        assert c.submit(b"f" * 32, b"x", kind=SUBMIT_JOB_BG)
        assert b"f" * 32 in status_table(c)
        assert b"g" * 33 not in status_table(c)
