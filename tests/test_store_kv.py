"""The Redis and memcached stores (issue 16): gearmand's `-q redis` and `-q libmemcached`.

Every test runs against a real server started for this file (tests/kvservers.py: Redis
with `appendonly yes` + `appendfsync always`, memcached; free loopback ports, stopped at
the end); each test keeps its jobs under a key prefix of its own. The contract is the
SQLite store's (tests/test_durable.py): every job that got JOB_CREATED runs after a
crash, priorities, empty unique keys, binary payloads and epoch times survive, and a job
whose completion was stored is never replayed. For memcached that holds as long as
memcached itself keeps its items: it is a cache, and an eviction or its own restart loses
jobs (the README says so). Queues written by the real gearmand 1.1.20 with the same
backend are replayed and migrated.
"""
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import gearproto
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
    Conn,
    status_table,
)
from kvservers import MemcachedServer, RedisServer
from outage import OutageLoad

PRIORITY = {SUBMIT_JOB_HIGH_BG: 0, SUBMIT_JOB_BG: 1, SUBMIT_JOB_LOW_BG: 2}
_prefixes = itertools.count(1)


class RedisBackend:
    name = "redis"

    def __init__(self):
        import shutil
        need_module("redis", pip="redis[hiredis]")
        if shutil.which("redis-server") is None:
            missing("redis-server", debian="redis-server")
        self.server = RedisServer().start()
        self.prefix = None

    def new_prefix(self):
        self.prefix = f"t{next(_prefixes)}_{os.getpid()}"
        return self.prefix

    def flags(self, port=None):
        return ("-q", "redis", "--redis-server", "127.0.0.1", "--redis-port",
                str(port or self.server.port), "--redis-prefix", self.prefix)

    def keys(self):
        with self.server.client() as r:
            return sorted(r.scan_iter(match=self.prefix.encode() + b"*", count=1000))

    def job_keys(self):
        """The jobs' hashes (fastgear's or gearmand's), not the id counter, the dead
        letters or the retry settings."""
        return [k for k in self.keys() if not k.endswith((b":fg:seq", b":fg:retry"))
                and b":fg:dead:" not in k]

    def job_count(self):
        return len(self.job_keys())

    def dead_count(self):
        return sum(1 for k in self.keys() if b":fg:dead:" in k)

    def retry_settings(self):
        """{function: (retries, backoff_ms)} as stored."""
        with self.server.client() as r:
            return {f: tuple(int(w) for w in v.split())
                    for f, v in r.hgetall(f"{self.prefix}:fg:retry").items()}

    def stored_whens(self):
        with self.server.client() as r:
            return sorted(int(r.hget(k, "when")) for k in self.job_keys())

    def crash(self):
        """Redis itself dies too: what comes back is what its append-only file kept."""
        self.server.restart(sig=signal.SIGKILL)

    def stop(self):
        self.server.stop()


class MemcachedBackend:
    name = "memcached"

    def __init__(self):
        import shutil
        need_module("pymemcache", pip="pymemcache")
        if shutil.which("memcached") is None:
            missing("memcached", debian="memcached")
        self.server = MemcachedServer().start()
        self.prefix = None

    def new_prefix(self):
        self.prefix = f"t{next(_prefixes)}_{os.getpid()}_"
        return self.prefix

    def flags(self, port=None):
        return ("-q", "libmemcached", "--libmemcached-servers",
                f"127.0.0.1:{port or self.server.port}", "--libmemcached-prefix", self.prefix)

    def keys(self):
        return [k for k in self.server.stored_keys() if k.startswith(self.prefix.encode())]

    def job_count(self):
        return sum(1 for k in self.keys() if b"~fd~" not in k and not k.endswith(b"~fr"))

    def dead_count(self):
        return sum(1 for k in self.keys() if b"~fd~" in k)

    def retry_settings(self):
        from pymemcache.client.base import Client

        from fastgear.persist.memcached import decode_retry
        c = Client(("127.0.0.1", self.server.port))
        try:
            value = c.get(self.prefix.encode() + b"~fr")
        finally:
            c.close()
        return decode_retry(value) if value else {}

    def stored_whens(self):
        from pymemcache.client.base import Client

        from fastgear.persist.memcached import decode
        c = Client(("127.0.0.1", self.server.port))
        try:
            return sorted(decode(v)[4] for k, v in c.get_many(self.keys()).items()
                          if b"~fd~" not in k and not k.endswith(b"~fr"))
        finally:
            c.close()

    def crash(self):
        """memcached is a cache: only fastgear dies, memcached keeps its items."""

    def stop(self):
        self.server.stop()


BACKENDS = {"redis": RedisBackend, "memcached": MemcachedBackend}
_running = {}


@pytest.fixture(scope="module", autouse=True)
def _stop_backends():
    yield
    for b in _running.values():
        b.stop()
    _running.clear()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):
    if request.param not in _running:
        _running[request.param] = BACKENDS[request.param]()
    b = _running[request.param]
    b.new_prefix()
    return b


def drain(srv, func, limit=10_000):
    return gearproto.drain(srv, func, limit)


def queued(srv, func):
    with Conn(srv) as c:
        return status_table(c).get(func, (0, 0, 0))[0]


# -- the kill-and-replay contract ---------------------------------------------------------

def test_sigkill_under_load_loses_no_acknowledged_job(backend, start_server):
    """Clients pipeline submits while a worker completes jobs; fastgear is SIGKILLed
    mid-run (and Redis with it). Every acknowledged job runs after the restart; only one
    whose completion may not have been stored yet runs twice."""
    from test_durable import ClientRun, WorkerRun
    srv = start_server("fastgear", *backend.flags())
    stop = threading.Event()
    workers = [WorkerRun(srv, stop)]
    clients = [ClientRun(srv, i, stop) for i in range(2)]
    try:
        for t in workers + clients:
            t.start()
        wait_for(lambda: sum(len(c.acked) for c in clients) >= 1500
                 and len(workers[0].completed) >= 50, timeout=30, what="load running")
        # A worker faster than the clients would leave nothing queued at the kill: it
        # stops grabbing, and the kill comes once acknowledged jobs have piled up.
        workers[0].hold.set()
        held_at = sum(len(c.acked) for c in clients)
        wait_for(lambda: sum(len(c.acked) for c in clients) >= held_at + 300, timeout=30,
                 what="a backlog of acknowledged jobs")
        srv.stop(signal.SIGKILL)
        for t in clients:
            t.join(15)
    finally:
        stop.set()
        for t in workers + clients:
            t.join(15)
    backend.crash()
    acked = {p for c in clients for p in c.acked}
    submitted = {p for c in clients for p in c.payloads}
    completed = set(workers[0].completed)
    assert not [e for c in clients for e in c.errors]
    again = start_server("fastgear", *backend.flags())
    rerun = drain(again, b"durable", limit=len(submitted))
    assert len(rerun) == len(set(rerun)) and set(rerun) <= submitted
    lost = acked - completed - set(rerun)
    assert not lost, f"{len(lost)} acknowledged jobs lost, e.g. {sorted(lost)[:5]}"
    assert set(rerun) - completed, "the kill came after the load had drained"
    wait_for(lambda: backend.job_count() == 0, what="every replayed job's key deleted")


def test_replay_keeps_priorities_empty_uniques_binary_names_and_epoch_times(
        backend, start_server):
    """Jobs with empty unique keys, NUL bytes in payloads, hyphens in function names and
    unique keys, three priorities and an epoch time; SIGKILL; the restart replays them
    high, normal, low and FIFO within each. Half are completed, SIGKILL again: only the
    other half come back."""
    func = b"resize-image"
    srv = start_server("fastgear", *backend.flags())
    submitted = []
    at = int(time.time()) + 3600
    with Conn(srv) as c:
        for i in range(30):
            kind = (SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_BG, SUBMIT_JOB_LOW_BG)[(i * 7) % 3]
            unique = b"" if i % 3 else b"u-%d-x" % i
            payload = b"j%02d\0with\0nul-" % i
            c.submit(func, payload, unique=unique, kind=kind)
            submitted.append((PRIORITY[kind], payload))
        # An equal unique key coalesces with the queued job: one job, one stored entry.
        first = c.submit(b"same-u", b"a", unique=b"k-1", kind=SUBMIT_JOB_BG)
        assert c.submit(b"same-u", b"b", unique=b"k-1", kind=SUBMIT_JOB_BG) == first
        c.send(SUBMIT_JOB_EPOCH, b"later-fn", b"", str(at).encode(), b"e\0p")
        assert c.recv()[0] == JOB_CREATED
    assert backend.job_count() == 32
    srv.stop(signal.SIGKILL)
    backend.crash()

    again = start_server("fastgear", *backend.flags())
    expected = [p for _prio, p in sorted(submitted, key=lambda x: x[0])]
    assert queued(again, func) == 30 and queued(again, b"same-u") == 1
    assert queued(again, b"later-fn") == 1
    assert backend.stored_whens() == [0] * 31 + [at]
    with Conn(again) as w:
        w.worker(func)
        for p in expected[:15]:
            t, args = w.grab(GRAB_JOB)
            assert t == JOB_ASSIGN and bytes(args[2]) == p
            w.send(WORK_COMPLETE, args[0], b"")
        w.echo()
    wait_for(lambda: backend.job_count() == 17, what="completed jobs' keys deleted")
    again.stop(signal.SIGKILL)
    backend.crash()

    third = start_server("fastgear", *backend.flags())
    assert drain(third, func) == expected[15:]
    assert drain(third, b"same-u") == [b"a"]
    assert drain(third, b"later-fn") == []          # not due for an hour
    wait_for(lambda: backend.job_count() == 1, what="only the epoch job left")
    if backend.name == "redis":
        # Replay walks the keys with SCAN: KEYS would block a big Redis.
        with backend.server.client() as r:
            stats = r.info("commandstats")
        assert "cmdstat_scan" in stats and "cmdstat_keys" not in stats


def test_dead_letters_and_retry_settings_survive_sigkill(backend, start_server):
    """As with the SQL stores: a dead letter is stored with the batch that deletes its
    job, the retry settings are kept, and both come back after a SIGKILL (of fastgear,
    and of Redis) with the dead letter still re-queueable."""
    from test_dead_letters import dead, listing, run_next
    srv = start_server("fastgear", *backend.flags())
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        assert admin.admin("retry keep 2 0.5") == b"OK\r\n"
        worker.send(CAN_DO, b"other")
        handles = []
        for data in (b"a\x00a", b"b"):
            handles.append(client.submit(b"other", data, b"u-" + data[:1],
                                         kind=SUBMIT_JOB_BG))
            run_next(worker, WORK_EXCEPTION, b"trace " + data[:1])
        # Discarded: its stored copy goes too.
        victim = dead(admin)[0]["handle"]
        assert victim == handles[1]
        assert admin.admin(f"dead discard {victim.decode()}") == b"OK\r\n"
        before = dead(admin)
        assert [r["handle"] for r in before] == [handles[0]]
        wait_for(lambda: backend.dead_count() == 1 and backend.job_count() == 0,
                 what="the dead letter stored in place of its job")
        wait_for(lambda: backend.retry_settings() == {b"keep": (2, 500)},
                 what="the retry setting stored")
    srv.stop(signal.SIGKILL)
    backend.crash()
    again = start_server("fastgear", *backend.flags())
    with Conn(again) as worker, Conn(again) as admin:
        assert dead(admin) == before
        assert [b"keep", b"2", b"0.5"] in listing(admin, "retry")
        assert admin.admin(f"dead requeue {handles[0].decode()}").startswith(b"OK ")
        worker.send(CAN_DO, b"other")
        assert run_next(worker, WORK_COMPLETE)[2:] == [b"u-a", b"a\x00a"]
        wait_for(lambda: backend.dead_count() == 0 and backend.job_count() == 0,
                 what="the requeued dead letter's items to go")
        assert admin.admin("retry keep default") == b"OK\r\n"
    wait_for(lambda: backend.retry_settings() == {}, what="the retry setting forgotten")


@pytest.mark.difference
def test_a_queue_written_by_gearmand_is_replayed_and_migrated(backend, start_server):
    """gearmand 1.1.20 keeps a job under PREFIX-FUNCTION-UNIQUE (Redis) or
    PREFIXFUNCTION-UNIQUE (memcached): two jobs with an empty unique key share one entry
    there. fastgear replays what gearmand left (payloads with NUL bytes, priorities,
    hyphens, a UUID unique key) and rewrites it in its own layout."""
    need_gearmand()
    gm = start_server("gearmand", *backend.flags())
    key = str(uuid.uuid4()).encode()
    with Conn(gm) as c:
        c.submit(b"resize-image", b"big\0one", unique=key, kind=SUBMIT_JOB_HIGH_BG)
        c.submit(b"plain", b"low", unique=b"u1", kind=SUBMIT_JOB_LOW_BG)
        c.submit(b"plain", b"first", kind=SUBMIT_JOB_BG)
        c.submit(b"plain", b"second", kind=SUBMIT_JOB_BG)
    # gearmand's entries: the two empty-unique jobs overwrote each other.
    wait_for(lambda: backend.job_count() == 3, what="gearmand's three entries")
    gm.stop(signal.SIGKILL)
    srv = start_server("fastgear", *backend.flags())
    assert drain(srv, b"plain") == [b"second", b"low"]
    with Conn(srv) as w:
        w.worker(b"resize-image")
        t, args = w.grab(GRAB_JOB)
        assert t == JOB_ASSIGN and bytes(args[2]) == b"big\0one"
        w.send(WORK_COMPLETE, args[0], b"")
        w.echo()
    wait_for(lambda: backend.job_count() == 0, what="migrated entries deleted once run")


# -- failures ---------------------------------------------------------------------------

def test_backend_restarted_under_load_gives_bounded_queue_errors_and_reconnects(
        backend, start_server):
    """The backend goes away for a moment under load: each submit gets JOB_CREATED or
    ERROR QUEUE_ERROR within a bounded time, never silence; fastgear reconnects by
    itself; every acknowledged job runs once and the worker's connection survives."""
    srv = start_server("fastgear", *backend.flags())
    with OutageLoad(srv.host, srv.port, answer_within=20) as load:
        wait_for(lambda: len(load.completed) >= 50, timeout=30, what="load running")
        backend.server.kill(signal.SIGKILL)
        wait_for(lambda: load.refused, timeout=20,
                 what="a QUEUE_ERROR while the backend is down")
        backend.server.start()
        n = len(load.acked)
        wait_for(lambda: len(load.acked) >= n + 50, timeout=20, what="acknowledged again")
    load.check(drain(srv, b"outage"))
    if backend.name == "redis":           # memcached's restart forgot them anyway
        wait_for(lambda: backend.job_count() == 0,
                 what="outage deletes and refused rows removed")


def test_a_job_too_large_for_the_backend_is_refused_with_a_clear_error(
        backend, start_server):
    size = 1 << 20                               # memcached -I 1m; Redis set to 1mb below
    if backend.name == "redis":
        with backend.server.client() as r:
            old = r.config_get("proto-max-bulk-len")["proto-max-bulk-len"]
            r.config_set("proto-max-bulk-len", size)
    try:
        srv = start_server("fastgear", *backend.flags())
        # It listens before its store is open: the limit is read by the time it is ready.
        wait_for(lambda: "ready on" in srv.log_text(), what="start-up done")
    finally:
        if backend.name == "redis":
            with backend.server.client() as r:
                r.config_set("proto-max-bulk-len", old)
    with Conn(srv) as c:
        c.send(SUBMIT_JOB_BG, b"big", b"", b"x" * (size + 10))
        t, args = c.recv(timeout=15)
        assert t == ERROR and args[0] == b"QUEUE_ERROR"
        assert b"larger than" in args[1], args[1]
        # The connection and the store carry on.
        assert c.submit(b"big", b"small", kind=SUBMIT_JOB_BG)
    assert backend.job_count() == 1
    assert drain(srv, b"big") == [b"small"]


def _serve(tmp_path, *flags):
    return subprocess.run([sys.executable, "-m", "fastgear", "serve", "-p", str(free_port()),
                           "-L", "127.0.0.1", "--log-file", "none", "-P",
                           str(tmp_path / "x.pid"), "--monitor", "off", *flags],
                          check=False, capture_output=True, text=True, timeout=60)


def test_bad_address_or_password_stops_start_up_with_exit_1(backend, tmp_path):
    dead = free_port()
    out = _serve(tmp_path, *backend.flags(port=dead))
    assert out.returncode == 1 and "cannot connect" in out.stderr, out.stderr
    if backend.name == "redis":
        locked = RedisServer(folder=str(tmp_path / "locked"), fsync=None,
                             password="s3cret").start()
        try:
            wrong = _serve(tmp_path, "-q", "redis", "--redis-port", str(locked.port),
                           "--redis-password", "nope")
            assert wrong.returncode == 1 and "--redis-password" in wrong.stderr, wrong.stderr
        finally:
            locked.stop()


def test_memcached_says_it_is_not_durable(start_server):
    if "memcached" not in _running:
        _running["memcached"] = MemcachedBackend()
    b = _running["memcached"]
    b.new_prefix()
    helptext = subprocess.run([sys.executable, "-m", "fastgear", "serve", "--help"],
                              check=True, capture_output=True, text=True).stdout
    assert "memcached is not durable" in " ".join(helptext.split())
    srv = start_server("fastgear", *b.flags())
    wait_for(lambda: "NOT durable" in srv.log_text(), what="the start-up line")
    assert "WARNING the memcached store is not durable" in srv.log_text()


def test_memcached_dead_letter_and_retry_items_decode_to_what_was_stored():
    from fastgear.persist.memcached import (
        decode_dead,
        decode_retry,
        encode_dead,
        encode_retry,
    )
    d = {"id": 7, "handle": b"H:x:9", "function": b"f\x00n", "unique": b"", "priority": 2,
         "data": bytes(range(256)) * 3, "error": b"trace\n\t", "reason": 1, "attempts": 4,
         "submitted_us": 1_700_000_000_000_000, "failed_us": 1_700_000_000_500_000}
    assert decode_dead(encode_dead(d)) == d
    with pytest.raises(ValueError):
        decode_dead(encode_dead(d) + b"x")
    settings = {b"keep": (2, 500), b"other\x00fn": (0, 0), b"": (1000000, 86400000)}
    assert decode_retry(encode_retry(settings)) == settings


@pytest.mark.parametrize("rest, func, unique", [
    (b"resize-image-" + b"0f8fad5b-d9cb-469f-a165-70867728950e", b"resize-image",
     b"0f8fad5b-d9cb-469f-a165-70867728950e"),
    (b"resize-image-k1", b"resize-image", b"k1"),
    (b"plain-", b"plain", b""),
    (b"nohyphen", b"nohyphen", b""),
])
def test_gearmands_names_split_at_a_trailing_uuid_or_the_last_hyphen(rest, func, unique):
    from fastgear.persist.redis import split_gearmand_name
    assert split_gearmand_name(rest) == (func, unique)


@pytest.mark.parametrize("module, flags, extra", [
    ("redis", ("-q", "redis"), "fastgear[redis]"),
    ("pymemcache", ("-q", "libmemcached", "--libmemcached-servers", "127.0.0.1:1"),
     "fastgear[memcached]"),
])
def test_a_missing_driver_names_the_extra_and_exits_1(tmp_path, module, flags, extra):
    out = subprocess.run(
        [sys.executable, "-c", (f"import sys; sys.modules[{module!r}] = None; "
                                "from fastgear.cli import main; sys.exit(main(sys.argv[1:]))"),
         "serve", "-p", str(free_port()), "-L", "127.0.0.1", "--log-file", "none", "-P",
         str(tmp_path / "x.pid"), "--monitor", "off", *flags],
        check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and extra in out.stderr, out.stderr
