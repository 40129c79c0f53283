"""What keeping outcomes and a retry policy cost: background jobs/s with
`--keep-results` and `--bg-retries` on vs both off.

Starts two fastgear servers on free loopback ports, one with `--keep-results 600
--bg-retries 3 --bg-retry-backoff 1` (every finished job's outcome is copied into a kept
result with its payload preview, WORK_STATUS progress and counts; a failure would be
retried) and one with neither, and runs the same `python -m fastgear.bench bg` load
against them in ABBA order (on off off on ...) so slow drift of the machine cancels out.
Prints the medians, the min-max and the on/off ratio as a Markdown table (the target is
at least 0.90), with the median of the on/off ratios of adjacent runs and each server's
CPU time per job (from /proc/PID/stat). The first round of each is a warm-up and is not
counted. --keep-results-bytes is left at its default, so the kept results reach their
bound and evict the oldest during the run, as on a long-running server.

    python bench/compare_outcomes.py --rounds 10 --jobs 200000
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

from compare_monitor import bench, cpu_s
from compare_threads import free_port, launch, stop_all

ON_FLAGS = ["--keep-results", "600", "--bg-retries", "3", "--bg-retry-backoff", "1"]


def start(tmp, threads, extra):
    port = free_port()
    cmd = [sys.executable, "-m", "fastgear", "serve", "-p", str(port), "-L", "127.0.0.1",
           "-t", str(threads), "--log-file", "none", "--monitor", "off",
           "-P", os.path.join(tmp, f"fastgear-{port}.pid"), *extra]
    return launch(cmd, port)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="counted runs per server")
    ap.add_argument("--jobs", type=int, default=200000, help="jobs per run")
    ap.add_argument("--server-threads", type=int, default=4, help="-t of both servers")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fastgear-outcomes-bench-")
    on_proc, on_port = start(tmp, args.server_threads, ON_FLAGS)
    off_proc, off_port = start(tmp, args.server_threads, [])
    ports = {"on": on_port, "off": off_port}
    pids = {"on": on_proc.pid, "off": off_proc.pid}
    results = {"on": [], "off": []}
    cpu_per_job = {"on": [], "off": []}
    ratios = []
    last = None
    try:
        order = ["on", "off"] + [k for i in range(args.rounds)
                                 for k in (("on", "off") if i % 2 == 0 else ("off", "on"))]
        for i, kind in enumerate(order):
            cpu0 = cpu_s(pids[kind])
            rate = bench(ports[kind], args)
            used = cpu_s(pids[kind]) - cpu0
            if i >= 2:
                results[kind].append(rate)
                cpu_per_job[kind].append(used / args.jobs)
                if i % 2 == 1:  # the second run of each adjacent pair
                    on, off = (rate, last) if kind == "on" else (last, rate)
                    ratios.append(on / off)
            last = rate
            print(f"round {i:2d} outcomes {kind:3s} {rate:10,.0f} jobs/s "
                  f"{used / args.jobs * 1e6:6.2f} server CPU us/job", file=sys.stderr)
            time.sleep(0.5)
    finally:
        stop_all([on_proc, off_proc])
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nbg, {args.jobs:,} jobs per run, {args.rounds} counted runs each (ABBA order), "
          f"-t {args.server_threads}; on: {' '.join(ON_FLAGS)}\n")
    print("| kept results + retries | median jobs/s | min-max | median server CPU per job |")
    print("|---|---|---|---|")
    for k in ("off", "on"):
        print(f"| {k} | {med[k]:,.0f} | {min(results[k]):,.0f}-{max(results[k]):,.0f} | "
              f"{statistics.median(cpu_per_job[k]) * 1e6:.2f} us |")
    print(f"\non/off: ratio of medians {med['on'] / med['off']:.3f}, median of adjacent-pair "
          f"ratios {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
          f"{max(ratios):.3f})")


if __name__ == "__main__":
    main()
