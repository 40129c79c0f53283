"""How long the engine lock is held, per batch and per job, and what that predicts for
many cores. Needs a build made with FASTGEAR_LOCKSTATS=1 (setup.py), which times every
hold of the lock; release builds have no such clock reads and report 0.

For each -t value: start fastgear (monitor on), run the neutral C generator's bg or fg
workload, and read /status's lock counters before and after. The engine lock is the
one serial section, so if l is its hold time per job and c the server CPU per job, the
jobs/s on N cores is bounded by min(N / c, 1 / l) (Amdahl with the lock as the serial
part; the TCP stack and epoll scale with cores). Prints a Markdown table.

    FASTGEAR_LOCKSTATS=1 python setup.py build_ext --inplace
    python bench/lock_hold.py --threads 1 4 --jobs 300000
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_threads import WORKLOADS, free_port, gearload_binary, launch, stop_all


def lock_counters(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        s = json.load(r)["server"]
    return s["lock_held_ns"] or 0, s["lock_holds"] or 0


def measure(binary, threads, workload, jobs, rounds, tmp):
    port, mport = free_port(), free_port()
    proc, _ = launch([sys.executable, "-m", "fastgear", "serve", "-p", str(port), "-L",
                      "127.0.0.1", "-t", str(threads), "--log-file", "none", "-P",
                      f"{tmp}/fg-{port}.pid", "--monitor", f"127.0.0.1:{mport}"], port)
    out = []
    try:
        time.sleep(1.5)
        for _ in range(rounds):
            ns0, h0 = lock_counters(mport)
            res = subprocess.run([binary, "--port", str(port), "--jobs", str(jobs),
                                  "--server-pid", str(proc.pid)] + WORKLOADS[workload],
                                 capture_output=True, text=True, timeout=300, check=False)
            ns1, h1 = lock_counters(mport)
            f = dict(re.findall(r"(\w+)=(\S+)", res.stdout.strip().splitlines()[-1]))
            if f.get("status") != "ok":
                raise RuntimeError(res.stdout[-400:])
            if h1 == h0:
                raise RuntimeError("no lock counts: build with FASTGEAR_LOCKSTATS=1")
            jps = float(f["jobs_per_s"])
            out.append({"ns_hold": (ns1 - ns0) / (h1 - h0), "ns_job": (ns1 - ns0) / jobs,
                        "jobs_hold": jobs / (h1 - h0), "jps": jps,
                        "cpu_us": float(f["server_cpu_pct"]) / 100 * 1e6 / jps})
    finally:
        stop_all([proc])
    return {k: statistics.median(r[k] for r in out) for k in out[0]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workloads", nargs="+", default=["bg", "fg"], choices=list(WORKLOADS))
    ap.add_argument("--jobs", type=int, default=300000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cores", type=int, default=16, help="core count to predict for")
    args = ap.parse_args(argv)
    binary = gearload_binary()
    print(f"| -t | workload | lock held per hold | jobs per hold | lock held per job "
          f"| server CPU per job | jobs/s here | bound on {args.cores} cores: lock "
          f"(1/l) | CPU ({args.cores}/c) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.threads:
            for w in args.workloads:
                m = measure(binary, t, w, args.jobs, args.rounds, tmp)
                print(f"| {t} | {w} | {m['ns_hold'] / 1000:.1f} µs | {m['jobs_hold']:.1f} "
                      f"| {m['ns_job']:.0f} ns | {m['cpu_us']:.2f} µs | {m['jps']:,.0f} "
                      f"| {1e9 / m['ns_job']:,.0f} | {args.cores * 1e6 / m['cpu_us']:,.0f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
