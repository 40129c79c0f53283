"""What monitoring costs: background jobs/s with the monitor on (and scraped) vs off.

Starts two fastgear servers on free loopback ports, one with `--monitor 127.0.0.1:PORT`
and one with `--monitor off`, and runs the same `python -m fastgear.bench bg` load against
them in ABBA order (on off off on ...) so slow drift of the machine cancels out. During
every "on" round a scraper fetches /metrics and /status once per second, as Prometheus
and an open dashboard would. Prints the medians, the min-max and the on/off ratio as a
Markdown table (the target is within 3%), with the median of the on/off ratios of
adjacent runs (robust against a machine whose load changes during the comparison) and
each server's CPU time per job (from /proc/PID/stat). The first round of each is a
warm-up and is not counted.

    python bench/compare_monitor.py --rounds 10 --jobs 200000
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from compare_threads import free_port, launch, stop_all


def start(tmp, threads, monitor):
    port = free_port()
    cmd = [sys.executable, "-m", "fastgear", "serve", "-p", str(port), "-L", "127.0.0.1",
           "-t", str(threads), "--log-file", "none", "--monitor", monitor,
           "-P", os.path.join(tmp, f"fastgear-{port}.pid")]
    return launch(cmd, port)


class Scraper(threading.Thread):
    """GET /metrics and /status once per second until stopped; counts what it fetched."""

    def __init__(self, base):
        super().__init__(daemon=True)
        self.base = base
        self.stopped = threading.Event()
        self.scrapes = 0
        self.errors = 0

    def run(self):
        while not self.stopped.is_set():
            for path in ("metrics", "status"):
                try:
                    with urllib.request.urlopen(self.base + path, timeout=5) as r:
                        r.read()
                    self.scrapes += 1
                except OSError:
                    self.errors += 1
            self.stopped.wait(1.0)


def cpu_s(pid):
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(port, args):
    out = subprocess.run(
        [sys.executable, "-m", "fastgear.bench", "bg", "--port", str(port), "--jobs",
         str(args.jobs), "--json", "--quiet"], check=True, capture_output=True, text=True)
    run = json.loads(out.stdout.strip().splitlines()[-1])
    if run.get("status") != "ok":
        raise RuntimeError(f"bench run failed: {run}")
    return run["jobs_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="counted runs per server")
    ap.add_argument("--jobs", type=int, default=200000, help="jobs per run")
    ap.add_argument("--server-threads", type=int, default=4, help="-t of both servers")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fastgear-monitor-bench-")
    mport = free_port()
    on_proc, on_port = start(tmp, args.server_threads, f"127.0.0.1:{mport}")
    off_proc, off_port = start(tmp, args.server_threads, "off")
    base = f"http://127.0.0.1:{mport}/"
    results = {"on": [], "off": []}
    cpu_per_job = {"on": [], "off": []}
    pids = {"on": on_proc.pid, "off": off_proc.pid}
    ratios = []
    last = None
    scrapes = errors = 0
    try:
        order = ["on", "off"] + [k for i in range(args.rounds)
                                 for k in (("on", "off") if i % 2 == 0 else ("off", "on"))]
        for i, kind in enumerate(order):
            cpu0 = cpu_s(pids[kind])
            if kind == "on":
                scraper = Scraper(base)
                scraper.start()
                rate = bench(on_port, args)
                scraper.stopped.set()
                scraper.join()
                scrapes += scraper.scrapes
                errors += scraper.errors
            else:
                rate = bench(off_port, args)
            used = cpu_s(pids[kind]) - cpu0
            if i >= 2:
                results[kind].append(rate)
                cpu_per_job[kind].append(used / args.jobs)
                if i % 2 == 1:  # the second run of each adjacent pair
                    on, off = (rate, last) if kind == "on" else (last, rate)
                    ratios.append(on / off)
            last = rate
            print(f"round {i:2d} monitor {kind:3s} {rate:10,.0f} jobs/s "
                  f"{used / args.jobs * 1e6:6.2f} server CPU us/job", file=sys.stderr)
            time.sleep(0.5)
    finally:
        stop_all([on_proc, off_proc])
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nbg, {args.jobs:,} jobs per run, {args.rounds} counted runs each (ABBA order), "
          f"-t {args.server_threads}; {scrapes} scrapes of /metrics+/status during the 'on' "
          f"runs ({errors} failed)\n")
    print("| monitor | median jobs/s | min-max | median server CPU per job |")
    print("|---|---|---|---|")
    for k in ("off", "on"):
        print(f"| {k} | {med[k]:,.0f} | {min(results[k]):,.0f}-{max(results[k]):,.0f} | "
              f"{statistics.median(cpu_per_job[k]) * 1e6:.2f} us |")
    print(f"\non/off: ratio of medians {med['on'] / med['off']:.3f}, median of adjacent-pair "
          f"ratios {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max "
          f"{max(ratios):.3f})")


if __name__ == "__main__":
    main()
