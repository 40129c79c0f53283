"""Unit tests of the compiled job engine without sockets (fastgear.engine_harness):
queues, priorities, coalescing, wake-ups, retries, timers and disconnects. In the debug
build (FASTGEAR_DEBUG=1, ci/debug-tests.sh) every test's engine is torn down at the end
and must have freed every allocation it made."""
import time

import pytest
from fastgear.engine_harness import ALLOC_COUNTING, EngineHarness

from fastgear import protocol as P

N = P.NUMBERS


def req(name, *fields):
    return P.encode(N[name], fields, request=True)


def replies(h, conn):
    pkts, rest = P.parse(h.output(conn))
    assert rest == b""
    return [(P.NAMES[t], f) for _, t, f in pkts]


def assert_nothing_leaked(h):
    """Free the engine; the debug build counts its allocations, and none may be left
    (release builds do not count, so there is nothing to check there)."""
    leaked = h.close()
    if ALLOC_COUNTING:
        assert leaked == 0, f"{leaked} engine allocations were never freed"


@pytest.fixture
def eng():
    h = EngineHarness(b"H:t")
    yield h
    assert_nothing_leaked(h)


def submit(h, c, func, data=b"", unique=b"", kind="SUBMIT_JOB_BG"):
    h.feed(c, req(kind, func, unique, data))
    out = replies(h, c)
    assert out[-1][0] == "JOB_CREATED", out
    return out[-1][1][0]


def grab(h, w, kind="GRAB_JOB_UNIQ"):
    h.feed(w, req(kind))
    return replies(h, w)[-1]


def test_handles_count_up_from_one_with_the_prefix(eng):
    c = eng.connect()
    assert submit(eng, c, b"f") == b"H:t:1"
    assert submit(eng, c, b"f") == b"H:t:2"


def test_grab_takes_high_before_normal_before_low_and_fifo_within(eng):
    c, w = eng.connect(), eng.connect()
    low = submit(eng, c, b"f", kind="SUBMIT_JOB_LOW_BG")
    n1 = submit(eng, c, b"f")
    high = submit(eng, c, b"f", kind="SUBMIT_JOB_HIGH_BG")
    n2 = submit(eng, c, b"f")
    eng.feed(w, req("CAN_DO", b"f"))
    order = [grab(eng, w)[1][0] for _ in range(4)]
    assert order == [high, n1, n2, low]
    assert grab(eng, w) == ("NO_JOB", [])


def test_priority_is_global_across_a_workers_functions(eng):
    c, w = eng.connect(), eng.connect()
    eng.feed(w, req("CAN_DO", b"a") + req("CAN_DO", b"b"))
    submit(eng, c, b"b", kind="SUBMIT_JOB_LOW_BG")
    high_a = submit(eng, c, b"a", kind="SUBMIT_JOB_HIGH_BG")
    assert grab(eng, w)[1][0] == high_a


def test_same_unique_coalesces_within_a_function_only(eng):
    c = eng.connect()
    h1 = submit(eng, c, b"f", unique=b"u", kind="SUBMIT_JOB")
    assert submit(eng, c, b"f", unique=b"u", kind="SUBMIT_JOB_HIGH") == h1
    assert submit(eng, c, b"g", unique=b"u") != h1
    assert submit(eng, c, b"f") != submit(eng, c, b"f")   # empty unique never coalesces


def test_dash_unique_coalesces_by_payload(eng):
    c = eng.connect()
    a = submit(eng, c, b"f", data=b"x", unique=b"-")
    assert submit(eng, c, b"f", data=b"x", unique=b"-") == a
    assert submit(eng, c, b"f", data=b"y", unique=b"-") != a


def test_unique_longer_than_64_bytes_is_refused(eng):
    c = eng.connect()
    eng.feed(c, req("SUBMIT_JOB", b"f", b"u" * 65, b""))
    assert replies(eng, c) == [("ERROR", [b"ARGUMENT_TOO_LARGE", b"Unique value too large"])]


def test_completion_is_relayed_to_every_coalesced_client(eng):
    c1, c2, w = eng.connect(), eng.connect(), eng.connect()
    h = submit(eng, c1, b"f", unique=b"u", kind="SUBMIT_JOB")
    submit(eng, c2, b"f", unique=b"u", kind="SUBMIT_JOB")
    eng.feed(w, req("CAN_DO", b"f"))
    grab(eng, w)
    eng.feed(w, req("WORK_DATA", h, b"part") + req("WORK_COMPLETE", h, b"done"))
    for c in (c1, c2):
        assert replies(eng, c) == [("WORK_DATA", [h, b"part"]), ("WORK_COMPLETE", [h, b"done"])]
    assert eng.counts()["jobs"] == 0


def test_sleeping_worker_gets_one_noop_for_new_jobs_until_it_grabs(eng):
    c, w = eng.connect(), eng.connect()
    eng.feed(w, req("CAN_DO", b"f") + req("PRE_SLEEP"))
    submit(eng, c, b"f")
    submit(eng, c, b"f")
    assert replies(eng, w) == [("NOOP", [])]
    submit(eng, c, b"f")
    assert replies(eng, w) == []


def test_pre_sleep_with_work_waiting_gets_a_noop_at_once(eng):
    c, w = eng.connect(), eng.connect()
    eng.feed(w, req("CAN_DO", b"f") + req("PRE_SLEEP"))
    submit(eng, c, b"f")
    assert replies(eng, w) == [("NOOP", [])]
    eng.feed(w, req("PRE_SLEEP"))       # woken, but sleeps again without grabbing
    assert replies(eng, w) == [("NOOP", [])]


def test_worker_disconnect_requeues_its_job_at_the_front(eng):
    c, w1, w2 = eng.connect(), eng.connect(), eng.connect()
    a = submit(eng, c, b"f")
    b = submit(eng, c, b"f")
    eng.feed(w1, req("CAN_DO", b"f"))
    assert grab(eng, w1)[1][0] == a
    eng.disconnect(w1)
    eng.feed(w2, req("CAN_DO", b"f"))
    assert grab(eng, w2)[1][0] == a
    assert grab(eng, w2)[1][0] == b


def test_job_retries_fail_the_job_after_that_many_attempts():
    eng = EngineHarness(b"H:t", job_retries=2)
    c = eng.connect()
    h = submit(eng, c, b"f", kind="SUBMIT_JOB")
    for _ in range(2):
        w = eng.connect()
        eng.feed(w, req("CAN_DO", b"f"))
        assert grab(eng, w)[0] == "JOB_ASSIGN_UNIQ"
        eng.disconnect(w)
    assert replies(eng, c) == [("WORK_FAIL", [h])]
    assert eng.counts()["jobs"] == 0
    assert eng.function(b"f") == (0, 0, 0, 0, 0, 0, 0)
    assert_nothing_leaked(eng)


def test_foreground_job_is_dropped_when_its_only_client_leaves(eng):
    c = eng.connect()
    submit(eng, c, b"f", kind="SUBMIT_JOB")
    eng.disconnect(c)
    assert eng.counts()["jobs"] == 0


def test_epoch_job_waits_for_its_time_and_wakes_a_sleeper(eng):
    c, w = eng.connect(), eng.connect()
    eng.feed(w, req("CAN_DO", b"f") + req("PRE_SLEEP"))
    when = str(int(time.time()) + 3600).encode()
    eng.feed(c, req("SUBMIT_JOB_EPOCH", b"f", b"", when, b"later"))
    assert replies(eng, c)[0][0] == "JOB_CREATED"
    assert replies(eng, w) == []
    eng.advance(ms=3601 * 1000)
    assert replies(eng, w) == [("NOOP", [])]
    assert grab(eng, w)[1][3] == b"later"


def test_can_do_timeout_expiry_fails_the_job_to_its_client(eng):
    c, w = eng.connect(), eng.connect()
    h = submit(eng, c, b"f", kind="SUBMIT_JOB")
    eng.feed(w, req("CAN_DO_TIMEOUT", b"f", b"1500"))
    grab(eng, w)
    eng.advance(ms=1400)
    assert replies(eng, c) == []
    eng.advance(ms=200)
    assert replies(eng, c) == [("WORK_FAIL", [h])]
    eng.feed(w, req("WORK_COMPLETE", h, b"late"))
    assert replies(eng, w)[0] == ("ERROR", [b"JOB_NOT_FOUND",
                                            b"Job given in work result not found"])


def test_reduce_job_reaches_grab_job_all_with_its_reducer(eng):
    c, w = eng.connect(), eng.connect()
    eng.feed(c, req("SUBMIT_REDUCE_JOB", b"f", b"u", b"red", b"", b"payload"))
    h = replies(eng, c)[0][1][0]
    eng.feed(w, req("CAN_DO", b"f"))
    assert grab(eng, w, "GRAB_JOB_ALL") == ("JOB_ASSIGN_ALL", [h, b"f", b"u", b"red", b"payload"])


def test_exception_goes_as_work_fail_unless_client_asked_for_exceptions(eng):
    c1, c2, w = eng.connect(), eng.connect(), eng.connect()
    eng.feed(c2, req("OPTION_REQ", b"exceptions"))
    assert replies(eng, c2) == [("OPTION_RES", [b"exceptions"])]
    h = submit(eng, c1, b"f", unique=b"u", kind="SUBMIT_JOB")
    submit(eng, c2, b"f", unique=b"u", kind="SUBMIT_JOB")
    eng.feed(w, req("CAN_DO", b"f"))
    grab(eng, w)
    eng.feed(w, req("WORK_EXCEPTION", h, b"boom"))
    assert replies(eng, c1) == [("WORK_FAIL", [h])]
    assert replies(eng, c2) == [("WORK_EXCEPTION", [h, b"boom"])]


def test_engine_cycle_completes_every_job_and_frees_them(eng):
    assert eng.run_cycle(b"f", 10000) == 10000
    assert eng.counts()["jobs"] == 0 and eng.counts()["queued_bytes"] == 0


def test_teardown_frees_everything_the_engine_allocated_with_work_in_flight(eng):
    """Teardown with every kind of engine allocation still live: grown tables, queued,
    running, future and unacknowledged jobs, coalesced clients, many registrations and
    kept results. The fixture asserts (debug build) that engine_free gave all back."""
    eng.keep_results(60_000)
    clients = [eng.connect() for _ in range(3)]
    wide, narrow, sleeper = eng.connect(), eng.connect(), eng.connect()
    for i in range(100):                         # > 64 functions: the table grows
        eng.feed(wide, req("CAN_DO", b"f%d" % i))  # > 16 registrations: a function index
    eng.feed(narrow, req("CAN_DO_TIMEOUT", b"g", b"60"))
    eng.feed(sleeper, req("CAN_DO", b"idle") + req("PRE_SLEEP"))
    eng.feed(wide, req("PRE_SLEEP"))
    for i in range(1100):                        # > 1,024 jobs and unique keys: both grow
        submit(eng, clients[0], b"f%d" % (i % 100), data=b"x", unique=b"u%d" % i)
    for c in clients[1:]:                        # two more listeners of one job
        submit(eng, c, b"g", unique=b"same", kind="SUBMIT_JOB")
    submit(eng, clients[0], b"g", unique=b"same", kind="SUBMIT_JOB")
    when = str(int(time.time()) + 3600).encode()
    eng.feed(clients[0], req("SUBMIT_JOB_EPOCH", b"g", b"", when, b"later"))
    assert replies(eng, clients[0])[0][0] == "JOB_CREATED"
    for _ in range(3):                           # held by a worker at teardown
        grab(eng, narrow)
    assert eng.run_cycle(b"done", 1100) == 1100  # > 1,024 kept results
    eng.set_durable(True)
    eng.feed(clients[0], req("SUBMIT_JOB_BG", b"g", b"", b"never stored"))
    assert replies(eng, clients[0]) == []        # waits for a commit that never comes
    replies(eng, wide)
    if ALLOC_COUNTING:
        assert eng.live_allocs() > 2000


# -- free lists and handles (issue 18) ---------------------------------------------------
# Attachments, acks and registrations go to bounded free lists instead of free(); the
# debug build still counts them as live until teardown frees the lists (the eng
# fixture's leak check).

def test_attachments_and_registrations_are_reused_from_the_free_lists(eng):
    c, w = eng.connect(), eng.connect()
    eng.feed(w, req("CAN_DO", b"f"))
    for i in range(3):
        h = submit(eng, c, b"f", data=b"%d" % i, kind="SUBMIT_JOB")
        assert grab(eng, w)[0] == "JOB_ASSIGN_UNIQ"
        eng.feed(w, req("WORK_COMPLETE", h, b"ok"))
        assert replies(eng, c) == [("WORK_COMPLETE", [h, b"ok"])]
    # The first job's attachment went to the list; each later job took it back.
    lists = eng.free_lists()
    assert lists["attach"] == 1 and lists["reused"] == 2
    eng.feed(w, req("CANT_DO", b"f") + req("CAN_DO", b"g") + req("CAN_DO", b"f"))
    assert eng.free_lists()["reused"] == 3 and eng.free_lists()["ability"] == 0
    # A reused registration is a clean one: jobs of both functions reach the worker.
    submit(eng, c, b"g")
    assert grab(eng, w)[1][1] == b"g"
    submit(eng, c, b"f")
    assert grab(eng, w)[1][1] == b"f"


def test_a_disconnecting_client_returns_its_attachments_and_the_list_is_bounded(eng):
    clients = [eng.connect() for _ in range(5)]
    for i, c in enumerate(clients):
        submit(eng, c, b"f", data=b"%d" % i, kind="SUBMIT_JOB")
    for c in clients:
        eng.disconnect(c)
    assert eng.free_lists()["attach"] == 5
    assert eng.counts()["jobs"] == 0


def test_handles_count_up_in_decimal_after_the_prefix():
    h = EngineHarness(b"H:box")
    c = h.connect()
    got = [submit(h, c, b"f", data=b"x") for _ in range(12)]
    assert got == [b"H:box:%d" % i for i in range(1, 13)]
    assert_nothing_leaked(h)


def test_a_handle_with_the_longest_prefix_is_cut_at_63_bytes_as_before():
    prefix = b"P" * 47
    h = EngineHarness(prefix)
    c, w = h.connect(), h.connect()
    handle = submit(h, c, b"f", data=b"x")
    assert handle == prefix + b":1"
    h.feed(w, req("CAN_DO", b"f"))
    assert grab(h, w)[1][0] == handle
    h.feed(w, req("WORK_COMPLETE", handle, b""))
    assert h.counts()["jobs"] == 0
    assert_nothing_leaked(h)


def test_a_queued_job_costs_its_record_and_its_strings_only():
    # Memory per queued job (issue 18): the handle is a number formatted where it is
    # sent, so a long prefix costs nothing per job; the record stays at 152 bytes.
    record = EngineHarness.job_record_size()
    assert record <= 152
    for prefix in (b"H:t", b"H:" + b"p" * 45):
        h = EngineHarness(prefix)
        c = h.connect()
        submit(h, c, b"f", data=b"x" * 16)
        submit(h, c, b"f", data=b"y" * 5, unique=b"u1")
        assert h.counts()["queued_bytes"] == 2 * record + 16 + 5 + 2
        assert_nothing_leaked(h)


def test_a_handle_is_found_only_in_the_form_the_server_wrote_it(eng):
    c = eng.connect()
    handle = submit(eng, c, b"f", data=b"x")
    assert handle == b"H:t:1"

    def known(hd):
        eng.feed(c, req("GET_STATUS", hd))
        out = replies(eng, c)[-1]
        assert out[0] == "STATUS_RES"
        return out[1][1] == b"1"
    assert known(b"H:t:1")
    for other in (b"H:t:01", b"H:t:1x", b"H:t:", b"H:u:1", b"H:t1", b"H:t:2",
                  b"H:t:18446744073709551617", b"H:t:-1", b"h:t:1"):
        assert not known(other), other


def wide_worker(h, names):
    w = h.connect()
    for name in names:
        h.feed(w, req("CAN_DO", name))
    assert replies(h, w) == []
    return w


def test_a_worker_with_2000_functions_gets_every_job_by_priority_then_in_turn(eng):
    names = [b"f%d" % i for i in range(2000)]
    c = eng.connect()
    w = wide_worker(eng, names)
    expect_normal = []
    for i, name in enumerate(names):
        submit(eng, c, name, data=b"n%d" % i)
        expect_normal.append((name, b"n%d" % i))
    # A second job of f5 waits behind every other function's turn.
    submit(eng, c, b"f5", data=b"second")
    expect_normal.append((b"f5", b"second"))
    submit(eng, c, b"f1500", data=b"high1", kind="SUBMIT_JOB_HIGH_BG")
    submit(eng, c, b"f3", data=b"high2", kind="SUBMIT_JOB_HIGH_BG")
    submit(eng, c, b"f7", data=b"low", kind="SUBMIT_JOB_LOW_BG")
    got = []
    for _ in range(2004):
        kind, fields = grab(eng, w)
        assert kind == "JOB_ASSIGN_UNIQ"
        got.append((fields[1], fields[3]))
        eng.feed(w, req("WORK_COMPLETE", fields[0], b""))
    assert got == ([(b"f1500", b"high1"), (b"f3", b"high2")] + expect_normal
                   + [(b"f7", b"low")])
    assert grab(eng, w)[0] == "NO_JOB"
    assert eng.counts()["jobs"] == 0


def test_a_wide_worker_stops_getting_jobs_of_functions_it_cannot_do_any_more(eng):
    names = [b"f%d" % i for i in range(100)]
    c = eng.connect()
    w = wide_worker(eng, names)
    eng.feed(w, req("CANT_DO", b"f5"))
    submit(eng, c, b"f5", data=b"a")
    submit(eng, c, b"f6", data=b"b")
    eng.feed(w, req("PRE_SLEEP"))
    assert replies(eng, w) == [("NOOP", [])]
    assert grab(eng, w)[1][1] == b"f6"
    assert grab(eng, w)[0] == "NO_JOB"
    # Asleep, it is not woken for f5 either; registering f5 again makes the job its own.
    eng.feed(w, req("PRE_SLEEP"))
    submit(eng, c, b"f5", data=b"c")
    assert replies(eng, w) == []
    eng.feed(w, req("CAN_DO", b"f5"))
    assert grab(eng, w)[1][1:] == [b"f5", b"", b"a"]
    # Two registrations of one function (CAN_DO and CAN_DO_TIMEOUT): CANT_DO drops both.
    eng.feed(w, req("CAN_DO_TIMEOUT", b"f5", b"5000"))
    eng.feed(w, req("CANT_DO", b"f5"))
    assert grab(eng, w)[0] == "NO_JOB"
    assert eng.function(b"f5")[2] == 0
    # RESET_ABILITIES while jobs are queued: nothing more for this worker.
    submit(eng, c, b"f7", data=b"d")
    eng.feed(w, req("RESET_ABILITIES"))
    assert grab(eng, w)[0] == "NO_JOB"
    assert eng.function(b"f7")[4] == 1
    # ... and another worker with many functions takes every job w gave back or never
    # got: "a" (held when w said CANT_DO f5; back at the front of f5), "b" (held at
    # RESET_ABILITIES), "c" and "d"; FIFO within f5.
    w2 = wide_worker(eng, names)
    got = [tuple(grab(eng, w2)[1][1:]) for _ in range(4)]
    assert sorted(got) == [(b"f5", b"", b"a"), (b"f5", b"", b"c"), (b"f6", b"", b"b"),
                           (b"f7", b"", b"d")]
    assert got.index((b"f5", b"", b"a")) < got.index((b"f5", b"", b"c"))
    assert grab(eng, w2)[0] == "NO_JOB"


def test_a_dropped_functions_id_given_to_a_new_function_is_not_a_registration(eng):
    c = eng.connect()
    w = wide_worker(eng, [b"f%d" % i for i in range(20)] + [b"gone"])
    eng.feed(w, req("CANT_DO", b"gone"))
    assert eng.drop_function(b"gone") == 0
    # The new function may get gone's id; w never registered it.
    submit(eng, c, b"new", data=b"x")
    assert grab(eng, w)[0] == "NO_JOB"
    eng.feed(w, req("PRE_SLEEP"))
    submit(eng, c, b"new", data=b"y")
    assert replies(eng, w) == []
    submit(eng, c, b"f3", data=b"z")
    assert replies(eng, w) == [("NOOP", [])]
    assert grab(eng, w)[1][1] == b"f3"
