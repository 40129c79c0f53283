"""Persistent stores for background jobs, and the thread that feeds them.

Every backend (sqlite.py, postgres.py, mysql.py, redis.py, memcached.py) implements one
interface: `kind`, `open()` (create or migrate its tables), `replay()` (the jobs this
server takes at start-up, FIFO, as (row_id, function, unique, priority, data,
when_to_run)), `write(adds, deletes)` (one transaction: insert the new rows, delete
finished ones; returns the new row ids, or for a job the backend cannot take a
StoreRefused in its place), `delete_rows(ids)`, `close()`. A store shared by several
servers also has `tick_s`, `maintain()` (lease renewal and takeover: returns rows to
load into the engine while serving, and whether the engine must first drop the stored
jobs it holds), `fenced()` (the lease lapsed: dispatch and acknowledgements stop) and
`status()`. A store whose server limits the size of a value (redis.py, memcached.py) has
`refuse(add)`: the reason one job cannot be stored, or None; such jobs get QUEUE_ERROR
at once.

`StoreThread` runs the group commit: it waits until the I/O loops have rows to write,
takes *all* of them at once, writes them in one transaction, and then tells the loops,
which send JOB_CREATED only now. Everything that arrives while a commit runs goes into
the next one, so the commit rate stays bounded while throughput follows the load.
Between commits it runs the store's `maintain()` and keeps the loops' fence in step
with the store's lease. A store with `supports_dead` also keeps dead letters
(`write(..., dead_adds, dead_deletes)`, `replay_dead()`) and per-function retry
settings (`set_retry()`, `replay_retry()`); a shared one also hands over the dead
letters it claimed in a takeover (`adopted_dead()`) and gives each server a range of
dead-letter ids of its own (`dead_id_floor`).
"""
import logging
import select
import threading
import time

log = logging.getLogger("fastgear.store")


# A dead letter as the SQL stores keep it: the dict keys control.dead_restore takes, and
# the table columns they are read from, in the same order.
DEAD_FIELDS = ("id", "handle", "function", "unique", "priority", "data", "error", "reason",
               "attempts", "submitted_us", "failed_us")
DEAD_COLUMN_NAMES = ("id", "handle", "function_name", "unique_key", "priority", "data", "error",
                     "reason", "attempts", "submitted_us", "failed_us")


def as_bytes(value):
    """A column value as bytes: drivers give bytes, bytearray or memoryview for BLOBs, and
    str where a column still has a text type (a table gearmand made)."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8")


def dead_letter(row):
    """One row read in DEAD_COLUMN_NAMES order, as the dict control.dead_restore takes
    (numbers may come as text, as Redis gives them)."""
    r = dict(zip(DEAD_FIELDS, row))
    for k in ("handle", "function", "unique", "data", "error"):
        r[k] = as_bytes(r[k])
    for k in ("id", "priority", "reason", "attempts", "submitted_us", "failed_us"):
        r[k] = int(r[k] or 0)
    return r


class StoreError(Exception):
    """A store cannot be opened, replayed or written (start-up errors exit with 1)."""


class StoreRefused(Exception):
    """In place of a row id in what `write()` returns: this one job cannot be stored
    (too large for the backend); its submitter gets QUEUE_ERROR with this text, and the
    rest of the batch is written."""


class StoreThread(threading.Thread):
    def __init__(self, loop, store):
        super().__init__(name="fastgear-store", daemon=True)
        self.loop = loop
        self.store = store
        self.stopping = threading.Event()
        self.pending_deletes = []
        self.commits = 0
        self.rows_added = 0
        self.rows_deleted = 0
        self.failures = 0
        self.tick_s = getattr(store, "tick_s", None)
        self.next_tick = 0.0
        self.fenced = False
        self.maintain_errors = 0
        self._last_maintain_log = 0.0
        self._last_write_log = 0.0
        # Dead letters and per-function retry settings, where the store keeps them.
        self.keeps_dead = getattr(store, "supports_dead", False)
        self.pending_dead = ([], [])
        self.pending_meta = []
        # A store whose server caps the size of a value says which jobs it cannot hold.
        self.refuse = getattr(store, "refuse", None)
        # A store shared by several servers: the retry settings as last read from it, so
        # that a change made on another server reaches this one (follow_retry).
        self.shared_retry = None

    def run(self):
        poller = select.poll()
        poller.register(self.loop.store_fd, select.POLLIN)
        wait_ms = 200 if self.tick_s is None else int(min(200, self.tick_s * 1000 / 2))
        while not self.stopping.is_set():
            if self.tick_s is not None:
                self.tend()
            # Also on every timeout: admin actions (dead letters discarded or re-queued,
            # retry settings) do not poke the store's eventfd. A takeover in steps
            # comes straight back after the commit.
            poller.poll(0 if getattr(self.store, "claim_more", False) else wait_ms)
            self.commit_once()
        # What the loops handed over before they stopped still goes to disk.
        self.commit_once()

    def tend(self):
        """A shared store's upkeep between commits: renew, recover, take over, fence."""
        now = time.monotonic()
        if now >= self.next_tick or getattr(self.store, "claim_more", False):
            self.next_tick = now + self.tick_s
            try:
                rows, forget = self.store.maintain()
            except Exception as exc:  # noqa: BLE001 (database errors: retried next tick)
                self.maintain_errors += 1
                if now - self._last_maintain_log > 5:
                    self._last_maintain_log = now
                    log.error("store upkeep failed: %s", exc)
                rows, forget = [], False
            if forget:
                log.warning("dropped %d stored jobs whose rows other servers took over",
                            self.loop.forget_stored())
                if self.keeps_dead:
                    self.forget_dead()
            if rows:
                duplicates = self.loop.adopt(rows)
                self.pending_deletes.extend(duplicates)
            adopted = getattr(self.store, "adopted_dead", None)
            if self.keeps_dead and adopted is not None:
                from fastgear import control
                dead = adopted()
                if dead:
                    control.dead_restore(self.loop, dead)
            if self.keeps_dead:
                self.follow_retry()
        fenced = self.store.fenced()
        if fenced != self.fenced:
            self.fenced = fenced
            self.loop.set_fenced(fenced)
            if fenced:
                log.error("store lease lapsed: no job starts and submissions are refused "
                          "until the database answers again")
            else:
                log.warning("store lease renewed: serving again")

    def forget_dead(self):
        """This server's registration was taken over: its dead letters' rows belong to
        the survivors now, so the engine drops its copies (the deletes they queue find
        no row of ours), and the new registration's id range starts."""
        from fastgear import control, snapshot
        self.pending_dead = ([], [])
        dropped = 0
        while True:
            page = snapshot.dead_letters(self.loop, None, 1000)
            gone = sum(bool(control.discard_dead(self.loop, d["handle"])) for d in page)
            dropped += gone
            if not gone:
                break
        control.dead_take(self.loop)
        control.dead_id_floor(self.loop, getattr(self.store, "dead_id_floor", 0))
        if dropped:
            log.warning("dropped %d dead letters whose rows other servers took over", dropped)

    def follow_retry(self):
        """(shared store, every tick) Apply the retry settings other servers changed:
        what differs from the last read, not from this engine, so that a setting made
        here and not yet written is never undone; a function whose own change is still
        pending is left to it. A read that fails is tried again next tick."""
        try:
            now = {f: (n, b) for f, n, b in self.store.replay_retry()}
        except Exception as exc:  # noqa: BLE001 (database errors: retried next tick)
            log.debug("reading the shared retry settings failed: %s", exc)
            return
        # The first read is applied whole: it may be newer than the start-up replay.
        last, self.shared_retry = self.shared_retry or {}, now
        from fastgear import control
        pending = {m[0] for m in self.pending_meta}
        changed = [(f, *v) for f, v in now.items() if last.get(f) != v and f not in pending]
        changed += [(f, -1, 0.0) for f in last if f not in now and f not in pending]
        for function, retries, backoff_s in changed:
            control.set_retry(self.loop, function, retries, backoff_s)
        if changed:
            log.info("retry settings changed by another server: %s",
                     ", ".join(f.decode("utf-8", "replace") for f, *_ in changed))

    def set_retry(self, function, retries, backoff_s):
        """(control thread) Keep a function's retry setting with the next commit."""
        if self.keeps_dead:
            self.pending_meta.append((function, retries, backoff_s))

    def take_dead(self):
        """Dead-letter rows to write and ids to delete, if this store keeps them. Taken
        after the job rows: a dead letter is written no later than its job row goes."""
        from fastgear import control
        adds, deletes = control.dead_take(self.loop)
        if not self.keeps_dead:
            return [], []
        return self.pending_dead[0] + adds, self.pending_dead[1] + deletes

    def commit_once(self):
        adds, deletes = self.loop.store_take()
        dead_adds, dead_deletes = self.take_dead()
        self.pending_dead = ([], [])
        deletes = self.pending_deletes + deletes
        self.pending_deletes = []
        meta, self.pending_meta = self.pending_meta, []
        for function, retries, backoff_s in meta:
            try:
                self.store.set_retry(function, retries, backoff_s)
            except Exception as exc:  # noqa: BLE001 (kept in memory; logged)
                log.error("store: keeping the retry setting of %r failed: %s", function, exc)
        if adds and self.refuse is not None:
            adds = self.refuse_some(adds)
        if not adds and not deletes and not dead_adds and not dead_deletes:
            return
        if not adds and self.fenced:
            # Deletes wait for the lease to come back (they check our epoch anyway).
            self.pending_deletes = deletes
            self.pending_dead = (dead_adds, dead_deletes)
            return
        try:
            if dead_adds or dead_deletes:
                row_ids = self.store.write([a[1:] for a in adds], deletes, dead_adds,
                                           dead_deletes)
            else:
                row_ids = self.store.write([a[1:] for a in adds], deletes)
        except Exception as exc:  # noqa: BLE001 (sqlite3.Error, OSError...: never stop serving)
            self.failures += 1
            now = time.monotonic()
            if adds or now - self._last_write_log > 5:
                self._last_write_log = now
                log.error("store write of %d jobs and %d deletes failed: %s",
                          len(adds), len(deletes), exc)
            # Deletes are retried with the next commit; a submitter gets QUEUE_ERROR.
            self.pending_deletes = deletes
            self.pending_dead = (dead_adds, dead_deletes)
            text = f"QUEUE_ERROR {exc}".encode("utf-8", "replace")[:200]
            self.loop.store_done([], [a[0] for a in adds], text)
            return
        self.commits += 1
        self.rows_deleted += len(deletes)
        if not any(isinstance(r, StoreRefused) for r in row_ids):
            self.rows_added += len(adds)
            self.loop.store_done(list(zip([a[0] for a in adds], row_ids)), [])
            return
        # Answered in submission order: a client matches replies to its submits in order.
        run, refused = [], None
        for add, rid in zip(adds, row_ids):
            if isinstance(rid, StoreRefused):
                if run:
                    self.loop.store_done(run, [])
                    run = []
                refused = rid
                text = f"QUEUE_ERROR {rid}".encode("utf-8", "replace")[:200]
                self.loop.store_done([], [add[0]], text)
            else:
                self.rows_added += 1
                run.append((add[0], rid))
        if run:
            self.loop.store_done(run, [])
        log.error("store refused a job: %s", refused)

    def refuse_some(self, adds):
        """Answer at once the jobs the store cannot hold (too big for its server) with
        QUEUE_ERROR and the reason; the others are written."""
        kept, refused = [], {}
        for a in adds:
            why = self.refuse(a[1:])
            if why is None:
                kept.append(a)
            else:
                refused.setdefault(why, []).append(a[0])
        for why, tokens in refused.items():
            self.failures += 1
            log.error("store refused %d jobs: %s", len(tokens), why)
            self.loop.store_done([], tokens, f"QUEUE_ERROR {why}".encode("utf-8", "replace")[:200])
        return kept

    def status(self):
        """The store's kind and health for /status, /metrics and the dashboard."""
        out = {"kind": getattr(self.store, "kind", "unknown"), "commits": self.commits,
               "rows_added": self.rows_added, "rows_deleted": self.rows_deleted,
               "write_failures": self.failures,
               "deletes_pending": len(self.pending_deletes)}
        extra = getattr(self.store, "status", None)
        if extra is not None:
            out.update(extra())
        return out

    def stop(self, timeout=30):
        """Let the last commit run (the loops have stopped by now, so it holds every
        row they handed over); False when it did not finish in time."""
        self.stopping.set()
        self.join(timeout)
        return not self.is_alive()
