"""The embedded SQLite store (`--store PATH`, gearmand's `-q libsqlite3`).

Contract under test (README, "Durable background jobs"): a background job is
acknowledged (JOB_CREATED) only once its row is committed; after any crash, SIGKILL
included, every acknowledged job runs again after restart unless its completion had
been committed -- at least once: a job that was running or had just completed at the
moment of the crash may run twice. Rows go when jobs end; replay is FIFO per priority;
empty and equal unique keys never overwrite each other; gearmand's queue files load.
"""
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import free_port, wait_for
from gearproto import (
    ERROR,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN_UNIQ,
    JOB_CREATED,
    NO_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_EPOCH,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW_BG,
    WORK_COMPLETE,
    Conn,
    packet,
    status_table,
)


def rows(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM gearman_queue").fetchone()[0]


def drain(srv, func, limit=100000):
    """Grab and complete every job of func; returns the payloads in grab order."""
    done = []
    with Conn(srv) as w:
        w.worker(func)
        for _ in range(limit):
            t, args = w.grab(GRAB_JOB_UNIQ)
            if t == NO_JOB:
                break
            assert t == JOB_ASSIGN_UNIQ
            w.send(WORK_COMPLETE, args[0], b"")
            done.append(args[3])
        w.echo()
    return done


def test_background_jobs_survive_a_sigkill_at_least_once(start_server, tmp_path):
    db = str(tmp_path / "jobs.db")
    srv = start_server("fastgear", "--store", db)
    acked, completed = [], set()
    with Conn(srv) as client, Conn(srv) as worker:
        worker.worker(b"crash")
        for batch in range(20):
            payloads = [b"p%d-%d" % (batch, i) for i in range(100)]
            client.send_raw(b"".join(
                packet(SUBMIT_JOB_BG, b"crash", b"", p) for p in payloads))
            for p in payloads:
                assert client.recv()[0] == JOB_CREATED
                acked.append(p)
            for _ in range(50):        # workers keep up with half of it
                t, args = worker.grab(GRAB_JOB_UNIQ)
                if t != JOB_ASSIGN_UNIQ:
                    break
                worker.send(WORK_COMPLETE, args[0], b"")
                completed.add(args[3])
        # SIGKILL: no chance to flush anything.
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
    again = start_server("fastgear", "--store", db)
    rerun = drain(again, b"crash")
    missing = set(acked) - completed - set(rerun)
    assert not missing, f"{len(missing)} acknowledged jobs lost"
    assert set(rerun) <= set(acked), "a job nobody submitted was replayed"
    assert len(rerun) == len(set(rerun)), "a replayed job ran twice after the restart"
    # Jobs can run twice only if their completion was not committed before the kill:
    # at most the completions of the last round (50) were still in flight.
    assert len(set(rerun) & completed) <= 50
    wait_for(lambda: rows(db) == 0, what="rows deleted after completion")


def test_replay_keeps_priority_and_fifo_order(start_server, tmp_path):
    db = str(tmp_path / "jobs.db")
    srv = start_server("fastgear", "--store", db)
    with Conn(srv) as c:
        for kind, data in [(SUBMIT_JOB_LOW_BG, b"low1"), (SUBMIT_JOB_BG, b"n1"),
                           (SUBMIT_JOB_HIGH_BG, b"high1"), (SUBMIT_JOB_BG, b"n2"),
                           (SUBMIT_JOB_LOW_BG, b"low2"), (SUBMIT_JOB_HIGH_BG, b"high2")]:
            c.submit(b"order", data, kind=kind)
    srv.stop(signal.SIGKILL)
    again = start_server("fastgear", "--store", db)
    assert drain(again, b"order") == [b"high1", b"high2", b"n1", b"n2", b"low1", b"low2"]


def test_jobs_with_empty_or_equal_unique_keys_are_kept_apart_and_coalesced(
        start_server, tmp_path):
    db = str(tmp_path / "jobs.db")
    srv = start_server("fastgear", "--store", db)
    with Conn(srv) as c:
        a = c.submit(b"u", b"a", kind=SUBMIT_JOB_BG)
        b = c.submit(b"u", b"b", kind=SUBMIT_JOB_BG)
        s1 = c.submit(b"u", b"s1", unique=b"same", kind=SUBMIT_JOB_BG)
        s2 = c.submit(b"u", b"s2", unique=b"same", kind=SUBMIT_JOB_BG)
        assert a != b and s1 == s2
    assert rows(db) == 3
    srv.stop(signal.SIGKILL)
    again = start_server("fastgear", "--store", db)
    with Conn(again) as c:
        # Coalescing still works across the restart.
        c.submit(b"u", b"s3", unique=b"same", kind=SUBMIT_JOB_BG)
        assert status_table(c)[b"u"][0] == 3
    assert sorted(drain(again, b"u")) == [b"a", b"b", b"s1"]


def test_epoch_job_keeps_its_time_across_a_restart(start_server, tmp_path):
    db = str(tmp_path / "jobs.db")
    srv = start_server("fastgear", "--store", db)
    when = int(time.time()) + 3
    with Conn(srv) as c:
        c.send(SUBMIT_JOB_EPOCH, b"ep", b"", str(when).encode(), b"later")
        assert c.recv()[0] == JOB_CREATED
    srv.stop(signal.SIGKILL)
    again = start_server("fastgear", "--store", db)
    with Conn(again) as w:
        w.worker(b"ep")
        if time.time() < when - 0.5:
            assert w.grab(GRAB_JOB_UNIQ)[0] == NO_JOB
        def assigned():
            reply = w.grab(GRAB_JOB_UNIQ)
            return reply if reply[0] == JOB_ASSIGN_UNIQ else None
        got = wait_for(assigned, timeout=10, what="epoch job due")
        assert got[1][3] == b"later" and time.time() >= when - 0.01


def test_a_gearmand_queue_file_replays(start_server, tmp_path):
    db = str(tmp_path / "gearmand.db")
    gd = start_server("gearmand", "-q", "libsqlite3", "--libsqlite3-db", db)
    with Conn(gd) as c:
        for i in range(3):
            c.submit(b"old", b"job%d" % i, unique=b"k%d" % i, kind=SUBMIT_JOB_BG)
    gd.stop()
    srv = start_server("fastgear", "-q", "libsqlite3", "--libsqlite3-db", db)
    assert sorted(drain(srv, b"old")) == [b"job0", b"job1", b"job2"]


def test_unusable_store_path_is_a_clear_start_up_error(tmp_path):
    bad = tmp_path / "missing-dir" / "jobs.db"
    res = subprocess.run([sys.executable, "-m", "fastgear", "serve", "-p", str(free_port()),
                          "-L", "127.0.0.1", "--log-file", "none", "--store", str(bad)],
                         capture_output=True, text=True, timeout=30, check=False,
                         cwd=tmp_path)
    assert res.returncode == 1
    assert str(bad) in res.stderr


def test_store_write_failure_gives_queue_error_and_keeps_serving(start_server, tmp_path):
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


@pytest.mark.parametrize("how", ["complete", "cancel"])
def test_rows_are_deleted_when_jobs_end(start_server, tmp_path, how):
    db = str(tmp_path / "jobs.db")
    srv = start_server("fastgear", "--store", db)
    with Conn(srv) as c:
        h = c.submit(b"del", b"x", kind=SUBMIT_JOB_BG)
        assert rows(db) == 1
        if how == "complete":
            assert drain(srv, b"del") == [b"x"]
        else:
            assert c.admin(b"cancel job " + h) == b"OK\r\n"
    wait_for(lambda: rows(db) == 0, what="row deleted")


@pytest.mark.parametrize("kind, survivors", [("fastgear", 5), ("gearmand", 1)])
def test_crash_keeps_every_acknowledged_empty_unique_job_only_in_fastgear(
        start_server, tmp_path, kind, survivors):
    """The same crash against both servers: gearmand's table key (unique_key,
    function_name) makes background jobs with an empty unique overwrite each other, so
    after a SIGKILL it replays one of five acknowledged jobs."""
    db = str(tmp_path / f"{kind}.db")
    flags = ("-q", "libsqlite3", "--libsqlite3-db", db)
    srv = start_server(kind, *flags)
    with Conn(srv) as c:
        for i in range(5):
            c.submit(b"lost", b"job%d" % i, kind=SUBMIT_JOB_BG)
    srv.stop(signal.SIGKILL)
    again = start_server(kind, *flags)
    with Conn(again) as c:
        assert status_table(c).get(b"lost", (0,))[0] == survivors
