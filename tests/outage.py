"""A load that keeps going while a test takes a store's backend away (PostgreSQL,
Redis, memcached): one client submitting background jobs one at a time and one worker
completing them, in threads, recording what each submit was answered and what ran.
The tests then check the store contract across the outage: every submit answered
(JOB_CREATED or ERROR QUEUE_ERROR, never silence), every acknowledged job run, no
completed or refused job run again. A thread records what it did not expect instead
of asserting, so the test, not a dying thread, reports it."""
import threading
import time

from gearproto import (
    ERROR,
    GRAB_JOB,
    JOB_CREATED,
    NO_JOB,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    Closed,
    Conn,
)

FUNC = b"outage"


class OutageLoad:
    def __init__(self, host, port, answer_within):
        self.addr = (host, port)
        self.answer_within = answer_within
        self.stop = threading.Event()
        self.acked, self.refused, self.slow, self.completed = [], [], [], []
        self.problems = []
        self.threads = [threading.Thread(target=self._client, daemon=True),
                        threading.Thread(target=self._worker, daemon=True)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(self.answer_within + 10)

    def _client(self):
        try:
            with Conn(*self.addr) as c:
                i = 0
                while not self.stop.is_set():
                    p = b"r%05d" % i
                    i += 1
                    t0 = time.monotonic()
                    c.send(SUBMIT_JOB_BG, FUNC, b"", p)
                    t, args = c.recv(timeout=self.answer_within + 10)
                    if time.monotonic() - t0 > self.answer_within:
                        self.slow.append(p)
                    if t == JOB_CREATED:
                        self.acked.append(p)
                    elif t == ERROR and args[0] == b"QUEUE_ERROR":
                        self.refused.append(p)
                        time.sleep(0.02)
                    else:
                        self.problems.append((p, t, args))
        except (Closed, OSError, TimeoutError) as exc:
            self.problems.append(("client", exc))

    def _worker(self):
        try:
            with Conn(*self.addr) as w:
                w.worker(FUNC)
                while not self.stop.is_set():
                    t, args = w.grab(GRAB_JOB, timeout=20)
                    if t == NO_JOB:
                        time.sleep(0.01)
                        continue
                    w.send(WORK_COMPLETE, args[0], b"")
                    self.completed.append(bytes(args[2]))
        except (Closed, OSError, TimeoutError) as exc:
            self.problems.append(("worker", exc))

    def check(self, rest):
        """After the load: `rest` is what a fresh worker drained afterwards."""
        assert not self.slow, f"{len(self.slow)} submits answered after {self.answer_within} s"
        assert not self.problems, self.problems[:3]
        lost = set(self.acked) - set(self.completed) - set(rest)
        assert not lost, f"{len(lost)} acknowledged jobs lost"
        assert not (set(rest) & set(self.completed)), "a completed job ran again"
        assert not (set(self.refused) & (set(self.completed) | set(rest))), "a refused job ran"
