"""The memcached store (`-q libmemcached --libmemcached-servers H:P[,H:P...]
[--libmemcached-prefix gear_]`), gearmand's flags with gearmand's meanings.

memcached is a cache, not a store: an eviction under memory pressure, an item older
than the server's limits, or a restart of memcached loses queued jobs. The server says so
in `--help`, the README and a warning at start-up. It is here so that a gearmand
deployment using it can switch without losing the queue it has.

Layout. gearmand 1.1.20 stores each job as the item `PREFIXFUNCTION-UNIQUE` (no separator
after the prefix) whose value is the payload and whose flags are the priority (read off a
real gearmand): empty or equal unique keys overwrite each other, a name with a space or
over 250 bytes is refused, and epoch jobs are refused. fastgear stores each job as
`PREFIX~fg~ID` (ID: the engine's row id, no hyphen, so never a gearmand name) whose value
is a small header (magic, priority, run time, lengths of function and unique key)
followed by function, unique key and payload, so names are binary-safe and jobs never
collide; the flags carry the priority as gearmand's do. A batch is sent as pipelined
sets (deletes likewise) and JOB_CREATED follows the server's STORED replies.

Dead letters are items `PREFIX~fd~ID` (the engine's dead-letter id; a header of the
numbers and lengths, then handle, function, unique key, payload and error text), set
with the batch that deletes their job's item; the per-function retry settings
(`retry F N BACKOFF`) are one item `PREFIX~fr`. Both are read back at start-up, and
both are as lasting as memcached's items. A dead letter larger than memcached's item
limit is kept in memory only (logged).

Replay lists the keys with `lru_crawler metadump all` (memcached >= 1.4.31; the
`stats cachedump` libmemcached's dump uses lists at most one slab page per class on 1.6),
fetches them with pipelined gets, migrates gearmand's items to fastgear's layout, and
continues the row ids after the highest one found.
"""
import logging
import socket
import struct
import urllib.parse

from fastgear.persist import StoreError

log = logging.getLogger("fastgear.store")

MAGIC = b"FGQ1"
# magic, priority, when_to_run, len(function), len(unique)
HEADER = struct.Struct(">4sBqII")
DEAD_MAGIC = b"FGD1"
# magic, id, priority, reason, attempts, submitted_us, failed_us, then the lengths of
# handle, function, unique, data and error
DEAD_HEADER = struct.Struct(">4sqBBIqqIIIII")
DEAD_BYTES = ("handle", "function", "unique", "data", "error")
# one retry setting: len(function), retries, backoff in ms; then the function
RETRY_ENTRY = struct.Struct(">Iiq")
CONNECT_TIMEOUT_S = 3.0
IO_TIMEOUT_S = 5.0
CHUNK = 500
# What memcached adds to an item beyond key and value (item header, CAS, suffix).
ITEM_OVERHEAD = 96
MAX_KEY = 250
NOT_DURABLE = ("the memcached store is not durable: an eviction, an expiry of memcached's "
               "own limits or a restart of memcached loses queued background jobs")


def _pymemcache():
    try:
        import pymemcache  # noqa: F401
        from pymemcache.client.base import Client
        from pymemcache.client.hash import HashClient
    except ImportError as exc:
        raise StoreError("the memcached store needs the pymemcache driver: "
                         "pip install 'fastgear[memcached]'") from exc
    return Client, HashClient


def parse_servers(text):
    """gearmand's --libmemcached-servers: host[:port][ weight], comma or space separated."""
    servers = []
    for word in (text or "").replace(",", " ").split():
        if word.startswith("["):
            host, _, port = word[1:].partition("]")
            port = port.lstrip(":") or "11211"
        elif word.count(":") == 1:
            host, port = word.split(":")
        else:
            host, port = word, "11211"
        try:
            servers.append((host or "127.0.0.1", int(port)))
        except ValueError as exc:
            raise StoreError(f"--libmemcached-servers: bad server {word!r}") from exc
    if not servers:
        raise StoreError("--libmemcached-servers: no server given")
    return servers


def encode(func, unique, prio, data, when):
    return HEADER.pack(MAGIC, prio, when, len(func), len(unique)) + func + unique + data


def decode(value):
    magic, prio, when, flen, ulen = HEADER.unpack_from(value)
    if magic != MAGIC:
        raise ValueError("not a fastgear item")
    at = HEADER.size
    return (value[at:at + flen], value[at + flen:at + flen + ulen], prio,
            value[at + flen + ulen:], when)


def encode_dead(d):
    parts = [bytes(d[k]) for k in DEAD_BYTES]
    return DEAD_HEADER.pack(DEAD_MAGIC, d["id"], d["priority"], d["reason"], d["attempts"],
                            d["submitted_us"], d["failed_us"],
                            *[len(p) for p in parts]) + b"".join(parts)


def decode_dead(value):
    """A dead letter's item as the dict control.dead_restore takes."""
    (magic, did, prio, reason, attempts, submitted, failed,
     *lens) = DEAD_HEADER.unpack_from(value)
    if magic != DEAD_MAGIC:
        raise ValueError("not a fastgear dead letter")
    d = {"id": did, "priority": prio, "reason": reason, "attempts": attempts,
         "submitted_us": submitted, "failed_us": failed}
    at = DEAD_HEADER.size
    for k, n in zip(DEAD_BYTES, lens):
        d[k] = value[at:at + n]
        at += n
    if at != len(value):
        raise ValueError("a dead letter's lengths do not add up")
    return d


def encode_retry(settings):
    return b"".join(RETRY_ENTRY.pack(len(f), n, ms) + f for f, (n, ms) in settings.items())


def decode_retry(value):
    """{function: (retries, backoff_ms)} from the retry settings' item."""
    out, at = {}, 0
    while at < len(value):
        flen, n, ms = RETRY_ENTRY.unpack_from(value, at)
        at += RETRY_ENTRY.size
        out[value[at:at + flen]] = (n, ms)
        at += flen
    return out


def split_gearmand_name(rest):
    from fastgear.persist.redis import split_gearmand_name as split
    return split(rest)


class MemcachedStore:
    kind = "memcached"
    supports_dead = True

    def __init__(self, servers, prefix="gear_"):
        self.Client, self.HashClient = _pymemcache()
        self.servers = parse_servers(servers)
        self.prefix = (prefix if prefix is not None else "gear_").encode("utf-8")
        self.job_prefix = self.prefix + b"~fg~"
        self.dead_prefix = self.prefix + b"~fd~"
        self.retry_key = self.prefix + b"~fr"
        self.retry = {}                 # function -> (retries, backoff_ms), as stored
        self.dead_keys = []             # dead letters' keys found by replay()
        self._dead_too_big_logged = False
        self.next_id = 1
        self.item_max = 1 << 20
        self.client = None
        self.migrated = 0
        self.orphans = []               # ids of items a failed batch may have stored
        self.last_error = None

    @property
    def where(self):
        return "memcached " + ",".join(f"{h}:{p}" for h, p in self.servers)

    def open(self):
        if len(self.job_prefix) + 20 > MAX_KEY or any(c <= 32 or c == 127 for c in self.prefix):
            raise StoreError("--libmemcached-prefix: must be printable, without spaces, "
                             f"and under {MAX_KEY - 24} bytes")
        kw = {"connect_timeout": CONNECT_TIMEOUT_S, "timeout": IO_TIMEOUT_S, "no_delay": True}
        if len(self.servers) == 1:
            self.client = self.Client(self.servers[0], **kw)
        else:
            self.client = self.HashClient(self.servers, use_pooling=False, ignore_exc=False,
                                          retry_attempts=1, dead_timeout=0, **kw)
        sizes = []
        for server in self.servers:
            try:
                sizes.append(int(self._stats_settings(server).get(b"item_size_max",
                                                                  self.item_max)))
            except (OSError, ValueError) as exc:
                raise StoreError(f"cannot connect to memcached {server[0]}:{server[1]}: "
                                 f"{exc}") from exc
        self.item_max = min(sizes)

    def _stats_settings(self, server):
        with socket.create_connection(server, timeout=CONNECT_TIMEOUT_S) as s:
            s.settimeout(IO_TIMEOUT_S)
            s.sendall(b"stats settings\r\n")
            out = _read_until(s, b"END\r\n")
        stats = {}
        for line in out.split(b"\r\n"):
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"STAT":
                stats[parts[1]] = parts[2]
        return stats

    def _keys(self):
        """Every key under our prefix on every server, through lru_crawler metadump."""
        for server in self.servers:
            with socket.create_connection(server, timeout=CONNECT_TIMEOUT_S) as s:
                s.settimeout(IO_TIMEOUT_S)
                s.sendall(b"lru_crawler metadump all\r\n")
                out = _read_until(s, b"END\r\n", err_ok=True)
            if out.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")):
                raise StoreError(f"memcached {server[0]}:{server[1]} cannot list its keys "
                                 f"(lru_crawler metadump: {out.strip().decode()}); "
                                 "memcached 1.4.31 or later with the LRU crawler is needed")
            for line in out.split(b"\n"):
                if line.startswith(b"key="):
                    key = urllib.parse.unquote_to_bytes(line.split(b" ", 1)[0][4:])
                    if key.startswith(self.prefix):
                        yield server, key

    def _get(self, keys):
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i:i + CHUNK]
            got = self.client.get_many(chunk)
            for k in chunk:
                if k in got:
                    yield k, got[k]

    def replay(self):
        ours, theirs = [], []
        plen, jlen = len(self.prefix), len(self.job_prefix)
        dlen = len(self.dead_prefix)
        self.dead_keys = []
        for server, key in self._keys():
            if key.startswith(self.job_prefix) and key[jlen:].isdigit():
                ours.append(key)
            elif key.startswith(self.dead_prefix) and key[dlen:].isdigit():
                self.dead_keys.append(key)
            elif key != self.retry_key and b"-" in key[plen:]:
                theirs.append((server, key))
        rows = []
        for key, value in self._get(ours):
            try:
                func, unique, prio, data, when = decode(value)
            except (ValueError, struct.error):
                continue
            rows.append((int(key[jlen:]), func, unique, prio, data, when))
        rows.sort()
        self.next_id = (rows[-1][0] + 1) if rows else 1
        if theirs:
            rows.extend(self._migrate(theirs))
        return rows

    def replay_dead(self):
        """Every stored dead letter (found by replay()), oldest first, as dicts."""
        found = []
        for key, value in self._get(self.dead_keys):
            try:
                found.append(decode_dead(value))
            except (ValueError, struct.error):
                log.warning("ignoring a malformed dead letter in memcached item %r", key)
        found.sort(key=lambda d: d["id"])
        return found

    def replay_retry(self):
        """[(function, retries, backoff_s)]: the per-function retry settings."""
        value = self.client.get(self.retry_key)
        try:
            self.retry = decode_retry(value) if value else {}
        except (ValueError, struct.error):
            log.warning("ignoring malformed retry settings in memcached item %r",
                        self.retry_key)
            self.retry = {}
        return [(f, n, ms / 1000.0) for f, (n, ms) in self.retry.items()]

    def set_retry(self, function, retries, backoff_s):
        """Keep a function's retry setting (retries < 0: forget it): the whole set is one
        item, written again (this store thread is its only writer)."""
        if retries < 0:
            self.retry.pop(function, None)
        else:
            self.retry[function] = (retries, round(backoff_s * 1000))
        if self.retry:
            self.client.set(self.retry_key, encode_retry(self.retry), expire=0,
                            noreply=False)
        else:
            self.client.delete(self.retry_key, noreply=False)

    def _dead_items(self, dead_adds):
        """{key: value} of the dead letters memcached can hold; the others stay in memory."""
        items = {}
        for d in dead_adds:
            value = encode_dead(d)
            if len(value) + MAX_KEY + ITEM_OVERHEAD > self.item_max:
                if not self._dead_too_big_logged:
                    self._dead_too_big_logged = True
                    log.warning("a dead letter of %d bytes is larger than memcached's item "
                                "size limit (%d bytes, memcached -I): kept in memory only",
                                len(value), self.item_max)
                continue
            items[self.dead_prefix + b"%d" % d["id"]] = value
        return items

    def _migrate(self, found_keys):
        """gearmand's items become fastgear's; read and deleted on the server that listed
        them (libmemcached's hashing is not pymemcache's)."""
        plen = len(self.prefix)
        by_server = {}
        for server, key in found_keys:
            by_server.setdefault(server, []).append(key)
        found = []
        for server, keys in by_server.items():
            for i in range(0, len(keys), CHUNK):
                found.extend((flags, server, key, value) for key, flags, value in
                             _raw_get(server, keys[i:i + CHUNK]))
        found.sort(key=lambda f: (f[0], f[2]))
        adds = []
        for prio, _server, key, value in found:
            func, unique = split_gearmand_name(key[plen:])
            adds.append((func, unique, prio if 0 <= prio <= 2 else 1, value, 0))
        if not adds:
            return []
        ids = self.write(adds, [])
        for server in by_server:
            _raw_delete(server, [k for _p, s, k, _v in found if s == server])
        self.migrated = len(adds)
        log.warning("migrated %d jobs from gearmand's memcached layout "
                    "(PREFIXFUNCTION-UNIQUE) to fastgear's (PREFIX~fg~ID)", len(adds))
        return [(rid,) + a for rid, a in zip(ids, adds)]

    def refuse(self, add):
        func, unique, _prio, data, _when = add
        size = HEADER.size + len(func) + len(unique) + len(data) + len(self.job_prefix) + 20
        if size + ITEM_OVERHEAD > self.item_max:
            return (f"job of {len(data)} bytes is larger than memcached's item size limit "
                    f"({self.item_max} bytes, memcached -I)")
        return None

    def write(self, adds, deletes, dead_adds=(), dead_deletes=()):
        """Pipelined sets of new rows and deletes of finished ones (returns the ids), and
        the dead letters' sets and deletes. memcached has no transaction, so dead letters
        are set before their jobs' items go: a failure in between leaves a job to run
        again, never a failed job lost."""
        from pymemcache.exceptions import MemcacheError
        jp = self.job_prefix
        ids = list(range(self.next_id, self.next_id + len(adds)))
        self.next_id += len(adds)
        # Items of a failed batch may have been stored before the error: their
        # submitters got QUEUE_ERROR, so they go with the next batch.
        orphans, self.orphans = self.orphans, []
        deletes = orphans + list(deletes)
        try:
            dead = self._dead_items(dead_adds) if dead_adds else None
            if dead and self.client.set_many(dead, expire=0, noreply=False):
                raise StoreError("memcached did not store a dead letter")
            if deletes:
                self.client.delete_many([jp + b"%d" % d for d in deletes], noreply=False)
            if adds:
                failed = self.client.set_many(
                    {jp + b"%d" % rid: encode(*a) for rid, a in zip(ids, adds)},
                    expire=0, noreply=False)
                if failed:
                    raise StoreError(f"memcached did not store {len(failed)} of "
                                     f"{len(adds)} jobs")
            if dead_deletes:
                self.client.delete_many([self.dead_prefix + b"%d" % d for d in dead_deletes],
                                        noreply=False)
        except (MemcacheError, OSError, StoreError) as exc:
            self.orphans = orphans + ids
            if isinstance(exc, StoreError):
                raise
            self.last_error = str(exc) or type(exc).__name__
            raise StoreError(f"memcached error: {self.last_error}") from exc
        return ids

    def delete_rows(self, row_ids):
        self.write([], list(row_ids))

    def status(self):
        return {"servers": ",".join(f"{h}:{p}" for h, p in self.servers),
                "migrated": self.migrated, "last_error": self.last_error,
                "durable": False}

    def close(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("closing the memcached connection: %s", exc)
            self.client = None


def _read_until(sock, end, err_ok=False):
    buf = bytearray()
    while not buf.endswith(end):
        if err_ok and buf.endswith(b"\r\n") and buf.startswith((b"ERROR", b"CLIENT_ERROR",
                                                                 b"SERVER_ERROR")):
            break
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise OSError("connection closed by memcached")
        buf += chunk
    return bytes(buf)


def _raw_get(server, keys):
    """(key, flags, value) of the keys found on one server: pymemcache drops the flags,
    which hold gearmand's priority."""
    with socket.create_connection(server, timeout=CONNECT_TIMEOUT_S) as s:
        s.settimeout(IO_TIMEOUT_S)
        s.sendall(b"get " + b" ".join(keys) + b"\r\n")
        buf = bytearray()
        out = []
        at = 0
        while True:
            nl = buf.find(b"\r\n", at)
            if nl < 0:
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise OSError("connection closed by memcached")
                buf += chunk
                continue
            line = bytes(buf[at:nl])
            if line == b"END":
                return out
            parts = line.split()
            if len(parts) < 4 or parts[0] != b"VALUE":
                raise OSError(f"unexpected memcached reply {line[:80]!r}")
            size = int(parts[3])
            while len(buf) < nl + 2 + size + 2:
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise OSError("connection closed by memcached")
                buf += chunk
            out.append((parts[1], int(parts[2]), bytes(buf[nl + 2:nl + 2 + size])))
            at = nl + 2 + size + 2


def _raw_delete(server, keys):
    with socket.create_connection(server, timeout=CONNECT_TIMEOUT_S) as s:
        s.settimeout(IO_TIMEOUT_S)
        s.sendall(b"".join(b"delete " + k + b"\r\n" for k in keys) + b"mn\r\n")
        _read_until(s, b"MN\r\n")
