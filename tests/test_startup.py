"""Start-up as gearmand's scripts see it: --syslog, and a listening port that is busy.

Syslog is read from a unix datagram socket the test binds (`--syslog-socket`); gearmand's
is fixed at /dev/log, so those tests run against fastgear only (gearmand's ident,
facility and priorities, which fastgear copies, are listed in the README). A busy port
is retried and then ends start-up with status 1, and every address asked for must be
bound: both run against fastgear and gearmand (gearmand's retry period is a fixed 22 s;
fastgear's is `--bind-retry-timeout`, so its runs are short).
"""
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import pytest
from conftest import free_port, need_gearmand, wait_for
from gearproto import Conn

# One fastgear and gearmand: bind() happens before the I/O threads exist.
BOTH = ["fastgear", "gearmand"]
# What syslog(3) sends: <PRI>Mmm dd hh:mm:ss IDENT[PID]: MESSAGE (gearmand pads the level).
SYSLOG_LINE = re.compile(rb"<(\d+)>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d gearmand\[(\d+)\]: "
                         rb" *([A-Z]+) (.*)\Z", re.DOTALL)
LOG_USER = 1


@pytest.fixture
def syslog():
    """A syslog daemon's socket (short path: unix socket names are limited to 108 bytes)."""
    where = tempfile.mkdtemp(prefix="fg-syslog-", dir="/tmp")
    path = f"{where}/log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    received = []

    def lines():
        """Every datagram so far as (facility, priority, pid, level, message)."""
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return received
            m = SYSLOG_LINE.match(data)
            assert m, data
            pri, pid, level, message = m.groups()
            received.append((int(pri) >> 3, int(pri) & 7, int(pid), level.decode(),
                             message.decode()))
    yield SimpleNamespace(path=path, lines=lines)
    sock.close()
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def launch(tmp_path):
    """launch(kind, *args) -> Popen of a server with its output in tmp_path; killed at
    teardown. For servers that may fail to start, which conftest's Server refuses."""
    started = []

    def start(kind, *args):
        if kind == "fastgear":
            cmd = [sys.executable, "-m", "fastgear", "serve", "--monitor", "off"]
        else:
            cmd = [need_gearmand()]
        n = len(started)
        out = open(tmp_path / f"{kind}-{n}.out", "wb")  # noqa: SIM115 (closed at teardown)
        proc = subprocess.Popen(cmd + ["-P", str(tmp_path / f"{kind}-{n}.pid"), *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        proc.output = lambda: (tmp_path / f"{kind}-{n}.out").read_text(errors="replace")
        started.append((proc, out))
        return proc

    yield start
    for proc, out in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        out.close()


def hold(family, host, port):
    """A listener on (host, port): the old server that has not exited yet."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen()
    return s


def retry_lines(kind, log):
    """The lines in which the server says it retries bind() (gearmand: at DEBUG only)."""
    marker = "is in use; retrying bind()" if kind == "fastgear" else "Retrying bind("
    try:
        return [x for x in log.read_text(errors="replace").splitlines() if marker in x]
    except OSError:
        return []


# --- syslog ------------------------------------------------------------------------------


def test_syslog_alone_gets_every_line_with_gearmands_ident_facility_and_priorities(
        syslog, launch):
    port = free_port()
    proc = launch("fastgear", "--syslog", "--syslog-socket", syslog.path, "-l", "none",
                  "--verbose", "INFO", "-p", str(port), "-L", "127.0.0.1")
    ready = wait_for(lambda: [x for x in syslog.lines() if " ready on " in x[4]],
                     what="the start-up line in syslog")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"\0BAD" + bytes(8))  # bad magic: a WARNING line
        c.recv(100)
    wait_for(lambda: any(x[3] == "WARNING" for x in syslog.lines()), what="the warning")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    got = syslog.lines()
    assert ready[0][:4] == (LOG_USER, 5, proc.pid, "NOTICE")
    warning = next(x for x in got if x[3] == "WARNING")
    assert warning[:3] == (LOG_USER, 4, proc.pid) and "protocol error" in warning[4]
    assert (LOG_USER, 6, proc.pid, "INFO", "fastgear stopped") in got
    assert "cannot reach the syslog socket" not in proc.output()


def test_syslog_besides_the_log_file_gets_the_same_lines(syslog, start_server):
    srv = start_server("fastgear", "--syslog", "--syslog-socket", syslog.path)
    line = wait_for(lambda: next((x for x in syslog.lines() if " ready on " in x[4]), None),
                    what="the start-up line in syslog")
    assert line[4] in srv.log_text()


def test_each_level_is_sent_as_the_syslog_priority_of_the_same_name(syslog):
    from fastgear.server import GearmandSyslog
    handler = GearmandSyslog(syslog.path)
    try:
        for levelno, name in ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"),
                              (logging.WARNING, "WARNING"), (logging.INFO, "NOTICE"),
                              (logging.INFO, "INFO"), (logging.DEBUG, "DEBUG")):
            record = logging.LogRecord("fastgear", levelno, __file__, 0, name.lower(),
                                       None, None)
            record.levelname = name
            handler.emit(record)
    finally:
        handler.close()
    got = wait_for(lambda: len(syslog.lines()) == 6 and syslog.lines(), what="6 lines")
    assert [(f, p, level, m) for f, p, _, level, m in got] == [
        (LOG_USER, 2, "CRITICAL", "critical"), (LOG_USER, 3, "ERROR", "error"),
        (LOG_USER, 4, "WARNING", "warning"), (LOG_USER, 5, "NOTICE", "notice"),
        (LOG_USER, 6, "INFO", "info"), (LOG_USER, 7, "DEBUG", "debug")]


@pytest.mark.difference
def test_a_missing_syslog_socket_is_a_start_up_warning_not_a_crash(start_server, tmp_path):
    """gearmand's syslog(3) drops every line without a word when nothing listens."""
    missing = tmp_path / "no-syslog-here"
    srv = start_server("fastgear", "--syslog", "--syslog-socket", str(missing))
    warning = (f"--syslog: cannot reach the syslog socket {missing} (No such file or "
               f"directory); logging to {srv.log_path} only")
    wait_for(lambda: f"fastgear: warning: {warning}" in srv.output(), what="the warning")
    assert f"WARNING {warning}" in srv.log_text()
    with Conn(srv) as c:
        assert c.admin(b"version").startswith(b"OK ")


# --- a busy port ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BOTH)
def test_a_port_freed_during_the_retry_period_is_bound_and_served(kind, launch, tmp_path):
    port = free_port()
    old = hold(socket.AF_INET, "127.0.0.1", port)
    log = tmp_path / "server.log"
    proc = launch(kind, "-p", str(port), "-L", "127.0.0.1", "-l", str(log),
                  *(["--verbose", "DEBUG"] if kind == "gearmand" else []))
    try:
        wait_for(lambda: retry_lines(kind, log), what="a bind() retry in the log")
        assert proc.poll() is None
    finally:
        old.close()  # the old server is gone

    def served():
        assert proc.poll() is None, proc.output()
        try:
            with Conn("127.0.0.1", port) as c:
                return c.admin(b"version").startswith(b"OK ")
        except OSError:
            return False
    wait_for(served, timeout=30, what="the port to be bound and served")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def have_ipv6():
    try:
        hold(socket.AF_INET6, "::1", 0).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("kind", BOTH)
def test_an_address_still_busy_after_the_retry_period_fails_start_up_with_status_1(
        kind, launch, tmp_path):
    """Every address of the default listen set is bound or the server exits: with only
    IPv4 bound, clients that reach it over IPv6 would be refused with no hint."""
    if not have_ipv6():
        pytest.skip("the host has no IPv6 loopback: needs two addresses to listen on")
    port = free_port()
    old = hold(socket.AF_INET6, "::", port)
    try:
        proc = launch(kind, "-p", str(port), "-l", str(tmp_path / "server.log"),
                      *(["--bind-retry-timeout", "1"] if kind == "fastgear" else []))
        assert proc.wait(60) == 1, proc.output()
        if kind == "fastgear":
            assert (f"fastgear: cannot listen on [::]:{port}: Address already in use (still "
                    "after --bind-retry-timeout 1)") in proc.output()
        # Nothing was left listening on the IPv4 side either.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        old.close()


@pytest.mark.difference
def test_each_retry_is_logged_at_the_default_level_within_bind_retry_timeout(launch,
                                                                             tmp_path):
    """gearmand retries after 1, 2, 4, 6 and 9 s and says so at DEBUG only; fastgear
    from 0.1 s on, doubling up to 2 s, for --bind-retry-timeout seconds, and says so."""
    port = free_port()
    old = hold(socket.AF_INET, "127.0.0.1", port)
    log = tmp_path / "server.log"
    try:
        proc = launch("fastgear", "-p", str(port), "-L", "localhost", "-l", str(log),
                      "--bind-retry-timeout", "1")
        assert proc.wait(30) == 1, proc.output()
    finally:
        old.close()
    retries = retry_lines("fastgear", log)
    assert len(retries) >= 2, log.read_text()
    assert all(" WARNING 127.0.0.1:" in x and x.endswith("(--bind-retry-timeout 1)")
               for x in retries)
    assert f"ERROR cannot listen on 127.0.0.1:{port}: Address already in use" in \
        log.read_text()


def test_no_retry_with_a_zero_retry_period(launch, tmp_path):
    port = free_port()
    old = hold(socket.AF_INET, "127.0.0.1", port)
    log = tmp_path / "server.log"
    try:
        proc = launch("fastgear", "-p", str(port), "-L", "127.0.0.1", "-l", str(log),
                      "--bind-retry-timeout", "0")
        assert proc.wait(30) == 1, proc.output()
    finally:
        old.close()
    assert retry_lines("fastgear", log) == []
