"""Text admin protocol over the wire: exact bytes of every command gearadmin sends.

PROTOCOL.md §4: list outputs and `OK <value>` end in `\\n`, plain `OK` and `ERR` lines in
`\\r\\n`; listings end with `.\\n`. Command words are case-insensitive; tokens are split on
single spaces, at most 5 of them.
"""
import re

import pytest
from conftest import wait_for
from gearproto import (
    ERROR,
    GET_STATUS,
    JOB_ASSIGN,
    NO_JOB,
    STATUS_RES,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW,
    SUBMIT_JOB_LOW_BG,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_FAIL,
    Conn,
    status_table,
    workers_of,
)

QUEUE_FULL = (ERROR, [b"QUEUE_ERROR", b"Job queue is full"])


def registered(server, adm, func, n=1):
    w = Conn(server)
    w.worker(func)
    w.echo()
    wait_for(lambda: workers_of(adm, func) >= n, what="worker registration")
    return w


def raw_line(conn, data):
    """Send raw bytes and read one reply line."""
    conn.send_raw(data)
    return conn.readline()


def invalid_arguments(word):
    return (b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
            + word + b"\r\n")


# -- listings -----------------------------------------------------------------------------

def test_status_lists_total_running_and_workers_per_function(server):
    with Conn(server) as adm, Conn(server) as c, registered(server, adm, b"fs") as w:
        c.submit(b"fs", b"1")
        c.submit(b"fs", b"2", kind=SUBMIT_JOB_BG)
        c.submit(b"idle", b"3", kind=SUBMIT_JOB_LOW_BG)
        assert w.grab()[0] == JOB_ASSIGN
        out = adm.admin("status")
        assert out.endswith(b"\n.\n")
        assert sorted(out.split(b"\n")[:-2]) == [b"fs\t2\t1\t1", b"idle\t1\t0\t0"]


def test_status_keeps_listing_a_function_after_its_jobs_and_workers_are_gone(server):
    with Conn(server) as adm, Conn(server) as c:
        with registered(server, adm, b"fk") as w:
            h = c.submit(b"fk", b"x")
            assert w.grab()[0] == JOB_ASSIGN
            w.send(WORK_COMPLETE, h, b"")
            assert c.recv() == (WORK_COMPLETE, [h, b""])
        wait_for(lambda: adm.admin("status") == b"fk\t0\t0\t0\n.\n", what="zero counters")


def test_status_of_an_empty_server_is_just_the_terminator(server):
    with Conn(server) as adm:
        assert adm.admin("status") == b".\n"
        assert adm.admin("prioritystatus") == b".\n"
        assert adm.admin("show jobs") == b".\n"
        assert adm.admin("show unique jobs") == b".\n"


def test_prioritystatus_counts_queued_jobs_per_priority(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fp", b"1", kind=SUBMIT_JOB_HIGH)
        c.submit(b"fp", b"2")
        c.submit(b"fp", b"3", kind=SUBMIT_JOB_BG)
        c.submit(b"fp", b"4", kind=SUBMIT_JOB_LOW)
        assert adm.admin("prioritystatus") == b"fp\t1\t2\t1\t0\n.\n"


def test_prioritystatus_does_not_count_running_jobs(server):
    with Conn(server) as adm, Conn(server) as c, registered(server, adm, b"fp") as w:
        c.submit(b"fp", b"1", kind=SUBMIT_JOB_HIGH)
        c.submit(b"fp", b"2", kind=SUBMIT_JOB_HIGH)
        assert w.grab()[0] == JOB_ASSIGN
        assert adm.admin("prioritystatus") == b"fp\t1\t0\t0\t1\n.\n"
        assert adm.admin("status") == b"fp\t2\t1\t1\n.\n"


def test_workers_lists_every_connection_with_its_functions(server):
    with Conn(server) as adm, registered(server, adm, b"wf") as w:
        w.worker(b"wg")
        w.echo()
        out = adm.admin("workers")
        assert out.endswith(b"\n.\n")
        lines = out[:-2].split(b"\n")[:-1]
        assert len(lines) == 2  # the worker and the admin connection itself
        for line in lines:
            assert re.fullmatch(rb"\d+ 127\.0\.0\.1 - :( \S+)*", line), line
        assert any(line.endswith(b" - : wg wf") for line in lines), lines  # newest first
        assert any(line.endswith(b" - :") for line in lines), lines


def test_show_jobs_and_show_unique_jobs(server):
    with Conn(server) as adm, Conn(server) as c:
        h1 = c.submit(b"f", b"1", unique=b"u1")
        h2 = c.submit(b"f", b"2", kind=SUBMIT_JOB_BG)
        jobs = adm.admin("show jobs")
        assert jobs.endswith(b"\n.\n")
        assert sorted(jobs.split(b"\n")[:-2]) == sorted(
            [h1 + b"\t0\t0\t0", h2 + b"\t0\t0\t1"])  # background: "persisted" 1
        uniques = adm.admin("show unique jobs")
        assert uniques.endswith(b"\n.\n")
        assert sorted(uniques.split(b"\n")[:-2]) == [b"", b"u1"]


def test_command_words_are_case_insensitive(server):
    with Conn(server) as adm, Conn(server) as c:
        h = c.submit(b"F", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin("STATUS") == b"F\t1\t0\t0\n.\n"
        assert adm.admin("Show Jobs") == h + b"\t0\t0\t1\n.\n"
        assert adm.admin("ShOw UnIqUe JoBs") == b"\n.\n"
        assert re.fullmatch(rb"OK \S+\n", adm.admin("VERSION"))


def test_admin_lines_may_end_in_lf_alone(server):
    with Conn(server) as adm:
        adm.send_raw(b"status\ngetpid\n")
        assert adm.readline() == b".\n"
        assert adm.readline() == b"OK %d\n" % server.pid


def test_many_admin_lines_in_one_write_are_answered_in_order(server):
    with Conn(server) as adm:
        adm.send_raw(b"getpid\r\nbogus\r\nstatus\r\ngetpid\r\n")
        assert adm.readline() == b"OK %d\n" % server.pid
        assert adm.readline() == b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
        assert adm.readline() == b".\n"
        assert adm.readline() == b"OK %d\n" % server.pid


# -- cancel ---------------------------------------------------------------------------------

def test_cancel_job_fails_it_to_its_clients_and_unknown_handles_are_refused(server):
    with Conn(server) as adm, Conn(server) as c, Conn(server) as w:
        h = c.submit(b"fc", b"x")
        assert adm.admin(b"cancel job " + h) == b"OK\r\n"
        assert c.recv() == (WORK_FAIL, [h])
        w.worker(b"fc")
        assert w.grab() == (NO_JOB, [])
        c.send(GET_STATUS, h)
        assert c.recv() == (STATUS_RES, [h, b"0", b"0", b"0", b"0"])
        assert adm.admin("cancel job H:none:999") == b"ERR UNKNOWN_JOB\r\n"


@pytest.mark.parametrize("line, reply", [
    ("cancel job", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    ("cancel", b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n"),
    ("cancel job a b", b"ERR UNKNOWN_ERROR\r\n"),
])
def test_malformed_cancel_lines_are_refused(server, line, reply):
    with Conn(server) as adm:
        assert adm.admin(line) == reply


@pytest.mark.difference
def test_fastgear_cancel_job_removes_it_from_status_at_once(server):
    with Conn(server) as adm, Conn(server) as c:
        h = c.submit(b"fc", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin(b"cancel job " + h) == b"OK\r\n"
        assert status_table(adm)[b"fc"][:2] == (0, 0)
        assert adm.admin("show jobs") == b".\n"
        assert adm.admin(b"cancel job " + h) == b"ERR UNKNOWN_JOB\r\n"


@pytest.mark.gearmand_quirk
def test_gearmand_cancel_job_keeps_counting_it_in_status(server):
    with Conn(server) as adm, Conn(server) as c:
        h = c.submit(b"fc", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin(b"cancel job " + h) == b"OK\r\n"
        assert status_table(adm)[b"fc"][:2] == (1, 0)
        assert adm.admin("show jobs") == h + b"\t0\t1\t0\n.\n"  # ignored, no longer persisted
        assert adm.admin(b"cancel job " + h) == b"OK\r\n"


def cancel_a_running_job(server):
    """Cancel a running job, then let its worker send data and complete it; returns what
    the client received after the WORK_FAIL."""
    with Conn(server) as adm, Conn(server) as c, Conn(server) as w:
        h = c.submit(b"fc", b"x")
        w.worker(b"fc")
        assert w.grab()[0] == JOB_ASSIGN
        assert adm.admin(b"cancel job " + h) == b"OK\r\n"
        assert c.recv() == (WORK_FAIL, [h])
        w.send(WORK_DATA, h, b"d")
        w.send(WORK_COMPLETE, h, b"r")
        w.echo()  # the job was still the worker's: no ERROR
        c.send(GET_STATUS, h)
        got = []
        while True:
            t, args = c.recv()
            if t == STATUS_RES:
                assert args == [h, b"0", b"0", b"0", b"0"]
                return h, got
            got.append((t, args))


@pytest.mark.gearmand_quirk
def test_gearmand_keeps_relaying_a_cancelled_running_job_to_its_client(server):
    h, got = cancel_a_running_job(server)
    assert got == [(WORK_DATA, [h, b"d"]), (WORK_COMPLETE, [h, b"r"])]


@pytest.mark.difference
def test_fastgear_detaches_the_clients_of_a_cancelled_running_job(server):
    _, got = cancel_a_running_job(server)
    assert got == []


# -- create / drop function -------------------------------------------------------------

def test_create_function_then_drop_function(server):
    with Conn(server) as adm:
        assert adm.admin("create function xyz") == b"OK\r\n"
        assert status_table(adm)[b"xyz"] == (0, 0, 0)
        assert adm.admin("drop function xyz") == b"OK\r\n"
        assert b"xyz" not in status_table(adm)
        assert adm.admin("drop function xyz") == b"ERR function not found\r\n"


def test_drop_function_matches_the_name_case_insensitively(server):
    with Conn(server) as adm:
        assert adm.admin("create function DropMe") == b"OK\r\n"
        assert adm.admin("drop function dropme") == b"OK\r\n"
        assert adm.admin("status") == b".\n"


@pytest.mark.parametrize("word", ["create", "drop"])
@pytest.mark.parametrize("rest", ["", " function", " fn x", " function a b"])
def test_malformed_create_and_drop_lines_answer_invalid_arguments(server, word, rest):
    with Conn(server) as adm:
        assert adm.admin(word + rest) == invalid_arguments(word.encode())


@pytest.mark.gearmand_quirk
def test_gearmand_create_function_loses_the_last_byte_of_a_lf_terminated_line(server):
    with Conn(server) as adm:
        assert raw_line(adm, b"create function xyz\n") == b"OK\r\n"
        assert adm.admin("status") == b"xy\t0\t0\t0\n.\n"


@pytest.mark.difference
def test_fastgear_create_function_keeps_the_whole_name_of_a_lf_terminated_line(server):
    with Conn(server) as adm:
        assert raw_line(adm, b"create function xyz\n") == b"OK\r\n"
        assert adm.admin("status") == b"xyz\t0\t0\t0\n.\n"


def test_drop_function_with_a_registered_worker_is_refused(server):
    with Conn(server) as adm, registered(server, adm, b"busy"):
        assert adm.admin("drop function busy") == (
            b"ERR there are still connected workers or executing clients\r\n")


@pytest.mark.gearmand_quirk
def test_gearmand_drops_a_function_with_queued_jobs(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fq", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin("drop function fq") == b"OK\r\n"
        assert b"fq" not in status_table(adm)


@pytest.mark.difference
def test_fastgear_refuses_to_drop_a_function_with_queued_jobs(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fq", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin("drop function fq") == b"ERR there are still queued jobs\r\n"
        assert status_table(adm)[b"fq"][0] == 1


# -- maxqueue -----------------------------------------------------------------------------

def maxqueue(adm, line):
    """Send a maxqueue line; both servers answer OK (gearmand with CRLF, fastgear LF)."""
    reply = adm.admin(line)
    assert reply in (b"OK\r\n", b"OK\n"), reply


def test_maxqueue_refuses_new_jobs_beyond_the_limit_but_still_coalesces(server):
    with Conn(server) as adm, Conn(server) as c:
        h = c.submit(b"fm", b"1", unique=b"k")  # maxqueue ignores unknown functions
        maxqueue(adm, "maxqueue fm 1")
        for kind in (SUBMIT_JOB, SUBMIT_JOB_BG, SUBMIT_JOB_HIGH):
            c.send(kind, b"fm", b"", b"2")
            assert c.recv() == QUEUE_FULL
        assert c.submit(b"fm", b"1", unique=b"k") == h
        assert c.submit(b"other", b"1")


def test_maxqueue_counts_running_jobs_too(server):
    with Conn(server) as adm, Conn(server) as c, Conn(server) as w:
        c.submit(b"fm", b"1", kind=SUBMIT_JOB_BG)
        maxqueue(adm, "maxqueue fm 2")
        w.worker(b"fm")
        assert w.grab()[0] == JOB_ASSIGN
        c.submit(b"fm", b"2", kind=SUBMIT_JOB_BG)
        c.send(SUBMIT_JOB_BG, b"fm", b"", b"3")
        assert c.recv() == QUEUE_FULL


def test_maxqueue_per_priority_limits(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fm", b"1", kind=SUBMIT_JOB_BG)
        maxqueue(adm, "maxqueue fm 3 2 1")  # high 3, normal 2, low 1
        c.send(SUBMIT_JOB_LOW_BG, b"fm", b"", b"x")
        assert c.recv() == QUEUE_FULL
        c.submit(b"fm", b"2", kind=SUBMIT_JOB_BG)
        c.send(SUBMIT_JOB_BG, b"fm", b"", b"x")
        assert c.recv() == QUEUE_FULL
        c.submit(b"fm", b"3", kind=SUBMIT_JOB_HIGH_BG)
        c.send(SUBMIT_JOB_HIGH_BG, b"fm", b"", b"x")
        assert c.recv() == QUEUE_FULL


def test_maxqueue_with_two_limits_leaves_low_unlimited(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fm", b"1", kind=SUBMIT_JOB_BG)
        maxqueue(adm, "maxqueue fm 1 1")
        c.send(SUBMIT_JOB_HIGH_BG, b"fm", b"", b"x")
        assert c.recv() == QUEUE_FULL
        c.submit(b"fm", b"2", kind=SUBMIT_JOB_LOW_BG)
        c.submit(b"fm", b"3", kind=SUBMIT_JOB_LOW_BG)


def test_maxqueue_without_a_limit_resets_to_unlimited(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fm", b"1", kind=SUBMIT_JOB_BG)
        maxqueue(adm, "maxqueue fm 1")
        c.send(SUBMIT_JOB_BG, b"fm", b"", b"x")
        assert c.recv() == QUEUE_FULL
        maxqueue(adm, "maxqueue fm")
        c.submit(b"fm", b"2", kind=SUBMIT_JOB_BG)


def test_maxqueue_of_an_unknown_function_does_not_create_it(server):
    with Conn(server) as adm:
        maxqueue(adm, "maxqueue nosuch 3")
        assert adm.admin("status") == b".\n"


def test_maxqueue_without_a_function_answers_invalid_arguments(server):
    with Conn(server) as adm:
        assert adm.admin("maxqueue") == invalid_arguments(b"maxqueue")


@pytest.mark.gearmand_quirk
def test_gearmand_answers_maxqueue_with_ok_crlf(server):
    with Conn(server) as adm:
        assert adm.admin("maxqueue fm 3") == b"OK\r\n"


@pytest.mark.difference
def test_fastgear_answers_maxqueue_with_ok_lf(server):
    with Conn(server) as adm:
        assert adm.admin("maxqueue fm 3") == b"OK\n"


# -- getpid / version / verbose -----------------------------------------------------------

def test_getpid_answers_the_server_pid(server):
    with Conn(server) as adm:
        assert adm.admin("getpid") == b"OK %d\n" % server.pid


def test_version_answers_ok_and_a_version(server):
    with Conn(server) as adm:
        reply = adm.admin("version")
        assert re.fullmatch(rb"OK \S+\n", reply)
        if server.kind == "gearmand":
            assert reply.startswith(b"OK 1.1.20")


@pytest.mark.difference
def test_fastgear_version_names_fastgear(server):
    import fastgear
    with Conn(server) as adm:
        assert adm.admin("version") == b"OK 1.1.20+fastgear.%s\n" % fastgear.__version__.encode()


def test_verbose_answers_the_default_log_level(server):
    with Conn(server) as adm:
        assert adm.admin("verbose") == b"OK ERROR\n"


def test_verbose_answers_the_configured_log_level(kind, start_server):
    srv = start_server(kind, "--verbose", "INFO")
    with Conn(srv) as adm:
        assert adm.admin("verbose") == b"OK INFO\n"


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("line, reply", [
    ("bogus", b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"),
    ("bogus with args", b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"),
    ("", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    (" status", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
    ("show", b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"),
    ("show x", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
    ("show unique", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
])
def test_unknown_admin_commands_are_refused_and_the_connection_stays_open(server, line, reply):
    with Conn(server) as adm:
        assert adm.admin(line) == reply
        assert adm.admin("status") == b".\n"


def test_extra_words_after_a_listing_command_are_ignored(server):
    with Conn(server) as adm:
        assert adm.admin("status extra") == b".\n"


@pytest.mark.gearmand_quirk
def test_gearmand_has_no_shutdown_command(server):
    with Conn(server) as adm:
        assert adm.admin("shutdown") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
        assert server.alive()


def test_a_line_of_six_words_closes_the_connection_without_a_reply(server):
    with Conn(server) as adm, Conn(server) as other:
        assert adm.admin("a b c d e") == b"ERR UNKNOWN_COMMAND Unknown+server+commanda\r\n"
        adm.send_raw(b"status a b c d e\r\n")
        assert adm.closed()
        assert adm.discarded == b""
        assert other.admin("status") == b".\n"


def test_a_text_line_may_be_8192_bytes_with_its_newline(server):
    with Conn(server) as adm:
        word = b"x" * 8191
        reply = raw_line(adm, word + b"\n")
        assert reply == b"ERR UNKNOWN_COMMAND Unknown+server+command%s\r\n" % word


def test_a_longer_text_line_closes_the_connection(server):
    with Conn(server) as adm, Conn(server) as other:
        adm.send_raw(b"x" * 8192 + b"\n")
        assert adm.closed()
        assert other.admin("status") == b".\n"


@pytest.mark.gearmand_quirk
def test_gearmand_closes_silently_on_a_text_line_longer_than_8192_bytes(server):
    with Conn(server) as adm:
        adm.send_raw(b"getpid\r\n" + b"x" * 9000)
        assert adm.closed()
        assert adm.discarded == b""  # even the earlier reply is dropped


@pytest.mark.difference
def test_fastgear_answers_line_too_long_then_closes(server):
    with Conn(server) as adm:
        adm.send_raw(b"getpid\r\n" + b"x" * 9000)
        assert adm.readline() == b"OK %d\n" % server.pid
        assert adm.readline() == b"ERR LINE_TOO_LONG Text+line+longer+than+8192+bytes\r\n"
        assert adm.closed()
        assert adm.discarded == b""
