"""Persistent stores for background jobs, and the thread that feeds them.

A store has four operations: `open()` (create or migrate its table), `replay()` (every
stored job, FIFO), `write(adds, deletes)` (one transaction: insert the new rows, delete
finished ones; returns the new row ids) and `close()`. `StoreThread` runs the group
commit: it waits until the I/O loops have rows to write, takes *all* of them at once,
writes them in one transaction, and then tells the loops, which send JOB_CREATED only
now. Everything that arrives while a commit runs goes into the next one, so the commit
rate stays bounded while throughput follows the load.
"""
import logging
import select
import threading

log = logging.getLogger("fastgear.store")


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

    def run(self):
        poller = select.poll()
        poller.register(self.loop.store_fd, select.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(200) and not self.pending_deletes:
                continue
            self.commit_once()
        # What the loops handed over before they stopped still goes to disk.
        self.commit_once()

    def commit_once(self):
        adds, deletes = self.loop.store_take()
        deletes = self.pending_deletes + deletes
        self.pending_deletes = []
        if not adds and not deletes:
            return
        try:
            row_ids = self.store.write([a[1:] for a in adds], deletes)
        except Exception as exc:  # noqa: BLE001 (sqlite3.Error, OSError...: never stop serving)
            self.failures += 1
            log.error("store write of %d jobs and %d deletes failed: %s",
                      len(adds), len(deletes), exc)
            # Deletes are retried with the next commit; a submitter gets QUEUE_ERROR.
            self.pending_deletes = deletes
            text = f"QUEUE_ERROR {exc}".encode("utf-8", "replace")[:200]
            self.loop.store_done([], [a[0] for a in adds], text)
            return
        self.commits += 1
        self.rows_added += len(adds)
        self.rows_deleted += len(deletes)
        self.loop.store_done(list(zip([a[0] for a in adds], row_ids)), [])

    def stop(self, timeout=30):
        """Let the last commit run (the loops have stopped by now, so it holds every
        row they handed over); False when it did not finish in time."""
        self.stopping.set()
        self.join(timeout)
        return not self.is_alive()
