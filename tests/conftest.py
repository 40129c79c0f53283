"""Shared fixtures: start fastgear or the real gearmand on a free loopback port.

Behaviour tests take the `server` fixture, which is parametrised over both servers so
every scenario is proven against gearmand 1.1.20 as well as fastgear. Tests marked
`difference` describe a deliberate fix of a gearmand bug and run against fastgear only;
tests marked `gearmand_quirk` pin the gearmand behaviour we chose not to copy. Tests that
need server flags (`-j 2`, `-R`, ...) use `start_server(kind, *flags)`, which accepts
gearmand's flags for both servers. Every process started here is stopped by PID at
teardown.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEARMAND = shutil.which("gearmand") or (
    "/usr/sbin/gearmand" if os.path.exists("/usr/sbin/gearmand") else None)
# fastgear runs with its default 4 I/O threads and with -t 0 and -t 1; gearmand with its
# defaults. "fastgear-tN" means fastgear started with `-t N`.
KINDS = ["fastgear", "fastgear-t0", "fastgear-t1", "gearmand"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.01, what="condition"):
    """Poll `predicate` until it returns a truthy value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Server:
    """A running job server process: `host`, `port`, `pid`, `kind`, `flags`."""

    def __init__(self, kind, flags, tmp_path):
        self.variant = kind
        kind, _, threads = kind.partition("-t")
        self.kind = kind
        self.flags = list(flags) + (["-t", threads] if threads else [])
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tmp = tmp_path
        self.log_path = tmp_path / f"{kind}-{self.port}.log"
        pid_file = tmp_path / f"{kind}-{self.port}.pid"
        if kind == "fastgear":
            cmd = [sys.executable, "-m", "fastgear", "serve"]
        else:
            if GEARMAND is None:
                pytest.skip("gearmand is not installed (ci/install-peers.sh installs it)")
            cmd = [GEARMAND]
        self.cmd = cmd + ["-p", str(self.port), "-L", self.host,
                          "--log-file", str(self.log_path), "-P", str(pid_file)] + self.flags
        self._log = open(tmp_path / f"{kind}-{self.port}.out", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(tmp_path))
        self.pid = self.proc.pid
        try:
            wait_for(self._accepting, timeout=15, what=f"{kind} to listen on {self.port}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"{kind} did not start: {self.output()}")

    def _accepting(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited with {self.proc.returncode}: "
                                 f"{self.output()}")
        try:
            socket.create_connection((self.host, self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def output(self):
        if not self._log.closed:
            self._log.flush()
        text = ""
        for p in (self.tmp / f"{self.kind}-{self.port}.out", self.log_path):
            try:
                text += p.read_text(errors="replace")
            except OSError:
                pass
        return text[-4000:]

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(kind, *gearmand_flags) -> Server, stopped at teardown."""
    started = []

    def start(kind, *flags):
        srv = Server(kind, flags, tmp_path)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(params=KINDS)
def kind(request):
    marks = {m.name for m in request.node.iter_markers()}
    if request.param == "gearmand" and "difference" in marks:
        pytest.skip("deliberate difference from gearmand: fastgear only")
    if request.param.startswith("fastgear") and "gearmand_quirk" in marks:
        pytest.skip("gearmand quirk that fastgear deliberately fixes")
    if request.param == "gearmand" and GEARMAND is None:
        if os.environ.get("CI"):
            pytest.fail("gearmand must be installed in CI (ci/install-peers.sh)")
        pytest.skip("gearmand is not installed")
    return request.param


@pytest.fixture
def server(kind, start_server):
    """A default-configured server of each kind (fastgear and gearmand)."""
    return start_server(kind)
