"""Command line of `python -m fastgear.bench` / `fastgear bench`.

Three ways to point it at a server: `--host/--port` (any Gearman server, optionally with
`--server-pid` for CPU and RSS), `--start fastgear|gearmand` (one server started here),
or `--compare` (both, alternating A B A B so drifting machine load hits both alike).
Exit status: 0 when every run completed each job exactly once, 1 when a run failed or
could not start, 2 for a usage error.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

from fastgear.bench import runner, servers
from fastgear.bench.runner import WORKLOADS, BenchError, Options

# Metrics compared by --compare: (result key path, label, format, higher is better).
METRICS = [
    (("jobs_per_s",), "jobs/s", "{:,.0f}", True),
    (("fill_jobs_per_s",), "fill jobs/s", "{:,.0f}", True),
    (("latency_us", "p50"), "latency p50 µs", "{:,.0f}", False),
    (("latency_us", "p90"), "latency p90 µs", "{:,.0f}", False),
    (("latency_us", "p99"), "latency p99 µs", "{:,.0f}", False),
    (("latency_us", "max"), "latency max µs", "{:,.0f}", False),
    (("server_cpu_pct",), "server CPU %", "{:,.0f}", False),
    (("server_cpu_us_per_job",), "server CPU µs/job", "{:,.2f}", False),
    (("rss_bytes_per_job",), "RSS bytes/queued job", "{:,.0f}", False),
    (("server_rss_kb",), "server RSS KiB", "{:,.0f}", False),
    (("gen_cpu_pct",), "generator CPU %", "{:,.0f}", False),
]
DURABLE_FLAGS = ["-q", "libsqlite3", "--libsqlite3-db", "{tmp}/bench.db"]


def make_parser(prog: str = "python -m fastgear.bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False,
        description="Load generator for Gearman job servers (fastgear, gearmand, any). "
                    "Every run checks that each job completed exactly once.",
        epilog="Workloads: bg = pipelined SUBMIT_JOB_BG + workers, end-to-end jobs/s; "
               "fg = pipelined SUBMIT_JOB round trips, jobs/s and latency; fill = "
               "background jobs with no worker, fill rate and server RSS per queued job; "
               "drain = fill, then workers only, drain rate; durable = bg, against "
               "servers started with a SQLite queue under --compare/--start.")
    p.add_argument("workload", nargs="?", default="bg", choices=WORKLOADS)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=4730)
    g.add_argument("--server-pid", type=int, help="report this server's CPU%% and RSS")
    g.add_argument("--start", choices=("fastgear", "gearmand", "floor"),
                   help="start this server on a free loopback port for the run")
    g.add_argument("--compare", action="store_true",
                   help="start fastgear and gearmand, run alternately, compare medians")
    g.add_argument("--rounds", type=int, default=3, help="--compare: runs per server")
    g.add_argument("--server-threads", type=int, default=0, metavar="N",
                   help="-t for servers started here (default 0)")
    g.add_argument("--io", choices=("auto", "epoll", "uring"),
                   help="fastgear's I/O backend (--io) where this tool starts it")
    g.add_argument("--gearmand", metavar="PATH", help="gearmand binary for --compare/--start")
    g.add_argument("--floor", metavar="PATH",
                   help="--compare: floor server binary (default: built from "
                        "bench/floor/floor.c when run from a checkout)")
    g.add_argument("--no-floor", action="store_true",
                   help="--compare: leave out the floor server")
    g.add_argument("--gearmand-jobs", type=int, metavar="N",
                   help="--compare: jobs per gearmand run (default --jobs); for workloads "
                        "where gearmand is much slower, e.g. durable")
    w = p.add_argument_group("load (defaults depend on the workload)")
    w.add_argument("--clients", type=int, help="client connections")
    w.add_argument("--workers", type=int, help="worker connections")
    w.add_argument("--pipeline", type=int, help="submits in flight per client")
    w.add_argument("--max-backlog", type=int,
                   help="bg: clients pause while submitted - executed >= this (0: off)")
    w.add_argument("--payload", type=int, help="bytes of job data, >= 8 (default 16)")
    w.add_argument("--functions", type=int, help="spread jobs over this many functions")
    w.add_argument("--unique", action="store_true", default=None,
                   help="give every job a unique id")
    w.add_argument("--jobs", type=int, help="jobs per run")
    w.add_argument("--duration", type=float,
                   help="submit for this many seconds instead (with --jobs: at most that)")
    w.add_argument("--priority", choices=tuple(runner.PRIORITIES), help="job priority")
    w.add_argument("--threads", type=int, help="generator threads (default 1)")
    w.add_argument("--grab", type=int,
                   help="GRAB_JOB_UNIQs each worker keeps outstanding (default 1, as "
                        "ordinary workers do)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="one JSON object per run on stdout")
    o.add_argument("--progress", action="store_true", default=None,
                   help="live progress line on stderr (default: when stderr is a tty)")
    o.add_argument("--quiet", action="store_true", help="no progress line")
    o.add_argument("--stall", type=float, default=10.0,
                   help="fail a run that makes no progress for this many seconds")
    o.add_argument("--no-status-check", action="store_true",
                   help="skip the admin `status` check of the server's queue")
    return p


def options_from(args: argparse.Namespace) -> Options:
    jobs = args.jobs
    if args.duration and jobs is None and args.workload != "drain":
        jobs = 0  # no cap but the generator's own
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    opts = Options.for_workload(
        args.workload, host=args.host, port=args.port, clients=args.clients,
        workers=args.workers, pipeline=args.pipeline, payload=args.payload,
        functions=args.functions, unique=args.unique, jobs=jobs,
        duration=args.duration if args.workload != "drain" else None,
        priority=args.priority, threads=args.threads, max_backlog=args.max_backlog,
        grab=args.grab,
        stall=args.stall, server_pid=args.server_pid, status_check=not args.no_status_check,
        progress=progress and not args.quiet)
    for name in ("clients", "workers", "pipeline", "functions", "threads", "grab"):
        if getattr(opts, name) < (0 if name in ("clients", "workers") else 1):
            raise BenchError(f"--{name} must be at least "
                             f"{0 if name in ('clients', 'workers') else 1}")
    return opts


def dig(result: dict, path: tuple):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def dumps(obj) -> str:
    try:
        import orjson
        return orjson.dumps(obj).decode()
    except ImportError:  # orjson is optional: the stdlib writes the same objects
        import json
        return json.dumps(obj)


def describe(r: dict) -> str:
    """One human-readable line for a run."""
    head = f"{r['workload']} {r['server']}: {r['jobs']:,} jobs in {r['elapsed_s']:.2f}s = " \
           f"{r['jobs_per_s']:,.0f} jobs/s"
    parts = [head]
    if "fill_jobs_per_s" in r:
        parts.append(f"filled at {r['fill_jobs_per_s']:,.0f} jobs/s")
    lat = r.get("latency_us")
    if lat:
        parts.append(f"latency µs p50 {lat['p50']:,.0f} p90 {lat['p90']:,.0f} "
                     f"p99 {lat['p99']:,.0f} max {lat['max']:,.0f}")
    if "server_cpu_pct" in r:
        parts.append(f"server CPU {r['server_cpu_pct']:.0f}% "
                     f"{r['server_cpu_us_per_job']:.2f} µs/job")
    if "rss_bytes_per_job" in r:
        parts.append(f"RSS {r['rss_bytes_per_job']:,.0f} bytes/queued job")
    if "server_rss_kb" in r:
        parts.append(f"server RSS {r['server_rss_kb'] / 1024:,.1f} MiB")
    parts.append(f"generator CPU {r['gen_cpu_pct']:.0f}% "
                 f"({r['generator_threads']} thread{'s' if r['generator_threads'] > 1 else ''})")
    return " | ".join(parts)


def emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(dumps(result), flush=True)
    else:
        print(describe(result), flush=True)


def failed(opts: Options, label: str, exc: Exception, as_json: bool) -> None:
    if as_json:
        print(dumps({"kind": "run", "workload": opts.workload, "server": label,
                     "status": "failed", "error": str(exc), "config": opts.config()}),
              flush=True)
    print(f"fastgear.bench: FAILED {opts.workload} against {label}: {exc}", file=sys.stderr)


def server_flags(workload: str, kind: str = "gearmand", io: str | None = None) -> list[str]:
    flags = list(DURABLE_FLAGS) if workload == "durable" else []
    if kind == "fastgear" and io:
        flags += ["--io", io]
    return flags


def run_single(args, opts: Options) -> int:
    srv = None
    try:
        if args.start:
            srv = servers.Server(args.start, args.server_threads,
                                 server_flags(opts.workload, args.start, args.io),
                                 gearmand=args.gearmand, floor=args.floor)
            opts.host, opts.port, opts.server_pid = srv.host, srv.port, srv.pid
        label = srv.label if srv else f"{opts.host}:{opts.port}"
        try:
            emit(runner.run_workload(opts, label), args.json)
        except BenchError as exc:
            failed(opts, label, exc, args.json)
            return 1
        return 0
    finally:
        if srv:
            srv.stop()


def summarize(results: dict[str, list[dict]], kinds: list[str]) -> tuple[list[str], dict]:
    """Markdown table lines and a JSON summary: median (min–max) per server, the ratio
    of the first to the second ("ratio") and, with a third server (the floor), of the
    first to the third ("ratio_floor")."""
    a, b = kinds[:2]
    c = kinds[2] if len(kinds) > 2 else None
    lines = ["| metric | " + " | ".join(f"{k} median (min–max)" for k in kinds)
             + f" | {a}/{b} |" + (f" {a}/{c} |" if c else ""),
             "|---|---|---|---|" + ("---|---|" if c else "")]
    summary = {}
    for path, label, fmt, _higher in METRICS:
        vals = {k: [v for v in (dig(r, path) for r in results[k]) if v is not None]
                for k in kinds}
        if not all(vals.values()):
            continue
        med = {k: statistics.median(vals[k]) for k in kinds}
        ratio = med[a] / med[b] if med[b] else None
        summary[".".join(path)] = {k: {"median": med[k], "min": min(vals[k]),
                                       "max": max(vals[k])} for k in kinds}
        summary[".".join(path)]["ratio"] = ratio
        cells = [f"{fmt.format(med[k])} ({fmt.format(min(vals[k]))}–"
                 f"{fmt.format(max(vals[k]))})" for k in kinds]
        row = f"| {label} | {' | '.join(cells)} | {'' if ratio is None else f'{ratio:.2f}x'} |"
        if c:
            rf = med[a] / med[c] if med[c] else None
            summary[".".join(path)]["ratio_floor"] = rf
            row += f" {'' if rf is None else f'{rf:.2f}x'} |"
        lines.append(row)
    return lines, summary


def run_compare(args, opts: Options) -> int:
    kinds = ["fastgear", "gearmand"]
    servers.find_gearmand(args.gearmand)  # fail before starting anything
    # The floor answers only bg/fg/fill/drain's packets and keeps nothing on disk.
    if (not args.no_floor and opts.workload != "durable"
            and servers.find_floor(args.floor) is not None):
        kinds.append("floor")
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    # Fill and drain leave the server's memory shaped by the previous round, so they get
    # fresh servers each round; bg/fg/durable reuse theirs (each run uses new functions).
    fresh = opts.workload in ("fill", "drain")
    running: dict[str, servers.Server] = {}
    jobs = {"fastgear": opts.jobs, "gearmand": args.gearmand_jobs or opts.jobs,
            "floor": opts.jobs}
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    try:
        for rnd in range(args.rounds):
            for kind in kinds:
                if kind not in running:
                    running[kind] = servers.Server(kind, args.server_threads,
                                                   server_flags(opts.workload, kind, args.io),
                                                   gearmand=args.gearmand, floor=args.floor)
                srv = running[kind]
                opts.host, opts.port, opts.server_pid = srv.host, srv.port, srv.pid
                opts.jobs = jobs[kind]
                try:
                    r = runner.run_workload(opts, srv.label)
                except BenchError as exc:
                    failed(opts, srv.label, exc, args.json)
                    return 1
                r["round"] = rnd + 1
                results[kind].append(r)
                if args.json:
                    emit(r, True)
                else:
                    print(f"round {rnd + 1}/{args.rounds}: {describe(r)}", file=sys.stderr,
                          flush=True)
                if fresh:
                    running.pop(kind).stop()
    finally:
        for srv in running.values():
            srv.stop()
    opts.jobs = jobs["fastgear"]
    lines, summary = summarize(results, kinds)
    if args.json:
        print(dumps({"kind": "summary", "workload": opts.workload, "rounds": args.rounds,
                     "server_threads": args.server_threads, "config": opts.config(),
                     "gearmand_jobs": jobs["gearmand"],
                     "metrics": summary}), flush=True)
    else:
        cfg = opts.config()
        print(f"\n{opts.workload}: {args.rounds} rounds, servers at -t {args.server_threads}, "
              + ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "workload")
              + (f" (gearmand: jobs={jobs['gearmand']})" if jobs["gearmand"] != opts.jobs
                 else ""))
        print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m fastgear.bench") -> int:
    parser = make_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        opts = options_from(args)
        if args.compare and args.start:
            raise BenchError("--compare starts both servers: leave out --start")
        if args.compare:
            return run_compare(args, opts)
        return run_single(args, opts)
    except (BenchError, servers.ServerError) as exc:
        print(f"fastgear.bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastgear.bench: interrupted", file=sys.stderr)
        return 1
