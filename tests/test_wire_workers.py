"""Wire-level worker tests: sleep/wake-up, requeues, retries, round robin, registrations.

PROTOCOL.md §3.5-§3.10. gearmand runs every command on one "proc" thread but reads
connections on several, so a test that needs one connection's packet to be applied
before another's waits for it (an ECHO round trip, `status`, or GET_STATUS polling).
"""
import select
import time

import pytest
from conftest import wait_for
from gearproto import (
    CAN_DO,
    CAN_DO_TIMEOUT,
    CANT_DO,
    ERROR,
    GET_STATUS,
    GET_STATUS_UNIQUE,
    JOB_ASSIGN,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    RESET_ABILITIES,
    SET_CLIENT_ID,
    STATUS_RES,
    STATUS_RES_UNIQUE,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_EPOCH,
    SUBMIT_JOB_HIGH,
    SUBMIT_JOB_LOW,
    WORK_COMPLETE,
    WORK_FAIL,
    WORK_STATUS,
    Conn,
    status_table,
    workers_of,
)


def grab_until_assigned(worker, timeout=5):
    def attempt():
        t, args = worker.grab()
        return args if t == JOB_ASSIGN else None
    return wait_for(attempt, timeout=timeout, what="a JOB_ASSIGN")


def sleeping_worker(server, adm, func, expected_workers):
    """A worker registered for `func` that has sent PRE_SLEEP; waits until `status` shows it."""
    w = Conn(server)
    w.worker(func)
    w.send(PRE_SLEEP)
    w.echo()
    wait_for(lambda: workers_of(adm, func) >= expected_workers, timeout=5,
             what="worker registration")
    return w


def has_data(conn):
    return bool(conn.buf) or bool(select.select([conn.sock], [], [], 0)[0])


def job_status(conn, handle):
    conn.send(GET_STATUS, handle)
    return conn.expect(STATUS_RES)[1:]


# -- sleep and wake-up --------------------------------------------------------------------

def test_pre_sleep_then_new_job_wakes_the_worker_with_noop(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        w.expect_nothing(0.1)
        h = c.submit(b"f", b"x")
        assert w.recv() == (NOOP, [])
        assert w.grab() == (JOB_ASSIGN, [h, b"f", b"x"])


def test_pre_sleep_with_a_job_already_queued_answers_noop_at_once(server):
    with Conn(server) as c, Conn(server) as w:
        c.submit(b"f", b"x")
        w.worker(b"f")
        w.send(PRE_SLEEP)
        assert w.recv() == (NOOP, [])


def test_pre_sleep_answers_noop_for_a_job_of_any_registered_function(server):
    with Conn(server) as c, Conn(server) as w:
        c.submit(b"f2", b"x")
        w.worker(b"f1", b"f2", b"f3")
        w.send(PRE_SLEEP)
        assert w.recv() == (NOOP, [])


def test_a_sleeper_is_not_woken_by_a_job_of_another_function(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        c.submit(b"g", b"x", kind=SUBMIT_JOB_BG)
        w.expect_nothing(0.2)


def test_a_woken_worker_gets_no_second_noop_before_it_grabs(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])
        c.submit(b"f", b"y", kind=SUBMIT_JOB_BG)
        c.submit(b"f", b"z", kind=SUBMIT_JOB_BG)
        w.expect_nothing(0.3)
        assert w.grab()[0] == JOB_ASSIGN


def test_a_woken_worker_that_sleeps_again_with_work_queued_gets_noop_at_once(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])
        w.send(PRE_SLEEP)  # no GRAB in between: PRE_SLEEP still checks the queue
        assert w.recv() == (NOOP, [])
        w.send(PRE_SLEEP)
        assert w.recv() == (NOOP, [])
        assert w.grab()[0] == JOB_ASSIGN


def test_a_noop_is_sent_again_after_the_worker_grabbed(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])
        assert w.grab()[0] == JOB_ASSIGN
        assert w.grab() == (NO_JOB, [])
        w.send(PRE_SLEEP)
        w.echo()
        w.expect_nothing(0.1)
        c.submit(b"f", b"y", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])


def test_a_worker_that_never_sent_pre_sleep_gets_no_noop(server):
    with Conn(server) as adm, Conn(server) as c, Conn(server) as w:
        w.worker(b"f")
        w.echo()
        wait_for(lambda: workers_of(adm, b"f") == 1, what="registration")
        c.submit(b"f", b"x")
        w.expect_nothing(0.3)
        assert w.grab()[0] == JOB_ASSIGN


def test_worker_wakeup_one_wakes_one_sleeper_per_job(kind, start_server):
    srv = start_server(kind, "-w", "1")
    with Conn(srv) as adm, Conn(srv) as c:
        ws = [sleeping_worker(srv, adm, b"f", n + 1) for n in range(3)]
        sleepers = list(ws)
        try:
            for n in range(3):
                h = c.submit(b"f", b"job%d" % n, kind=SUBMIT_JOB_BG)
                woken = wait_for(lambda: [w for w in sleepers if has_data(w)],
                                 timeout=3, what="a NOOP")
                assert len(woken) == 1, f"job {n} woke {len(woken)} sleepers"
                assert woken[0].recv() == (NOOP, [])
                assert woken[0].grab() == (JOB_ASSIGN, [h, b"f", b"job%d" % n])
                sleepers.remove(woken[0])
                for w in sleepers:
                    w.expect_nothing(0.05)
            c.submit(b"f", b"job3", kind=SUBMIT_JOB_BG)  # nobody is asleep any more
            c.echo()
            for w in ws:
                w.expect_nothing(0.1)
        finally:
            for w in ws:
                w.close()


@pytest.mark.gearmand_quirk
def test_gearmand_wakes_every_sleeper_for_one_job_by_default(server):
    with Conn(server) as adm, Conn(server) as c:
        ws = [sleeping_worker(server, adm, b"f", n + 1) for n in range(3)]
        try:
            c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
            assert [w.recv() for w in ws] == [(NOOP, [])] * 3
        finally:
            for w in ws:
                w.close()


@pytest.mark.difference
def test_fastgear_wakes_one_sleeper_per_job_by_default(server):
    with Conn(server) as adm, Conn(server) as c:
        ws = [sleeping_worker(server, adm, b"f", n + 1) for n in range(3)]
        try:
            c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
            woken = wait_for(lambda: [w for w in ws if has_data(w)], timeout=3, what="a NOOP")
            assert len(woken) == 1
            assert woken[0].recv() == (NOOP, [])
            assert woken[0].grab()[0] == JOB_ASSIGN
            for w in ws:
                w.expect_nothing(0.1)
            c.submit(b"f", b"y", kind=SUBMIT_JOB_BG)
            c.submit(b"f", b"z", kind=SUBMIT_JOB_BG)
            rest = [w for w in ws if w is not woken[0]]
            assert [w.recv() for w in rest] == [(NOOP, [])] * 2
        finally:
            for w in ws:
                w.close()


@pytest.mark.difference
def test_fastgear_wakes_a_sleeping_worker_when_an_epoch_job_becomes_due(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        when = int(time.time()) + 2
        c.send(SUBMIT_JOB_EPOCH, b"f", b"ep", str(when), b"later")
        c.recv()
        for _ in range(5):  # an early NOOP is tolerated, a NOOP busy loop is not
            assert w.recv(timeout=4) == (NOOP, [])
            t, args = w.grab()
            if t == JOB_ASSIGN:
                assert args[2] == b"later"
                assert time.time() >= when - 0.05
                break
            assert t == NO_JOB
            w.send(PRE_SLEEP)
        else:
            raise AssertionError("NOOP loop before the epoch job was due")


# -- lost workers, requeues, retries ------------------------------------------------------

def test_worker_lost_mid_job_hands_it_to_another_worker_and_the_client_gets_the_result(server):
    with Conn(server) as c, Conn(server) as w2:
        h = c.submit(b"f", b"x")
        with Conn(server) as w1:
            w1.worker(b"f")
            assert w1.grab() == (JOB_ASSIGN, [h, b"f", b"x"])
            w1.send(WORK_STATUS, h, b"1", b"2")
            assert c.recv() == (WORK_STATUS, [h, b"1", b"2"])
        # requeued: known, not running, progress reset; the client is told nothing
        wait_for(lambda: job_status(c, h) == [b"1", b"0", b"0", b"0"], what="the requeue")
        c.expect_nothing(0.1)
        w2.worker(b"f")
        assert grab_until_assigned(w2) == [h, b"f", b"x"]
        w2.send(WORK_COMPLETE, h, b"ok")
        assert c.recv() == (WORK_COMPLETE, [h, b"ok"])


def test_job_retries_two_fails_the_job_after_two_attempts(kind, start_server):
    srv = start_server(kind, "-j", "2")
    with Conn(srv) as c, Conn(srv) as adm:
        h = c.submit(b"f", b"x")
        for attempt in range(2):
            with Conn(srv) as w:
                w.worker(b"f")
                assert grab_until_assigned(w) == [h, b"f", b"x"], attempt
        assert c.recv() == (WORK_FAIL, [h])
        with Conn(srv) as w:
            w.worker(b"f")
            assert w.grab() == (NO_JOB, [])
        wait_for(lambda: status_table(adm)[b"f"][:2] == (0, 0), what="the job to be gone")


def test_a_requeued_job_counts_its_retries_in_show_jobs(server):
    with Conn(server) as adm, Conn(server) as c:
        h = c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        with Conn(server) as w:
            w.worker(b"f")
            assert w.grab()[0] == JOB_ASSIGN
        wait_for(lambda: adm.admin("show jobs") == h + b"\t1\t0\t1\n.\n", what="retry 1")


@pytest.mark.parametrize("release", ["CANT_DO", "RESET_ABILITIES"])
def test_cant_do_and_reset_abilities_requeue_the_jobs_a_worker_holds(server, release):
    with Conn(server) as c, Conn(server) as w1, Conn(server) as w2:
        h = c.submit(b"f", b"x")
        w1.worker(b"f")
        w2.worker(b"f")
        assert w1.grab() == (JOB_ASSIGN, [h, b"f", b"x"])
        assert w2.grab() == (NO_JOB, [])
        if release == "CANT_DO":
            w1.send(CANT_DO, b"f")
        else:
            w1.send(RESET_ABILITIES)
        w1.echo()
        assert w1.grab() == (NO_JOB, [])  # no longer registered
        c.expect_nothing(0.1)
        assert grab_until_assigned(w2) == [h, b"f", b"x"]
        w1.send(WORK_COMPLETE, h, b"stale")
        assert w1.recv() == (ERROR, [b"JOB_NOT_FOUND", b"Job given in work result not found"])
        w2.send(WORK_COMPLETE, h, b"r")
        assert c.recv() == (WORK_COMPLETE, [h, b"r"])


def _grab_order_after_a_worker_dies_holding_the_first_job(server):
    """A and B queued; w1 takes A and disconnects; returns (A, B, w2's grab order)."""
    with Conn(server) as c, Conn(server) as w2:
        ha = c.submit(b"f", b"A")
        hb = c.submit(b"f", b"B")
        with Conn(server) as w1:
            w1.worker(b"f")
            assert w1.grab()[1][0] == ha
        wait_for(lambda: job_status(c, ha)[1] == b"0", what="the requeue")
        w2.worker(b"f")
        return ha, hb, [w2.grab()[1][0] for _ in range(2)]


@pytest.mark.gearmand_quirk
def test_gearmand_requeues_a_lost_workers_job_at_the_tail(server):
    ha, hb, order = _grab_order_after_a_worker_dies_holding_the_first_job(server)
    assert order == [hb, ha]


@pytest.mark.difference
def test_fastgear_requeues_a_lost_workers_job_at_the_front(server):
    ha, hb, order = _grab_order_after_a_worker_dies_holding_the_first_job(server)
    assert order == [ha, hb]


# -- CAN_DO_TIMEOUT -----------------------------------------------------------------------

@pytest.mark.gearmand_quirk
def test_gearmand_silently_requeues_a_job_whose_can_do_timeout_expired(server):
    with Conn(server) as c, Conn(server) as w, Conn(server) as w2:
        w.send(CAN_DO_TIMEOUT, b"f", b"100")  # raised to 1000 ms
        h = c.submit(b"f", b"x")
        assert w.grab() == (JOB_ASSIGN, [h, b"f", b"x"])
        started = time.monotonic()
        w2.worker(b"f")
        assert grab_until_assigned(w2, timeout=5) == [h, b"f", b"x"]
        assert time.monotonic() - started >= 0.9
        c.expect_nothing(0.1)
        w.send(WORK_COMPLETE, h, b"late")
        assert w.recv() == (ERROR, [b"JOB_NOT_FOUND", b"Job given in work result not found"])
        w2.send(WORK_COMPLETE, h, b"ok")
        assert c.recv() == (WORK_COMPLETE, [h, b"ok"])


@pytest.mark.difference
def test_fastgear_fails_a_job_whose_can_do_timeout_expired(server):
    with Conn(server) as c, Conn(server) as w:
        w.send(CAN_DO_TIMEOUT, b"f", b"100")  # raised to 1000 ms, as gearmand
        h = c.submit(b"f", b"x")
        assert w.grab() == (JOB_ASSIGN, [h, b"f", b"x"])
        started = time.monotonic()
        assert c.recv(timeout=5) == (WORK_FAIL, [h])
        assert time.monotonic() - started >= 0.9
        w.send(WORK_COMPLETE, h, b"late")
        assert w.recv() == (ERROR, [b"JOB_NOT_FOUND", b"Job given in work result not found"])


def test_can_do_timeout_registers_the_function(server):
    with Conn(server) as adm, Conn(server) as c, Conn(server) as w:
        w.send(CAN_DO_TIMEOUT, b"f", b"60000")
        w.echo()
        assert b" - : f\n" in adm.admin("workers")
        h = c.submit(b"f", b"x")
        assert w.grab() == (JOB_ASSIGN, [h, b"f", b"x"])
        w.send(WORK_COMPLETE, h, b"r")
        assert c.recv() == (WORK_COMPLETE, [h, b"r"])


# -- grab order across functions ----------------------------------------------------------

def test_round_robin_alternates_a_workers_functions(kind, start_server):
    srv = start_server(kind, "-R")
    with Conn(srv) as c, Conn(srv) as w:
        for n in range(3):
            c.submit(b"ra", b"a%d" % n, kind=SUBMIT_JOB_BG)
            c.submit(b"rb", b"b%d" % n, kind=SUBMIT_JOB_BG)
        w.worker(b"ra", b"rb")
        funcs = [w.grab()[1][1] for _ in range(6)]
        assert sorted(funcs) == [b"ra"] * 3 + [b"rb"] * 3
        assert all(a != b for a, b in zip(funcs, funcs[1:])), funcs


@pytest.mark.gearmand_quirk
def test_gearmand_takes_the_most_recently_registered_function_first_whatever_priority(server):
    with Conn(server) as c, Conn(server) as w:
        c.submit(b"ga", b"ga-high", kind=SUBMIT_JOB_HIGH)
        c.submit(b"gb", b"gb-low", kind=SUBMIT_JOB_LOW)
        w.worker(b"ga", b"gb")
        assert [w.grab()[1][2] for _ in range(2)] == [b"gb-low", b"ga-high"]


@pytest.mark.difference
def test_fastgear_takes_the_highest_priority_across_a_workers_functions(server):
    with Conn(server) as c, Conn(server) as w:
        c.submit(b"ga", b"ga-high", kind=SUBMIT_JOB_HIGH)
        c.submit(b"gb", b"gb-low", kind=SUBMIT_JOB_LOW)
        c.submit(b"ga", b"ga-normal")
        c.submit(b"gb", b"gb-normal")
        w.worker(b"ga", b"gb")
        assert [w.grab()[1][2] for _ in range(4)] == [
            b"ga-high", b"ga-normal", b"gb-normal", b"gb-low"]


# -- abandoned jobs -----------------------------------------------------------------------

def test_a_queued_job_whose_foreground_client_left_is_dropped(server):
    with Conn(server) as probe, Conn(server) as bg, Conn(server) as w:
        with Conn(server) as c:
            h = c.submit(b"f", b"x", unique=b"gone")
            assert bg.submit(b"f", b"x", unique=b"gone", kind=SUBMIT_JOB_BG) == h

        def no_clients():
            probe.send(GET_STATUS_UNIQUE, b"gone")
            return probe.expect(STATUS_RES_UNIQUE)[5] == b"0"
        wait_for(no_clients, what="the client to be detached")
        w.worker(b"f")
        assert w.grab() == (NO_JOB, [])  # the background joiner does not keep it alive


@pytest.mark.gearmand_quirk
def test_gearmand_keeps_counting_an_abandoned_job_until_a_worker_reaches_it(server):
    with Conn(server) as adm, Conn(server) as w:
        with Conn(server) as c:
            h = c.submit(b"f", b"x")
        wait_for(lambda: adm.admin("show jobs") == h + b"\t0\t1\t0\n.\n", what="ignored flag")
        assert status_table(adm)[b"f"][:2] == (1, 0)
        w.worker(b"f")
        assert w.grab() == (NO_JOB, [])
        assert status_table(adm)[b"f"][:2] == (0, 0)


@pytest.mark.difference
def test_fastgear_forgets_an_abandoned_job_at_once(server):
    with Conn(server) as adm:
        with Conn(server) as c:
            c.submit(b"f", b"x")
        wait_for(lambda: status_table(adm)[b"f"][:2] == (0, 0), what="the job to be gone")
        assert adm.admin("show jobs") == b".\n"


# -- registrations ------------------------------------------------------------------------

def test_set_client_id_shows_in_workers(server):
    with Conn(server) as adm, Conn(server) as w:
        w.send(SET_CLIENT_ID, b"my-worker id")
        w.worker(b"fx")
        w.echo()
        assert b" my-worker id : fx\n" in adm.admin("workers")


def test_set_client_id_keeps_127_bytes(server):
    with Conn(server) as adm, Conn(server) as w:
        w.send(SET_CLIENT_ID, b"i" * 200)
        w.echo()
        assert b" %s :\n" % (b"i" * 127) in adm.admin("workers")


def test_can_do_twice_is_listed_twice_in_workers(server):
    with Conn(server) as adm, Conn(server) as w:
        w.send(CAN_DO, b"dup")
        w.send(CAN_DO, b"dup")
        w.echo()
        assert b" - : dup dup\n" in adm.admin("workers")
        assert status_table(adm)[b"dup"] == (0, 0, 2)


def test_cant_do_drops_every_registration_of_the_function(server):
    with Conn(server) as adm, Conn(server) as w:
        w.worker(b"two", b"two", b"other")
        w.echo()
        assert b" - : other two two\n" in adm.admin("workers")
        w.send(CANT_DO, b"two")
        w.echo()
        assert b" - : other\n" in adm.admin("workers")
        assert status_table(adm)[b"two"] == (0, 0, 0)


def test_a_disconnected_worker_leaves_workers_and_status(server):
    with Conn(server) as adm:
        with Conn(server) as w:
            w.worker(b"gone")
            w.echo()
            assert workers_of(adm, b"gone") == 1
        wait_for(lambda: workers_of(adm, b"gone") == 0, what="the worker to be dropped")
        assert adm.admin("workers").count(b"\n") == 2  # only the admin connection and `.`


# -- a woken worker whose job was taken by another one ------------------------------------

def _noop_then_job_taken_then_sleep(server, adm, c):
    w1 = sleeping_worker(server, adm, b"lw", 1)
    w2 = Conn(server).worker(b"lw")
    wait_for(lambda: workers_of(adm, b"lw") >= 2, what="second worker")
    c.submit(b"lw", b"first", kind=SUBMIT_JOB_BG)
    assert w1.recv() == (NOOP, [])
    assert w2.grab()[0] == JOB_ASSIGN          # w2 takes the job w1 was woken for
    w1.send(PRE_SLEEP)                           # nothing left: w1 sleeps again
    w1.echo()
    c.submit(b"lw", b"second", kind=SUBMIT_JOB_BG)
    return w1, w2


@pytest.mark.difference
def test_a_worker_that_sleeps_again_after_losing_its_job_is_woken_by_the_next_job(server):
    with Conn(server) as adm, Conn(server) as c:
        w1, w2 = _noop_then_job_taken_then_sleep(server, adm, c)
        with w1, w2:
            assert w1.recv() == (NOOP, [])


@pytest.mark.gearmand_quirk
def test_gearmand_never_wakes_a_worker_that_slept_again_without_grabbing(server):
    with Conn(server) as adm, Conn(server) as c:
        w1, w2 = _noop_then_job_taken_then_sleep(server, adm, c)
        with w1, w2:
            w1.expect_nothing(0.3)
