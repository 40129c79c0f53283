"""The I/O backend choice (`--io auto|epoll|uring`): where io_uring runs, where `auto`
falls back to epoll (with one log line) and where `--io uring` refuses to start.

io_uring being forbidden (seccomp, kernel.io_uring_disabled) is simulated with
FASTGEAR_IO_URING_DISABLE=1, which makes the server behave as if io_uring_queue_init
had failed with EPERM. The wire and limit scenarios themselves run on both backends
through the `kind` fixture ("fastgear" on io_uring, "fastgear-epoll" on epoll).
"""
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from conftest import free_port, wait_for
from gearproto import SUBMIT_JOB_BG, Conn

from fastgear.config import Config, ConfigError, io_uring_excluded, validate

FALLBACK = "I/O: epoll, not io_uring"


def ready_line(srv):
    return wait_for(lambda: next((x for x in srv.log_text().splitlines()
                                  if " ready on " in x), None), what="the start-up line")


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as res:
        return json.load(res)["server"]


def test_auto_runs_io_uring_where_the_kernel_allows_it(start_server):
    mport = free_port()
    srv = start_server("fastgear", "-t", "2", "--monitor", f"127.0.0.1:{mport}")
    assert "2 I/O threads (io_uring)" in ready_line(srv)
    assert FALLBACK not in srv.log_text()
    assert wait_for(lambda: status(mport))["io"] == "io_uring"


def test_auto_falls_back_to_epoll_with_one_log_line_where_io_uring_is_forbidden(
        start_server, monkeypatch):
    monkeypatch.setenv("FASTGEAR_IO_URING_DISABLE", "1")
    mport = free_port()
    srv = start_server("fastgear", "--monitor", f"127.0.0.1:{mport}")
    assert "(epoll)" in ready_line(srv)
    fallback = [x for x in srv.log_text().splitlines() if FALLBACK in x]
    assert len(fallback) == 1 and "Operation not permitted" in fallback[0], fallback
    assert " WARNING " in fallback[0]      # shown at the default --verbose ERROR too
    assert status(mport)["io"] == "epoll"
    with Conn(srv) as c:
        assert c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)


def test_io_epoll_is_used_when_asked_without_a_log_line(start_server):
    srv = start_server("fastgear", "--io", "epoll")
    assert "(epoll)" in ready_line(srv)
    assert FALLBACK not in srv.log_text()


def test_io_uring_where_it_is_unavailable_is_a_start_up_error(tmp_path):
    env = {**os.environ, "FASTGEAR_IO_URING_DISABLE": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "fastgear", "serve", "--io", "uring", "-p", str(free_port()),
         "-L", "127.0.0.1", "-l", "stderr", "-P", str(tmp_path / "pid"), "--monitor", "off"],
        env=env, capture_output=True, text=True, timeout=30, cwd=str(tmp_path), check=False)
    assert res.returncode == 1
    assert "--io uring: io_uring is not available here" in res.stderr
    assert "Operation not permitted" in res.stderr


def test_an_unknown_io_backend_is_refused_naming_the_flag():
    with pytest.raises(ConfigError, match="--io poll: must be one of auto, epoll, uring"):
        validate(Config(io="poll"))


def test_tls_keeps_auto_on_epoll_and_refuses_io_uring():
    # TLS lives in the epoll loop: the one place that says so is io_uring_excluded().
    assert io_uring_excluded(Config()) is None
    assert "TLS" in io_uring_excluded(Config(ssl=True))
    with pytest.raises(ConfigError, match="--io uring: TLS"):
        validate(Config(io="uring", ssl=True))


def test_the_bench_tool_passes_io_to_fastgear_only():
    from fastgear.bench.cli import server_flags
    assert server_flags("bg", "fastgear", "epoll") == ["--io", "epoll"]
    assert server_flags("bg", "gearmand", "epoll") == []
    assert server_flags("bg", "fastgear", None) == []


@pytest.mark.parametrize("io", ["uring", "epoll"])
def test_a_sigkilled_server_gives_its_port_back_at_once(start_server, io):
    """A restart after a crash must find the port free: the kernel tears a dead
    process's io_uring down some time after the process is gone, and a poll entry on a
    listener would keep it listening (and the new server's clients queued on a dead
    backlog) until then. The listeners are watched through an epoll set instead."""
    import signal
    import socket
    srv = start_server("fastgear", "--io", io)
    assert ("(io_uring)" if io == "uring" else "(epoll)") in ready_line(srv)
    with Conn(srv) as c, Conn(srv) as w:
        c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        w.send_raw(b"")     # a second connection with its receive armed
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((srv.host, srv.port))    # EADDRINUSE while a dead listener lingers
            s.listen()
