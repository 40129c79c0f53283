"""Text admin protocol over the wire: exact bytes of every command gearadmin sends."""
import re

import pytest
from conftest import wait_for
from gearproto import (
    ERROR,
    GRAB_JOB,
    JOB_ASSIGN,
    NO_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH,
    SUBMIT_JOB_LOW,
    WORK_FAIL,
    Conn,
    status_table,
    workers_of,
)


def registered(server, adm, func, n=1):
    w = Conn(server)
    w.can_do(func)
    wait_for(lambda: workers_of(adm, func) >= n, what="worker registration")
    return w


def test_status_lists_total_running_and_workers_per_function(server):
    with Conn(server) as adm, Conn(server) as c, registered(server, adm, b"fs") as w:
        c.submit(b"fs", b"1")
        c.submit(b"fs", b"2", kind=SUBMIT_JOB_BG)
        w.send(GRAB_JOB)
        assert w.recv()[0] == JOB_ASSIGN
        out = adm.admin("status")
        assert out.endswith(b".\n")
        assert b"fs\t2\t1\t1\n" in out.split(b"\n.\n")[0] + b"\n"


def test_prioritystatus_counts_queued_jobs_per_priority(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fp", b"1", kind=SUBMIT_JOB_HIGH)
        c.submit(b"fp", b"2")
        c.submit(b"fp", b"3", kind=SUBMIT_JOB_BG)
        c.submit(b"fp", b"4", kind=SUBMIT_JOB_LOW)
        assert adm.admin("prioritystatus") == b"fp\t1\t2\t1\t0\n.\n"


def test_workers_lists_every_connection_with_its_functions(server):
    with Conn(server) as adm, registered(server, adm, b"wf") as w:
        w.can_do(b"wg")
        wait_for(lambda: workers_of(adm, b"wg") == 1, what="second registration")
        out = adm.admin("workers")
        assert out.endswith(b".\n")
        lines = out[:-2].split(b"\n")[:-1]
        assert len(lines) == 2  # the worker and the admin connection itself
        for line in lines:
            assert re.fullmatch(rb"\d+ 127\.0\.0\.1 - :( \S+)*", line), line
        assert any(line.endswith(b" - : wg wf") for line in lines), lines
        assert any(line.endswith(b" - :") for line in lines), lines


def test_show_jobs_and_show_unique_jobs(server):
    with Conn(server) as adm, Conn(server) as c:
        h1 = c.submit(b"f", b"1", unique=b"u1")
        h2 = c.submit(b"f", b"2", kind=SUBMIT_JOB_BG)
        jobs = adm.admin("show jobs")
        assert jobs.endswith(b".\n")
        assert sorted(jobs.split(b"\n")[:-2]) == sorted(
            [h1 + b"\t0\t0\t0", h2 + b"\t0\t0\t1"])  # background: "persisted" 1
        uniques = adm.admin("show unique jobs")
        assert sorted(uniques.split(b"\n")[:-2]) == [b"", b"u1"]


def test_cancel_job_fails_it_to_its_clients_and_unknown_handles_are_refused(server):
    with Conn(server) as adm, Conn(server) as c, Conn(server) as w:
        h = c.submit(b"fc", b"x")
        assert adm.admin(b"cancel job " + h) == b"OK\r\n"
        assert c.recv() == (WORK_FAIL, [h])
        w.can_do(b"fc")
        w.send(GRAB_JOB)
        assert w.recv() == (NO_JOB, [])
        assert adm.admin("cancel job H:none:999") == b"ERR UNKNOWN_JOB\r\n"


@pytest.mark.difference
def test_fastgear_cancel_job_removes_it_from_status_at_once(server):
    with Conn(server) as adm, Conn(server) as c:
        h = c.submit(b"fc", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin(b"cancel job " + h) == b"OK\r\n"
        assert status_table(adm)[b"fc"][:2] == (0, 0)
        assert adm.admin("show jobs") == b".\n"


@pytest.mark.gearmand_quirk
def test_gearmand_cancel_job_keeps_counting_it_in_status(server):
    with Conn(server) as adm, Conn(server) as c:
        h = c.submit(b"fc", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin(b"cancel job " + h) == b"OK\r\n"
        assert status_table(adm)[b"fc"][:2] == (1, 0)


def test_create_function_then_drop_function(server):
    with Conn(server) as adm:
        assert adm.admin("create function xyz") == b"OK\r\n"
        assert status_table(adm)[b"xyz"] == (0, 0, 0)
        assert adm.admin("drop function xyz") == b"OK\r\n"
        assert b"xyz" not in status_table(adm)
        assert adm.admin("drop function xyz") == b"ERR function not found\r\n"


def test_drop_function_with_a_registered_worker_is_refused(server):
    with Conn(server) as adm, registered(server, adm, b"busy"):
        assert adm.admin("drop function busy") == (
            b"ERR there are still connected workers or executing clients\r\n")


@pytest.mark.gearmand_quirk
def test_gearmand_drops_a_function_with_queued_jobs(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fq", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin("drop function fq") == b"OK\r\n"


@pytest.mark.difference
def test_fastgear_refuses_to_drop_a_function_with_queued_jobs(server):
    with Conn(server) as adm, Conn(server) as c:
        c.submit(b"fq", b"x", kind=SUBMIT_JOB_BG)
        assert adm.admin("drop function fq") == b"ERR there are still queued jobs\r\n"
        assert status_table(adm)[b"fq"][0] == 1


def test_maxqueue_refuses_new_jobs_beyond_the_limit_but_still_coalesces(server):
    with Conn(server) as adm, Conn(server) as c:
        h = c.submit(b"fm", b"1", unique=b"k")  # maxqueue ignores unknown functions
        assert adm.admin("maxqueue fm 1") in (b"OK\r\n", b"OK\n")
        c.send(SUBMIT_JOB_BG, b"fm", b"", b"2")
        assert c.recv() == (ERROR, [b"QUEUE_ERROR", b"Job queue is full"])
        assert c.submit(b"fm", b"1", unique=b"k") == h
        assert c.submit(b"other", b"1")


@pytest.mark.gearmand_quirk
def test_gearmand_answers_maxqueue_with_ok_crlf(server):
    with Conn(server) as adm:
        assert adm.admin("maxqueue fm 3") == b"OK\r\n"


@pytest.mark.difference
def test_fastgear_answers_maxqueue_with_ok_lf(server):
    with Conn(server) as adm:
        assert adm.admin("maxqueue fm 3") == b"OK\n"


def test_getpid_answers_the_server_pid(server):
    with Conn(server) as adm:
        assert adm.admin("getpid") == b"OK %d\n" % server.pid


def test_version_answers_ok_and_a_1_1_20_version(server):
    with Conn(server) as adm:
        assert re.fullmatch(rb"OK 1\.1\.20\S*\n", adm.admin("version"))


@pytest.mark.difference
def test_fastgear_version_names_fastgear(server):
    import fastgear
    with Conn(server) as adm:
        ver = getattr(fastgear, "__version__", None)
        reply = adm.admin("version")
        assert reply.startswith(b"OK 1.1.20+fastgear.")
        if ver:
            assert reply == b"OK 1.1.20+fastgear.%s\n" % ver.encode()


def test_verbose_answers_the_log_level(kind, start_server):
    srv = start_server(kind, "--verbose", "INFO")
    with Conn(srv) as adm:
        assert adm.admin("verbose") == b"OK INFO\n"


def test_unknown_admin_command_answers_unknown_command(server):
    with Conn(server) as adm:
        assert adm.admin("bogus") == b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
        assert adm.admin("status") == b".\n"
