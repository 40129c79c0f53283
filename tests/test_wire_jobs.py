"""Wire-level job tests: submission, assignment, relaying, status, coalescing.

Every test runs against fastgear and gearmand 1.1.20 through raw sockets (tests/gearproto.py).
"""
import time

import pytest
from conftest import wait_for
from gearproto import (
    ECHO_REQ,
    ECHO_RES,
    ERROR,
    GET_STATUS,
    GET_STATUS_UNIQUE,
    GRAB_JOB,
    GRAB_JOB_ALL,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN,
    JOB_ASSIGN_ALL,
    JOB_ASSIGN_UNIQ,
    JOB_CREATED,
    NO_JOB,
    OPTION_REQ,
    OPTION_RES,
    STATUS_RES,
    STATUS_RES_UNIQUE,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_EPOCH,
    SUBMIT_JOB_HIGH,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW,
    SUBMIT_JOB_LOW_BG,
    SUBMIT_JOB_SCHED,
    SUBMIT_REDUCE_JOB,
    SUBMIT_REDUCE_JOB_BACKGROUND,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_EXCEPTION,
    WORK_FAIL,
    WORK_STATUS,
    WORK_WARNING,
    Conn,
    packet,
)

ALL_SUBMITS = [SUBMIT_JOB, SUBMIT_JOB_BG, SUBMIT_JOB_HIGH, SUBMIT_JOB_HIGH_BG,
               SUBMIT_JOB_LOW, SUBMIT_JOB_LOW_BG]


def grab(worker, kind=GRAB_JOB):
    worker.send(kind)
    return worker.recv()


def assigned(worker):
    """GRAB_JOB and assert a JOB_ASSIGN: returns [handle, func, data]."""
    t, args = grab(worker)
    assert t == JOB_ASSIGN, (t, args)
    return args


def test_echo_returns_the_identical_bytes(server):
    with Conn(server) as c:
        payload = b"hello\0world\xff" * 3
        c.send(ECHO_REQ, payload)
        assert c.recv() == (ECHO_RES, [payload])
        c.send(ECHO_REQ, b"")
        assert c.recv() == (ECHO_RES, [b""])


def test_binary_and_text_mixed_on_one_connection_are_answered_in_order(server):
    with Conn(server) as c:
        c.send_raw(packet(ECHO_REQ, b"one") + b"version\r\n" + packet(ECHO_REQ, b"two"))
        assert c.recv() == (ECHO_RES, [b"one"])
        assert c.readline().startswith(b"OK 1.1.20")
        assert c.recv() == (ECHO_RES, [b"two"])


@pytest.mark.parametrize("submit", ALL_SUBMITS)
def test_every_priority_foreground_and_background_answers_job_created(server, submit):
    with Conn(server) as c:
        h = c.submit(b"f", b"data", kind=submit)
        assert h and b"\0" not in h
        h2 = c.submit(b"f", b"data", kind=submit)
        assert h2 != h


def test_grab_job_answers_job_assign_with_handle_function_and_data(server):
    with Conn(server) as c, Conn(server) as w:
        h = c.submit(b"f", b"pay\0load", unique=b"u1")
        w.can_do(b"f")
        assert grab(w) == (JOB_ASSIGN, [h, b"f", b"pay\0load"])


def test_grab_job_uniq_answers_job_assign_uniq_with_the_unique(server):
    with Conn(server) as c, Conn(server) as w:
        h = c.submit(b"f", b"data", unique=b"u1")
        w.can_do(b"f")
        assert grab(w, GRAB_JOB_UNIQ) == (JOB_ASSIGN_UNIQ, [h, b"f", b"u1", b"data"])


def test_grab_job_all_gives_job_assign_uniq_for_a_plain_job(server):
    with Conn(server) as c, Conn(server) as w:
        h = c.submit(b"f", b"data", unique=b"u1")
        w.can_do(b"f")
        assert grab(w, GRAB_JOB_ALL) == (JOB_ASSIGN_UNIQ, [h, b"f", b"u1", b"data"])


@pytest.mark.parametrize("submit", [SUBMIT_REDUCE_JOB, SUBMIT_REDUCE_JOB_BACKGROUND])
def test_grab_job_all_gives_job_assign_all_with_the_reducer_for_a_reduce_job(server, submit):
    with Conn(server) as c, Conn(server) as w:
        c.send(submit, b"f", b"u1", b"red", b"", b"data")
        h = c.expect(JOB_CREATED)[0]
        w.can_do(b"f")
        assert grab(w, GRAB_JOB_ALL) == (JOB_ASSIGN_ALL, [h, b"f", b"u1", b"red", b"data"])


@pytest.mark.parametrize("grab_kind", [GRAB_JOB, GRAB_JOB_UNIQ, GRAB_JOB_ALL])
def test_grab_with_nothing_runnable_answers_no_job(server, grab_kind):
    with Conn(server) as c, Conn(server) as w:
        assert grab(w, grab_kind) == (NO_JOB, [])  # no CAN_DO at all
        c.submit(b"other", b"x")
        w.can_do(b"f")
        assert grab(w, grab_kind) == (NO_JOB, [])


def test_jobs_of_one_function_are_handed_out_high_then_normal_then_low_fifo_within(server):
    with Conn(server) as c, Conn(server) as w:
        order = [(SUBMIT_JOB_LOW, b"low1"), (SUBMIT_JOB, b"norm1"), (SUBMIT_JOB_HIGH, b"high1"),
                 (SUBMIT_JOB_LOW_BG, b"low2"), (SUBMIT_JOB_BG, b"norm2"),
                 (SUBMIT_JOB_HIGH_BG, b"high2")]
        for kind, data in order:
            c.submit(b"f", data, kind=kind)
        w.can_do(b"f")
        got = [assigned(w)[2] for _ in order]
        assert got == [b"high1", b"high2", b"norm1", b"norm2", b"low1", b"low2"]
        assert grab(w) == (NO_JOB, [])


def test_work_packets_are_relayed_to_every_coalesced_foreground_client(server):
    with Conn(server) as c1, Conn(server) as c2, Conn(server) as w:
        h = c1.submit(b"f", b"x", unique=b"same")
        assert c2.submit(b"f", b"ignored", unique=b"same") == h
        w.can_do(b"f")
        assert assigned(w) == [h, b"f", b"x"]
        w.send(WORK_DATA, h, b"d\0ata")
        w.send(WORK_WARNING, h, b"warn")
        w.send(WORK_STATUS, h, b"3", b"10")
        w.send(WORK_COMPLETE, h, b"res\0ult")
        for c in (c1, c2):
            assert c.recv() == (WORK_DATA, [h, b"d\0ata"])
            assert c.recv() == (WORK_WARNING, [h, b"warn"])
            assert c.recv() == (WORK_STATUS, [h, b"3", b"10"])
            assert c.recv() == (WORK_COMPLETE, [h, b"res\0ult"])
        w.expect_nothing(0.1)


def test_work_fail_is_relayed_to_every_coalesced_foreground_client(server):
    with Conn(server) as c1, Conn(server) as c2, Conn(server) as w:
        h = c1.submit(b"f", b"x", unique=b"same")
        assert c2.submit(b"f", b"x", unique=b"same") == h
        w.can_do(b"f")
        assigned(w)
        w.send(WORK_FAIL, h)
        assert c1.recv() == (WORK_FAIL, [h])
        assert c2.recv() == (WORK_FAIL, [h])


def test_work_complete_with_empty_data_is_relayed_as_handle_and_empty_data(server):
    with Conn(server) as c, Conn(server) as w:
        h = c.submit(b"f", b"x")
        w.can_do(b"f")
        assigned(w)
        w.send(WORK_COMPLETE, h, b"")
        assert c.recv() == (WORK_COMPLETE, [h, b""])


def test_background_job_relays_nothing_to_its_submitter(server):
    with Conn(server) as c, Conn(server) as w:
        h = c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        w.can_do(b"f")
        assigned(w)
        for ptype, args in [(WORK_DATA, (h, b"d")), (WORK_STATUS, (h, b"1", b"2")),
                            (WORK_COMPLETE, (h, b"r"))]:
            w.send(ptype, *args)
        w.echo()
        c.expect_nothing()


def test_work_exception_reaches_a_client_that_enabled_the_exceptions_option(server):
    with Conn(server) as c, Conn(server) as w:
        c.send(OPTION_REQ, b"exceptions")
        assert c.recv() == (OPTION_RES, [b"exceptions"])
        h = c.submit(b"f", b"x")
        w.can_do(b"f")
        assigned(w)
        w.send(WORK_EXCEPTION, h, b"boom\0!")
        assert c.recv() == (WORK_EXCEPTION, [h, b"boom\0!"])
        c.send(GET_STATUS, h)
        assert c.recv() == (STATUS_RES, [h, b"0", b"0", b"0", b"0"])


def exception_without_option(server):
    with Conn(server) as c, Conn(server) as w:
        h = c.submit(b"f", b"x")
        w.can_do(b"f")
        assigned(w)
        w.send(WORK_EXCEPTION, h, b"boom")
        return h, c.recv()


@pytest.mark.gearmand_quirk
def test_gearmand_converts_work_exception_to_work_fail_with_a_trailing_nul(server):
    h, reply = exception_without_option(server)
    assert reply == (WORK_FAIL, [h + b"\0"])


@pytest.mark.difference
def test_fastgear_converts_work_exception_to_a_plain_work_fail(server):
    h, reply = exception_without_option(server)
    assert reply == (WORK_FAIL, [h])


def test_option_req_exceptions_is_case_insensitive_and_echoed_as_sent(server):
    with Conn(server) as c:
        c.send(OPTION_REQ, b"ExCePtIoNs")
        assert c.recv() == (OPTION_RES, [b"ExCePtIoNs"])


def test_option_req_unknown_answers_unknown_option(server):
    with Conn(server) as c:
        c.send(OPTION_REQ, b"bogus")
        assert c.recv() == (ERROR, [b"UNKNOWN_OPTION", b"Server does not recognize given option"])
        c.echo()


def test_get_status_reports_queued_running_progress_and_unknown_exactly(server):
    with Conn(server) as c, Conn(server) as w:
        h = c.submit(b"f", b"x")
        c.send(GET_STATUS, h)
        assert c.recv() == (STATUS_RES, [h, b"1", b"0", b"0", b"0"])
        w.can_do(b"f")
        assigned(w)
        c.send(GET_STATUS, h)
        assert c.recv() == (STATUS_RES, [h, b"1", b"1", b"0", b"0"])
        w.send(WORK_STATUS, h, b"3", b"10")
        assert c.recv() == (WORK_STATUS, [h, b"3", b"10"])
        c.send(GET_STATUS, h)
        assert c.recv() == (STATUS_RES, [h, b"1", b"1", b"3", b"10"])
        w.send(WORK_COMPLETE, h, b"")
        assert c.recv() == (WORK_COMPLETE, [h, b""])
        c.send(GET_STATUS, h)
        assert c.recv() == (STATUS_RES, [h, b"0", b"0", b"0", b"0"])
        c.send(GET_STATUS, b"no-such-handle")
        assert c.recv() == (STATUS_RES, [b"no-such-handle", b"0", b"0", b"0", b"0"])


def test_get_status_unique_reports_known_running_progress_and_clients(server):
    with Conn(server) as c, Conn(server) as c2, Conn(server) as w:
        h = c.submit(b"f", b"x", unique=b"u1")
        c.send(GET_STATUS_UNIQUE, b"u1")
        assert c.recv() == (STATUS_RES_UNIQUE, [b"u1", b"1", b"0", b"0", b"0", b"1"])
        assert c2.submit(b"f", b"x", unique=b"u1") == h
        assert c2.submit(b"f", b"x", unique=b"u1", kind=SUBMIT_JOB_BG) == h
        c.send(GET_STATUS_UNIQUE, b"u1")
        assert c.recv() == (STATUS_RES_UNIQUE, [b"u1", b"1", b"0", b"0", b"0", b"2"])
        w.can_do(b"f")
        assigned(w)
        w.send(WORK_STATUS, h, b"3", b"10")
        assert c.recv() == (WORK_STATUS, [h, b"3", b"10"])
        c.send(GET_STATUS_UNIQUE, b"u1")
        assert c.recv() == (STATUS_RES_UNIQUE, [b"u1", b"1", b"1", b"3", b"10", b"2"])
        c.send(GET_STATUS_UNIQUE, b"nope")
        assert c.recv() == (STATUS_RES_UNIQUE, [b"nope", b"0", b"0", b"0", b"0", b"0"])


def test_empty_unique_never_coalesces(server):
    with Conn(server) as c:
        assert c.submit(b"f", b"x") != c.submit(b"f", b"x")


def test_unique_dash_coalesces_by_payload(server):
    with Conn(server) as c:
        a = c.submit(b"f", b"same", unique=b"-")
        assert c.submit(b"f", b"same", unique=b"-", kind=SUBMIT_JOB_HIGH) == a
        assert c.submit(b"f", b"other", unique=b"-") != a
        assert c.submit(b"g", b"same", unique=b"-") != a


def test_coalescing_is_scoped_by_function(server):
    with Conn(server) as c:
        a = c.submit(b"f1", b"x", unique=b"same")
        assert c.submit(b"f1", b"y", unique=b"same", kind=SUBMIT_JOB_BG) == a
        assert c.submit(b"f2", b"x", unique=b"same") != a


def test_a_running_job_coalesces_and_the_late_client_gets_the_result(server):
    with Conn(server) as c1, Conn(server) as c2, Conn(server) as w:
        h = c1.submit(b"f", b"x", unique=b"run")
        w.can_do(b"f")
        assigned(w)
        w.send(WORK_DATA, h, b"early")
        assert c1.recv() == (WORK_DATA, [h, b"early"])
        assert c2.submit(b"f", b"x", unique=b"run") == h
        w.send(WORK_COMPLETE, h, b"done")
        assert c1.recv() == (WORK_COMPLETE, [h, b"done"])
        assert c2.recv() == (WORK_COMPLETE, [h, b"done"])  # only what came after joining


def test_unique_longer_than_64_bytes_is_refused(server):
    with Conn(server) as c:
        assert c.submit(b"f", b"x", unique=b"u" * 64)
        c.send(SUBMIT_JOB, b"f", b"u" * 65, b"x")
        assert c.recv() == (ERROR, [b"ARGUMENT_TOO_LARGE", b"Unique value too large"])
        c.echo()


def test_a_10_mib_payload_round_trips(server):
    big_in = bytes(range(256)) * (10 * 4096)
    big_out = big_in[::-1]
    with Conn(server) as c, Conn(server) as w:
        h = c.submit(b"big", big_in)
        w.can_do(b"big")
        w.send(GRAB_JOB)
        assert w.recv(timeout=20) == (JOB_ASSIGN, [h, b"big", big_in])
        w.send(WORK_COMPLETE, h, big_out)
        assert c.recv(timeout=20) == (WORK_COMPLETE, [h, big_out])


def test_job_handle_prefix_option_sets_the_handle_prefix(kind, start_server):
    srv = start_server(kind, "--job-handle-prefix", "PFX")
    with Conn(srv) as c:
        assert c.submit(b"f", b"x") == b"PFX:1"
        assert c.submit(b"f", b"x") == b"PFX:2"


def test_epoch_job_is_not_handed_out_before_its_time_and_is_after(server):
    with Conn(server) as c, Conn(server) as w:
        when = int(time.time()) + 2
        c.send(SUBMIT_JOB_EPOCH, b"f", b"ep", str(when), b"later")
        h = c.expect(JOB_CREATED)[0]
        w.can_do(b"f")
        assert grab(w) == (NO_JOB, [])

        def try_grab():
            t, args = grab(w)
            return args if t == JOB_ASSIGN else None

        assert wait_for(try_grab, timeout=6, what="epoch job") == [h, b"f", b"later"]
        assert time.time() >= when - 0.05
        c.expect_nothing(0.1)  # background: nothing relayed


@pytest.mark.gearmand_quirk
def test_gearmand_refuses_submit_job_sched(server):
    with Conn(server) as c:
        c.send(SUBMIT_JOB_SCHED, b"f", b"u", b"", b"", b"", b"", b"", b"data")
        assert c.recv() == (ERROR, [b"INVALID_COMMAND", b"Command not expected"])
        c.echo()


@pytest.mark.difference
def test_fastgear_accepts_submit_job_sched(server):
    with Conn(server) as c, Conn(server) as w:
        c.send(SUBMIT_JOB_SCHED, b"f", b"u", b"", b"", b"", b"", b"", b"data")
        h = c.expect(JOB_CREATED)[0]
        w.can_do(b"f")
        # an all-"any" schedule is due within the current minute

        def try_grab():
            t, args = grab(w)
            return args if t == JOB_ASSIGN else None

        assert wait_for(try_grab, timeout=3, what="sched job") == [h, b"f", b"data"]
