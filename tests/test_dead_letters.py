"""Background retries and dead letters (`--bg-retries`, `--bg-retry-backoff`, `retry
FUNCTION N BACKOFF`, `--dead-letters`), against a real fastgear process with real
workers: raw Gearman packets (tests/gearproto.py) and python `gear`.

A background job that ends in WORK_FAIL or WORK_EXCEPTION runs again after an
exponential, jittered back-off, up to N times; then, or once its workers went away
`--job-retries` times, it becomes a dead letter that can be listed, re-queued (same
unique key, new handle) and discarded, and that survives a SIGKILL with `--store`. The
back-off schedule is read from the kept outcomes' times (`--keep-results`), not by
sleeping in the test.
"""
import base64
import signal
import time

from conftest import wait_for
from gearproto import (
    CAN_DO,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN_UNIQ,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    WORK_EXCEPTION,
    WORK_FAIL,
    Conn,
)

# --- helpers ---------------------------------------------------------------------------

def listing(conn, line):
    """An admin command answered with a `.`-terminated listing, as lines."""
    conn.sock.sendall(line.encode() + b"\r\n")
    while not (conn.buf.startswith(b".\n") or b"\n.\n" in conn.buf):
        conn._fill(time.monotonic() + 5)
    end = 2 if conn.buf.startswith(b".\n") else conn.buf.index(b"\n.\n") + 3
    out, conn.buf = conn.buf[:end], conn.buf[end:]
    return [line.split(b"\t") for line in out.split(b"\n")[:-2]]


def dead(conn, function=None):
    """`dead [FUNCTION]` as dicts, newest first."""
    rows = listing(conn, "dead" + (f" {function}" if function else ""))
    keys = ("handle", "function", "unique", "reason", "attempts", "failed_at", "data_size",
            "error")
    return [dict(zip(keys, row)) for row in rows]


def run_next(worker, result=WORK_FAIL, data=b"", timeout=10):
    """Sleep until a job comes, grab it and end it with `result`; its JOB_ASSIGN_UNIQ
    fields (handle, function, unique, payload)."""
    while True:
        worker.send(GRAB_JOB_UNIQ)
        t, args = worker.recv(timeout)
        if t == JOB_ASSIGN_UNIQ:
            break
        assert t == NO_JOB
        worker.send(PRE_SLEEP)
        worker.expect(NOOP, timeout)
    if result == WORK_FAIL:
        worker.send(WORK_FAIL, args[0])
    else:
        worker.send(result, args[0], data)
    worker.echo()
    return args


# --- retries -----------------------------------------------------------------------------

def test_a_failed_background_job_runs_again_and_succeeds(start_server):
    srv = start_server("fastgear", "--bg-retries", "2", "--bg-retry-backoff", "0.05")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"flaky")
        handle = client.submit(b"flaky", b"payload", b"k1", kind=SUBMIT_JOB_BG)
        first = run_next(worker, WORK_FAIL)
        second = run_next(worker, WORK_COMPLETE, b"done")
        assert first[0] == second[0] == handle
        assert second[2:] == [b"k1", b"payload"]
        wait_for(lambda: admin.admin("status") == b"flaky\t0\t0\t1\n.\n", what="no job left")
        assert dead(admin) == []


def test_a_job_that_always_fails_is_attempted_one_plus_n_times_then_dead(start_server):
    srv = start_server("fastgear", "--bg-retries", "2", "--bg-retry-backoff", "0.02")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"doomed")
        handle = client.submit(b"doomed", b"\x00bin\xff", b"u-7", kind=SUBMIT_JOB_BG)
        for _ in range(3):
            assert run_next(worker, WORK_EXCEPTION, b"boom:\tline 1\nline 2")[0] == handle
        worker.send(GRAB_JOB_UNIQ)
        assert worker.recv()[0] == NO_JOB
        rows = dead(admin)
        assert len(rows) == 1
        row = rows[0]
        assert (row["handle"], row["function"], row["unique"], row["reason"],
                row["attempts"], row["data_size"]) == (handle, b"doomed", b"u-7",
                                                       b"exception", b"3", b"5")
        assert row["error"] == b"boom:\\tline 1\\nline 2"
        assert admin.admin("status") == b"doomed\t0\t0\t1\n.\n"


def test_without_retries_a_failed_background_job_becomes_a_dead_letter_at_once(
        start_server):
    srv = start_server("fastgear")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"f")
        client.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        run_next(worker, WORK_FAIL)
        assert [(r["reason"], r["attempts"]) for r in dead(admin)] == [(b"fail", b"1")]


def test_foreground_jobs_are_never_retried_nor_dead_lettered(start_server):
    srv = start_server("fastgear", "--bg-retries", "3", "--bg-retry-backoff", "0")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"fg")
        client.send(0x07, b"fg", b"", b"x")     # SUBMIT_JOB
        client.expect(0x08)                      # JOB_CREATED
        run_next(worker, WORK_FAIL)
        client.expect(WORK_FAIL)
        worker.send(GRAB_JOB_UNIQ)
        assert worker.recv()[0] == NO_JOB
        assert dead(admin) == []


def test_the_backoff_doubles_with_jitter_as_the_outcome_times_show(start_server):
    srv = start_server("fastgear", "--bg-retries", "3", "--bg-retry-backoff", "0.2",
                       "--bg-retry-backoff-max", "0.6", "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"slow")
        client.submit(b"slow", b"x", b"sched", kind=SUBMIT_JOB_BG)
        for _ in range(4):
            run_next(worker, WORK_FAIL)
        rows = listing(admin, "result unique sched")
    # Kept outcomes, newest first: started_at is column 6, finished_at column 7.
    attempts = [(float(r[6]), float(r[7])) for r in reversed(rows)]
    assert len(attempts) == 4
    gaps = [attempts[k + 1][0] - attempts[k][1] for k in range(3)]
    # 0.2, 0.4, then 0.8 capped at 0.6; each less up to a quarter; a worker that sleeps
    # until the job is due adds a few milliseconds.
    for gap, full in zip(gaps, (0.2, 0.4, 0.6)):
        assert full * 0.75 - 0.01 <= gap <= full + 0.15, (gaps, full)


def test_the_retry_command_sets_a_function_policy_and_lists_it(start_server):
    srv = start_server("fastgear", "--bg-retries", "0")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        assert admin.admin("retry special 1 0.01") == b"OK\r\n"
        assert listing(admin, "retry") == [[b"*", b"0", b"1"], [b"special", b"1", b"0.01"]]
        worker.send(CAN_DO, b"special")
        worker.send(CAN_DO, b"plain")
        client.submit(b"special", b"x", kind=SUBMIT_JOB_BG)
        client.submit(b"plain", b"y", kind=SUBMIT_JOB_BG)
        for _ in range(3):
            run_next(worker, WORK_FAIL)
        worker.send(GRAB_JOB_UNIQ)
        assert worker.recv()[0] == NO_JOB
        assert sorted((r["function"], r["attempts"]) for r in dead(admin)) == \
            [(b"plain", b"1"), (b"special", b"2")]
        assert admin.admin("retry special default") == b"OK\r\n"
        assert listing(admin, "retry") == [[b"*", b"0", b"1"]]
        assert admin.admin("retry special x 1").startswith(b"ERR INVALID_ARGUMENTS")


def test_a_job_whose_workers_vanish_job_retries_times_becomes_a_dead_letter(start_server):
    srv = start_server("fastgear", "-j", "2", "--bg-retries", "5")
    with Conn(srv) as client, Conn(srv) as admin:
        handle = client.submit(b"crashy", b"x", kind=SUBMIT_JOB_BG)
        for _ in range(2):
            with Conn(srv) as worker:
                worker.send(CAN_DO, b"crashy")
                worker.send(GRAB_JOB_UNIQ)
                assert worker.expect(JOB_ASSIGN_UNIQ)[0] == handle
            # The next worker may be served by another I/O thread before this close.
            wait_for(lambda: admin.admin("status").split(b"\t")[2] == b"0",
                     what="the job back in its queue")
        rows = wait_for(lambda: dead(admin), what="the dead letter")
        assert [(r["handle"], r["reason"], r["attempts"]) for r in rows] == \
            [(handle, b"worker_lost", b"2")]


# --- acting on dead letters --------------------------------------------------------------

def test_dead_letters_are_requeued_with_their_unique_key_and_a_new_handle(start_server):
    srv = start_server("fastgear")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"f")
        worker.send(CAN_DO, b"g")
        old = client.submit(b"f", b"one", b"key-1", kind=SUBMIT_JOB_BG)
        run_next(worker, WORK_FAIL)
        for data in (b"two", b"three"):
            client.submit(b"g", data, kind=SUBMIT_JOB_BG)
            run_next(worker, WORK_FAIL)
        assert [r["function"] for r in dead(admin)] == [b"g", b"g", b"f"]
        assert [r["function"] for r in dead(admin, "f")] == [b"f"]
        reply = admin.admin(f"dead requeue {old.decode()}")
        assert reply.startswith(b"OK ") and reply.endswith(b"\n")
        new = reply[3:-1]
        assert new != old
        assert run_next(worker, WORK_COMPLETE) == [new, b"f", b"key-1", b"one"]
        assert admin.admin(f"dead requeue {old.decode()}") == b"ERR UNKNOWN_JOB\r\n"
        assert admin.admin("dead requeue-function g") == b"OK 2\n"
        assert sorted(run_next(worker, WORK_FAIL)[3] for _ in range(2)) == [b"three", b"two"]
        victim = dead(admin)[0]["handle"]
        assert admin.admin(f"dead discard {victim.decode()}") == b"OK\r\n"
        assert admin.admin(f"dead discard {victim.decode()}") == b"ERR UNKNOWN_JOB\r\n"
        assert len(dead(admin)) == 1
        assert admin.admin("dead requeue").startswith(b"ERR INVALID_ARGUMENTS")


def test_dead_letters_are_bounded_by_count_oldest_first(start_server):
    srv = start_server("fastgear", "--dead-letters", "3")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"f")
        for i in range(5):
            client.submit(b"f", b"%d" % i, kind=SUBMIT_JOB_BG)
            run_next(worker, WORK_FAIL)
        rows = dead(admin)
        assert [r["data_size"] for r in rows] == [b"1"] * 3
        assert len(rows) == 3


def test_dead_letters_and_retry_settings_survive_sigkill_with_a_store(start_server,
                                                                      tmp_path):
    db = str(tmp_path / "q.db")
    srv = start_server("fastgear", "--store", db)
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        assert admin.admin("retry keep 2 0.5") == b"OK\r\n"
        worker.send(CAN_DO, b"keep")
        worker.send(CAN_DO, b"other")
        handles = []
        for data in (b"a", b"b\x00b"):
            handles.append(client.submit(b"other", data, b"u-" + data[:1],
                                         kind=SUBMIT_JOB_BG))
            run_next(worker, WORK_EXCEPTION, b"trace " + data[:1])
        victim = dead(admin)[0]["handle"]
        assert admin.admin(f"dead discard {victim.decode()}") == b"OK\r\n"
        before = dead(admin)
        assert [r["handle"] for r in before] == [handles[0]]
        wait_for(lambda: _rows(db) == (0, 1, 1), what="the rows to be written")
    srv.stop(signal.SIGKILL)
    srv2 = start_server("fastgear", "--store", db)
    with Conn(srv2) as client, Conn(srv2) as worker, Conn(srv2) as admin:
        assert dead(admin) == before
        assert listing(admin, "retry") == [[b"*", b"0", b"1"], [b"keep", b"2", b"0.5"]]
        # Handles go on after the dead letters', so a new job never takes one.
        fresh = client.submit(b"other", b"c", kind=SUBMIT_JOB_BG)
        assert int(fresh.rsplit(b":", 1)[1]) > int(handles[0].rsplit(b":", 1)[1])
        reply = admin.admin(f"dead requeue {handles[0].decode()}")
        assert reply.startswith(b"OK ")
        worker.send(CAN_DO, b"other")
        assert run_next(worker, WORK_COMPLETE)[3] == b"c"
        assert run_next(worker, WORK_COMPLETE)[2:] == [b"u-a", b"a"]
        wait_for(lambda: _rows(db) == (0, 0, 1), what="the requeued job's rows to go")


def test_rows_over_the_limits_are_neither_a_crash_nor_lost_on_replay_or_requeue(
        start_server, tmp_path):
    # Replay and requeue submit without a connection: a refusal used to answer a NULL
    # connection (a crash). Now a stored row over --max-unique stays in the store (the
    # others are replayed) and a dead letter over it answers ERR.
    db = str(tmp_path / "q.db")
    srv = start_server("fastgear", "--store", db)
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(CAN_DO, b"g")
        client.submit(b"f", b"x", b"a-long-unique-key", kind=SUBMIT_JOB_BG)
        long_dead = client.submit(b"g", b"y", b"another-long-key", kind=SUBMIT_JOB_BG)
        run_next(worker, WORK_FAIL)
        short_dead = client.submit(b"g", b"z", b"k", kind=SUBMIT_JOB_BG)
        run_next(worker, WORK_FAIL)
        for i in range(2):
            client.submit(b"h", b"%d" % i, kind=SUBMIT_JOB_BG)
        wait_for(lambda: _rows(db) == (3, 2, 0), what="the rows to be written")
    srv.stop(signal.SIGKILL)
    srv2 = start_server("fastgear", "--store", db, "--max-unique", "8")
    with Conn(srv2) as client, Conn(srv2) as admin:
        assert admin.admin("status") == b"h\t2\t0\t0\n.\n"
        assert "1 stored jobs not taken back" in srv2.log_text()
        assert admin.admin(f"dead requeue {long_dead.decode()}") == \
            b"ERR ARGUMENT_TOO_LARGE function+name+or+unique+key+over+this+server's+limits\r\n"
        assert admin.admin("maxqueue g 1") == b"OK\n"
        client.submit(b"g", b"w", kind=SUBMIT_JOB_BG)
        assert admin.admin(f"dead requeue {short_dead.decode()}").startswith(
            b"ERR QUEUE_FULL")
        assert admin.admin("dead requeue-function g") == b"OK 0\n"
        assert {r["handle"] for r in dead(admin)} == {long_dead, short_dead}
    assert _rows(db)[:2] == (4, 2)      # the refused row is still stored


def _rows(db):
    """(queued jobs, dead letters, retry settings) in a SQLite store file."""
    import sqlite3
    con = sqlite3.connect(db, timeout=5)
    try:
        return tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                     for t in ("gearman_queue", "gearman_queue_dead", "gearman_queue_retry"))
    finally:
        con.close()


def test_python_gear_workers_fail_then_the_retry_completes(start_server):
    from conftest import need_module
    gear = need_module("gear", pip="gear")
    srv = start_server("fastgear", "--bg-retries", "1", "--bg-retry-backoff", "0.05",
                       "--keep-results", "60")
    client = gear.Client("c")
    client.addServer(srv.host, srv.port)
    client.waitForServer()
    worker = gear.Worker("w")
    worker.addServer(srv.host, srv.port)
    worker.waitForServer()
    worker.registerFunction("gearjob")
    try:
        job = gear.Job(b"gearjob", b"payload", unique=b"gear-1")
        client.submitJob(job, background=True)
        seen = []
        for result in ("fail", "complete"):
            wjob = worker.getJob()
            seen.append(wjob.handle)
            if result == "fail":
                wjob.sendWorkException(b"first try")
            else:
                wjob.sendWorkComplete(b"ok")
        assert seen[0] == seen[1] == job.handle
        with Conn(srv) as admin:
            rows = wait_for(lambda: len(listing(admin, "result unique gear-1")) == 2
                            and listing(admin, "result unique gear-1"),
                            what="both outcomes")
        assert [r[3] for r in rows] == [b"complete", b"exception"]
        assert base64.b64decode(rows[0][10]) == b"ok"
    finally:
        worker.shutdown()
        client.shutdown()


# --- the engine alone (fastgear.engine_harness): schedule, bounds, teardown -----------------

def _engine():
    from fastgear.engine_harness import EngineHarness
    return EngineHarness(b"H:t")


def _req(name, *fields):
    from fastgear import protocol as P
    return P.encode(P.NUMBERS[name], fields, request=True)


def _replies(h, conn):
    from fastgear import protocol as P
    pkts, rest = P.parse(h.output(conn))
    assert rest == b""
    return [(P.NAMES[t], f) for _, t, f in pkts]


def _freed(h):
    from fastgear.engine_harness import ALLOC_COUNTING
    leaked = h.close()
    if ALLOC_COUNTING:
        assert leaked == 0, f"{leaked} engine allocations were never freed"


def test_engine_retry_waits_its_backoff_in_the_timer_heap_and_doubles_to_the_cap():
    h = _engine()
    h.dead_letters(10, retries=3, backoff_ms=100, backoff_max_ms=250)
    c, w = h.connect(), h.connect()
    h.feed(w, _req("CAN_DO", b"f"))
    h.feed(c, _req("SUBMIT_JOB_BG", b"f", b"", b"x"))
    handle = _replies(h, c)[0][1][0]
    for full in (100, 200, 250):
        h.feed(w, _req("GRAB_JOB_UNIQ"))
        assert _replies(h, w)[0][1][0] == handle
        h.feed(w, _req("WORK_FAIL", handle))
        h.advance(full * 3 // 4 - 1)      # jitter takes at most a quarter off
        h.feed(w, _req("GRAB_JOB_UNIQ"))
        assert _replies(h, w) == [("NO_JOB", [])]
        h.advance(full - full * 3 // 4 + 1)
    h.feed(w, _req("GRAB_JOB_UNIQ"))
    assert _replies(h, w)[0][1][0] == handle
    h.feed(w, _req("WORK_FAIL", handle))
    assert h.dead_counts()[0] == 1
    _freed(h)


def test_engine_100000_failures_keep_the_dead_letters_within_their_bounds():
    h = _engine()
    h.dead_letters(1000, max_bytes=200 << 10)
    c, w = h.connect(), h.connect()
    h.feed(w, _req("CAN_DO", b"f"))
    batch = 1000
    submits = _req("SUBMIT_JOB_BG", b"f", b"", b"p" * 64) * batch
    grabs = _req("GRAB_JOB") * batch
    for _ in range(100):
        h.feed(c, submits)
        handles = [f[0] for _, f in _replies(h, c)]
        h.feed(w, grabs)
        h.output(w)
        h.feed(w, b"".join(_req("WORK_FAIL", x) for x in handles))
        count, nbytes, added, evicted = h.dead_counts()
        assert count <= 1000 and nbytes <= 200 << 10
    count, nbytes, added, evicted = h.dead_counts()
    assert added == 100000 and added - evicted == count
    assert 500 < count <= 1000
    _freed(h)


def test_engine_teardown_frees_pending_dead_letters_and_jobs_waiting_to_retry():
    h = _engine()
    h.dead_letters(10, retries=1, backoff_ms=60000)
    h.set_durable(True)
    c, w = h.connect(), h.connect()
    h.feed(w, _req("CAN_DO", b"f"))
    h.set_durable(False)
    for _ in range(2):
        h.feed(c, _req("SUBMIT_JOB_BG", b"f", b"", b"x"))
    handles = [f[0] for _, f in _replies(h, c)]
    h.set_durable(True)                  # dead letters go on the store's list from now
    for handle in handles:
        h.feed(w, _req("GRAB_JOB_UNIQ") + _req("WORK_FAIL", handle))
    h.output(w)
    h.advance(60001)
    h.feed(w, _req("GRAB_JOB_UNIQ"))
    handle = _replies(h, w)[0][1][0]
    h.feed(w, _req("WORK_FAIL", handle))
    assert h.dead_counts()[0] == 1       # one dead, one still waiting for its retry
    _freed(h)


# --- the other interfaces: HTTP, `fastgear admin`, metrics ------------------------------------

def _http(srv, method, path, headers=None):
    import http.client
    import json
    conn = http.client.HTTPConnection(*srv.http, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        res = conn.getresponse()
        return res.status, json.loads(res.read() or b"null")
    finally:
        conn.close()


def _fail_some(srv, jobs):
    """Submit (function, data, unique) background jobs and fail each once; handles."""
    with Conn(srv) as client, Conn(srv) as worker:
        handles = []
        for function, data, unique in jobs:
            worker.send(CAN_DO, function)
            handles.append(client.submit(function, data, unique, kind=SUBMIT_JOB_BG))
            run_next(worker, WORK_EXCEPTION, b"err " + data)
        return handles


def test_dead_letters_over_http_list_show_requeue_and_discard(start_server):
    from urllib.parse import quote

    from conftest import free_port
    port = free_port()
    srv = start_server("fastgear", "--monitor", f"127.0.0.1:{port}",
                       "--job-handle-prefix", "H:a/b")
    srv.http = ("127.0.0.1", port)
    from test_monitor import _answers
    wait_for(lambda: _answers(srv.http), what="the monitor")
    h = _fail_some(srv, [(b"f", b"one", b"k1"), (b"f", b"two\xff", b"k2"),
                         (b"g", b"three", b"k3")])
    code, doc = _http(srv, "GET", "/dead")
    assert code == 200 and doc["count"] == 3
    assert [d["handle"] for d in doc["dead"]] == [x.decode() for x in reversed(h)]
    assert doc["dead"][1]["data"] is None and doc["dead"][1]["data_base64"] == "dHdv/w=="
    code, doc = _http(srv, "GET", "/dead?function=g")
    assert [(d["function"], d["reason"], d["error"], d["attempts"]) for d in doc["dead"]] \
        == [("g", "exception", "err three", 1)]
    code, page = _http(srv, "GET", "/dead?limit=2")
    code, rest = _http(srv, "GET", f"/dead?limit=2&before={page['next']}")
    assert [d["handle"] for d in page["dead"] + rest["dead"]] == \
        [x.decode() for x in reversed(h)]
    one = "/dead/" + quote(h[0].decode(), safe="")
    code, doc = _http(srv, "GET", one)
    assert (code, doc["data"], doc["unique"]) == (200, "one", "k1")
    assert _http(srv, "POST", one + "/requeue",
                 headers={"Origin": "http://evil.example"})[0] == 403
    code, doc = _http(srv, "POST", one + "/requeue")
    assert code == 200 and doc["new_handle"] not in (None, h[0].decode())
    assert _http(srv, "POST", one + "/requeue")[0] == 404
    code, doc = _http(srv, "POST", "/dead/requeue?function=f")
    assert (code, doc["requeued"]) == (200, 1)
    assert _http(srv, "DELETE", "/dead/" + quote(h[2].decode(), safe=""))[0] == 200
    assert _http(srv, "DELETE", "/dead/" + quote(h[2].decode(), safe=""))[0] == 404
    assert _http(srv, "GET", "/dead")[1]["count"] == 0
    assert _http(srv, "POST", "/status")[0] == 405
    with Conn(srv) as worker:
        worker.send(CAN_DO, b"f")
        assert sorted(run_next(worker, WORK_COMPLETE)[2] for _ in range(2)) == [b"k1", b"k2"]

    def metrics():
        import http.client
        conn = http.client.HTTPConnection(*srv.http, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text
    wait_for(lambda: 'fastgear_jobs_requeued_total{function="f"} 2' in metrics(),
             what="the requeue counter")
    text = metrics()
    assert 'fastgear_jobs_dead_lettered_total{function="f"} 2' in text
    assert 'fastgear_jobs_dead_lettered_total{function="g"} 1' in text
    assert "fastgear_dead_letters 0" in text
    assert 'fastgear_jobs_bg_retries_total{function="f"} 0' in text


def test_fastgear_admin_lists_requeues_and_discards_dead_letters(start_server):
    import json
    import subprocess
    import sys

    def admin(*args):
        res = subprocess.run([sys.executable, "-m", "fastgear", "admin", "-h", srv.host,
                              "-p", str(srv.port), *args], capture_output=True,
                             timeout=30, check=False)
        return res.returncode, res.stdout
    srv = start_server("fastgear")
    h = _fail_some(srv, [(b"f", b"one", b"k1"), (b"g", b"two", b"k2"), (b"g", b"3", b"k3")])
    rc, out = admin("--dead", "--function", "g", "--json")
    rows = json.loads(out)
    assert rc == 0 and [r["handle"] for r in rows] == [h[2].decode(), h[1].decode()]
    assert rows[0]["error"] == "err 3" and rows[0]["reason"] == "exception"
    rc, out = admin("--dead")
    assert rc == 0 and out.count(b"\n") == 4 and out.endswith(b".\n")
    rc, out = admin("--requeue-dead", h[0].decode())
    assert rc == 0 and out.startswith(b"H:") and out.strip() != h[0]
    rc, out = admin("--requeue-dead-function", "g", "--json")
    assert rc == 0 and json.loads(out)["requeued"] == 2
    rc, out = admin("--discard-dead", h[0].decode())
    assert rc == 1
    rc, out = admin("--dead", "--json")
    assert (rc, json.loads(out)) == (0, [])
