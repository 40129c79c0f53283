"""Wire-level worker tests: sleep/wake-up, requeues, retries, round robin, registrations."""
import select
import time

import pytest
from conftest import wait_for
from gearproto import (
    CAN_DO,
    CANT_DO,
    GET_STATUS_UNIQUE,
    GRAB_JOB,
    JOB_ASSIGN,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    RESET_ABILITIES,
    SET_CLIENT_ID,
    STATUS_RES_UNIQUE,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_EPOCH,
    WORK_COMPLETE,
    WORK_FAIL,
    Conn,
    workers_of,
)


def grab(worker):
    worker.send(GRAB_JOB)
    return worker.recv()


def grab_until_assigned(worker, timeout=5):
    def attempt():
        t, args = grab(worker)
        return args if t == JOB_ASSIGN else None
    return wait_for(attempt, timeout=timeout, what="a JOB_ASSIGN")


def sleeping_worker(server, adm, func, expected_workers):
    """A worker registered for `func` that has sent PRE_SLEEP; waits until `status` shows it."""
    w = Conn(server)
    w.can_do(func)
    w.send(PRE_SLEEP)
    w.echo()
    wait_for(lambda: workers_of(adm, func) >= expected_workers, timeout=5,
             what="worker registration")
    return w


def test_pre_sleep_then_new_job_wakes_the_worker_with_noop(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        w.expect_nothing(0.1)
        h = c.submit(b"f", b"x")
        assert w.recv() == (NOOP, [])
        assert grab(w) == (JOB_ASSIGN, [h, b"f", b"x"])


def test_pre_sleep_with_a_job_already_queued_answers_noop_at_once(server):
    with Conn(server) as c, Conn(server) as w:
        c.submit(b"f", b"x")
        w.can_do(b"f")
        w.send(PRE_SLEEP)
        assert w.recv() == (NOOP, [])


def test_a_woken_worker_gets_no_second_noop_before_it_grabs(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])
        c.submit(b"f", b"y", kind=SUBMIT_JOB_BG)
        c.submit(b"f", b"z", kind=SUBMIT_JOB_BG)
        w.expect_nothing()
        assert grab(w)[0] == JOB_ASSIGN


def test_a_noop_is_sent_again_after_the_worker_grabbed(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        c.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])
        assert grab(w)[0] == JOB_ASSIGN
        assert grab(w) == (NO_JOB, [])
        w.send(PRE_SLEEP)
        w.echo()
        w.expect_nothing(0.1)
        c.submit(b"f", b"y", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])


def test_a_worker_that_never_sent_pre_sleep_gets_no_noop(server):
    with Conn(server) as adm, Conn(server) as c, Conn(server) as w:
        w.can_do(b"f")
        w.echo()
        wait_for(lambda: workers_of(adm, b"f") == 1, what="registration")
        c.submit(b"f", b"x")
        w.expect_nothing()
        assert grab(w)[0] == JOB_ASSIGN


def test_worker_wakeup_one_wakes_one_sleeper_per_job(kind, start_server):
    srv = start_server(kind, "-w", "1")
    with Conn(srv) as adm, Conn(srv) as c:
        ws = [sleeping_worker(srv, adm, b"f", n + 1) for n in range(3)]
        sleepers = list(ws)
        try:
            for n in range(3):
                h = c.submit(b"f", b"job%d" % n, kind=SUBMIT_JOB_BG)
                woken = wait_for(lambda: [w for w in sleepers if _has_data(w)],
                                 timeout=3, what="a NOOP")
                assert len(woken) == 1, f"job {n} woke {len(woken)} sleepers"
                assert woken[0].recv() == (NOOP, [])
                assert grab(woken[0]) == (JOB_ASSIGN, [h, b"f", b"job%d" % n])
                sleepers.remove(woken[0])
                for w in sleepers:
                    w.expect_nothing(0.1)
            c.submit(b"f", b"job3", kind=SUBMIT_JOB_BG)
            for w in ws:
                w.expect_nothing(0.1)
        finally:
            for w in ws:
                w.close()


def _has_data(conn):
    return bool(conn.buf) or bool(select.select([conn.sock], [], [], 0)[0])


def test_worker_lost_mid_job_hands_it_to_another_worker_and_the_client_gets_the_result(server):
    with Conn(server) as c, Conn(server) as w2:
        h = c.submit(b"f", b"x")
        with Conn(server) as w1:
            w1.can_do(b"f")
            assert grab(w1) == (JOB_ASSIGN, [h, b"f", b"x"])
        w2.can_do(b"f")
        assert grab_until_assigned(w2) == [h, b"f", b"x"]
        w2.send(WORK_COMPLETE, h, b"ok")
        assert c.recv() == (WORK_COMPLETE, [h, b"ok"])


def test_job_retries_two_fails_the_job_after_two_attempts(kind, start_server):
    srv = start_server(kind, "-j", "2")
    with Conn(srv) as c, Conn(srv) as adm:
        h = c.submit(b"f", b"x")
        for attempt in range(2):
            with Conn(srv) as w:
                w.can_do(b"f")
                assert grab_until_assigned(w) == [h, b"f", b"x"], attempt
        assert c.recv() == (WORK_FAIL, [h])
        with Conn(srv) as w:
            w.can_do(b"f")
            assert grab(w) == (NO_JOB, [])
        assert adm.admin("status") in (b"f\t0\t0\t0\n.\n", b"f\t0\t0\t1\n.\n")


@pytest.mark.parametrize("release", ["CANT_DO", "RESET_ABILITIES"])
def test_cant_do_and_reset_abilities_requeue_the_jobs_a_worker_holds(server, release):
    with Conn(server) as c, Conn(server) as w1, Conn(server) as w2:
        h = c.submit(b"f", b"x")
        w1.can_do(b"f")
        w2.can_do(b"f")
        assert grab(w1) == (JOB_ASSIGN, [h, b"f", b"x"])
        assert grab(w2) == (NO_JOB, [])
        if release == "CANT_DO":
            w1.send(CANT_DO, b"f")
        else:
            w1.send(RESET_ABILITIES)
        w1.echo()
        assert grab(w1) == (NO_JOB, [])  # no longer registered
        assert grab_until_assigned(w2) == [h, b"f", b"x"]
        w2.send(WORK_COMPLETE, h, b"r")
        assert c.recv() == (WORK_COMPLETE, [h, b"r"])


def test_round_robin_alternates_a_workers_functions(kind, start_server):
    srv = start_server(kind, "-R")
    with Conn(srv) as c, Conn(srv) as w:
        for n in range(3):
            c.submit(b"ra", b"a%d" % n, kind=SUBMIT_JOB_BG)
            c.submit(b"rb", b"b%d" % n, kind=SUBMIT_JOB_BG)
        w.can_do(b"ra", b"rb")
        funcs = [grab(w)[1][1] for _ in range(6)]
        assert sorted(funcs) == [b"ra"] * 3 + [b"rb"] * 3
        assert all(a != b for a, b in zip(funcs, funcs[1:])), funcs


def test_a_queued_job_whose_foreground_client_left_is_dropped(server):
    with Conn(server) as probe, Conn(server) as w:
        with Conn(server) as c:
            c.submit(b"f", b"x", unique=b"gone")

        def no_clients():
            probe.send(GET_STATUS_UNIQUE, b"gone")
            t, args = probe.recv()
            assert t == STATUS_RES_UNIQUE
            return args[5] == b"0"
        wait_for(no_clients, what="the client to be detached")
        w.can_do(b"f")
        assert grab(w) == (NO_JOB, [])


def test_set_client_id_shows_in_workers(server):
    with Conn(server) as adm, Conn(server) as w:
        w.send(SET_CLIENT_ID, b"my-worker id")
        w.can_do(b"fx")
        wait_for(lambda: b" my-worker id : fx\n" in adm.admin("workers"),
                 what="client id in workers")


def test_can_do_twice_is_listed_twice_in_workers(server):
    with Conn(server) as adm, Conn(server) as w:
        w.send(CAN_DO, b"dup")
        w.send(CAN_DO, b"dup")
        wait_for(lambda: b" - : dup dup\n" in adm.admin("workers"),
                 what="two registrations in workers")


@pytest.mark.difference
def test_fastgear_wakes_a_sleeping_worker_when_an_epoch_job_becomes_due(server):
    with Conn(server) as adm, Conn(server) as c, sleeping_worker(server, adm, b"f", 1) as w:
        when = int(time.time()) + 2
        c.send(SUBMIT_JOB_EPOCH, b"f", b"ep", str(when), b"later")
        c.recv()
        for _ in range(5):  # an early NOOP is tolerated, a NOOP busy loop is not
            assert w.recv(timeout=4) == (NOOP, [])
            t, args = grab(w)
            if t == JOB_ASSIGN:
                assert args[2] == b"later"
                assert time.time() >= when - 0.05
                break
            assert t == NO_JOB
            w.send(PRE_SLEEP)
        else:
            raise AssertionError("NOOP loop before the epoch job was due")
