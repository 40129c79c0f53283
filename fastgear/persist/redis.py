"""The Redis store (`-q redis --redis-server H --redis-port P [--redis-password S]
[--redis-prefix _gear_]`), gearmand's flags with gearmand's meanings.

Layout. gearmand 1.1.20 keeps each job in a hash `PREFIX-FUNCTION-UNIQUE` with the
fields `data` and `priority` (read off a real gearmand): jobs with an empty or equal
unique key share one key and overwrite each other, epoch jobs are refused with
QUEUE_ERROR, and replay (`KEYS`, then splitting the name at a hyphen) mangles function
names that contain hyphens. fastgear keeps each job in a hash of its own,
`PREFIX:fg:ID`, with gearmand's two fields plus `function`, `unique` and `when`
(the EPOCH run time); ID is the engine's row id, taken from a counter `PREFIX:fg:seq`
in blocks, so replay restores submission order. Names never start `PREFIX-`, so the two
layouts never meet. gearmand's keys found at start-up are migrated: each becomes a
fastgear hash and the old key goes in the same MULTI/EXEC.

Dead letters and per-function retry settings (`retry F N BACKOFF`) are kept beside the
jobs, as the SQL stores keep them: each dead letter a hash `PREFIX:fg:dead:ID` (the
engine's dead-letter id) written in the same MULTI/EXEC that deletes its job's hash, and
the retry settings one hash `PREFIX:fg:retry` (field: the function, value: "RETRIES
BACKOFF_MS"). Both are read back at start-up.

Durability: a batch of adds and deletes is one pipelined MULTI/EXEC, and JOB_CREATED
goes out after EXEC's reply, i.e. once the write reached the server. It is exactly as
durable as that server's persistence: `appendonly yes` with `appendfsync always` loses
nothing acknowledged; Redis's defaults (RDB snapshots, or `appendfsync everysec`) can lose
the last second or more on a crash of Redis itself. Replay walks keys with SCAN, never
KEYS, so a big Redis is not blocked. A connection that drops fails the batch in flight
with QUEUE_ERROR and the next batch reconnects; every call is bounded by socket timeouts.
"""
import logging

from fastgear.persist import DEAD_FIELDS, StoreError, dead_letter

log = logging.getLogger("fastgear.store")

# Row ids taken from the counter per round trip: one INCRBY per this many jobs.
ID_BLOCK = 4096
CONNECT_TIMEOUT_S = 3.0
IO_TIMEOUT_S = 5.0
SCAN_COUNT = 1000
# Redis's own default for proto-max-bulk-len, used when CONFIG GET is not allowed.
DEFAULT_MAX_BULK = 512 << 20


def _redis():
    try:
        import redis
    except ImportError as exc:
        raise StoreError("the Redis store needs the redis driver: "
                         "pip install 'fastgear[redis]'") from exc
    return redis


def _glob_escape(raw):
    out = bytearray()
    for b in raw:
        if b in b"*?[]\\":
            out += b"\\"
        out.append(b)
    return bytes(out)


def split_gearmand_name(rest):
    """FUNCTION-UNIQUE from a gearmand key (the prefix and its hyphen removed). The name
    is ambiguous when either part has a hyphen: a trailing UUID (what libgearman makes
    up when a client gives no unique key) is the unique key; otherwise the last hyphen
    splits, since function names carry hyphens far more often than unique keys."""
    if len(rest) >= 37 and rest[-37:-36] == b"-" and _is_uuid(rest[-36:]):
        return rest[:-37], rest[-36:]
    func, _, unique = rest.rpartition(b"-")
    if not _:
        return rest, b""
    return func, unique


def _is_uuid(word):
    parts = word.split(b"-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        return False
    return all(c in b"0123456789abcdefABCDEF" for p in parts for c in p)


class RedisStore:
    kind = "redis"
    supports_dead = True

    def __init__(self, server=None, port=None, password=None, prefix="_gear_"):
        self.redis = _redis()
        self.host = server or "127.0.0.1"
        self.port_word = port or "6379"
        self.password = password
        self.prefix = (prefix if prefix is not None else "_gear_").encode("utf-8")
        self.job_prefix = self.prefix + b":fg:"
        self.seq_key = self.job_prefix + b"seq"
        self.dead_prefix = self.job_prefix + b"dead:"
        self.retry_key = self.job_prefix + b"retry"
        self.next_id = 0
        self.id_limit = 0
        self.max_bulk = DEFAULT_MAX_BULK
        self.client = None
        self.migrated = 0
        self.orphans = []               # ids of rows a failed batch may have written
        self._orphan_set = set()
        self.reconnects = 0
        self.last_error = None

    def _port(self):
        try:
            return int(self.port_word)
        except ValueError:
            import socket
            try:
                return socket.getservbyname(self.port_word, "tcp")
            except OSError as exc:
                raise StoreError(f"--redis-port {self.port_word}: not a port number or "
                                 "a known service") from exc

    @property
    def where(self):
        return f"Redis {self.host}:{self.port_word} prefix {self.prefix.decode('utf-8', 'replace')}"

    def open(self):
        r = self.redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        self.client = r.Redis(host=self.host, port=self._port(), password=self.password,
                              socket_connect_timeout=CONNECT_TIMEOUT_S,
                              socket_timeout=IO_TIMEOUT_S, socket_keepalive=True,
                              health_check_interval=0,
                              # One immediate retry on a fresh connection: a write
                              # repeated after a lost reply rewrites the same keys.
                              retry=Retry(NoBackoff(), 1),
                              retry_on_error=[r.ConnectionError])
        try:
            self.client.ping()
        except r.AuthenticationError as exc:
            raise StoreError(f"cannot log in to {self.where}: {exc} "
                             "(check --redis-password)") from exc
        except r.ResponseError as exc:
            raise StoreError(f"cannot use {self.where}: {exc}") from exc
        except (r.ConnectionError, r.TimeoutError, OSError) as exc:
            raise StoreError(f"cannot connect to {self.where}: {exc}") from exc
        try:
            limit = self.client.config_get("proto-max-bulk-len").get("proto-max-bulk-len")
            if limit:
                self.max_bulk = int(limit)
        except (r.ResponseError, ValueError):
            pass    # CONFIG may be renamed or forbidden: Redis's default stands

    # -- replay ------------------------------------------------------------------------

    def _scan(self, prefix=None):
        pattern = _glob_escape(self.prefix if prefix is None else prefix) + b"*"
        cursor = 0
        while True:
            cursor, keys = self.client.scan(cursor, match=pattern, count=SCAN_COUNT)
            yield from keys
            if cursor == 0:
                return

    def _fetch(self, keys):
        """HGETALL in pipelined chunks; a key that is not a hash comes back as None."""
        for i in range(0, len(keys), SCAN_COUNT):
            chunk = keys[i:i + SCAN_COUNT]
            pipe = self.client.pipeline(transaction=False)
            for k in chunk:
                pipe.hgetall(k)
            for k, v in zip(chunk, pipe.execute(raise_on_error=False)):
                yield k, (v if isinstance(v, dict) else None)

    def replay(self):
        """Every stored job, oldest first: (row_id, function, unique, priority, data,
        when). gearmand's keys are migrated to fastgear's layout first."""
        ours, theirs = [], []
        plen = len(self.prefix)
        for key in self._scan():
            rest = key[plen:]
            if rest.startswith(b":fg:") and rest[4:].isdigit():
                ours.append(key)
            elif rest.startswith(b"-"):
                theirs.append(key)
        if theirs:
            self._migrate(theirs, ours)
        rows = []
        for key, h in self._fetch(ours):
            if not h or b"function" not in h:
                continue
            rows.append((int(key[len(self.job_prefix):]), h[b"function"],
                         h.get(b"unique", b""), _int(h.get(b"priority"), 1),
                         h.get(b"data", b""), _int(h.get(b"when"), 0)))
        rows.sort()
        return rows

    def replay_dead(self):
        """Every stored dead letter, oldest first, as dicts (control.dead_restore)."""
        keys = [k for k in self._scan(self.dead_prefix)
                if k[len(self.dead_prefix):].isdigit()]
        found = []
        for _, h in self._fetch(keys):
            if h and h.get(b"id", b"").isdigit():
                found.append(dead_letter(tuple(h.get(f.encode(), b"") for f in DEAD_FIELDS)))
        found.sort(key=lambda d: d["id"])
        return found

    def replay_retry(self):
        """[(function, retries, backoff_s)]: the per-function retry settings."""
        out = []
        for func, value in self.client.hgetall(self.retry_key).items():
            try:
                retries, backoff_ms = (int(w) for w in value.split())
            except ValueError:
                log.warning("ignoring a malformed retry setting for %r in %s: %r",
                            func, self.retry_key, value)
                continue
            out.append((func, retries, backoff_ms / 1000.0))
        return out

    def set_retry(self, function, retries, backoff_s):
        """Keep a function's retry setting (retries < 0: forget it)."""
        if retries < 0:
            self.client.hdel(self.retry_key, function)
        else:
            self.client.hset(self.retry_key, function,
                             b"%d %d" % (retries, round(backoff_s * 1000)))

    def _migrate(self, keys, ours):
        plen = len(self.prefix) + 1
        found = [(k, h) for k, h in self._fetch(keys) if h is not None]
        # gearmand keeps no order: high priority first, then by name, for a stable replay.
        found.sort(key=lambda kh: (_int(kh[1].get(b"priority"), 1), kh[0]))
        for i in range(0, len(found), SCAN_COUNT):
            chunk = found[i:i + SCAN_COUNT]
            ids = self._take_ids(len(chunk))
            pipe = self.client.pipeline(transaction=True)
            for rid, (key, h) in zip(ids, chunk):
                func, unique = split_gearmand_name(key[plen:])
                new = self.job_prefix + b"%d" % rid
                pipe.hset(new, mapping={b"function": func, b"unique": unique,
                                        b"priority": _int(h.get(b"priority"), 1),
                                        b"data": h.get(b"data", b""), b"when": 0})
                pipe.delete(key)
                ours.append(new)
            pipe.execute()
            self.migrated += len(chunk)
        if found:
            log.warning("migrated %d jobs from gearmand's Redis layout (%s-FUNCTION-UNIQUE) "
                        "to fastgear's (%s:fg:ID)", len(found), self.prefix.decode(
                            "utf-8", "replace"), self.prefix.decode("utf-8", "replace"))

    # -- writes ------------------------------------------------------------------------

    def _take_ids(self, n):
        ids = []
        while len(ids) < n:
            if self.next_id >= self.id_limit:
                block = max(ID_BLOCK, n - len(ids))
                top = self.client.incrby(self.seq_key, block)
                self.next_id, self.id_limit = top - block + 1, top + 1
            take = min(n - len(ids), self.id_limit - self.next_id)
            ids.extend(range(self.next_id, self.next_id + take))
            self.next_id += take
        return ids

    def refuse(self, add):
        """Why one job cannot be stored (too big for the server), or None."""
        data = add[3]
        if len(data) > self.max_bulk:
            return (f"job of {len(data)} bytes is larger than the Redis server's "
                    f"proto-max-bulk-len ({self.max_bulk})")
        return None

    def write(self, adds, deletes, dead_adds=(), dead_deletes=()):
        """One MULTI/EXEC: delete finished rows, store new ones (returns their ids), store
        dead letters (dicts) and delete dead letters by id."""
        r = self.redis
        ids = []
        # Rows of a batch that failed may still have been written (the reply to EXEC was
        # lost): their submitters got QUEUE_ERROR, so they go with the next batch.
        deletes = self.orphans + list(deletes)
        try:
            ids = self._take_ids(len(adds)) if adds else []
            pipe = self.client.pipeline(transaction=True)
            jp = self.job_prefix
            if deletes:
                pipe.delete(*[jp + b"%d" % d for d in deletes])
            for rid, (func, unique, prio, data, when) in zip(ids, adds):
                pipe.hset(jp + b"%d" % rid, mapping={b"function": func, b"unique": unique,
                                                     b"priority": prio, b"data": data,
                                                     b"when": when})
            if dead_deletes:
                pipe.delete(*[self.dead_prefix + b"%d" % d for d in dead_deletes])
            for d in dead_adds:
                pipe.hset(self.dead_prefix + b"%d" % d["id"],
                          mapping={f.encode(): d[f] for f in DEAD_FIELDS})
            pipe.execute()
        except (r.ConnectionError, r.TimeoutError, OSError) as exc:
            self.last_error = str(exc)
            self.orphans = [d for d in deletes if d in self._orphan_set] + ids
            self._orphan_set = set(self.orphans)
            self._drop()
            raise StoreError(f"Redis unreachable: {exc}") from exc
        except r.RedisError as exc:
            self.last_error = str(exc)
            self.orphans = [d for d in deletes if d in self._orphan_set] + ids
            self._orphan_set = set(self.orphans)
            raise StoreError(f"Redis error: {exc}") from exc
        self.orphans, self._orphan_set = [], set()
        return ids

    def _drop(self):
        # The next call opens a fresh connection from the pool.
        try:
            self.client.connection_pool.disconnect()
        except Exception as exc:  # noqa: BLE001 (closing a broken connection)
            log.debug("closing the Redis connection: %s", exc)
        self.reconnects += 1

    def delete_rows(self, row_ids):
        self.write([], list(row_ids))

    def status(self):
        return {"server": f"{self.host}:{self.port_word}", "reconnects": self.reconnects,
                "migrated": self.migrated, "last_error": self.last_error}

    def close(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("closing the Redis connection: %s", exc)
            self.client = None


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
