"""Real Gearman clients and workers, run as their users run them, against fastgear and
gearmand 1.1.20 (the `server` fixture is parametrised over both).

Clients: the `gearman` CLI and `gearadmin` (Debian gearman-tools, libgearman 1.1.20),
Python `gear`, the python3-gearman fork of python-gearman, Perl Gearman::Client /
Gearman::Worker (libgearman-client-perl) and PHP GearmanClient / GearmanWorker
(php-gearman over libgearman). Workers and the Perl/PHP clients are separate processes
(scripts in tests/clients/); the Python clients run in the test process.

Every subprocess has a bounded timeout, every started process is killed by PID at
teardown, and tests wait on conditions the server reports (`status`) instead of sleeping.
`ci/install-peers.sh` installs the Debian peers; `pip install -e '.[test]'` the Python ones.
In CI (CI=true) a missing peer fails the test instead of skipping it (conftest.missing).
"""
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import missing, wait_for
from conftest import need_module as conftest_need_module
from gearproto import delayed_acks

CLIENTS = Path(__file__).resolve().parent / "clients"
RUN_TIMEOUT = 60          # seconds, for any one client command
WAIT = 20                 # seconds, for any condition to become true
TEN_MIB = 10 * 1024 * 1024


# --------------------------------------------------------------------------- peers

# Where each tool comes from: the Debian package in install-peers.sh's PEERS list, or the pip package of
# the `[test]` extra, named when a test finds it missing.
DEBIAN = {"gearman": "gearman-tools", "gearadmin": "gearman-tools",
          "perl": "libgearman-client-perl", "php": "php-cli"}
PIP = {"gear": "gear", "python3_gearman": "python3-gearman"}

_probe_cache = {}


def _probe(name, cmd):
    if name not in _probe_cache:
        try:
            ok = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                timeout=30, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        _probe_cache[name] = ok
    return _probe_cache[name]


def need_tool(name):
    path = shutil.which(name)
    if path is None:
        missing(name, debian=DEBIAN[name])
    return path


def need_perl():
    perl = need_tool("perl")
    if not _probe("perl", [perl, "-MGearman::Client", "-MGearman::Worker", "-e", "1"]):
        missing("Perl Gearman::Client", debian="libgearman-client-perl")
    return perl


def need_php():
    php = need_tool("php")
    if not _probe("php", [php, "-r", "exit(class_exists('GearmanClient') ? 0 : 1);"]):
        missing("the PHP gearman extension", debian="php-gearman")
    return php


def need_module(name):
    return conftest_need_module(name, pip=PIP[name])


# --------------------------------------------------------------- talking to the server

def admin(server, line):
    """Send one text admin line; return the reply (up to the `.` line for lists)."""
    listing = line.split()[0] in ("status", "workers", "prioritystatus") or \
        line.startswith("show ")
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(line.encode() + b"\r\n")
        data = b""
        while True:
            if listing and (data == b".\n" or data.endswith(b"\n.\n")):
                break
            if not listing and data.endswith(b"\n"):
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def function_status(server, func):
    """(total, running, workers) for `func` from the `status` admin command, or None."""
    for row in admin(server, "status").splitlines():
        cols = row.split("\t")
        if len(cols) == 4 and cols[0] == func:
            return int(cols[1]), int(cols[2]), int(cols[3])
    return None


def workers_for(server, func):
    st = function_status(server, func)
    return st[2] if st else 0


def unique_clients(server, unique):
    """Foreground clients attached to the job with `unique` (GET_STATUS_UNIQUE)."""
    body = unique.encode()
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        s.sendall(b"\0REQ" + struct.pack(">II", 41, len(body)) + body)
        data = b""
        while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
            chunk = s.recv(4096)
            if not chunk:
                raise AssertionError("server closed the connection on GET_STATUS_UNIQUE")
            data += chunk
    fields = data[12:].split(b"\0")
    return int(fields[5])


# ------------------------------------------------------------------------- processes

class Procs:
    """Processes started by one test; each runs in its own session so that killing
    its PID's group also ends its children (`gearman -w` runs a command per job)."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.started = []

    def start(self, cmd, name, stdin=subprocess.DEVNULL):
        log = self.tmp / f"{name}-{len(self.started)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(c) for c in cmd], stdin=stdin, stdout=out,
                                    stderr=subprocess.STDOUT, cwd=str(self.tmp),
                                    start_new_session=True)
        proc.log_path = log
        proc.name = name
        self.started.append(proc)
        return proc

    @staticmethod
    def output(proc):
        try:
            return proc.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self, proc):
        if proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.returncode}: "
                                 f"{self.output(proc)[-3000:]}")
        return True

    def start_worker(self, server, func, cmd, name, wait=True):
        """Start a worker process and wait until the server counts it for `func`
        (wait=False for a worker that may finish its work and exit before that)."""
        before = workers_for(server, func)
        proc = self.start(cmd, name)
        if not wait:
            return proc
        wait_for(lambda: self.alive(proc) and workers_for(server, func) > before,
                 timeout=WAIT, interval=0.02, what=f"{name} to register {func!r}")
        return proc

    @staticmethod
    def kill(proc, sig=signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self):
        for proc in self.started:
            self.kill(proc)
            if proc.stdin:
                proc.stdin.close()


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def run(cmd, input=None, timeout=RUN_TIMEOUT, check=True):
    """Run a client command to completion (bounded); return its stdout as text."""
    res = subprocess.run([str(c) for c in cmd], input=input, capture_output=True,
                         timeout=timeout, check=False)
    out = res.stdout.decode(errors="replace")
    err = res.stderr.decode(errors="replace")
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd[:3]} exited with {res.returncode}\nstdout: {out[-2000:]}"
                             f"\nstderr: {err[-2000:]}")
    return out


# ---------------------------------------------------------------- client front-ends

def cli(server):
    return [need_tool("gearman"), "-h", server.host, "-p", str(server.port)]


def gearadmin(server, *args):
    return run([need_tool("gearadmin"), "-h", server.host, "-p", str(server.port), *args])


def perl_worker(procs, server, func, mode, arg=""):
    cmd = [need_perl(), CLIENTS / "worker.pl", server.address, func, mode] + \
        ([arg] if arg else [])
    return procs.start_worker(server, func, cmd, f"perl-worker-{mode}")


def php_worker(procs, server, func, mode, arg=""):
    cmd = [need_php(), CLIENTS / "worker.php", server.address, func, mode] + \
        ([arg] if arg else [])
    return procs.start_worker(server, func, cmd, f"php-worker-{mode}")


def gear_worker(procs, server, func, mode, arg=""):
    need_module("gear")
    cmd = [sys.executable, CLIENTS / "gear_worker.py", server.address, func, mode] + \
        ([arg] if arg else [])
    return procs.start_worker(server, func, cmd, f"gear-worker-{mode}")


def python_gearman_worker(procs, server, func, mode, arg=""):
    need_module("python3_gearman")
    cmd = [sys.executable, CLIENTS / "python_gearman_worker.py", server.address, func,
           mode] + ([arg] if arg else [])
    return procs.start_worker(server, func, cmd, f"python-gearman-worker-{mode}")


def cli_worker(procs, server, func, *command, options=(), wait=True):
    cmd = cli(server) + ["-w", "-f", func, *options, "--", *command]
    return procs.start_worker(server, func, cmd, "gearman-cli-worker", wait=wait)


def perl_client(server, action, func, payload="", **opts):
    cmd = [need_perl(), CLIENTS / "client.pl", server.address, action, func, payload] + \
        [f"{k}={v}" for k, v in opts.items()]
    return run(cmd).splitlines()


def php_client(server, action, func, payload="", **opts):
    cmd = [need_php(), CLIENTS / "client.php", server.address, action, func, payload] + \
        [f"{k}={v}" for k, v in opts.items()]
    return run(cmd).splitlines()


@pytest.fixture
def gear_client():
    """Factory: gear_client(server, exceptions=False) -> connected gear.Client."""
    clients = []

    def make(server, exceptions=False):
        gear = need_module("gear")
        client = gear.Client("real-clients-test")
        clients.append(client)
        client.addServer(server.host, server.port)
        client.waitForServer(timeout=WAIT)
        if exceptions:
            assert client.setOption("exceptions", timeout=WAIT)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.shutdown()


def gear_submit(client, func, payload, unique=None, background=False, precedence=0):
    gear = need_module("gear")
    job = gear.Job(func.encode(), payload, unique=unique)
    client.submitJob(job, background=background, precedence=precedence, timeout=WAIT)
    assert job.handle, "no JOB_CREATED"
    return job


def gear_wait(job, timeout=WAIT):
    wait_for(lambda: job.complete, timeout=timeout, interval=0.01,
             what=f"gear job {job.handle!r} to finish")
    return job


@pytest.fixture
def python_gearman():
    """Factory: python_gearman(server) -> python3_gearman.GearmanClient."""
    made = []

    def make(server):
        mod = need_module("python3_gearman")
        client = mod.GearmanClient([server.address])
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.shutdown()


def lines_of(path):
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path, n):
    return wait_for(lambda: len(lines_of(path)) >= n and lines_of(path), timeout=WAIT,
                    interval=0.02, what=f"{n} lines in {path}")


# ======================================================================= gearman CLI

def test_cli_worker_returns_command_output_to_cli_client(server, procs):
    cli_worker(procs, server, "rev", "rev")
    out = run(cli(server) + ["-f", "rev"], input=b"hello\n")
    assert out == "olleh\n"


def test_cli_background_job_is_run_by_cli_worker(server, procs, tmp_path):
    log = tmp_path / "bg.txt"
    run(cli(server) + ["-b", "-f", "bg", "in the background"])
    assert function_status(server, "bg") == (1, 0, 0)
    cli_worker(procs, server, "bg", "sh", "-c", f"cat >> {log}; echo >> {log}")
    assert wait_lines(log, 1) == ["in the background"]
    wait_for(lambda: function_status(server, "bg")[:2] == (0, 0), timeout=WAIT,
             what="the background job to leave the queue")


def test_cli_priorities_run_high_before_normal_before_low(server, procs, tmp_path):
    log = tmp_path / "order.txt"
    for flags in (["-L", "low"], ["normal"], ["-I", "high"]):
        run(cli(server) + ["-b", "-f", "pri"] + flags)
    assert "pri\t1\t1\t1\t0" in gearadmin(server, "--priority-status").splitlines()
    cli_worker(procs, server, "pri", "sh", "-c", f"cat >> {log}; echo >> {log}",
               options=["-c", "3"], wait=False)
    assert wait_lines(log, 3) == ["high", "normal", "low"]


def test_cli_clients_with_the_same_unique_share_one_job_and_its_result(server, procs,
                                                                      tmp_path):
    runs = tmp_path / "runs.txt"
    clients = [procs.start(cli(server) + ["-f", "co", "-u", "same-key", "payload"],
                           f"cli-client-{i}") for i in range(2)]
    wait_for(lambda: unique_clients(server, "same-key") == 2, timeout=WAIT,
             what="both clients attached to the job")
    assert function_status(server, "co") == (1, 0, 0)
    # the worker answers with a per-run token, so two runs would give two answers
    cli_worker(procs, server, "co", "sh", "-c",
               f"cat > /dev/null; echo run >> {runs}; echo token-$$")
    for c in clients:
        c.wait(RUN_TIMEOUT)
    outs = [procs.output(c) for c in clients]
    assert outs[0].startswith("token-") and outs[0] == outs[1]
    assert lines_of(runs) == ["run"]


def test_cli_worker_killed_mid_job_is_replaced_by_another_cli_worker(server, procs,
                                                                    tmp_path):
    marker = tmp_path / "holding"
    first = cli_worker(procs, server, "die", "sh", "-c",
                       f"echo $$ > {marker}.tmp; mv {marker}.tmp {marker}; sleep 60")
    client = procs.start(cli(server) + ["-f", "die", "survivor"], "cli-client")
    wait_for(marker.exists, timeout=WAIT, what="the first worker to hold the job")
    assert function_status(server, "die") == (1, 1, 1)
    cli_worker(procs, server, "die", "rev", options=["-c", "1"])  # waits: job is held
    procs.kill(first)  # the worker and the command it runs
    client.wait(RUN_TIMEOUT)
    assert client.returncode == 0
    assert procs.output(client) == "rovivrus"  # rev of the job data (no newline)


# ========================================================================= gearadmin

def test_gearadmin_status_and_workers_show_queued_jobs_and_registered_workers(server, procs):
    run(cli(server) + ["-b", "-f", "queued", "one"])
    run(cli(server) + ["-b", "-f", "queued", "two"])
    cli_worker(procs, server, "served", "cat")
    status = gearadmin(server, "--status")
    assert status.endswith(".\n")
    rows = status.splitlines()
    assert "queued\t2\t0\t0" in rows
    assert "served\t0\t0\t1" in rows
    workers = gearadmin(server, "--workers")
    assert workers.endswith(".\n")
    assert any(row.endswith(": served") for row in workers.splitlines())


def test_gearadmin_reports_server_version_and_pid(server):
    assert gearadmin(server, "--server-version").startswith("1.1.20")
    assert gearadmin(server, "--getpid").strip() == str(server.pid)


def test_gearadmin_show_jobs_lists_a_queued_job_that_cancel_job_removes(server, procs,
                                                                       tmp_path):
    log = tmp_path / "ran.txt"
    (handle,) = php_client(server, "background", "cx", "cancelled")
    assert handle in gearadmin(server, "--show-jobs")
    assert gearadmin(server, "--cancel-job", handle).strip() == "OK"
    php_client(server, "background", "cx", "kept")
    php_worker(procs, server, "cx", "log", log)
    assert wait_lines(log, 1) == ["kept"]


def test_gearadmin_creates_and_drops_a_function(server):
    assert gearadmin(server, "--create-function", "made").strip() == "OK"
    assert function_status(server, "made") == (0, 0, 0)
    assert gearadmin(server, "--drop-function", "made").strip() == "OK"
    assert function_status(server, "made") is None


# ============================================================================== gear

def test_gear_client_round_trip_with_gear_worker(server, procs, gear_client):
    gear_worker(procs, server, "grev", "reverse")
    job = gear_wait(gear_submit(gear_client(server), "grev", b"gear round trip"))
    assert not job.failure
    assert job.data == [b"pirt dnuor raeg"]


def test_gear_background_job_is_run_by_python_gearman_worker(server, procs, gear_client,
                                                            tmp_path):
    log = tmp_path / "bg.txt"
    python_gearman_worker(procs, server, "gbg", "log", log)
    job = gear_submit(gear_client(server), "gbg", b"from gear", background=True)
    assert job.handle.startswith(b"H:")
    assert wait_lines(log, 1) == ["from gear"]


def test_gear_client_receives_work_data_from_php_worker_in_order(server, procs,
                                                                 gear_client):
    php_worker(procs, server, "gstream", "stream")
    pieces = [f"chunk{i}" for i in range(20)]
    job = gear_wait(gear_submit(gear_client(server), "gstream", ",".join(pieces).encode()))
    assert not job.failure
    assert job.data == [p.encode() for p in pieces] + [b"done"]


def test_gear_client_with_exceptions_option_receives_gear_worker_exception(server, procs,
                                                                          gear_client):
    gear_worker(procs, server, "gexc", "exception")
    job = gear_wait(gear_submit(gear_client(server, exceptions=True), "gexc", b"x"))
    assert job.failure
    assert job.exception == b"boom"


def test_gear_client_without_exceptions_option_sees_worker_exception_as_failure(
        server, procs, gear_client):
    gear_worker(procs, server, "gexc2", "exception")
    job = gear_wait(gear_submit(gear_client(server), "gexc2", b"x"))
    assert job.failure
    assert job.exception is None


def test_gear_client_gets_work_fail_from_gear_worker(server, procs, gear_client):
    gear_worker(procs, server, "gfail", "fail")
    job = gear_wait(gear_submit(gear_client(server), "gfail", b"x"))
    assert job.failure and job.exception is None


def test_php_worker_killed_mid_job_is_completed_by_perl_worker_for_gear_client(
        server, procs, gear_client, tmp_path):
    marker = tmp_path / "holding"
    first = php_worker(procs, server, "handover", "hang", marker)
    job = gear_submit(gear_client(server), "handover", b"keep going")
    wait_for(marker.exists, timeout=WAIT, what="the PHP worker to hold the job")
    assert int(marker.read_text()) == first.pid
    perl_worker(procs, server, "handover", "reverse")
    assert function_status(server, "handover") == (1, 1, 2)
    procs.kill(first)
    gear_wait(job)
    assert not job.failure
    assert job.data == [b"gniog peek"]


# =================================================================== python3-gearman

def test_python_gearman_client_round_trip_with_python_gearman_worker(server, procs,
                                                                     python_gearman):
    python_gearman_worker(procs, server, "prev", "reverse")
    req = python_gearman(server).submit_job("prev", "python gearman", poll_timeout=WAIT)
    assert req.state == "COMPLETE"
    assert req.result == "namraeg nohtyp"


def test_python_gearman_background_job_is_run_by_gear_worker(server, procs, python_gearman,
                                                            tmp_path):
    log = tmp_path / "bg.txt"
    gear_worker(procs, server, "pbg", "log", log)
    req = python_gearman(server).submit_job("pbg", "from python-gearman", background=True,
                                           wait_until_complete=False, poll_timeout=WAIT)
    assert req.state == "CREATED"
    assert wait_lines(log, 1) == ["from python-gearman"]


def test_python_gearman_client_follows_job_status_of_gear_worker(server, procs,
                                                                python_gearman, tmp_path):
    go = tmp_path / "go"
    gear_worker(procs, server, "pstatus", "status", go)
    client = python_gearman(server)
    req = client.submit_job("pstatus", "x", background=True, wait_until_complete=False,
                            poll_timeout=WAIT)

    def status():
        st = client.get_job_status(req, poll_timeout=WAIT).status
        return (st["known"], st["running"], st["numerator"], st["denominator"])

    wait_for(lambda: status() == (True, True, 1, 2), timeout=WAIT,
             what="GET_STATUS to report 1/2 running")
    go.touch()
    wait_for(lambda: status() == (False, False, 0, 0), timeout=WAIT,
             what="GET_STATUS to report the finished job as unknown")


def test_python_gearman_clients_with_the_same_unique_get_one_jobs_result(server, procs,
                                                                        python_gearman,
                                                                        tmp_path):
    log = tmp_path / "runs.txt"
    first, second = python_gearman(server), python_gearman(server)
    r1 = first.submit_job("pco", "once", unique="shared", wait_until_complete=False,
                          poll_timeout=WAIT)
    r2 = second.submit_job("pco", "once", unique="shared", wait_until_complete=False,
                           poll_timeout=WAIT)
    assert r1.job.handle == r2.job.handle
    assert function_status(server, "pco") == (1, 0, 0)
    perl_worker(procs, server, "pco", "log", log)
    r1 = first.wait_until_jobs_completed([r1], poll_timeout=WAIT)[0]
    r2 = second.wait_until_jobs_completed([r2], poll_timeout=WAIT)[0]
    assert (r1.state, r1.result) == ("COMPLETE", "logged")
    assert (r2.state, r2.result) == ("COMPLETE", "logged")
    assert lines_of(log) == ["once"]


def test_python_gearman_client_receives_work_data_from_perl_worker(server, procs,
                                                                   python_gearman):
    perl_worker(procs, server, "pstream", "stream")
    req = python_gearman(server).submit_job("pstream", "a,b,c,d", poll_timeout=WAIT)
    assert req.state == "COMPLETE"
    assert list(req.data_updates) == ["a", "b", "c", "d"]
    assert req.result == "done"


def test_python_gearman_worker_whose_task_raises_fails_the_job(server, procs,
                                                              python_gearman):
    python_gearman_worker(procs, server, "praise", "fail")
    req = python_gearman(server).submit_job("praise", "x", poll_timeout=WAIT)
    assert req.state == "FAILED"


def test_python_gearman_high_priority_jobs_run_first(server, procs, python_gearman,
                                                     tmp_path):
    pg = need_module("python3_gearman")
    log = tmp_path / "order.txt"
    client = python_gearman(server)
    for data, priority in (("low", pg.PRIORITY_LOW), ("normal", pg.PRIORITY_NONE),
                           ("high", pg.PRIORITY_HIGH)):
        client.submit_job("ppri", data, priority=priority, background=True,
                          wait_until_complete=False, poll_timeout=WAIT)
    gear_worker(procs, server, "ppri", "log", log)
    assert wait_lines(log, 3) == ["high", "normal", "low"]


def test_python_gearman_admin_client_reads_status_workers_and_version(server, procs):
    pg = need_module("python3_gearman")
    python_gearman_worker(procs, server, "padmin", "reverse")
    adm = pg.GearmanAdminClient([server.address], poll_timeout=WAIT)
    try:
        assert {"task": "padmin", "queued": 0, "running": 0, "workers": 1} in adm.get_status()
        mine = [w for w in adm.get_workers() if w["client_id"] == "python-gearman-test-worker"]
        assert len(mine) == 1 and mine[0]["tasks"] == ("padmin",)
        assert adm.get_version().startswith("OK 1.1.20")
        assert adm.ping_server() >= 0
    finally:
        adm.shutdown()


@pytest.mark.difference
def test_python_gearman_admin_client_sets_maxqueue(server):
    pg = need_module("python3_gearman")
    adm = pg.GearmanAdminClient([server.address], poll_timeout=WAIT)
    try:
        assert adm.send_maxqueue("limited", 5)
    finally:
        adm.shutdown()


@pytest.mark.gearmand_quirk
def test_gearmand_maxqueue_answer_is_rejected_by_python_gearman_admin_client(server):
    pg = need_module("python3_gearman")
    adm = pg.GearmanAdminClient([server.address], poll_timeout=WAIT)
    try:
        with pytest.raises(pg.errors.ProtocolError):
            adm.send_maxqueue("limited", 5)
    finally:
        adm.shutdown()


@pytest.mark.difference
def test_python_gearman_client_is_told_the_job_failed_when_php_worker_throws(
        server, procs, python_gearman):
    php_worker(procs, server, "pexc", "exception")
    req = python_gearman(server).submit_job("pexc", "x", poll_timeout=WAIT)
    assert req.state == "FAILED"


@pytest.mark.gearmand_quirk
def test_gearmand_converted_work_fail_with_stray_nul_breaks_python_gearman_client(
        server, procs, python_gearman):
    php_worker(procs, server, "pexc", "exception")
    with pytest.raises(KeyError, match=r"\\x00"):
        python_gearman(server).submit_job("pexc", "x", poll_timeout=WAIT)


# ============================================================================== Perl

def test_perl_client_round_trip_with_perl_worker(server, procs):
    perl_worker(procs, server, "plrev", "reverse")
    assert perl_client(server, "do", "plrev", "perl round trip") == ["complete:pirt dnuor lrep"]


def test_php_worker_completes_job_submitted_by_perl_client(server, procs):
    php_worker(procs, server, "plphp", "reverse")
    assert perl_client(server, "do", "plphp", "perl to php") == ["complete:php ot lrep"]


def test_perl_background_job_is_run_by_php_worker(server, procs, tmp_path):
    log = tmp_path / "bg.txt"
    (handle,) = perl_client(server, "background", "plbg", "from perl", uniq="plbg-1")
    assert "//H:" in handle
    php_worker(procs, server, "plbg", "log", log)
    assert wait_lines(log, 1) == ["from perl"]


def test_perl_client_follows_job_status_of_perl_worker(server, procs, tmp_path):
    go = tmp_path / "go"
    perl_worker(procs, server, "plstatus", "status", go)
    (handle,) = perl_client(server, "background", "plstatus", "x", uniq="plstatus-1")
    wait_for(lambda: perl_client(server, "status", handle) == ["1 1 1/2"], timeout=WAIT,
             interval=0.05, what="get_status to report 1/2 running")
    go.touch()
    wait_for(lambda: perl_client(server, "status", handle) == ["0 0 0/0"], timeout=WAIT,
             interval=0.05, what="get_status to report the finished job as unknown")


def test_perl_client_receives_work_data_from_python_gearman_worker(server, procs):
    python_gearman_worker(procs, server, "plstream", "stream")
    assert perl_client(server, "do", "plstream", "x,y,z") == \
        ["data:x", "data:y", "data:z", "complete:done"]


def test_perl_client_is_told_when_perl_worker_returns_failure(server, procs):
    perl_worker(procs, server, "plfail", "fail")
    assert perl_client(server, "do", "plfail", "x") == ["fail"]


def test_perl_client_with_exceptions_receives_exception_of_a_dying_perl_handler(server,
                                                                             procs):
    perl_worker(procs, server, "pldie", "die")
    out = perl_client(server, "do", "pldie", "x", exceptions=1)
    assert "perl worker died" in "\n".join(out)
    assert out[0].startswith("exception:") and out[-1] == "fail"


@pytest.mark.difference
def test_perl_client_without_exceptions_is_told_the_job_failed_when_handler_dies(server,
                                                                              procs):
    perl_worker(procs, server, "pldie2", "die")
    assert perl_client(server, "do", "pldie2", "x") == ["fail"]


@pytest.mark.gearmand_quirk
def test_gearmand_converted_work_fail_with_stray_nul_breaks_perl_client(server, procs):
    perl_worker(procs, server, "pldie2", "die")
    res = subprocess.run([need_perl(), CLIENTS / "client.pl", server.address, "do",
                          "pldie2", "x"], capture_output=True, timeout=RUN_TIMEOUT,
                         check=False)
    assert res.returncode != 0
    assert b"unknown handle" in res.stderr


# =============================================================================== PHP

def test_php_client_round_trip_with_php_worker(server, procs):
    php_worker(procs, server, "phrev", "reverse")
    assert php_client(server, "do", "phrev", "php round trip") == ["complete:pirt dnuor php"]


def test_php_client_round_trip_with_gearman_cli_worker(server, procs):
    cli_worker(procs, server, "phcli", "tr", "a-z", "A-Z")
    assert php_client(server, "do", "phcli", "shout") == ["complete:SHOUT"]


def test_php_background_job_is_run_by_perl_worker(server, procs, tmp_path):
    log = tmp_path / "bg.txt"
    perl_worker(procs, server, "phbg", "log", log)
    (handle,) = php_client(server, "background", "phbg", "from php")
    assert handle.startswith("H:")
    assert wait_lines(log, 1) == ["from php"]


def test_php_client_follows_job_status_of_php_worker(server, procs, tmp_path):
    go = tmp_path / "go"
    php_worker(procs, server, "phstatus", "status", go)
    (handle,) = php_client(server, "background", "phstatus", "x")
    wait_for(lambda: php_client(server, "status", handle) == ["1 1 1 2"], timeout=WAIT,
             interval=0.05, what="jobStatus to report 1/2 running")
    go.touch()
    wait_for(lambda: php_client(server, "status", handle) == ["0 0 0 0"], timeout=WAIT,
             interval=0.05, what="jobStatus to report the finished job as unknown")


def test_php_priorities_run_high_before_normal_before_low_on_perl_worker(server, procs,
                                                                        tmp_path):
    log = tmp_path / "order.txt"
    for priority in ("low", "normal", "high"):
        php_client(server, "background", "phpri", priority, priority=priority)
    assert function_status(server, "phpri") == (3, 0, 0)
    perl_worker(procs, server, "phpri", "log", log)
    assert wait_lines(log, 3) == ["high", "normal", "low"]


def test_php_client_receives_work_data_from_gear_worker_in_order(server, procs):
    gear_worker(procs, server, "phstream", "stream")
    assert php_client(server, "tasks", "phstream", "one,two,three") == \
        ["data:one", "data:two", "data:three", "complete:done"]


def test_php_client_receives_exception_from_php_worker(server, procs):
    php_worker(procs, server, "phexc", "exception")
    assert php_client(server, "tasks", "phexc", "x") == ["exception:boom"]


def test_php_client_is_told_when_php_worker_fails_the_job(server, procs):
    php_worker(procs, server, "phfail", "fail")
    assert php_client(server, "tasks", "phfail", "x") == ["fail"]
    assert php_client(server, "do", "phfail", "x") == ["fail rc=24"]  # GEARMAN_WORK_FAIL


def test_one_mib_payload_round_trips_between_php_client_and_perl_worker(server, procs,
                                                                        tmp_path):
    # libgearman sets 32 KiB SO_SNDBUF/SO_RCVBUF, so a large payload goes in parts, and
    # against gearmand each part waits out a ~40 ms delayed ACK: 10 MiB takes 5-6 s each
    # way there (fastgear ACKs at once: the delayed-ACK tests above). 1 MiB (32 buffers'
    # worth) exercises the same partial-read/partial-write path on both servers in
    # 0.1 s; the 10 MiB round trip is the Perl test below.
    perl_worker(procs, server, "phbig", "reverse")
    src, dst = tmp_path / "payload.bin", tmp_path / "result.bin"
    payload = os.urandom(1024 * 1024)
    src.write_bytes(payload)
    assert php_client(server, "do", "phbig", f"@{src}", out=dst) == [f"complete:@{dst}"]
    assert dst.read_bytes() == payload[::-1]


# libgearman's 32 KiB send buffer and PHP's OPTION_REQ on every connection: a large
# payload goes in parts, each after the server's ACK of the last, and gearmand's ACKs
# wait for the kernel's delayed-ACK timer (10 MiB took 5.4 s). Counted, not timed: the
# kernel's count of such ACKs (about 40 for 4 MiB on gearmand; fastgear ACKs at once).
PHP_UPLOAD = 4 * 1024 * 1024


def php_upload_delayed_acks(server, tmp_path):
    src = tmp_path / "payload.bin"
    src.write_bytes(b"p" * PHP_UPLOAD)
    before = delayed_acks()
    (handle,) = php_client(server, "background", "phack", f"@{src}")
    assert handle.startswith("H:"), handle
    return delayed_acks() - before


@pytest.mark.difference
def test_php_client_uploads_a_large_payload_without_waiting_on_delayed_acks(server,
                                                                            tmp_path):
    assert php_upload_delayed_acks(server, tmp_path) <= 6


@pytest.mark.gearmand_quirk
def test_gearmand_makes_a_php_upload_wait_on_delayed_acks(server, tmp_path):
    assert php_upload_delayed_acks(server, tmp_path) >= 12


def test_ten_mib_payload_round_trips_between_perl_client_and_perl_worker(server, procs,
                                                                         tmp_path):
    perl_worker(procs, server, "plbig", "reverse")
    src, dst = tmp_path / "payload.bin", tmp_path / "result.bin"
    payload = os.urandom(TEN_MIB)
    src.write_bytes(payload)
    assert perl_client(server, "do", "plbig", f"@{src}", out=dst) == [f"complete:@{dst}"]
    assert dst.read_bytes() == payload[::-1]
