"""Behaviour of the server process: pid file, log file (SIGHUP reopens it), daemon mode,
refused flags and the start-up line. Run against fastgear and gearmand where gearmand has
the same behaviour. (Stopping it, by signal or the `shutdown` command: test_shutdown.py.)"""
import os
import re
import select
import signal
import subprocess
import sys

import pytest
from conftest import GEARMAND, free_port, wait_for
from gearproto import Conn


def test_pid_file_holds_the_server_pid(server):
    pid_file = server.tmp / f"{server.kind}-{server.port}.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="pid file")
    assert int(pid_file.read_text()) == server.pid


def test_getpid_admin_command_reports_the_server_pid(server):
    with Conn(server) as c:
        assert c.admin(b"getpid") == f"OK {server.pid}\n".encode()


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
        with Conn("127.0.0.1", port) as c:
            c.echo(b"ping")
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
    (["-q", "mysql", "--mysql-host", "localhost"], "queue-type"),
    (["--ssl"], "ssl"),
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
    assert re.search(r"1 I/O thread \((io_uring|epoll)\),", line), line
    assert "store memory" in line and line.endswith("monitor off")


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


def test_startup_line_names_the_http_port_when_it_serves_one(start_server):
    http_port = free_port()
    srv = start_server("fastgear", "-r", "http", "--http-port", str(http_port),
                       "--monitor", "off")
    line = wait_for(lambda: next((x for x in srv.log_path.read_text().splitlines()
                                  if " ready on " in x), None), what="the start-up line")
    assert f"HTTP job submission on 127.0.0.1:{http_port}" in line
