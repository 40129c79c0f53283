"""Wake-ups and GRAB with many workers and many functions (issue 8).

gearmand NOOPs every sleeping worker of a function for each job, and all but one of them
GRAB for nothing; fastgear wakes one sleeper per job, the one that has slept longest,
and wakes another if the woken one has not grabbed within `--wakeup-timeout`. An explicit
`-w N` keeps gearmand's meaning. A worker's GRAB looks only at functions that have work,
and functions with work take turns. The scenarios here are bounded in connections and
time; nothing is timed for speed.
"""
import select
import time

import pytest
from conftest import wait_for
from gearproto import (
    CAN_DO,
    CANT_DO,
    JOB_ASSIGN,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    REQ,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW_BG,
    WORK_COMPLETE,
    Conn,
    pack,
)


def sleepers(server, func, n):
    """n workers of func that have sent PRE_SLEEP (synchronised with an ECHO)."""
    conns = []
    for _ in range(n):
        w = Conn(server)
        w.send(CAN_DO, func)
        w.send(PRE_SLEEP)
        conns.append(w)
    for w in conns:
        w.echo()
    return conns


def noops_within(conns, window):
    """The connections that receive a NOOP: wait for the first, then `window` seconds for
    any more (the only way to see that the others stay asleep)."""
    got = []
    deadline = time.monotonic() + 5
    quiet_until = None
    pending = list(conns)
    while pending:
        now = time.monotonic()
        if quiet_until is not None and now >= quiet_until:
            break
        if now >= deadline:
            break
        limit = (quiet_until if quiet_until is not None else deadline) - now
        ready, _, _ = select.select([c.sock for c in pending], [], [], limit)
        for sock in ready:
            conn = next(c for c in pending if c.sock is sock)
            assert conn.recv() == (NOOP, [])
            got.append(conn)
            pending.remove(conn)
        if got and quiet_until is None:
            quiet_until = time.monotonic() + window
    return got


def close_all(conns):
    for c in conns:
        c.close()


@pytest.mark.difference
def test_one_job_wakes_exactly_one_of_200_sleeping_workers_and_completes(server):
    pool = sleepers(server, b"w200", 200)
    try:
        with Conn(server) as c:
            h = c.submit(b"w200", b"job", kind=SUBMIT_JOB_BG)
            woken = noops_within(pool, 0.5)
            assert len(woken) == 1
            w = woken[0]
            assert w.grab() == (JOB_ASSIGN, [h, b"w200", b"job"])
            w.send(WORK_COMPLETE, h, b"done")
            w.echo()
            assert wait_for(lambda: b"w200\t0\t0\t200" in c.admin("status"),
                            what="the job to finish")
    finally:
        close_all(pool)


@pytest.mark.gearmand_quirk
def test_gearmand_wakes_every_sleeping_worker_for_one_job(server):
    pool = sleepers(server, b"w50", 50)
    try:
        with Conn(server) as c:
            c.submit(b"w50", b"job", kind=SUBMIT_JOB_BG)
            assert len(noops_within(pool, 0.5)) == 50
    finally:
        close_all(pool)


@pytest.mark.parametrize("kind", ["fastgear", "fastgear-t0", "gearmand"], indirect=True)
def test_explicit_w_wakes_that_many_sleepers_per_job_as_gearmand(kind, start_server):
    srv = start_server(kind, "-w", "3")
    pool = sleepers(srv, b"w3", 10)
    try:
        with Conn(srv) as c:
            c.submit(b"w3", b"job", kind=SUBMIT_JOB_BG)
            assert len(noops_within(pool, 0.5)) == 3
    finally:
        close_all(pool)


@pytest.mark.difference
@pytest.mark.parametrize("kind", ["fastgear", "fastgear-t0"], indirect=True)
def test_a_woken_worker_that_never_grabs_does_not_strand_the_job(kind, start_server):
    srv = start_server(kind, "--wakeup-timeout", "200")
    pool = sleepers(srv, b"lost", 2)
    try:
        with Conn(srv) as c:
            h = c.submit(b"lost", b"job", kind=SUBMIT_JOB_BG)
            first = noops_within(pool, 0.05)
            assert len(first) == 1          # this one never grabs (a dead link)
            other = next(w for w in pool if w is not first[0])
            assert other.recv(timeout=5) == (NOOP, [])
            assert other.grab() == (JOB_ASSIGN, [h, b"lost", b"job"])
            other.send(WORK_COMPLETE, h, b"")
            other.echo()
    finally:
        close_all(pool)


@pytest.mark.difference
def test_sleepers_are_woken_in_rotation_so_work_spreads_over_the_pool(server):
    pool = sleepers(server, b"rot", 3)
    served = []
    try:
        with Conn(server) as c:
            for n in range(3):
                h = c.submit(b"rot", b"%d" % n, kind=SUBMIT_JOB_BG)
                woken = noops_within(pool, 0.05)
                assert len(woken) == 1
                w = woken[0]
                assert w.grab()[0] == JOB_ASSIGN
                w.send(WORK_COMPLETE, h, b"")
                assert w.grab() == (NO_JOB, [])
                w.send(PRE_SLEEP)
                w.echo()
                served.append(pool.index(w))
        assert sorted(served) == [0, 1, 2]
    finally:
        close_all(pool)


def test_a_worker_that_registers_while_asleep_is_woken_for_the_new_function(server):
    with Conn(server) as c, Conn(server) as w:
        w.send(CAN_DO, b"first")
        w.send(PRE_SLEEP)
        w.send(CAN_DO, b"second")
        w.echo()
        h = c.submit(b"second", b"x", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])
        assert w.grab() == (JOB_ASSIGN, [h, b"second", b"x"])


@pytest.mark.difference
def test_a_worker_with_10000_functions_gets_jobs_in_priority_order_across_them(server):
    funcs = [b"many%05d" % i for i in range(10000)]
    with Conn(server) as c, Conn(server) as w:
        w.send_raw(b"".join(_req(CAN_DO, f) for f in funcs))
        w.echo()
        low = c.submit(funcs[0], b"low", kind=SUBMIT_JOB_LOW_BG)
        normal = c.submit(funcs[5000], b"normal", kind=SUBMIT_JOB_BG)
        high = c.submit(funcs[9999], b"high", kind=SUBMIT_JOB_HIGH_BG)
        high2 = c.submit(funcs[1234], b"high2", kind=SUBMIT_JOB_HIGH_BG)
        got = [w.grab()[1][0] for _ in range(4)]
        assert got == [high, high2, normal, low]
        assert w.grab() == (NO_JOB, [])


def test_cant_do_among_10000_functions_drops_only_that_function(server):
    funcs = [b"cd%05d" % i for i in range(10000)]
    with Conn(server) as c, Conn(server) as w:
        w.send_raw(b"".join(_req(CAN_DO, f) for f in funcs))
        w.send(CANT_DO, funcs[7777])
        w.echo()
        c.submit(funcs[7777], b"nobody", kind=SUBMIT_JOB_BG)
        kept = c.submit(funcs[7778], b"kept", kind=SUBMIT_JOB_BG)
        assert w.grab() == (JOB_ASSIGN, [kept, funcs[7778], b"kept"])
        assert w.grab() == (NO_JOB, [])


@pytest.mark.difference
def test_functions_with_work_take_turns_for_one_worker(server):
    with Conn(server) as c, Conn(server) as w:
        w.worker(b"ta", b"tb")
        w.echo()
        for n in range(3):
            c.submit(b"ta", b"a%d" % n, kind=SUBMIT_JOB_BG)
        c.submit(b"tb", b"b0", kind=SUBMIT_JOB_BG)
        got = [w.grab()[1][2] for _ in range(4)]
        # a backlog of one function does not make the other wait behind all of it
        assert got == [b"a0", b"b0", b"a1", b"a2"]


def _req(ptype, *args):
    return pack(REQ, ptype, *args)
