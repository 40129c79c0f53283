"""Behaviour of the server process: signals, pid file, log file, daemon mode, the
loopback-only `shutdown` command and refused flags. Run against fastgear and gearmand
where gearmand has the same behaviour."""
import os
import select
import signal
import socket
import struct
import subprocess
import sys

import pytest
from conftest import GEARMAND, free_port, wait_for


def packet(ptype, *fields):
    body = b"\0".join(fields)
    return b"\0REQ" + struct.pack(">II", ptype, len(body)) + body


def read_packet(sock):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data
    header = exactly(12)
    ptype, size = struct.unpack(">II", header[4:])
    return ptype, exactly(size)


def connect(srv):
    s = socket.create_connection((srv.host, srv.port), timeout=5)
    return s


def refuses_connections(srv):
    try:
        socket.create_connection((srv.host, srv.port), timeout=0.5).close()
        return False
    except OSError:
        return True


def admin(srv, line):
    with connect(srv) as s:
        s.sendall(line + b"\r\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_sigterm_stops_the_server_with_exit_code_zero(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0


def test_sigint_stops_the_server_with_exit_code_zero(server):
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(10) == 0


def test_sigusr1_stops_accepting_and_exits_when_the_running_job_completes(server):
    with connect(server) as client, connect(server) as worker:
        worker.sendall(packet(1, b"slow"))
        wait_for(lambda: b"slow\t0\t0\t1" in admin(server, b"status"), what="worker registered")
        client.sendall(packet(18, b"slow", b"", b"x"))
        assert read_packet(client)[0] == 8
        worker.sendall(packet(9))
        ptype, body = read_packet(worker)
        assert ptype == 11
        handle = body.split(b"\0")[0]
        server.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: refuses_connections(server), what="listener closed")
        assert server.alive()
        # The existing connection still works until the last job is done.
        worker.sendall(packet(13, handle, b"done"))
        client.sendall(packet(16, b"sync"))
        assert read_packet(client) == (17, b"sync")
    assert server.proc.wait(10) == 0


def test_pid_file_holds_the_server_pid(server):
    pid_file = server.tmp / f"{server.kind}-{server.port}.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="pid file")
    assert int(pid_file.read_text()) == server.pid


def test_getpid_admin_command_reports_the_server_pid(server):
    assert admin(server, b"getpid") == f"OK {server.pid}\n".encode()


@pytest.mark.difference
def test_shutdown_command_from_loopback_stops_the_server(server):
    assert admin(server, b"shutdown") == b"OK\r\n"
    assert server.proc.wait(10) == 0


@pytest.mark.difference
def test_graceful_shutdown_command_waits_for_queued_jobs(server):
    with connect(server) as client:
        client.sendall(packet(18, b"later", b"", b"x"))
        handle = read_packet(client)[1]
        assert admin(server, b"shutdown graceful") == b"OK\r\n"
        wait_for(lambda: refuses_connections(server), what="listener closed")
        assert server.alive()
        client.sendall(b"cancel job " + handle + b"\r\n")
        assert client.recv(100) == b"OK\r\n"
    assert server.proc.wait(10) == 0


@pytest.mark.difference
def test_sighup_reopens_the_log_file(start_server):
    srv = start_server("fastgear", "--verbose", "INFO")
    wait_for(lambda: srv.log_path.exists() and srv.log_path.stat().st_size > 0,
             what="first log line")
    rotated = srv.log_path.with_suffix(".1")
    os.rename(srv.log_path, rotated)
    srv.proc.send_signal(signal.SIGHUP)
    wait_for(srv.log_path.exists, what="log file reopened")
    assert srv.alive()


def test_daemon_mode_detaches_and_keeps_serving(kind, tmp_path):
    port = free_port()
    pid_file = tmp_path / "daemon.pid"
    if kind.startswith("fastgear"):
        cmd = [sys.executable, "-m", "fastgear", "serve"]
    else:
        cmd = [GEARMAND]
    cmd += ["-d", "-p", str(port), "-L", "127.0.0.1", "--log-file", str(tmp_path / "log"),
            "-P", str(pid_file)]
    assert subprocess.run(cmd, check=False, timeout=20, cwd=tmp_path).returncode == 0
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                       what="daemon pid file"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(packet(16, b"ping"))
            assert read_packet(s) == (17, b"ping")
    finally:
        os.kill(pid, signal.SIGTERM)

        def gone():
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                return True
        wait_for(gone, what="daemon exit")


@pytest.mark.parametrize("flags, named", [
    (["-q", "postgres", "--libpq-conninfo", "dbname=x"], "queue-type"),
    (["--ssl"], "ssl"),
    (["-r", "http"], "protocol"),
])
def test_unsupported_feature_flags_are_refused_with_a_clear_message(flags, named, tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastgear", "serve", "-p", str(free_port()),
                          "-L", "127.0.0.1", "--log-file", "none"] + flags,
                         check=False, capture_output=True, text=True, timeout=20,
                         cwd=tmp_path)
    assert res.returncode != 0
    assert named in res.stderr


def test_startup_line_says_where_it_listens_at_the_default_verbosity(start_server, tmp_path):
    db = tmp_path / "jobs.db"
    mport = free_port()
    srv = start_server("fastgear", "-t", "2", "--store", str(db),
                       "--monitor", f"127.0.0.1:{mport}")
    line = wait_for(lambda: next((x for x in srv.log_path.read_text().splitlines()
                                  if " ready on " in x), None), what="the start-up line")
    from fastgear import __version__
    assert " NOTICE " in line
    assert f"fastgear {__version__} ready on 127.0.0.1:{srv.port} (pid {srv.pid})" in line
    assert "2 I/O threads" in line
    assert f"store SQLite {db} (0 jobs replayed)" in line
    assert f"monitor http://127.0.0.1:{mport}/" in line


def test_startup_line_names_the_memory_store_and_a_monitor_that_is_off(start_server):
    srv = start_server("fastgear", "-t", "0", "--monitor", "off")
    line = wait_for(lambda: next((x for x in srv.log_path.read_text().splitlines()
                                  if " ready on " in x), None), what="the start-up line")
    assert "1 I/O thread," in line and "store memory" in line and line.endswith("monitor off")


def test_startup_line_reaches_a_terminal_when_the_log_goes_to_a_file(tmp_path):
    import pty
    port, log = free_port(), tmp_path / "server.log"
    pid, fd = pty.fork()
    if pid == 0:  # child: the server, its stderr a terminal
        os.execv(sys.executable, [sys.executable, "-m", "fastgear", "serve", "-L", "127.0.0.1",
                                  "-p", str(port), "--log-file", str(log), "--monitor", "off"])
    seen = b""
    try:
        def printed():
            nonlocal seen
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:  # the child is gone; what it printed is in `seen`
                    return True
            return b"ready on" in seen
        wait_for(printed, what="the start-up line on the terminal")
        assert b"fastgear: fastgear" in seen and f"127.0.0.1:{port}".encode() in seen
        assert " ready on " in log.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)
