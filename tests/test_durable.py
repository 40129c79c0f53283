"""Durable background jobs under crashes, restarts and store failures (issue 5).

The at-least-once contract of fastgear's store (`--store PATH`, or gearmand's
`-q libsqlite3 --libsqlite3-db PATH`):

* A background job is acknowledged (JOB_CREATED) only after its row is committed. After
  any crash, SIGKILL included, every acknowledged job is replayed at start-up unless its
  completion had been committed, so it runs at least once.
* Rows are deleted when jobs end, in the store thread's next group commit, together with
  the rows added meanwhile. A completion is therefore *confirmed* once the server has
  handled the WORK_COMPLETE (the worker saw the answer to its next GRAB_JOB) and some
  submit sent after that moment has been acknowledged: that acknowledgement's commit
  carried the delete too. A job may run a second time after a restart only if it was
  assigned to a worker (JOB_ASSIGN seen) before the crash and its completion was not
  confirmed: it was running, or had just completed, when the server died.
* Jobs that were committed but whose JOB_CREATED never reached the client may also be
  replayed; no job that nobody submitted ever is.

gearmand 1.1.20's sqlite queue keys rows by (unique_key, function_name): background jobs
with an empty or equal unique key share one row, so a crash loses all but one of them and
completing one deletes the row of the others (PROTOCOL.md §6). The gearmand tests below
pin that loss next to fastgear's behaviour in the same scenario.
"""
import collections
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import free_port, need_gearmand, wait_for
from gearproto import (
    ECHO_REQ,
    ECHO_RES,
    ERROR,
    GRAB_JOB,
    JOB_ASSIGN,
    JOB_CREATED,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_EPOCH,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW_BG,
    WORK_COMPLETE,
    WORK_EXCEPTION,
    WORK_FAIL,
    Closed,
    Conn,
    drain,
    packet,
    status_table,
)

PRIORITY = {SUBMIT_JOB_HIGH_BG: 0, SUBMIT_JOB_BG: 1, SUBMIT_JOB_LOW_BG: 2}


def store_flags(db):
    return ("-q", "libsqlite3", "--libsqlite3-db", str(db))


def table_rows(db, table="gearman_queue"):
    """(unique_key, function_name, priority, data, when_to_run) per row, in rowid order."""
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT unique_key, function_name, priority, data, when_to_run "
                           f"FROM {table} ORDER BY rowid").fetchall()


def row_count(db, table="gearman_queue"):
    with sqlite3.connect(db) as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def as_bytes(value):
    return value if isinstance(value, bytes) else str(value).encode()




def total_jobs(srv, func):
    with Conn(srv) as c:
        return status_table(c).get(func, (0, 0, 0))[0]


# -- 1. SIGKILL under load -------------------------------------------------------------

LOAD_FUNC = b"durable"
CLIENTS, BATCH = 3, 100
LOADED_ACKS, LOADED_DONE = 3000, 100       # acknowledged and completed before the kill
WORKERS = 3


class ClientRun(threading.Thread):
    """Submits background jobs with empty unique keys, pipelined in batches (at most two
    batches unanswered), until the server dies (then sets `cut_off`) or `stop` is set, so
    the kill always comes mid-run however fast the machine is. Records every payload sent
    in `payloads`, payload -> (handle, monotonic time the submit was sent) for every
    JOB_CREATED, and payloads that got an ERROR."""

    def __init__(self, srv, idx, stop):
        super().__init__(daemon=True)
        self.conn = Conn(srv)
        self.idx = idx
        self.payloads = []
        self.stop_event = stop
        self.acked = {}
        self.errors = []
        self.cut_off = False

    def run(self):
        inflight = collections.deque()
        try:
            while not self.stop_event.is_set():
                if len(inflight) < 2 * BATCH:
                    start = len(self.payloads)
                    chunk = [b"c%d-%06d" % (self.idx, i) for i in range(start, start + BATCH)]
                    self.payloads.extend(chunk)
                    t_sent = time.monotonic()
                    self.conn.send_raw(b"".join(
                        packet(SUBMIT_JOB_BG, LOAD_FUNC, b"", p) for p in chunk))
                    inflight.extend((p, t_sent) for p in chunk)
                    continue
                try:
                    t, args = self.conn.recv(timeout=0.5)
                except TimeoutError:
                    continue
                payload, t_sent = inflight.popleft()
                if t == JOB_CREATED:
                    self.acked[payload] = (args[0], t_sent)
                else:
                    self.errors.append((payload, t, args))
        except (Closed, OSError):
            self.cut_off = True                    # the server was killed
        finally:
            self.conn.close()


class WorkerRun(threading.Thread):
    """Grabs and completes jobs one at a time, WORK_COMPLETE and the next GRAB_JOB in
    one write. Records assigned payload -> handle, completed payloads (WORK_COMPLETE
    sent), and for each completion the monotonic time by which the server had handled
    it (the reply to the following GRAB_JOB arrived). Once `hold` is set it completes
    the job it has and grabs no more, so a backlog builds whatever the machine's speed."""

    def __init__(self, srv, stop):
        super().__init__(daemon=True)
        self.conn = Conn(srv).worker(LOAD_FUNC)
        self.stop_event = stop
        self.hold = threading.Event()
        self.assigned = {}
        self.completed = []
        self.handled_at = {}
        self.unexpected = []

    def run(self):
        previous = None
        try:
            self.conn.send(GRAB_JOB)
            while True:
                try:
                    t, args = self.conn.recv(timeout=0.5)
                except TimeoutError:
                    if self.stop_event.is_set():
                        return
                    continue
                if t == NOOP:
                    if not self.hold.is_set():
                        self.conn.send(GRAB_JOB)
                    continue
                if previous is not None:
                    self.handled_at[previous] = time.monotonic()
                    previous = None
                if t == NO_JOB:
                    self.conn.send(PRE_SLEEP)     # woken by NOOP when work arrives
                    continue
                if t != JOB_ASSIGN:
                    self.unexpected.append((t, args))
                    return
                handle, _func, payload = args
                self.assigned[payload] = handle
                self.completed.append(payload)
                previous = payload
                self.conn.send_raw(packet(WORK_COMPLETE, handle, b"")
                                   + (b"" if self.hold.is_set() else packet(GRAB_JOB)))
        except (Closed, OSError):
            pass
        finally:
            self.conn.close()


def test_sigkill_under_load_runs_every_acknowledged_job_at_least_once(start_server, tmp_path):
    db = tmp_path / "load.db"
    srv = start_server("fastgear", "--store", str(db))
    stop = threading.Event()
    workers = [WorkerRun(srv, stop) for _ in range(WORKERS)]
    clients = [ClientRun(srv, i, stop) for i in range(CLIENTS)]
    threads = workers + clients
    try:
        for t in threads:
            t.start()

        def loaded():
            acked = sum(len(c.acked) for c in clients)
            done = sum(len(w.completed) for w in workers)
            return acked >= LOADED_ACKS and done >= LOADED_DONE
        wait_for(loaded, timeout=60, what=f"{LOADED_ACKS} jobs acknowledged, {LOADED_DONE} done")
        srv.stop(signal.SIGKILL)
        for t in clients:
            t.join(15)                             # the kill ends them, not `stop`
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not any(t.is_alive() for t in threads)

    submitted = {p for c in clients for p in c.payloads}
    acked = {p: v for c in clients for p, v in c.acked.items()}
    assigned = {p: h for w in workers for p, h in w.assigned.items()}
    completed = {p for w in workers for p in w.completed}
    handled_at = {p: t for w in workers for p, t in w.handled_at.items()}
    assert not [e for c in clients for e in c.errors], "a submit was refused"
    assert not [u for w in workers for u in w.unexpected], "a worker got a stray reply"
    assert all(c.cut_off for c in clients), "a client stopped before the kill, not by it"
    # JOB_CREATED answers come in submission order: the handle a client got for a payload
    # is the handle the worker saw with it.
    assert all(acked[p][0] == h for p, h in assigned.items() if p in acked)

    last_ack_sent = max(t for _h, t in acked.values())
    confirmed = {p for p, t in handled_at.items() if t < last_ack_sent}

    again = start_server("fastgear", "--store", str(db))
    rerun = drain(again, LOAD_FUNC, limit=len(submitted) + 100)
    assert len(rerun) == len(set(rerun)), "a replayed job was handed out twice"
    assert set(rerun) <= submitted, "a job nobody submitted was replayed"
    lost = set(acked) - completed - set(rerun)
    assert not lost, f"{len(lost)} acknowledged jobs never ran, e.g. {sorted(lost)[:5]}"
    twice = set(rerun) & completed
    assert twice <= set(assigned) - confirmed, (
        f"{len(twice - (set(assigned) - confirmed))} jobs ran again although their "
        f"completion was confirmed before the kill")
    # Mid-run really means mid-run: some acknowledged jobs were still waiting.
    assert set(rerun) - completed
    wait_for(lambda: row_count(db) == 0, what="every replayed row deleted once run")


# -- 2. the same crash against gearmand -q libsqlite3 ------------------------------------

@pytest.mark.parametrize("kind, replayed", [("fastgear", 20), ("gearmand", 1)])
def test_sigkill_keeps_every_empty_unique_background_job_only_in_fastgear(
        start_server, tmp_path, kind, replayed):
    """20 acknowledged background jobs with an empty unique key, then SIGKILL: gearmand's
    rows share the key ('', function) and each overwrote the previous one, so it replays
    one job and 19 acknowledged jobs are lost; fastgear replays all 20."""
    db = tmp_path / f"{kind}.db"
    srv = start_server(kind, *store_flags(db))
    with Conn(srv) as c:
        handles = [c.submit(b"lost", b"job%02d" % i, kind=SUBMIT_JOB_BG) for i in range(20)]
    assert len(set(handles)) == 20          # both servers acknowledged 20 separate jobs
    assert row_count(db) == replayed
    srv.stop(signal.SIGKILL)
    again = start_server(kind, *store_flags(db))
    assert total_jobs(again, b"lost") == replayed
    ran = drain(again, b"lost")
    assert len(ran) == replayed
    if kind == "gearmand":
        assert ran == [b"job19"]                # the last write won
    else:
        assert ran == [b"job%02d" % i for i in range(20)]


@pytest.mark.parametrize("kind, left", [("fastgear", 2), ("gearmand", 0)])
def test_completing_one_empty_unique_job_deletes_only_its_own_row(
        start_server, tmp_path, kind, left):
    """Three acknowledged empty-unique jobs; a worker completes one; SIGKILL. gearmand's
    delete (WHERE unique_key='' AND function_name=?) removes the shared row, so the two
    jobs still queued are gone after the restart; fastgear replays both."""
    db = tmp_path / f"{kind}.db"
    srv = start_server(kind, *store_flags(db))
    with Conn(srv) as c:
        for i in range(3):
            c.submit(b"shared", b"s%d" % i, kind=SUBMIT_JOB_BG)
    with Conn(srv) as w:
        w.worker(b"shared")
        t, args = w.grab(GRAB_JOB)
        assert t == JOB_ASSIGN and args[2] == b"s0"
        w.send(WORK_COMPLETE, args[0], b"")
        w.echo()
    wait_for(lambda: total_jobs(srv, b"shared") == 2, what="completion handled")
    wait_for(lambda: row_count(db) == left, what=f"{left} rows left")
    srv.stop(signal.SIGKILL)
    again = start_server(kind, *store_flags(db))
    assert sorted(drain(again, b"shared")) == [b"s1", b"s2"][:left]


# -- 3. replay order ---------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_replay_runs_high_then_normal_then_low_fifo_within_each(start_server, tmp_path, sig):
    db = tmp_path / "order.db"
    srv = start_server("fastgear", "--store", str(db))
    rng = random.Random(5)
    submitted = []
    with Conn(srv) as c:
        for i in range(60):
            kind = rng.choice(list(PRIORITY))
            c.submit(b"order", b"j%02d" % i, kind=kind)
            submitted.append((PRIORITY[kind], b"j%02d" % i))
    assert srv.stop(sig) is not None
    again = start_server("fastgear", "--store", str(db))
    expected = [p for _prio, p in sorted(submitted, key=lambda x: x[0])]   # stable sort
    assert drain(again, b"order") == expected


# -- 4. epoch jobs -------------------------------------------------------------------------

def test_epoch_job_survives_a_restart_and_runs_at_its_time_not_before(start_server, tmp_path):
    db = tmp_path / "epoch.db"
    t0 = time.monotonic()
    srv = start_server("fastgear", "--store", str(db))
    start_s = time.monotonic() - t0
    # The job's time leaves room for the restart below, sized by the start just measured,
    # so the "not before its time" check runs before it on any machine.
    when = int(time.time() + 1 + 4 * start_s) + 1
    with Conn(srv) as c:
        c.send(SUBMIT_JOB_EPOCH, b"ep", b"", str(when).encode(), b"later")
        assert c.expect(JOB_CREATED)
        c.submit(b"ep", b"now", kind=SUBMIT_JOB_BG)
    assert [(r[3], r[4]) for r in table_rows(db)] == [(b"later", when), (b"now", 0)]
    srv.stop(signal.SIGKILL)
    again = start_server("fastgear", "--store", str(db))
    with Conn(again) as w:
        w.worker(b"ep")
        t, args = w.grab(GRAB_JOB)
        assert t == JOB_ASSIGN and args[2] == b"now"
        w.send(WORK_COMPLETE, args[0], b"")
        assert time.time() < when, "the test machine is too slow for this check"
        assert w.grab(GRAB_JOB)[0] == NO_JOB          # not before its time
        assert total_jobs(again, b"ep") == 1

        def due():
            reply = w.grab(GRAB_JOB)
            return reply if reply[0] == JOB_ASSIGN else None
        t, args = wait_for(due, timeout=when - time.time() + 10, interval=0.05,
                           what="the epoch job to run")
        assert args[2] == b"later" and time.time() >= when - 0.01
        w.send(WORK_COMPLETE, args[0], b"")
        w.echo()
    wait_for(lambda: row_count(db) == 0, what="epoch row deleted")


# -- 5. empty and repeated unique keys --------------------------------------------------------

def test_empty_uniques_are_stored_apart_and_equal_uniques_coalesce_across_restart(
        start_server, tmp_path):
    db = tmp_path / "unique.db"
    srv = start_server("fastgear", "--store", str(db))
    with Conn(srv) as c:
        e1 = c.submit(b"u", b"empty1", kind=SUBMIT_JOB_BG)
        e2 = c.submit(b"u", b"empty2", kind=SUBMIT_JOB_BG)
        s1 = c.submit(b"u", b"same1", unique=b"same", kind=SUBMIT_JOB_BG)
        s2 = c.submit(b"u", b"same2", unique=b"same", kind=SUBMIT_JOB_BG)
    assert e1 != e2 and s1 == s2
    assert [(r[0], r[3]) for r in table_rows(db)] == [
        (b"", b"empty1"), (b"", b"empty2"), (b"same", b"same1")]
    srv.stop(signal.SIGKILL)
    again = start_server("fastgear", "--store", str(db))
    with Conn(again) as c:
        assert status_table(c)[b"u"][0] == 3
        # The replayed job still owns its unique key: a new submit joins it.
        c.submit(b"u", b"same3", unique=b"same", kind=SUBMIT_JOB_BG)
        assert status_table(c)[b"u"][0] == 3
    assert row_count(db) == 3
    assert drain(again, b"u") == [b"empty1", b"empty2", b"same1"]
    wait_for(lambda: row_count(db) == 0, what="rows deleted")


# -- 6. a queue file written by gearmand --------------------------------------------------------

def test_a_queue_file_written_by_gearmand_replays_and_is_migrated(start_server, tmp_path):
    need_gearmand()
    db = tmp_path / "gearmand.db"
    flags = store_flags(db) + ("--libsqlite3-table", "legacy")
    later = int(time.time()) + 3600
    gd = start_server("gearmand", *flags)
    with Conn(gd) as c:
        c.submit(b"old", b"low", unique=b"k-low", kind=SUBMIT_JOB_LOW_BG)
        c.submit(b"old", b"normal", unique=b"k-normal", kind=SUBMIT_JOB_BG)
        c.submit(b"old", b"high", unique=b"k-high", kind=SUBMIT_JOB_HIGH_BG)
        c.submit(b"old", b"empty", kind=SUBMIT_JOB_BG)
        c.send(SUBMIT_JOB_EPOCH, b"old", b"k-epoch", str(later).encode(), b"epoch")
        assert c.expect(JOB_CREATED)
    assert gd.stop() == 0
    with sqlite3.connect(db) as con:
        schema = con.execute("SELECT sql FROM sqlite_master WHERE name='legacy'").fetchone()[0]
    assert "PRIMARY KEY" in schema.upper()          # really gearmand's layout
    gearmand_rows = sorted(table_rows(db, "legacy"))
    assert len(gearmand_rows) == 5

    srv = start_server("fastgear", *flags)
    with Conn(srv) as c:
        assert status_table(c)[b"old"][0] == 5
    assert sorted(table_rows(db, "legacy")) == gearmand_rows    # rows kept as they were
    with sqlite3.connect(db) as con:
        schema = con.execute("SELECT sql FROM sqlite_master WHERE name='legacy'").fetchone()[0]
    assert "PRIMARY KEY" not in schema.upper()
    # Priorities replayed; the epoch job keeps its time (far in the future).
    ran = drain(srv, b"old")
    assert ran[0] == b"high" and ran[-1] == b"low" and sorted(ran) == [
        b"empty", b"high", b"low", b"normal"]
    wait_for(lambda: row_count(db, "legacy") == 1, what="completed rows deleted")
    assert table_rows(db, "legacy")[0][3:] == (b"epoch", later)
    # The migrated table no longer merges empty unique keys.
    with Conn(srv) as c:
        c.submit(b"new", b"a", kind=SUBMIT_JOB_BG)
        c.submit(b"new", b"b", kind=SUBMIT_JOB_BG)
    assert row_count(db, "legacy") == 3


# -- 7. unusable store paths ----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing-directory", "path-is-a-directory", "not-a-database"])
def test_unusable_store_path_stops_start_up_with_a_message_naming_the_file(tmp_path, case):
    if case == "missing-directory":
        path = tmp_path / "no-such-dir" / "jobs.db"
    elif case == "path-is-a-directory":
        path = tmp_path / "a-directory"
        path.mkdir()
    else:
        path = tmp_path / "garbage.db"
        path.write_bytes(b"this is not an SQLite file\n" * 200)
    port = free_port()
    res = subprocess.run(
        [sys.executable, "-m", "fastgear", "serve", "-p", str(port), "-L", "127.0.0.1",
         "--log-file", "none", "-P", str(tmp_path / "pid"), "--store", str(path)],
        capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path)
    assert res.returncode != 0
    assert str(path) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "pid").exists()


# -- 8. full disk ----------------------------------------------------------------------------------

FSIZE_LIMIT = 256 * 1024


# Run in the child before fastgear starts: an ignored SIGXFSZ survives exec, so writes past
# the limit fail with EFBIG instead of killing the process; only the soft limit is set, so
# the test can lift it again (prlimit) without privileges.
LIMITED_LAUNCHER = (
    "import os, resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'fastgear', 'serve'] + sys.argv[2:])\n"
)


@pytest.fixture
def limited_server(tmp_path):
    """fastgear with --store under RLIMIT_FSIZE (a 'disk' of FSIZE_LIMIT bytes per file);
    yields (proc, port, db); stopped by PID at teardown."""
    db = tmp_path / "full.db"
    port = free_port()
    out = open(tmp_path / "limited.out", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-c", LIMITED_LAUNCHER, str(FSIZE_LIMIT), "-p", str(port),
         "-L", "127.0.0.1", "--log-file", "stderr", "-P", str(tmp_path / "limited.pid"),
         "--store", str(db)],
        stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)

    def listening():
        assert proc.poll() is None, (tmp_path / "limited.out").read_text()
        try:
            Conn("127.0.0.1", port).close()
            return True
        except OSError:
            return False
    try:
        wait_for(listening, timeout=15, what="fastgear to listen")
        yield proc, port, db
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        out.close()


def test_full_disk_gives_queue_error_and_the_server_keeps_serving(limited_server):
    proc, port, db = limited_server
    payload = os.urandom(40 * 1024)
    with Conn("127.0.0.1", port) as client, Conn("127.0.0.1", port) as other:
        accepted = []
        error = None
        for i in range(2 * FSIZE_LIMIT // len(payload) + 2):
            client.send(SUBMIT_JOB_BG, b"big", b"", b"%03d" % i + payload)
            t, args = client.recv(timeout=15)
            if t == ERROR:
                error = args
                break
            assert t == JOB_CREATED
            accepted.append(args[0])
        assert error is not None, "the file size limit was never hit"
        assert error[0] == b"QUEUE_ERROR" and error[1], error
        assert accepted, "the limit hit before the first job: nothing to compare with"
        # The connection that got the error, and another one, keep working.
        client.echo()
        client.send(SUBMIT_JOB_BG, b"big", b"", b"again" + payload)
        assert client.recv(timeout=15)[0] == ERROR
        other.echo(b"still there")
        assert status_table(other)[b"big"][0] == len(accepted)
        # Foreground jobs are never stored: they run as usual.
        with Conn("127.0.0.1", port) as w:
            w.worker(b"fg")
            other.send(SUBMIT_JOB, b"fg", b"", b"ping")
            fg_handle = other.expect(JOB_CREATED)[0]
            t, args = w.grab(GRAB_JOB)
            assert t == JOB_ASSIGN and args[0] == fg_handle
            w.send(WORK_COMPLETE, fg_handle, b"pong")
            assert other.expect(WORK_COMPLETE) == [fg_handle, b"pong"]
        # Acknowledged jobs are still in memory and still run.
        with Conn("127.0.0.1", port) as w:
            w.worker(b"big")
            t, args = w.grab(GRAB_JOB)
            assert t == JOB_ASSIGN and args[2].startswith(b"000")
        assert proc.poll() is None
        # Room again: the server retries and acknowledges new jobs.
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        client.send(SUBMIT_JOB_BG, b"big", b"", b"after")
        assert client.recv(timeout=15)[0] == JOB_CREATED
        client.send_raw(packet(ECHO_REQ, b"x"))
        assert client.expect(ECHO_RES) == [b"x"]
    assert proc.poll() is None
    assert b"after" in [r[3] for r in table_rows(db)]


# -- 9. rows go when jobs end ---------------------------------------------------------------------

@pytest.mark.parametrize("how", ["complete", "fail", "exception", "cancel", "retry-limit"])
def test_row_is_deleted_when_its_job_ends(start_server, tmp_path, how):
    db = tmp_path / "ends.db"
    flags = ("-j", "1") if how == "retry-limit" else ()
    srv = start_server("fastgear", "--store", str(db), *flags)
    with Conn(srv) as c:
        handle = c.submit(b"end", b"goes", kind=SUBMIT_JOB_BG)
        c.submit(b"stay", b"stays", kind=SUBMIT_JOB_BG)
        assert row_count(db) == 2
        if how == "cancel":
            assert c.admin(b"cancel job " + handle) == b"OK\r\n"
        else:
            with Conn(srv) as w:
                w.worker(b"end")
                t, args = w.grab(GRAB_JOB)
                assert t == JOB_ASSIGN and args[0] == handle
                if how == "complete":
                    w.send(WORK_COMPLETE, handle, b"")
                elif how == "fail":
                    w.send(WORK_FAIL, handle)
                elif how == "exception":
                    w.send(WORK_EXCEPTION, handle, b"boom")
                if how != "retry-limit":
                    w.echo()
            # retry-limit: the worker vanished holding the job, its one attempt used.
        wait_for(lambda: total_jobs(srv, b"end") == 0, what="the job to end")
    wait_for(lambda: row_count(db) == 1, what="its row deleted")
    assert [r[3] for r in table_rows(db)] == [b"stays"]
    srv.stop(signal.SIGKILL)
    again = start_server("fastgear", "--store", str(db))
    assert total_jobs(again, b"end") == 0 and total_jobs(again, b"stay") == 1


def test_store_write_failure_gives_queue_error_and_keeps_serving(start_server, tmp_path):
    """A database held locked by another process: submitters get ERROR QUEUE_ERROR with
    SQLite's message after the busy timeout, the server keeps serving, and the next
    commit succeeds once the lock is gone."""
    db = tmp_path / "jobs.db"
    srv = start_server("fastgear", "--store", str(db))
    with Conn(srv) as c:
        c.submit(b"f", b"ok", kind=SUBMIT_JOB_BG)
        # Make the database read-only under the server's feet.
        with sqlite3.connect(db) as other:
            other.execute("PRAGMA query_only=0")
            other.execute("BEGIN EXCLUSIVE")
            c.send(SUBMIT_JOB_BG, b"f", b"", b"refused")
            t, args = c.recv(timeout=15)
            other.execute("ROLLBACK")
        assert t == ERROR and args[0] == b"QUEUE_ERROR"
        c.echo()                                   # the server is still there
        assert c.submit(b"f", b"after", kind=SUBMIT_JOB_BG)
