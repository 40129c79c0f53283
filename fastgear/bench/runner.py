"""One load run: connect, drive the compiled loop in native threads, verify, measure.

The Python here only sets up and watches: sockets are opened with the socket module and
handed to `_loop.Run` as bare fds, each generator thread spends the whole run inside
`Run.thread_main` without the GIL, and this thread wakes a few times a second to draw the
progress line and to fail a run that has stopped making progress (a server that loses a
job would otherwise keep the generator waiting forever).
"""
from __future__ import annotations

import os
import resource
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

from fastgear.bench import procstat

PRIORITIES = {"normal": 0, "high": 1, "low": 2, "mixed": 3}

# Per-workload defaults: bg and fg as in the published comparison (issue 4), fill and
# drain deep enough to show how a server's queue scales.
_KEYS = ("clients", "workers", "pipeline", "max_backlog", "jobs")
DEFAULTS = {
    "bg": dict(zip(_KEYS, (1, 64, 100, 1000, 200_000))),
    "fg": dict(zip(_KEYS, (2, 32, 100, 0, 200_000))),
    "fill": dict(zip(_KEYS, (2, 0, 100, 0, 300_000))),
    "drain": dict(zip(_KEYS, (2, 64, 100, 0, 300_000))),
    "durable": dict(zip(_KEYS, (4, 64, 200, 2000, 20_000))),
}
WORKLOADS = tuple(DEFAULTS)
# Without --jobs, a --duration run may use up to this many job ids (state words are
# allocated lazily by the kernel, so the cap costs nothing until used).
DURATION_JOB_CAP = 50_000_000


class BenchError(RuntimeError):
    """A run that did not complete every job exactly once, or could not start."""


@dataclass
class Options:
    workload: str = "bg"
    host: str = "127.0.0.1"
    port: int = 4730
    clients: int = 1
    workers: int = 64
    pipeline: int = 100
    payload: int = 16
    functions: int = 1
    unique: bool = False
    jobs: int = 200_000
    duration: float = 0.0
    priority: str = "normal"
    threads: int = 1
    max_backlog: int = 1000
    grab: int = 1
    stall: float = 10.0
    server_pid: int | None = None
    status_check: bool = True
    progress: bool = False

    @classmethod
    def for_workload(cls, workload: str, **given):
        """Options with the workload's defaults under whatever was given (None = unset)."""
        values = dict(DEFAULTS[workload])
        values.update({k: v for k, v in given.items() if v is not None})
        return cls(workload=workload, **values)

    def config(self) -> dict:
        d = asdict(self)
        for k in ("host", "port", "server_pid", "status_check", "progress", "stall"):
            d.pop(k)
        return d


def raise_fd_limit(needed: int) -> None:
    """Lift the soft open-files limit towards the hard one: 1,000 idle workers is a
    workload, and the usual soft limit of 1,024 would refuse it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def connect(opts: Options, n: int) -> list[int]:
    """n non-blocking TCP connections; returns their fds (the caller owns them)."""
    fds = []
    raise_fd_limit(n)
    try:
        for _ in range(n):
            s = socket.create_connection((opts.host, opts.port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            fds.append(s.detach())
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise BenchError(f"cannot connect to {opts.host}:{opts.port}: {exc}") from None
    return fds


def admin_status(host: str, port: int, timeout: float = 10.0) -> dict[bytes, tuple]:
    """The admin `status` table: function -> (total, running, available workers)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"status\n")
        data = b""
        while not (data == b".\n" or data.endswith(b"\n.\n")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    table = {}
    for line in data.split(b"\n"):
        parts = line.split(b"\t")
        if len(parts) == 4:
            table[parts[0]] = tuple(int(x) for x in parts[1:])
    return table


def check_queue(opts: Options, functions: list[bytes], expected: int) -> None:
    """The server must agree with our count of queued jobs (waits briefly: the last
    WORK_COMPLETEs may still be on their way when the generator finishes)."""
    deadline = time.monotonic() + 3.0
    while True:
        try:
            table = admin_status(opts.host, opts.port)
        except OSError as exc:
            raise BenchError(f"the server did not answer the admin `status` command "
                             f"after the run ({exc or type(exc).__name__})") from None
        queued = sum(table.get(f, (0, 0, 0))[0] for f in functions)
        if queued == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if queued != expected:
        raise BenchError(f"the server's admin status shows {queued} jobs queued for this "
                         f"run's functions; expected {expected}")


class Progress:
    """A live line on stderr, redrawn in place, only for runs longer than a second."""

    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled
        self.label = label
        self.drawn = False

    def draw(self, elapsed: float, done: int, goal: int | None) -> None:
        if not self.enabled or elapsed < 1.0:
            return
        rate = done / elapsed if elapsed else 0.0
        of = f"/{goal:,}" if goal else ""
        sys.stderr.write(f"\r{self.label}: {done:,}{of} jobs  {rate:,.0f} jobs/s  "
                         f"{elapsed:.1f}s   ")
        sys.stderr.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            sys.stderr.write("\r" + " " * 78 + "\r")
            sys.stderr.flush()
            self.drawn = False


def function_names(functions: int) -> list[bytes]:
    # A fresh random prefix per run: jobs left behind by an earlier run (or another
    # user of the server) can never be mistaken for this run's.
    prefix = f"fgbench-{os.urandom(4).hex()}-"
    return [f"{prefix}{k}".encode() for k in range(functions)]


def _phase(opts: Options, mode: str, nclients: int, nworkers: int, functions: list[bytes],
           jobs: int, expected: int = 0, label: str = "", duration: float = 0.0) -> dict:
    """Run one phase of the compiled loop and return its raw figures; raise BenchError
    when a job was lost, duplicated or never acknowledged."""
    from fastgear.bench import _loop

    nthreads = max(1, min(opts.threads, nclients + nworkers))
    fds = connect(opts, nclients + nworkers)
    conns = [(fd, 0 if k < nclients else 1, k % nthreads) for k, fd in enumerate(fds)]
    try:
        run = _loop.Run(conns, nthreads, mode, functions, pipeline=opts.pipeline,
                        payload=opts.payload, unique=opts.unique,
                        priority=PRIORITIES[opts.priority], jobs=jobs, grab=opts.grab,
                        expected=expected,
                        backlog=opts.max_backlog if mode == "bg" else 0,
                        duration=duration)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    pid = opts.server_pid
    goal = None if duration else (expected or jobs)
    progress = Progress(opts.progress, label or mode)
    srv_cpu0 = procstat.cpu_seconds(pid) if pid else None
    gen_cpu0 = procstat.own_cpu_seconds()
    t0 = time.monotonic()
    threads = [threading.Thread(target=run.thread_main, args=(i,), daemon=True,
                                name=f"fastgear-bench-{i}") for i in range(nthreads)]
    run.start_clock()
    for t in threads:
        t.start()
    last, last_change = None, time.monotonic()
    try:
        while True:
            alive = [t for t in threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(0.25)
            c = run.counters()
            done = c["results"] if mode == "fg" else c["created"] if mode == "fill" \
                else c["executed"]
            snapshot = (c["issued"], c["created"], c["executed"], c["results"])
            now = time.monotonic()
            if snapshot != last:
                last, last_change = snapshot, now
            elif now - last_change > opts.stall:
                run.abort(f"stalled: no progress for {opts.stall:g}s "
                          f"({c['issued']:,} submitted, {c['created']:,} acknowledged, "
                          f"{c['executed']:,} executed, {c['results']:,} results received)"
                          if mode != "drain" else
                          f"stalled: no progress for {opts.stall:g}s ({c['executed']:,} of "
                          f"{expected:,} queued jobs executed)")
            progress.draw(now - t0, done, goal)
    except KeyboardInterrupt:
        run.abort("interrupted")
        for t in threads:
            t.join()
        raise
    finally:
        progress.clear()
    elapsed = run.elapsed()
    wall = time.monotonic() - t0
    gen_cpu = procstat.own_cpu_seconds() - gen_cpu0
    srv_cpu1 = procstat.cpu_seconds(pid) if pid else None
    error = run.error()
    counts = run.counters()
    check = run.verify()
    lat = run.latencies()
    run.close()
    problems = []
    if check["not_executed"]:
        problems.append(f"{check['not_executed']:,} jobs were never executed (first id "
                        f"{check['first_not_executed']})")
    if check["executed_twice"]:
        problems.append(f"{check['executed_twice']:,} jobs were executed more than once "
                        f"(first id {check['first_executed_twice']})")
    if check["never_submitted"]:
        problems.append(f"{check['never_submitted']:,} jobs were executed that this run "
                        f"never submitted (first id {check['first_never_submitted']})")
    if check["result_twice"]:
        problems.append(f"{check['result_twice']:,} jobs returned their result more than "
                        "once")
    if not error and check["no_result"]:
        problems.append(f"{check['no_result']:,} foreground jobs never returned a result")
    if not error and check["not_acknowledged"]:
        problems.append(f"{check['not_acknowledged']:,} submits were never acknowledged "
                        "with JOB_CREATED")
    if error or problems:
        raise BenchError("; ".join(([error] if error else []) + problems))
    done = check["issued"] if mode != "drain" else expected
    out = {"jobs": done, "elapsed_s": elapsed, "jobs_per_s": done / elapsed if elapsed else 0,
           "gen_cpu_pct": 100.0 * gen_cpu / wall if wall else 0.0,
           "generator_threads": nthreads, "counters": counts}
    if lat:
        out["latency_us"] = lat
    if srv_cpu0 is not None and srv_cpu1 is not None:
        out["server_cpu_pct"] = 100.0 * (srv_cpu1 - srv_cpu0) / wall if wall else 0.0
        out["server_cpu_us_per_job"] = 1e6 * (srv_cpu1 - srv_cpu0) / done if done else 0.0
    return out


def run_workload(opts: Options, server_label: str | None = None) -> dict:
    """Run opts.workload once; returns the JSON-able result, raises BenchError."""
    if opts.payload < 8:
        raise BenchError("--payload must be at least 8 bytes (the job id travels in it)")
    if opts.workload in ("bg", "fg", "durable") and opts.workers < 1:
        raise BenchError(f"the {opts.workload} workload needs at least one worker")
    if opts.workload != "drain" and opts.clients < 1 or opts.workload == "drain" and (
            opts.clients < 1 or opts.workers < 1):
        raise BenchError(f"the {opts.workload} workload needs clients"
                         + (" and workers" if opts.workload == "drain" else ""))
    jobs = opts.jobs
    if opts.duration and jobs <= 0:
        jobs = DURATION_JOB_CAP
    functions = function_names(opts.functions)
    pid = opts.server_pid
    result = {"kind": "run", "workload": opts.workload,
              "server": server_label or f"{opts.host}:{opts.port}", "status": "ok",
              "config": opts.config()}
    mode = "bg" if opts.workload == "durable" else opts.workload
    if mode in ("bg", "fg"):
        result.update(_phase(opts, mode, opts.clients, opts.workers, functions, jobs,
                             duration=opts.duration))
        if opts.status_check:
            check_queue(opts, functions, 0)
    else:
        rss0 = procstat.rss_kb(pid) if pid else None
        # A drain needs the ids 0..N-1 queued, so its fill ignores --duration.
        fill = _phase(opts, "fill", opts.clients, 0, functions, jobs, label="fill",
                      duration=opts.duration if mode == "fill" else 0.0)
        rss1 = procstat.rss_kb(pid) if pid else None
        if opts.status_check:
            check_queue(opts, functions, fill["jobs"])
        result.update(fill)
        if rss0 is not None and rss1 is not None and fill["jobs"]:
            result["server_rss_kb"] = rss1
            result["rss_bytes_per_job"] = (rss1 - rss0) * 1024.0 / fill["jobs"]
        if mode == "drain":
            drain = _phase(opts, "drain", 0, opts.workers, functions, fill["jobs"],
                           expected=fill["jobs"], label="drain")
            if opts.status_check:
                check_queue(opts, functions, 0)
            result["fill_jobs_per_s"] = fill["jobs_per_s"]
            result["fill_elapsed_s"] = fill["elapsed_s"]
            result.update(drain)
    if pid and "server_rss_kb" not in result:
        rss = procstat.rss_kb(pid)
        if rss is not None:
            result["server_rss_kb"] = rss
    return result
