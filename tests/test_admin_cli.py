"""`fastgear admin`, run as a subprocess against real servers (fastgear and gearmand).

Text output is compared byte for byte with `gearadmin` 1.1.20 run against the same server
in the same state; `--json` shapes are checked field by field; failures (refused or
silent servers, `ERR` answers, usage mistakes) must give a message on stderr and the
documented exit code (1 server error, 2 usage, 3 connection), never a traceback. State is
set up with raw packets (gearproto). Fake servers for the failure cases are plain
loopback sockets in this process, closed by the test that opened them.
"""
import json
import shutil
import socket
import subprocess
import sys
import threading

import pytest
from conftest import KINDS, free_port, missing, need_gearmand, wait_for
from gearproto import (
    JOB_ASSIGN,
    SET_CLIENT_ID,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW_BG,
    Conn,
)

from fastgear import cli
from fastgear.admin_client import AdminClient, ServerError

RUN_TIMEOUT = 30
GEARADMIN = shutil.which("gearadmin")
FASTGEAR_KINDS = [k for k in KINDS if k.startswith("fastgear")]


def run_admin(server_or_port, *args, timeout=RUN_TIMEOUT):
    """`python -m fastgear admin -h 127.0.0.1 -p PORT ARGS` -> CompletedProcess (bytes)."""
    port = getattr(server_or_port, "port", server_or_port)
    cmd = [sys.executable, "-m", "fastgear", "admin", "-h", "127.0.0.1", "-p", str(port),
           *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)


def run_gearadmin(server, *args):
    if GEARADMIN is None:
        missing("gearadmin", debian="gearman-tools")
    cmd = [GEARADMIN, "-h", server.host, "-p", str(server.port), *args]
    return subprocess.run(cmd, capture_output=True, timeout=RUN_TIMEOUT, check=False)


def ok(result):
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stderr == b""
    return result.stdout


def as_json(result):
    return json.loads(ok(result))


def failed(result, code):
    """Assert a clean failure: the exit code, nothing on stdout, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == b""
    assert b"Traceback" not in result.stderr
    return result.stderr.decode()


def single_threaded(server):
    flags = server.flags
    return "-t" in flags and flags[flags.index("-t") + 1] in ("0", "1")


def assert_same_as_gearadmin(server, *args):
    """gearadmin and fastgear admin print the same stdout for the same state.

    `workers` lists the tool's own connection, by fd (reused only once the server has
    closed the previous tool's socket, so the pair is retried a few times) and, on a
    server with several I/O threads, at the place of the thread that accepted it, which
    round robin makes differ from one connection to the next. For those servers the
    `workers` rows are compared as a multiset; single-threaded ones must match exactly.
    """
    def comparable(out):
        if "--workers" in args and not single_threaded(server):
            return sorted(out.splitlines(keepends=True))
        return out

    for _ in range(5):
        theirs = run_gearadmin(server, *args)
        ours = run_admin(server, *args)
        if comparable(ours.stdout) == comparable(theirs.stdout):
            break
    assert ours.returncode == 0, ours.stderr
    assert comparable(ours.stdout) == comparable(theirs.stdout)
    assert ours.stdout  # a comparison of two empty outputs would prove nothing
    return ours.stdout


def busy_state(server):
    """Jobs queued at every priority (one with an empty unique key), a running job, and
    a worker with a client id registered for two functions: (facts, connections)."""
    worker, client = Conn(server), Conn(server)
    try:
        worker.send(SET_CLIENT_ID, "admin worker")
        worker.worker("work", "other")
        queued = [client.submit("queue", b"h", b"u-high", SUBMIT_JOB_HIGH_BG),
                  client.submit("queue", b"n1", b"u-normal", SUBMIT_JOB_BG),
                  client.submit("queue", b"n2", b"", SUBMIT_JOB_BG),
                  client.submit("queue", b"l", b"u-low", SUBMIT_JOB_LOW_BG)]
        running = client.submit("work", b"w", b"u-work", SUBMIT_JOB_BG)
        kind, fields = worker.grab()
        assert kind == JOB_ASSIGN and fields[0] == running
    except BaseException:
        worker.close()
        client.close()
        raise
    facts = {"queued": queued, "running": running,
             "uniques": {"u-high", "u-normal", "", "u-low", "u-work"}}
    return facts, (worker, client)


@pytest.fixture
def busy(server):
    """busy_state on the `server` fixture, its connections closed afterwards."""
    facts, conns = busy_state(server)
    yield facts
    for conn in conns:
        conn.close()


# -- text output: byte for byte what gearadmin prints ------------------------------------

@pytest.mark.parametrize("action", [
    "--status", "--priority-status", "--workers", "--show-jobs", "--show-unique-jobs",
    "--server-version", "--server-verbose", "--getpid",
])
def test_text_output_matches_gearadmin_byte_for_byte(busy, server, action):
    assert_same_as_gearadmin(server, action)


def test_status_matches_gearadmin_byte_for_byte(busy, server):
    out = assert_same_as_gearadmin(server, "--status")
    assert b"queue\t4\t0\t0\n" in out and out.endswith(b".\n")


def test_workers_of_single_threaded_gearmand_match_gearadmin_in_order(start_server):
    need_gearmand()
    srv = start_server("gearmand", "-t", "0")
    _, conns = busy_state(srv)
    try:
        assert_same_as_gearadmin(srv, "--workers")
    finally:
        for conn in conns:
            conn.close()


def test_an_empty_server_prints_just_the_terminator_like_gearadmin(server):
    assert assert_same_as_gearadmin(server, "--status") == b".\n"
    assert assert_same_as_gearadmin(server, "--show-jobs") == b".\n"


def test_several_actions_run_in_gearadmins_order_on_one_connection(busy, server):
    out = assert_same_as_gearadmin(
        server, "--status", "--priority-status", "--getpid", "--server-version",
        "--server-verbose", "--show-jobs", "--show-unique-jobs", "--create-function", "made",
        "--drop-function", "made")
    # gearadmin runs the last option of its source first: getpid, then create and drop.
    assert out.startswith(b"%d\nOK\nOK\n" % server.pid)


def test_create_drop_and_cancel_print_ok_like_gearadmin(busy, server):
    assert ok(run_gearadmin(server, "--create-function", "theirs")) == b"OK\n"
    assert ok(run_admin(server, "--create-function", "ours")) == b"OK\n"
    names = {row["function"] for row in as_json(run_admin(server, "--status", "--json"))}
    assert {"theirs", "ours"} <= names
    assert ok(run_gearadmin(server, "--drop-function", "theirs")) == b"OK\n"
    assert ok(run_admin(server, "--drop-function", "ours")) == b"OK\n"
    assert ok(run_gearadmin(server, "--cancel-job", busy["queued"][0].decode())) == b"OK\n"
    assert ok(run_admin(server, "--cancel-job", busy["queued"][1].decode())) == b"OK\n"


# -- --json shapes ----------------------------------------------------------------------

def test_status_json_lists_totals_and_queued_jobs_per_priority(busy, server):
    rows = {row["function"]: row for row in as_json(run_admin(server, "--status", "--json"))}
    assert rows["queue"] == {"function": "queue", "total": 4, "running": 0, "workers": 0,
                             "queued": {"high": 1, "normal": 2, "low": 1}}
    assert rows["work"] == {"function": "work", "total": 1, "running": 1, "workers": 1,
                            "queued": {"high": 0, "normal": 0, "low": 0}}
    assert rows["other"]["workers"] == 1


def test_priority_status_json_counts_queued_jobs_per_priority(busy, server):
    rows = as_json(run_admin(server, "--priority-status", "--json"))
    assert {"function": "queue", "high": 1, "normal": 2, "low": 1, "workers": 0} in rows
    assert {"function": "work", "high": 0, "normal": 0, "low": 0, "workers": 1} in rows


def test_workers_json_lists_every_connection_with_its_functions(busy, server):
    rows = as_json(run_admin(server, "--workers", "--json"))
    assert all(set(row) == {"fd", "ip", "client_id", "functions"} for row in rows)
    assert all(isinstance(row["fd"], int) and row["ip"] == "127.0.0.1" for row in rows)
    mine = [row for row in rows if row["client_id"] == "admin worker"]
    assert [row["functions"] for row in mine] == [["other", "work"]]  # newest first
    assert any(row["client_id"] == "-" and row["functions"] == [] for row in rows)


def test_show_jobs_json_lists_every_job_in_memory(busy, server):
    rows = as_json(run_admin(server, "--show-jobs", "--json"))
    handles = {h.decode() for h in busy["queued"] + [busy["running"]]}
    assert {row["handle"] for row in rows} == handles
    for row in rows:
        assert set(row) == {"handle", "retries", "ignored", "persisted"}
        assert row["retries"] == 0 and row["ignored"] is False
        assert isinstance(row["persisted"], bool)


def test_show_unique_jobs_json_lists_every_unique_key_even_empty_ones(busy, server):
    rows = as_json(run_admin(server, "--show-unique-jobs", "--json"))
    assert sorted(row["unique"] for row in rows) == sorted(busy["uniques"])


def test_version_verbose_and_pid_json(server):
    assert as_json(run_admin(server, "--server-version", "--json"))["version"].startswith(
        "1.1.20")
    assert as_json(run_admin(server, "--server-verbose", "--json")) == {"verbose": "ERROR"}
    assert as_json(run_admin(server, "--getpid", "--json")) == {"pid": server.pid}


def test_create_drop_and_cancel_json_confirm_what_was_done(busy, server):
    assert as_json(run_admin(server, "--create-function", "made", "--json")) == {
        "function": "made", "ok": True}
    assert as_json(run_admin(server, "--drop-function", "made", "--json")) == {
        "function": "made", "ok": True}
    handle = busy["queued"][0].decode()
    assert as_json(run_admin(server, "--cancel-job", handle, "--json")) == {
        "handle": handle, "ok": True}


def test_several_actions_in_json_are_one_object_keyed_by_action(busy, server):
    doc = as_json(run_admin(server, "--status", "--workers", "--getpid", "--json"))
    assert set(doc) == {"status", "workers", "getpid"}
    assert doc["getpid"] == {"pid": server.pid}
    assert any(row["function"] == "queue" for row in doc["status"])


def test_names_with_tabs_and_client_ids_with_spaces_are_parsed_whole(server):
    with Conn(server) as worker:
        worker.send(SET_CLIENT_ID, "a client : with spaces")
        worker.worker("tab\tbed", "sp ace")
        worker.echo()
        rows = as_json(run_admin(server, "--status", "--json"))
        assert {"function": "tab\tbed", "total": 0, "running": 0, "workers": 1,
                "queued": {"high": 0, "normal": 0, "low": 0}} in rows
        workers = as_json(run_admin(server, "--workers", "--json"))
        mine = [row for row in workers if row["client_id"] == "a client : with spaces"]
        assert [row["functions"] for row in mine] == [["sp ace", "tab\tbed"]]


# -- the Python client ------------------------------------------------------------------

def test_admin_client_returns_parsed_rows_and_raises_server_errors(busy, server):
    with AdminClient(server.host, server.port, timeout=5) as admin:
        rows = {row.function: row for row in admin.status()}
        assert (rows["queue"].total, rows["work"].running) == (4, 1)
        assert admin.getpid() == server.pid
        assert {job.handle.encode() for job in admin.show_jobs()} >= set(busy["queued"])
        with pytest.raises(ServerError) as err:
            admin.cancel_job("H:no:such:job")
        assert err.value.code == "UNKNOWN_JOB"
        assert admin.version().startswith("1.1.20")  # still usable after an ERR


# -- failures: message on stderr, exit code, no traceback -------------------------------

def test_refused_connection_exits_3_with_a_message():
    port = free_port()
    message = failed(run_admin(port, "--status"), 3)
    assert f"cannot connect to 127.0.0.1:{port}" in message
    assert "refused" in message


def test_unknown_service_name_exits_3_with_a_message():
    message = failed(run_admin("no-such-gearman-service", "--status"), 3)
    assert "cannot resolve 127.0.0.1:no-such-gearman-service" in message


def test_cancel_of_an_unknown_job_exits_1_and_prints_nothing_like_gearadmin(server):
    message = failed(run_admin(server, "--cancel-job", "H:no:such:job"), 1)
    assert "cancel job H:no:such:job" in message and "UNKNOWN_JOB" in message
    assert run_gearadmin(server, "--cancel-job", "H:no:such:job").stdout == b""


def test_drop_of_a_function_with_a_worker_exits_1_with_the_servers_reason(server):
    with Conn(server) as worker:
        worker.worker("busy")
        worker.echo()
        message = failed(run_admin(server, "--drop-function", "busy"), 1)
        assert "there are still connected workers or executing clients" in message


def test_drop_of_an_unknown_function_exits_1(server):
    assert "function not found" in failed(run_admin(server, "--drop-function", "nope"), 1)


@pytest.mark.difference
def test_drop_of_a_function_with_queued_jobs_is_refused_by_fastgear(server):
    with Conn(server) as client:
        client.submit("pending", b"x", b"", SUBMIT_JOB_BG)
        message = failed(run_admin(server, "--drop-function", "pending"), 1)
        assert "there are still queued jobs" in message


def test_an_error_does_not_stop_the_other_actions(server):
    result = run_admin(server, "--cancel-job", "H:no:such:job", "--getpid")
    assert result.returncode == 1
    assert result.stdout == b"%d\n" % server.pid
    assert b"UNKNOWN_JOB" in result.stderr


class FakeServer:
    """A loopback listener whose behaviour the test scripts: `answers` maps a received
    line to the bytes sent back; an unknown line closes the connection, and so does any
    answer with `hang_up`. With `answers=None` it never accepts, so connects succeed
    (backlog) but nothing is ever read or answered."""

    def __init__(self, answers, hang_up=False):
        self.hang_up = hang_up
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.thread = None
        if answers is not None:
            self.thread = threading.Thread(target=self._serve, args=(answers,), daemon=True)
            self.thread.start()

    def _serve(self, answers):
        self.sock.settimeout(RUN_TIMEOUT)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(RUN_TIMEOUT)
            buf = b""
            while True:
                while b"\r\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                line, buf = buf.split(b"\r\n", 1)
                reply = answers.get(line)
                if reply is None:
                    return
                conn.sendall(reply)
                if self.hang_up:
                    return

    def close(self):
        self.sock.close()
        if self.thread is not None:
            self.thread.join(RUN_TIMEOUT)


@pytest.fixture
def fake_server():
    made = []

    def make(answers, hang_up=False):
        made.append(FakeServer(answers, hang_up))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def test_a_server_that_never_answers_times_out_with_exit_3(fake_server):
    fake = fake_server(None)
    message = failed(run_admin(fake.port, "--status", "--timeout", "0.5"), 3)
    assert "no complete answer to 'status'" in message and "0.5s" in message


def test_a_server_closing_the_connection_mid_listing_exits_3(fake_server):
    fake = fake_server({b"status": b"half\t1\t0\n"}, hang_up=True)  # no `.` terminator
    message = failed(run_admin(fake.port, "--status"), 3)
    assert "closed the connection before answering 'status'" in message


def test_status_json_leaves_queued_null_when_the_server_has_no_prioritystatus(fake_server):
    fake = fake_server({b"status": b"old\t3\t1\t2\n.\n",
                        b"prioritystatus": b"ERR UNKNOWN_COMMAND Unknown+server+command"
                                           b"prioritystatus\r\n"})
    assert as_json(run_admin(fake.port, "--status", "--json")) == [
        {"function": "old", "total": 3, "running": 1, "workers": 2, "queued": None}]


def test_an_unparsable_answer_exits_1_without_a_traceback(fake_server):
    fake = fake_server({b"getpid": b"OK not-a-pid\n"})
    assert "unexpected pid" in failed(run_admin(fake.port, "--getpid", "--json"), 1)


@pytest.mark.parametrize("argv, message", [
    ([], "no action given"),
    (["--graceful", "--status"], "--graceful only goes with --shutdown"),
    (["--status", "--timeout", "0"], "--timeout must be a number of seconds above 0"),
    (["--status", "--timeout", "nan"], "--timeout must be a number of seconds above 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--create-function", "a\r\nshutdown"], "must not contain CR, LF or NUL"),
])
def test_usage_errors_exit_2_with_a_message(argv, message, capsys):
    assert cli.main(["admin", *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_gearadmin_action(capsys):
    assert cli.main(["admin", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--status", "--priority-status", "--workers", "--server-version",
                 "--server-verbose", "--getpid", "--show-jobs", "--show-unique-jobs",
                 "--create-function", "--drop-function", "--cancel-job", "--shutdown",
                 "--json", "--host", "--port", "--timeout"):
        assert flag in text


def test_the_fastgear_script_runs_admin_too(server):
    script = shutil.which("fastgear")
    if script is None:
        missing("the fastgear console script", pip="fastgear (this project)")
    result = subprocess.run([script, "admin", "-h", server.host, "-p", str(server.port),
                             "--getpid"], capture_output=True, timeout=RUN_TIMEOUT,
                            check=False)
    assert ok(result) == b"%d\n" % server.pid


# -- shutdown ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", FASTGEAR_KINDS)
@pytest.mark.parametrize("graceful", [False, True])
def test_shutdown_stops_fastgear(start_server, variant, graceful):
    srv = start_server(variant)
    args = ["--shutdown"] + (["--graceful"] if graceful else [])
    assert ok(run_admin(srv, *args)) == b"OK\n"
    wait_for(lambda: not srv.alive(), timeout=15, what="fastgear to exit")
    assert srv.proc.returncode == 0


def test_shutdown_json_confirms_the_request(start_server):
    srv = start_server("fastgear-t0")
    assert as_json(run_admin(srv, "--shutdown", "--json")) == {"ok": True, "graceful": False}
    wait_for(lambda: not srv.alive(), timeout=15, what="fastgear to exit")


def test_shutdown_of_gearmand_explains_that_it_has_no_such_command(start_server):
    need_gearmand()
    srv = start_server("gearmand")
    message = failed(run_admin(srv, "--shutdown"), 1)
    assert "no shutdown command" in message and "SIGTERM" in message
    assert srv.alive()
