"""Shared fixtures: start fastgear or the real gearmand on a free loopback port.

Behaviour tests take the `server` fixture, which is parametrised over both servers so
every scenario is proven against gearmand 1.1.20 as well as fastgear. Tests marked
`difference` describe a deliberate fix of a gearmand bug and run against fastgear only;
tests marked `gearmand_quirk` pin the gearmand behaviour we chose not to copy. Tests that
need server flags (`-j 2`, `-R`, ...) use `start_server(kind, *flags)`, which accepts
gearmand's flags for both servers. Every process started here is stopped by PID at
teardown.

Missing peers: outside CI a test whose tool or peer is absent skips with the package to
install; under CI (CI=true) it fails instead, because a skip in CI hides a missing
install step. `missing()` names the Debian package from the PEERS list in ci/install-peers.sh (the list
ci/install-peers.sh installs) or the pip package of the `[test]` extra, and the report
hook below turns any other skip in CI into a failure too. Scenarios that do not apply
to a server kind (a deliberate difference run against gearmand) are deselected, not
skipped, so that a skip always means something is missing.
"""
import importlib
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
# Servers and tools the tests start (`python -m fastgear ...`) import the fastgear of this
# tree, as the tests do, not whichever one is installed (an editable install of another
# checkout would otherwise be what a worktree's tests exercise).
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
GEARMAND = shutil.which("gearmand") or (
    "/usr/sbin/gearmand" if os.path.exists("/usr/sbin/gearmand") else None)
# fastgear runs with its default 4 I/O threads and with -t 0 and -t 1; gearmand with its
# defaults. "fastgear-tN" means fastgear started with `-t N`.
# fastgear's default I/O backend here is io_uring (--io auto); "fastgear-epoll" runs the
# wire and limit scenarios a second time on the epoll loop (EPOLL_MODULES), so both
# backends pass them.
KINDS = ["fastgear", "fastgear-t0", "fastgear-t1", "fastgear-epoll", "gearmand"]
EPOLL_MODULES = ("test_wire_", "test_limits")
# "fastgear-tls": fastgear with --ssl (no client certificates), every connection a test makes through gearproto.Conn(server) wrapped in
# TLS. It runs the wire suites below only: the raw codec over TLS for every job, status,
# option and worker packet type (test_wire_errors and test_wire_admin stay plain to keep
# the suite's time budget; tests/test_tls.py sends bad packets and admin lines over TLS).
# A test of those modules that speaks through a plain socket of its own is marked
# `plain_only`.
TLS_KIND = "fastgear-tls"
TLS_WIRE_MODULES = frozenset({"test_wire_jobs", "test_wire_workers"})
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _debian_peers():
    """Package names from the PEERS list in ci/install-peers.sh, the one list it installs."""
    script = (ROOT / "ci" / "install-peers.sh").read_text()
    body = script.split("<<'END_OF_PEERS'", 1)[1].split("\nEND_OF_PEERS", 1)[0]
    return frozenset(line.split("|", 1)[0].strip() for line in body.splitlines()[1:]
                     if line.strip() and "|" in line)


DEBIAN_PEERS = _debian_peers()


def missing(what, *, debian=None, pip=None):
    """`what` is not available here: skip, naming where it comes from; fail under CI."""
    if debian is not None:
        if debian not in DEBIAN_PEERS:
            # A peer the install script does not install would skip for ever.
            pytest.fail(f"{debian} is not in ci/install-peers.sh's PEERS list; add it there", pytrace=False)
        source = f"Debian package {debian} (bash ci/install-peers.sh installs it)"
    elif pip is not None:
        source = f"pip package {pip} (pip install -e '.[test]' installs it)"
    else:
        raise TypeError("missing() needs debian= or pip=")
    message = f"{what} is missing: {source}"
    if IN_CI:
        pytest.fail(f"{message}; under CI a missing peer fails instead of skipping",
                    pytrace=False)
    pytest.skip(message)


def need_module(name, pip):
    """Import `name`, or report the pip package that provides it as missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name!r}", pip=pip)


def need_gearmand():
    if GEARMAND is None:
        missing("gearmand", debian="gearman-job-server")
    return GEARMAND


def _skip_reason(longrepr):
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_skip_in_ci(report):
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI ({_skip_reason(report.longrepr)}): a skip "
                           "in CI hides a missing install step")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


def _not_applicable(item):
    """Why a parametrised scenario does not apply to its server kind, or None."""
    spec = getattr(item, "callspec", None)
    kind = spec.params.get("kind") if spec is not None else None
    if kind is None:
        return None
    if kind == "fastgear-epoll" and not item.module.__name__.startswith(EPOLL_MODULES):
        return "the epoll backend runs the wire and limit scenarios only"
    marks = {m.name for m in item.iter_markers()}
    if kind == "gearmand" and "difference" in marks:
        return "deliberate difference from gearmand: fastgear only"
    if kind.startswith("fastgear") and "gearmand_quirk" in marks:
        return "gearmand quirk that fastgear deliberately fixes"
    if kind == TLS_KIND and (item.module.__name__ not in TLS_WIRE_MODULES
                             or "plain_only" in marks):
        return "the TLS server kind runs the wire suites through gearproto.Conn only"
    return None


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        (drop if _not_applicable(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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

    def __init__(self, kind, flags, tmp_path, pki=None):
        self.variant = kind
        # Clients of a TLS kind: gearproto.Conn(server) wraps its socket with this.
        self.ssl_context = None
        tls = kind == TLS_KIND
        kind, epoll, _ = ("fastgear", "", "") if tls else kind.partition("-epoll")
        kind, _, threads = kind.partition("-t")
        self.kind = kind
        self.flags = (list(flags) + (["-t", threads] if threads else [])
                      + (["--io", "epoll"] if epoll else []))
        if tls:
            from tlscerts import client_context
            # No client certificate: listings stay byte for byte those of the plain
            # kinds (a certificate's CN would show as the client id in `workers`).
            self.flags = ["--ssl"] + pki.server_flags() + self.flags
            self.ssl_context = client_context(pki)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tmp = tmp_path
        self.log_path = tmp_path / f"{kind}-{self.port}.log"
        pid_file = tmp_path / f"{kind}-{self.port}.pid"
        if kind == "fastgear":
            cmd = [sys.executable, "-m", "fastgear", "serve"]
        else:
            cmd = [need_gearmand()]
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

    def log_text(self):
        """What the server wrote to its --log-file so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def refuses_connections(self):
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
            return False
        except OSError:
            return True

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


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory):
    """A test CA with server and client certificates (tests/tlscerts.py)."""
    from tlscerts import make_pki
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_server(tmp_path, request):
    """Factory: start_server(kind, *gearmand_flags) -> Server, stopped at teardown."""
    started = []

    def start(kind, *flags):
        pki = request.getfixturevalue("tls_pki") if kind == TLS_KIND else None
        srv = Server(kind, flags, tmp_path, pki)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
    for srv in started:
        # The debug build (ci/debug-tests.sh) counts the engine's allocations and logs
        # the ones a clean shutdown did not free.
        assert "allocations were not freed" not in srv.log_text(), srv.log_text()[-2000:]


@pytest.fixture(params=KINDS + [TLS_KIND])
def kind(request):
    if request.param == "gearmand":
        need_gearmand()
    return request.param


@pytest.fixture
def server(kind, start_server):
    """A default-configured server of each kind (fastgear and gearmand)."""
    return start_server(kind)
