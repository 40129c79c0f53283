"""The MySQL / MariaDB store (`-q mysql`, gearmand's flags; issue 16) against a real
MariaDB.

One throw-away mariadbd for this file (tests/mariadb.py: mariadb-install-db into a
temporary folder, a free loopback port, an unprivileged user when run as root, MariaDB's
defaults: the log flushed at every commit), a database of its own per test. The
contract is the SQLite store's (tests/test_durable.py): JOB_CREATED only after the
commit, every acknowledged job replayed after SIGKILL, priorities and FIFO order kept,
jobs with empty or equal unique keys stored apart, payloads binary-safe, epoch times
kept, finished jobs never replayed. gearmand 1.1.20 writes the same database in the
gearmand test, and fastgear replays and migrates what it left.
"""
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import free_port, missing, need_gearmand, need_module, wait_for
from gearproto import (
    CAN_DO,
    ERROR,
    GRAB_JOB,
    JOB_ASSIGN,
    JOB_CREATED,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_EPOCH,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW_BG,
    WORK_COMPLETE,
    WORK_EXCEPTION,
    Closed,
    Conn,
    drain,
    packet,
    status_table,
)
from mariadb import MariaDB, binaries

# Small, so that the too-large job of the refusal test stays cheap to send.
MAX_ALLOWED_PACKET = 1 << 20


@pytest.fixture(scope="module")
def mdb():
    need_module("pymysql", pip="PyMySQL")
    if binaries() is None:
        missing("MariaDB (mariadb-install-db, mariadbd)", debian="mariadb-server")
    server = MariaDB(settings=[f"max-allowed-packet={MAX_ALLOWED_PACKET}"])
    try:
        server.start()
        yield server
    finally:
        server.stop()


_dbs = iter(range(1, 10_000))


@pytest.fixture
def db(mdb):
    name = f"fg{next(_dbs)}"
    mdb.add_database(name)
    return name


def rows(mdb, db, cols="unique_key, function_name, priority, data, when_to_run",
         table="gearman_queue"):
    return [tuple(r) for r in mdb.sql(f"SELECT {cols} FROM `{table}` ORDER BY id",
                                      database=db)]




# -- the kill-and-replay contract -------------------------------------------------------------

def test_sigkill_under_load_runs_every_acknowledged_job_at_least_once(mdb, db, start_server):
    from test_durable import LOAD_FUNC, ClientRun, WorkerRun
    flags = mdb.flags(db)
    srv = start_server("fastgear", *flags)
    stop = threading.Event()
    workers = [WorkerRun(srv, stop)]
    clients = [ClientRun(srv, i, stop) for i in range(3)]

    def loaded():
        acked = sum(len(c.acked) for c in clients)
        done = sum(len(w.completed) for w in workers)
        return acked >= 2000 and done >= 100 and acked - done >= 200
    try:
        for t in workers + clients:
            t.start()
        wait_for(loaded, timeout=60, what="jobs acknowledged, completed, and waiting")
        srv.stop(signal.SIGKILL)
        for t in clients:
            t.join(15)
    finally:
        stop.set()
        for t in workers + clients:
            t.join(15)
    assert all(c.cut_off for c in clients) and not any(c.errors for c in clients)
    submitted = {p for c in clients for p in c.payloads}
    acked = {p for c in clients for p in c.acked}
    completed = {p for w in workers for p in w.completed}
    again = start_server("fastgear", *flags)
    rerun = drain(again, LOAD_FUNC, limit=len(submitted))
    assert len(rerun) == len(set(rerun)) and set(rerun) <= submitted
    lost = acked - completed - set(rerun)
    assert not lost, f"{len(lost)} acknowledged jobs never ran, e.g. {sorted(lost)[:5]}"
    assert set(rerun) - completed, "the kill came after every job had run"
    wait_for(lambda: rows(mdb, db, "id") == [], what="replayed rows deleted once run")


def test_kill_and_replay_keeps_priorities_keys_payloads_and_epochs(mdb, db, start_server):
    """Priorities, FIFO order, empty and equal unique keys, NUL bytes, hyphens, an epoch
    job; one job completed before the first SIGKILL, the rest after the replay; a second
    SIGKILL replays only the epoch job, which has not run yet."""
    flags = mdb.flags(db)
    srv = start_server("fastgear", *flags)
    later = int(time.time()) + 3600
    binary = bytes(range(256)) + b"\\'\"\x00\x1a"
    with Conn(srv) as c:
        e1 = c.submit(b"fn-a-b", b"empty1\x00x", kind=SUBMIT_JOB_BG)
        e2 = c.submit(b"fn-a-b", b"empty2", kind=SUBMIT_JOB_BG)
        c.submit(b"fn-a-b", b"low", unique=b"k-low", kind=SUBMIT_JOB_LOW_BG)
        s1 = c.submit(b"fn-a-b", b"same1", unique=b"same-key", kind=SUBMIT_JOB_BG)
        s2 = c.submit(b"fn-a-b", b"same2", unique=b"same-key", kind=SUBMIT_JOB_BG)
        c.submit(b"fn-a-b", b"high", unique=b"k-high", kind=SUBMIT_JOB_HIGH_BG)
        c.submit(b"fn-a-b", binary, unique=b"\xff\xfe-bin", kind=SUBMIT_JOB_BG)
        c.submit(b"fn-a-b", b"done", unique=b"k-done", kind=SUBMIT_JOB_BG)
        c.send(SUBMIT_JOB_EPOCH, b"fn-a-b", b"k-epoch", str(later).encode(), b"epoch")
        assert c.expect(JOB_CREATED)
    assert e1 != e2 and s1 == s2       # empty keys apart, equal keys coalesced
    stored = rows(mdb, db)
    assert stored == [(b"", b"fn-a-b", 1, b"empty1\x00x", 0), (b"", b"fn-a-b", 1, b"empty2", 0),
                      (b"k-low", b"fn-a-b", 2, b"low", 0),
                      (b"same-key", b"fn-a-b", 1, b"same1", 0),
                      (b"k-high", b"fn-a-b", 0, b"high", 0),
                      (b"\xff\xfe-bin", b"fn-a-b", 1, binary, 0),
                      (b"k-done", b"fn-a-b", 1, b"done", 0),
                      (b"k-epoch", b"fn-a-b", 1, b"epoch", later)]
    with Conn(srv) as w:        # the high one goes first; complete it before the crash
        w.worker(b"fn-a-b")
        t, args = w.grab(GRAB_JOB)
        assert t == JOB_ASSIGN and args[2] == b"high"
        w.send(WORK_COMPLETE, args[0], b"")
        w.echo()
    # The delete is committed with the next write: this submit's acknowledgement.
    with Conn(srv) as c:
        c.submit(b"other", b"flush", kind=SUBMIT_JOB_BG)
    assert b"high" not in [r[3] for r in rows(mdb, db)]
    srv.stop(signal.SIGKILL)

    again = start_server("fastgear", *flags)
    with Conn(again) as c:
        assert status_table(c)[b"fn-a-b"][0] == 7
        c.submit(b"fn-a-b", b"same3", unique=b"same-key", kind=SUBMIT_JOB_BG)
        assert status_table(c)[b"fn-a-b"][0] == 7      # still coalesced after the replay
    assert drain(again, b"fn-a-b") == [b"empty1\x00x", b"empty2", b"same1", binary, b"done",
                                       b"low"]
    assert drain(again, b"other") == [b"flush"]
    with Conn(again) as c:                              # commits the deletes
        c.submit(b"other", b"flush2", kind=SUBMIT_JOB_BG)
    assert [r[3] for r in rows(mdb, db)] == [b"epoch", b"flush2"]
    again.stop(signal.SIGKILL)
    third = start_server("fastgear", *flags)
    with Conn(third) as c:
        table = status_table(c)
    assert table[b"fn-a-b"][0] == 1 and table[b"other"][0] == 1
    assert rows(mdb, db)[0] == (b"k-epoch", b"fn-a-b", 1, b"epoch", later)


def test_a_queue_written_by_gearmand_with_mysql_replays_and_is_migrated(mdb, db, start_server):
    need_gearmand()
    flags = mdb.flags(db)
    later = int(time.time()) + 3600
    gd = start_server("gearmand", *flags)
    with Conn(gd) as c:
        c.submit(b"old-fn", b"low", unique=b"k-low", kind=SUBMIT_JOB_LOW_BG)
        c.submit(b"old-fn", b"nor\x00mal", unique=b"k-normal", kind=SUBMIT_JOB_BG)
        c.submit(b"old-fn", b"high", unique=b"k-high", kind=SUBMIT_JOB_HIGH_BG)
        c.submit(b"old-fn", b"empty", kind=SUBMIT_JOB_BG)
        c.send(SUBMIT_JOB_EPOCH, b"old-fn", b"k-epoch", str(later).encode(), b"epoch")
        assert c.expect(JOB_CREATED)
        # gearmand's UNIQUE KEY (unique_key, function_name): a second empty key fails.
        c.send(SUBMIT_JOB_BG, b"old-fn", b"", b"empty2")
        t, args = c.recv()
        assert t == ERROR and args[0] == b"QUEUE_ERROR"
    assert gd.stop() == 0
    (_, schema), = mdb.sql("SHOW CREATE TABLE gearman_queue", database=db)
    assert "UNIQUE KEY" in schema and "varchar(64)" in schema    # gearmand's own layout
    before = sorted(tuple(r) for r in mdb.sql("SELECT * FROM gearman_queue", database=db))

    srv = start_server("fastgear", *flags)
    with Conn(srv) as c:            # answered once the replay is done (listening before)
        assert status_table(c)[b"old-fn"][0] == 5
    (_, schema), = mdb.sql("SHOW CREATE TABLE gearman_queue", database=db)
    assert "UNIQUE KEY" not in schema and "PRIMARY KEY (`id`)" in schema, schema
    after = rows(mdb, db)
    assert sorted(after) == sorted((u.encode(), f.encode(), p, d, w) for u, f, p, d, w in before)
    assert drain(srv, b"old-fn") == [b"high", b"nor\x00mal", b"empty", b"low"]
    with Conn(srv) as c:                       # empty keys no longer collide
        c.submit(b"old-fn", b"a", kind=SUBMIT_JOB_BG)
        c.submit(b"old-fn", b"b", kind=SUBMIT_JOB_BG)
    assert [r[3:] for r in rows(mdb, db)] == [(b"epoch", later), (b"a", 0), (b"b", 0)]


def test_dead_letters_and_retry_settings_survive_sigkill(mdb, db, start_server):
    from test_dead_letters import dead, listing, run_next
    flags = mdb.flags(db)
    srv = start_server("fastgear", *flags)
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        assert admin.admin("retry keep 2 0.5") == b"OK\r\n"
        worker.send(CAN_DO, b"other")
        handle = client.submit(b"other", b"a\x00a", b"u-a", kind=SUBMIT_JOB_BG)
        run_next(worker, WORK_EXCEPTION, b"trace a")
        before = dead(admin)
        assert [r["handle"] for r in before] == [handle]
        # The dead letter's row replaces its job's row, in the same transaction.
        wait_for(lambda: len(rows(mdb, db, "id", "gearman_queue_dead")) == 1
                 and rows(mdb, db, "id") == [], what="the dead letter's row")
        wait_for(lambda: mdb.sql("SELECT retries FROM gearman_queue_retry", database=db)
                 == ((2,),), what="the retry setting's row")
    srv.stop(signal.SIGKILL)
    again = start_server("fastgear", *flags)
    with Conn(again) as worker, Conn(again) as admin:
        assert dead(admin) == before
        assert [b"keep", b"2", b"0.5"] in listing(admin, "retry")
        assert admin.admin(f"dead requeue {handle.decode()}").startswith(b"OK ")
        worker.send(CAN_DO, b"other")
        assert run_next(worker, WORK_COMPLETE)[2:] == [b"u-a", b"a\x00a"]
        wait_for(lambda: rows(mdb, db, "id", "gearman_queue_dead") == []
                 and rows(mdb, db, "id") == [], what="the requeued dead letter's rows to go")


# -- failures ----------------------------------------------------------------------------------

def test_mariadb_restarted_under_load_gives_bounded_queue_errors_and_reconnects(
        mdb, db, start_server):
    """mariadbd is killed and started again while a client pipelines submits: every
    submit is answered (JOB_CREATED or QUEUE_ERROR) within the timeout, never silence;
    the server reconnects by itself; exactly the acknowledged jobs are stored."""
    srv = start_server("fastgear", *mdb.flags(db), "--mysql-timeout", "5",
                       "--verbose", "WARNING")
    stop = threading.Event()
    acked, refused, problems = [], [], []

    def client():
        try:
            with Conn(srv) as c:
                i = 0
                while not stop.is_set():
                    batch = [b"r%06d" % (i + k) for k in range(20)]
                    i += 20
                    c.send_raw(b"".join(packet(SUBMIT_JOB_BG, b"outage", b"", p)
                                        for p in batch))
                    for p in batch:
                        t, args = c.recv(timeout=20)
                        if t == JOB_CREATED:
                            acked.append(p)
                        elif t == ERROR and args[0] == b"QUEUE_ERROR":
                            refused.append(p)
                        else:
                            problems.append((p, t, args))
                    if refused and refused[-1] == batch[-1]:
                        time.sleep(0.02)
        except (Closed, OSError, TimeoutError) as exc:
            problems.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(acked) >= 500, timeout=30, what="load running")
        mdb.halt(signal.SIGKILL)
        wait_for(lambda: refused or problems, timeout=30, what="a QUEUE_ERROR in the outage")
        mdb.start()
        n = len(refused)
        wait_for(lambda: acked and acked[-1] > refused[-1], timeout=30,
                 what="submissions acknowledged again after the restart")
        back = len(acked)
        wait_for(lambda: len(acked) >= back + 200, timeout=30, what="load flowing again")
    finally:
        stop.set()
        thread.join(30)
    assert not problems, problems[:3]
    assert len(refused) >= n > 0
    assert "reconnected to the MySQL store" in srv.log_text() + srv.output()
    # A QUEUE_ERROR means "not stored": rows of a batch whose commit went unanswered
    # were deleted again once the database was back.
    stored = [bytes(r[0]) for r in rows(mdb, db, "data")]
    assert sorted(stored) == sorted(acked)


def test_a_job_larger_than_max_allowed_packet_is_refused_and_its_batch_still_written(
        mdb, db, start_server):
    srv = start_server("fastgear", *mdb.flags(db))
    big = b"x" * (MAX_ALLOWED_PACKET + 1)
    with Conn(srv) as c:
        c.send_raw(packet(SUBMIT_JOB_BG, b"f", b"", b"before") +
                   packet(SUBMIT_JOB_BG, b"f", b"", big) +
                   packet(SUBMIT_JOB_BG, b"f", b"", b"after"))
        replies = [c.recv(timeout=15) for _ in range(3)]
        assert replies[0][0] == JOB_CREATED and replies[2][0] == JOB_CREATED
        assert replies[1][0] == ERROR and replies[1][1][0] == b"QUEUE_ERROR"
        assert b"max_allowed_packet" in replies[1][1][1], replies[1]
        assert status_table(c)[b"f"][0] == 2
        c.submit(b"f", b"later", kind=SUBMIT_JOB_BG)           # no retry loop: next one
    assert [r[0] for r in rows(mdb, db, "data")] == [b"before", b"after", b"later"]


def _serve(tmp_path, *flags):
    return subprocess.run([sys.executable, "-m", "fastgear", "serve", "-p", str(free_port()),
                           "-L", "127.0.0.1", "--log-file", "none", "--monitor", "off",
                           "-P", str(tmp_path / "x.pid"), *flags],
                          check=False, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", ["bad-password", "nothing-listening", "no-such-database",
                                  "table-in-use"])
def test_unusable_mysql_at_start_up_is_a_clear_error_and_exit_1(mdb, db, start_server,
                                                                 tmp_path, case):
    flags = mdb.flags(db)
    expect = {"bad-password": "Access denied", "nothing-listening": "Can't connect",
              "no-such-database": "to database 'nosuchdb'", "table-in-use": "in use by another"}
    if case == "bad-password":
        flags[flags.index("--mysql-password") + 1] = "wrong"
    elif case == "nothing-listening":
        flags[flags.index("--mysql-port") + 1] = str(free_port())
    elif case == "no-such-database":
        flags[flags.index("--mysql-db") + 1] = "nosuchdb"
    else:
        start_server("fastgear", *flags)
    res = _serve(tmp_path, *flags)
    assert res.returncode == 1, res.stderr
    assert expect[case] in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_missing_driver_is_a_clear_error_and_exit_1(mdb, db, tmp_path):
    res = subprocess.run(
        [sys.executable, "-c", ("import sys; sys.modules['pymysql'] = None; "
                                "from fastgear.cli import main; sys.exit(main(sys.argv[1:]))"),
         "serve", "-p", str(free_port()), "-L", "127.0.0.1", "--log-file", "none",
         "--monitor", "off", "-P", str(tmp_path / "y.pid"), *mdb.flags(db)],
        check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "fastgear[mysql]" in res.stderr, res.stderr
