"""The PostgreSQL store (issue 13): several servers, one database, takeover of a dead
server's jobs, fencing, and the database failing under load.

Every test runs against a real PostgreSQL: one throw-away cluster for this file
(tests/pgcluster.py: initdb into a temporary folder, a free loopback port, stopped at
the end), a table of its own per test. The contract is at least once: every job that
got JOB_CREATED runs, and only a job that was running on a worker when its server died
may run twice. Leases are short here (--store-lease 2) so that takeovers are quick.
"""
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from conftest import free_port, missing, need_gearmand, need_module, wait_for
from gearproto import (
    CAN_DO,
    ERROR,
    GRAB_JOB,
    JOB_ASSIGN,
    JOB_CREATED,
    NO_JOB,
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
from outage import OutageLoad
from pgcluster import PgCluster, pg_bindir
from throwaway import listening

LEASE = 2


@pytest.fixture(scope="module")
def pg():
    need_module("psycopg", pip="psycopg")
    if pg_bindir() is None:
        missing("PostgreSQL (initdb, pg_ctl)", debian="postgresql")
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


_tables = iter(range(1, 10_000))


@pytest.fixture
def table(pg):
    return f"q{next(_tables)}_{os.getpid()}"


class Fastgear:
    """A fastgear process on a fixed port (so it can come back on the same one)."""

    def __init__(self, tmp_path, port, *flags, monitor=False):
        self.host, self.port = "127.0.0.1", port
        self.tmp = tmp_path
        self.monitor_port = free_port() if monitor else None
        self.out = tmp_path / f"fg-{port}-{time.monotonic_ns()}.out"
        cmd = [sys.executable, "-m", "fastgear", "serve", "-p", str(port), "-L", self.host,
               "--log-file", "stderr", "-P", str(tmp_path / f"fg-{port}.pid"),
               "--monitor", f"127.0.0.1:{self.monitor_port}" if monitor else "off",
               "--verbose", "INFO"] + list(flags)
        self._f = open(self.out, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self._f, stderr=subprocess.STDOUT)
        try:
            wait_for(self._ready, timeout=30, what=f"fastgear on {port}")
            if monitor:
                wait_for(lambda: listening(self.monitor_port), timeout=15, what="monitor")
        except AssertionError:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"fastgear did not start: {self.output()}") from None

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"fastgear exited with {self.proc.returncode}: "
                                 f"{self.output()}")
        # The start-up line first: after a SIGKILL the kernel may keep the dead server's
        # io_uring, and with it its listening socket, for a moment, so a connection to
        # the port alone can reach the dead server's backlog.
        if f"(pid {self.proc.pid})" not in self.output():
            return False
        try:
            socket.create_connection((self.host, self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def output(self):
        self._f.flush()
        return self.out.read_text(errors="replace")[-4000:]

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/status",
                                    timeout=5) as r:
            return json.loads(r.read())

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/metrics",
                                    timeout=5) as r:
            return r.read().decode()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._f.close()
        return self.proc.returncode


@pytest.fixture
def fastgear(tmp_path, pg):
    started = []

    def start(table, *flags, port=None, lease=LEASE, monitor=False):
        srv = Fastgear(tmp_path, port or free_port(), "--store", pg.url, "--libpq-table",
                       table, "--store-lease", str(lease), *flags, monitor=monitor)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop(signal.SIGKILL)


def rows(pg, table, cols="data"):
    return pg.sql(f"SELECT {cols} FROM {table} ORDER BY id")




def submit_many(srv, func, payloads, kind=SUBMIT_JOB_BG, unique=b""):
    """Pipelined background submits; the handles, in order (asserts JOB_CREATED)."""
    with Conn(srv.host, srv.port) as c:
        c.send_raw(b"".join(packet(kind, func, unique, p) for p in payloads))
        out = []
        for p in payloads:
            t, args = c.recv(timeout=15)
            assert t == JOB_CREATED, (p, t, args)
            out.append(args[0])
        return out


# -- the contract ------------------------------------------------------------------------

def test_jobs_are_committed_before_job_created_and_never_collide(pg, table, fastgear):
    srv = fastgear(table)
    with Conn(srv.host, srv.port) as c:
        for i in range(5):     # empty and equal unique keys: five rows, five jobs
            c.submit(b"same", b"e%d" % i, kind=SUBMIT_JOB_BG)
            assert len(rows(pg, table)) == i + 1        # committed before JOB_CREATED
        c.submit(b"same", b"k0", unique=b"k", kind=SUBMIT_JOB_HIGH_BG)
        c.submit(b"other", b"k1", unique=b"k", kind=SUBMIT_JOB_LOW_BG)
        c.send(SUBMIT_JOB_EPOCH, b"later", b"ep", b"1900000000", b"far")
        assert c.recv()[0] == JOB_CREATED
        c.send(SUBMIT_JOB_BG, b"\xff\xfebin", b"\xfe", b"\x00\x01")   # opaque bytes
        assert c.recv()[0] == JOB_CREATED
    got = rows(pg, table, "function_name, unique_key, priority, data, when_to_run")
    assert [tuple(bytes(v) if isinstance(v, (bytes, memoryview)) else v for v in r)
            for r in got] == (
        [(b"same", b"", 1, b"e%d" % i, 0) for i in range(5)]
        + [(b"same", b"k", 0, b"k0", 0), (b"other", b"k", 2, b"k1", 0),
           (b"later", b"ep", 1, b"far", 1900000000), (b"\xff\xfebin", b"\xfe", 1, b"\x00\x01", 0)])
    owner = pg.sql(f"SELECT DISTINCT owner, owner_epoch FROM {table}")
    server = pg.sql(f"SELECT server_id, epoch FROM {table}_servers")
    assert owner == server
    assert drain(srv, b"same", 10) == [b"k0", b"e0", b"e1", b"e2", b"e3", b"e4"]
    wait_for(lambda: len(rows(pg, table)) == 3, what="finished rows deleted")
    # A restart replays the rest, epoch job still in the future.
    srv.stop(signal.SIGKILL)
    again = fastgear(table, port=srv.port)
    with Conn(again.host, again.port) as c:
        assert status_table(c)[b"later"][:2] == (1, 0)
    assert drain(again, b"other", 5) == [b"k1"]
    assert drain(again, b"\xff\xfebin", 5) == [b"\x00\x01"]


def test_gearmand_queue_table_is_migrated_on_open(pg, table, fastgear, tmp_path):
    gearmand = need_gearmand()
    port = free_port()
    g = subprocess.Popen([gearmand, "-p", str(port), "-L", "127.0.0.1", "--log-file",
                          str(tmp_path / "g.log"), "-P", str(tmp_path / "g.pid"),
                          "-q", "Postgres", "--libpq-conninfo", pg.conninfo,
                          "--libpq-table", table], stdout=subprocess.DEVNULL,
                         stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: listening(port), timeout=15, what="gearmand")
        with Conn("127.0.0.1", port) as c:
            c.submit(b"gm", b"n1", unique=b"u1", kind=SUBMIT_JOB_BG)
            c.submit(b"gm", b"h1", unique=b"u2", kind=SUBMIT_JOB_HIGH_BG)
            c.submit(b"gm", b"l1", unique=b"u3", kind=SUBMIT_JOB_LOW_BG)
            c.send(SUBMIT_JOB_EPOCH, b"gm", b"u4", b"1900000000", b"ep")
            assert c.recv()[0] == JOB_CREATED
            c.submit(b"gm", b"e1", kind=SUBMIT_JOB_BG)
            c.send(SUBMIT_JOB_BG, b"gm", b"", b"e2")      # gearmand: the key is taken
            assert c.recv()[0] == ERROR
    finally:
        g.terminate()
        g.wait(10)
    assert pg.sql(f"SELECT count(*) FROM {table}") == [(5,)]
    srv = fastgear(table)
    wait_for(lambda: "5 jobs replayed" in srv.output(), what="the start-up line")
    assert pg.sql(f"SELECT count(*) FROM {table} WHERE owner IS NULL") == [(0,)]
    with Conn(srv.host, srv.port) as c:
        assert status_table(c)[b"gm"][:2] == (5, 0)
        c.send(SUBMIT_JOB_BG, b"gm", b"", b"e2")          # no unique key on the table now
        assert c.recv()[0] == JOB_CREATED
    # Priorities and the epoch time survive: high, then normal FIFO, then low.
    assert drain(srv, b"gm", 10) == [b"h1", b"n1", b"e1", b"e2", b"l1"]
    # The finished jobs' rows go in the store thread's next commit.
    wait_for(lambda: rows(pg, table, "data, when_to_run") == [(b"ep", 1900000000)],
             what="the finished jobs' rows deleted, the epoch job's kept")


# -- takeover ------------------------------------------------------------------------------

def test_survivor_takes_over_a_killed_servers_jobs_within_lease_plus_5s(pg, table, fastgear):
    a = fastgear(table, monitor=True)
    b = fastgear(table, monitor=True)
    payloads = [b"t%05d" % i for i in range(2000)]
    submit_many(a, b"fail", payloads)
    wait_for(lambda: any(p["addr"].endswith(f":{a.port}") for p in b.status()["store"]["peers"]),
             what="b sees a")
    killed = time.monotonic()
    a.stop(signal.SIGKILL)
    done = []
    with Conn(b.host, b.port) as w:
        w.worker(b"fail")
        deadline = killed + LEASE + 20
        while len(done) < len(payloads) and time.monotonic() < deadline:
            t, args = w.grab(GRAB_JOB)
            if t == NO_JOB:
                time.sleep(0.05)
                continue
            assert t == JOB_ASSIGN
            w.send(WORK_COMPLETE, args[0], b"")
            done.append(bytes(args[2]))
        w.echo()
    failover = time.monotonic() - killed
    assert sorted(done) == payloads          # all taken over, none twice
    assert failover < LEASE + 5, f"takeover took {failover:.1f}s"
    st = b.status()["store"]
    assert st["kind"] == "postgres" and st["takeovers"] == 1 and st["jobs_claimed"] == 2000
    assert st["last_takeover"] and st["epoch"] and not st["fenced"]
    metrics = b.metrics()
    assert "fastgear_store_jobs_claimed_total 2000" in metrics
    assert 'fastgear_store_info{kind="postgres"' in metrics
    wait_for(lambda: rows(pg, table) == [], what="rows deleted after completion")
    wait_for(lambda: len(pg.sql(f"SELECT 1 FROM {table}_servers")) == 1,
             what="the dead server's registration removed")


def test_a_big_takeover_goes_in_steps_and_the_survivor_keeps_its_lease_and_serving(
        pg, table, fastgear):
    """A dead server's backlog of many claim slices is taken over in steps, with the
    survivor's own commits (and lease renewals) in between: a client of the survivor
    gets JOB_CREATED for every job it submits meanwhile, the survivor never lapses, and
    every job runs once. (All at once, 63,000 of 100,000 rows took longer than this
    2 s lease: the survivor lost it and refused submissions.)"""
    a = fastgear(table, monitor=True)
    b = fastgear(table, monitor=True)
    backlog = [b"b%06d" % i for i in range(30_000)]
    for i in range(0, len(backlog), 5_000):
        submit_many(a, b"big", backlog[i:i + 5_000])
    wait_for(lambda: any(p["addr"].endswith(f":{a.port}") for p in b.status()["store"]["peers"]),
             what="b sees a")
    a.stop(signal.SIGKILL)
    stop, live, errors = threading.Event(), [], []

    def submit_to_b():
        with Conn(b.host, b.port) as c:
            while not stop.is_set():
                p = b"live%05d" % len(live)
                c.send(SUBMIT_JOB_BG, b"live", b"", p)
                t, args = c.recv(timeout=30)
                (live if t == JOB_CREATED else errors).append((p, t, args))
    t = threading.Thread(target=submit_to_b, daemon=True)
    t.start()
    try:
        wait_for(lambda: b.status()["store"]["jobs_claimed"] == len(backlog),
                 timeout=LEASE + 60, what="b to claim a's whole backlog")
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors[:3]
    assert live, "no submission to b was answered during the takeover"
    out = b.output()
    assert "more to come" in out, "the takeover was not split into steps"
    assert "lease lapsed" not in out and not b.status()["store"]["fenced"]
    assert b.status()["store"]["takeovers"] == 1
    assert sorted(drain(b, b"big", 100_000)) == backlog
    assert sorted(drain(b, b"live", 100_000)) == [p for p, _, _ in live]
    wait_for(lambda: rows(pg, table) == [], what="every row deleted")


class Submitter(threading.Thread):
    """Pipelines background submits to one server until it dies or `limit` are acked."""

    def __init__(self, srv, tag, limit):
        super().__init__(daemon=True)
        self.conn = Conn(srv.host, srv.port)
        self.tag, self.limit = tag, limit
        self.acked, self.errors = [], []

    def run(self):
        inflight = collections.deque()
        n = 0
        try:
            while len(self.acked) < self.limit:
                if len(inflight) < 100:
                    chunk = [b"%s-%05d" % (self.tag, n + i) for i in range(50)]
                    n += 50
                    self.conn.send_raw(b"".join(packet(SUBMIT_JOB_BG, b"cyc", b"", p)
                                                for p in chunk))
                    inflight.extend(chunk)
                    continue
                t, _args = self.conn.recv(timeout=15)
                p = inflight.popleft()
                (self.acked if t == JOB_CREATED else self.errors).append(p)
        except (Closed, OSError, TimeoutError):
            pass
        finally:
            self.conn.close()


def test_twenty_kill_cycles_lose_nothing_and_never_replay_claimed_jobs(pg, table, fastgear):
    servers = [fastgear(table), fastgear(table)]
    acked = []
    for cycle in range(20):
        victim = cycle % 2
        srv = servers[victim]
        sub = Submitter(srv, b"c%02d" % cycle, limit=10_000)
        sub.start()
        wait_for(lambda s=sub: len(s.acked) >= 100, timeout=30, what="acks before the kill")
        srv.stop(signal.SIGKILL)
        sub.join(20)
        assert not sub.is_alive() and not sub.errors
        acked.extend(sub.acked)
        if cycle % 4 == 3:
            # Every fourth time the survivor claims them once the lease has expired.
            wait_for(lambda s=srv: pg.sql(f"SELECT count(*) FROM {table} WHERE owner LIKE %s",
                                          (f"%:{s.port}:{s.proc.pid}:%",)) == [(0,)],
                     timeout=LEASE + 10, what="the survivor's takeover")
        # Back on the same port: it takes over its predecessor's rows unless the
        # survivor already did, never both.
        servers[victim] = fastgear(table, port=srv.port)
    wait_for(lambda: pg.sql(f"SELECT count(*) FROM {table} WHERE owner NOT IN "
                            f"(SELECT server_id FROM {table}_servers WHERE lease_until > "
                            f"now())") == [(0,)], timeout=LEASE + 10,
             what="every dead server's rows claimed")
    ran = drain(servers[0], b"cyc", 100_000) + drain(servers[1], b"cyc", 100_000)
    assert len(ran) == len(set(ran)), "a job was delivered by two servers"
    lost = set(acked) - set(ran)
    assert not lost, f"{len(lost)} acknowledged jobs lost, e.g. {sorted(lost)[:3]}"
    wait_for(lambda: rows(pg, table) == [], what="every row deleted")


def test_a_stalled_server_is_fenced_and_drops_what_the_survivor_claimed(pg, table, fastgear):
    a = fastgear(table)
    b = fastgear(table)
    payloads = [b"f%03d" % i for i in range(50)]
    submit_many(a, b"fence", payloads)
    os.kill(a.proc.pid, signal.SIGSTOP)          # alive, but silent past its lease
    try:
        wait_for(lambda: pg.sql(f"SELECT count(*) FROM {table} WHERE owner LIKE %s",
                                (f"%:{b.port}:%",)) == [(50,)], timeout=LEASE + 10,
                 what="b claimed a's rows")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    # a learns it was taken over, drops those jobs and serves again as a new server.
    wait_for(lambda: "taken over" in a.output(), timeout=10, what="a notices the takeover")
    with Conn(a.host, a.port) as c:
        wait_for(lambda: _submit_ok(c), timeout=10, what="a acknowledging again")
    assert drain(a, b"fence", 100) == [b"after"]
    assert sorted(drain(b, b"fence", 100)) == payloads


def _submit_ok(c):
    c.send(SUBMIT_JOB_BG, b"fence", b"", b"after")
    return c.recv(timeout=15)[0] == JOB_CREATED


# -- the database failing -------------------------------------------------------------------

def test_database_restart_under_load(pg, table, fastgear):
    """Submissions get JOB_CREATED or QUEUE_ERROR within 15 s, never silence; the server
    reconnects by itself; completions made during the outage are deleted afterwards and
    never run again; the worker's connection survives."""
    srv = fastgear(table, lease=4)
    with OutageLoad(srv.host, srv.port, answer_within=15) as load:
        wait_for(lambda: len(load.completed) >= 50, timeout=30, what="load running")
        pg.restart(mode="fast", down_s=3)          # past half the lease: fenced meanwhile
        back = time.monotonic()
        wait_for(lambda: load.acked and load.acked[-1] > (load.refused[-1] if load.refused
                                                          else b""),
                 timeout=15, what="submissions acknowledged again after the restart")
        reconnect_s = time.monotonic() - back
        n = len(load.acked)
        wait_for(lambda: len(load.acked) >= n + 50, timeout=15, what="load flowing again")
    assert load.refused, "the outage refused nothing: the restart was not under load"
    assert reconnect_s < 15
    out = srv.output()
    assert "store lease lapsed" in out and "store lease regained" in out, out
    # Every acknowledged job runs; the leftovers are drained by a fresh worker.
    load.check(drain(srv, b"outage", 100_000))
    wait_for(lambda: rows(pg, table) == [], timeout=15, what="outage deletes retried")


def test_bad_conninfo_and_missing_privilege_exit_1(pg, table, tmp_path):
    def run(*flags):
        return subprocess.run([sys.executable, "-m", "fastgear", "serve", "-p",
                               str(free_port()), "-L", "127.0.0.1", "--log-file", "none",
                               "-P", str(tmp_path / "x.pid"), "--monitor", "off", *flags],
                              check=False, capture_output=True, text=True, timeout=60)
    bad = run("-q", "postgres", "--libpq-conninfo",
              f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=2")
    assert bad.returncode == 1 and "cannot connect to PostgreSQL" in bad.stderr
    pg.sql(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, unique_key bytea, "
           "function_name bytea, priority int, data bytea, when_to_run bigint, owner text, "
           "owner_epoch bigint)")
    pg.sql("DROP ROLE IF EXISTS fg_reader")
    pg.sql("CREATE ROLE fg_reader LOGIN")
    pg.sql(f"GRANT SELECT ON {table} TO fg_reader")
    weak = pg.conninfo.replace("user=postgres", "user=fg_reader")
    denied = run("-q", "postgres", "--libpq-conninfo", weak, "--libpq-table", table)
    assert denied.returncode == 1 and "privilege" in denied.stderr, denied.stderr
    blocked = subprocess.run(
        [sys.executable, "-c", ("import sys; sys.modules['psycopg'] = None; "
                                "from fastgear.cli import main; sys.exit(main(sys.argv[1:]))"),
         "serve", "-p",
         str(free_port()), "-L", "127.0.0.1", "--log-file", "none", "-P",
         str(tmp_path / "y.pid"), "--monitor", "off", "--store", pg.url],
        check=False, capture_output=True, text=True, timeout=60)
    assert blocked.returncode == 1 and "fastgear[postgres]" in blocked.stderr



# -- dead letters and retry settings ------------------------------------------------------

def _dead_rows(pg, table):
    return pg.sql(f"SELECT id, owner, function_name FROM {table}_dead ORDER BY id")


def test_dead_letters_and_retry_settings_survive_sigkill_and_restart(pg, table, fastgear):
    from test_dead_letters import dead, listing, run_next
    port = free_port()
    srv = fastgear(table, port=port)
    with Conn(srv.host, srv.port) as client, Conn(srv.host, srv.port) as worker, \
            Conn(srv.host, srv.port) as admin:
        assert admin.admin("retry keep 2 0.5") == b"OK\r\n"
        worker.send(CAN_DO, b"other")
        handle = client.submit(b"other", b"a\x00a", b"u-a", kind=SUBMIT_JOB_BG)
        run_next(worker, WORK_EXCEPTION, b"trace a")
        before = dead(admin)
        assert [r["handle"] for r in before] == [handle]
        # The dead letter's row replaces its job's row, in the same transaction.
        wait_for(lambda: len(_dead_rows(pg, table)) == 1 and rows(pg, table) == [],
                 what="the dead letter's row")
        wait_for(lambda: len(pg.sql(f"SELECT 1 FROM {table}_retry")) == 1,
                 what="the retry setting's row")
    srv.stop(signal.SIGKILL)
    # Back on the same address: it takes over its predecessor's rows at once.
    srv2 = fastgear(table, port=port)
    with Conn(srv2.host, srv2.port) as worker, Conn(srv2.host, srv2.port) as admin:
        assert dead(admin) == before
        assert [b"keep", b"2", b"0.5"] in listing(admin, "retry")
        assert admin.admin(f"dead requeue {handle.decode()}").startswith(b"OK ")
        worker.send(CAN_DO, b"other")
        assert run_next(worker, WORK_COMPLETE)[2:] == [b"u-a", b"a\x00a"]
        wait_for(lambda: _dead_rows(pg, table) == [] and rows(pg, table) == [],
                 what="the requeued dead letter's rows to go")


def test_a_retry_setting_made_on_one_server_reaches_the_others(pg, table, fastgear):
    """Servers sharing a database share the retry policy: `retry F N BACKOFF` on one is
    applied by the others within a store tick, and so is `retry F default`."""
    from test_dead_letters import dead, listing, run_next
    a = fastgear(table)
    b = fastgear(table)
    with Conn(a.host, a.port) as admin_a, Conn(b.host, b.port) as admin_b:
        assert admin_a.admin("retry flaky 1 0.05") == b"OK\r\n"
        wait_for(lambda: [b"flaky", b"1", b"0.05"] in listing(admin_b, "retry"),
                 timeout=LEASE + 10, what="b to take a's retry setting")
        # b applies it: a job of flaky that fails on b once runs again, then dies.
        with Conn(b.host, b.port) as client, Conn(b.host, b.port) as worker:
            worker.send(CAN_DO, b"flaky")
            handle = client.submit(b"flaky", b"x", kind=SUBMIT_JOB_BG)
            assert run_next(worker, WORK_FAIL)[0] == handle
            assert run_next(worker, WORK_FAIL)[0] == handle
            wait_for(lambda: [r["handle"] for r in dead(admin_b)] == [handle],
                     what="the job dead after its one retry")
        assert admin_b.admin("retry flaky default") == b"OK\r\n"
        wait_for(lambda: not any(r[0] == b"flaky" for r in listing(admin_a, "retry")),
                 timeout=LEASE + 10, what="a to drop the setting b dropped")


def test_a_survivor_takes_over_a_killed_servers_dead_letters(pg, table, fastgear):
    from test_dead_letters import dead, run_next
    a = fastgear(table)
    b = fastgear(table)
    with Conn(a.host, a.port) as client, Conn(a.host, a.port) as worker:
        worker.send(CAN_DO, b"doomed")
        handle = client.submit(b"doomed", b"x", kind=SUBMIT_JOB_BG)
        run_next(worker, WORK_FAIL)
    wait_for(lambda: len(_dead_rows(pg, table)) == 1, what="a's dead letter's row")
    a.stop(signal.SIGKILL)
    with Conn(b.host, b.port) as client, Conn(b.host, b.port) as worker, \
            Conn(b.host, b.port) as admin:
        wait_for(lambda: [r["handle"] for r in dead(admin)] == [handle],
                 timeout=LEASE + 10, what="b to take over a's dead letter")
        # b's own dead letters take ids of its own range: no row collides with a's.
        worker.send(CAN_DO, b"doomed")
        client.submit(b"doomed", b"y", kind=SUBMIT_JOB_BG)
        run_next(worker, WORK_FAIL)
        wait_for(lambda: len(_dead_rows(pg, table)) == 2, what="b's dead letter's row")
        ids = [r[0] for r in _dead_rows(pg, table)]
        assert len(set(ids)) == 2 and all(i >= 1 << 32 for i in ids)
        assert len({r[1] for r in _dead_rows(pg, table)}) == 1   # both b's now
        assert len(dead(admin)) == 2
