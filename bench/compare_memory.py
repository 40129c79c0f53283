"""Memory per queued job, and memory given back after a burst: fastgear, gearmand and
the floor server (bench/floor/floor.c) with the neutral C load generator.

For each server and round: start it fresh (-t 0 unless --server-threads), note its idle
RSS, fill --jobs background jobs of --payload bytes with no worker (RSS per queued job =
(filled - idle) / jobs), drain them with 64 workers, then sample the RSS every 0.5 s for
--after seconds. Prints medians of the rounds as a Markdown table: bytes per queued job,
the ratio to gearmand, and RSS above idle right after the drain and --after seconds
later (fastgear gives memory back once the queue empties, --trim-after-jobs).

    python bench/compare_memory.py --jobs 1000000 --rounds 3
"""
import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_threads import free_port, gearload_binary, launch, stop_all

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastgear.bench.servers import find_floor, find_gearmand


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def command(kind, port, threads, tmp):
    if kind == "fastgear":
        cmd = [sys.executable, "-m", "fastgear", "serve"]
    elif kind == "gearmand":
        cmd = [find_gearmand()]
    else:
        cmd = [find_floor()]
    return cmd + ["-p", str(port), "-L", "127.0.0.1", "-t", str(threads), "--log-file",
                  "none", "-P", f"{tmp}/{kind}-{port}.pid"]


def one_round(binary, kind, args, tmp):
    port = free_port()
    proc, _ = launch(command(kind, port, args.server_threads, tmp), port)
    try:
        time.sleep(0.5)
        idle = rss_kb(proc.pid)
        res = subprocess.run([binary, "--port", str(port), "--mode", "submit", "--drain",
                              "--clients", "1", "--workers", "64", "--pipeline", "100",
                              "--payload", str(args.payload), "--jobs", str(args.jobs),
                              "--server-pid", str(proc.pid)],
                             capture_output=True, text=True, timeout=600, check=False)
        line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
        f = dict(re.findall(r"(\w+)=(\S+)", line))
        if res.returncode != 0 or f.get("status") != "ok":
            raise RuntimeError(f"{kind}: load run failed: {res.stdout[-400:]} {res.stderr[-400:]}")
        drained = rss_kb(proc.pid)
        samples = [drained]
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.after:
            time.sleep(0.5)
            samples.append(rss_kb(proc.pid))
        filled = int(f["server_rss_filled_kb"])
        return {"per_job": (filled - idle) * 1024 / args.jobs, "idle_mib": idle / 1024,
                "drained_mib": (drained - idle) / 1024, "after_mib": (samples[-1] - idle) / 1024,
                "fill_per_s": float(f["submit_per_s"]), "drain_per_s": float(f["drain_per_s"])}
    finally:
        stop_all([proc])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000000)
    ap.add_argument("--payload", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--after", type=float, default=10.0,
                    help="seconds of RSS sampling after the drain")
    ap.add_argument("--server-threads", type=int, default=0)
    ap.add_argument("--no-floor", action="store_true")
    args = ap.parse_args(argv)
    binary = gearload_binary()
    kinds = ["fastgear", "gearmand"] + ([] if args.no_floor or find_floor() is None
                                       else ["floor"])
    got = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for kind in kinds:
                r = one_round(binary, kind, args, tmp)
                got[kind].append(r)
                print(f"round {rnd + 1} {kind}: {r['per_job']:.0f} B/job, idle "
                      f"{r['idle_mib']:.1f} MiB, +{r['drained_mib']:.1f} MiB after the "
                      f"drain, +{r['after_mib']:.1f} MiB {args.after:.0f} s later, fill "
                      f"{r['fill_per_s']:,.0f}/s, drain {r['drain_per_s']:,.0f}/s",
                      file=sys.stderr, flush=True)

    def m(kind, key):
        return statistics.median(r[key] for r in got[kind])
    print(f"\n{args.jobs:,} queued {args.payload}-byte background jobs, -t "
          f"{args.server_threads}, medians of {args.rounds} rounds")
    print("| server | RSS per queued job | vs gearmand | idle RSS | above idle right after "
          f"the drain | above idle {args.after:.0f} s later | fill jobs/s | drain jobs/s |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        print(f"| {kind} | {m(kind, 'per_job'):.0f} B | "
              f"{m(kind, 'per_job') / m('gearmand', 'per_job'):.2f}x | "
              f"{m(kind, 'idle_mib'):.1f} MiB | {m(kind, 'drained_mib'):.1f} MiB | "
              f"{m(kind, 'after_mib'):.1f} MiB | {m(kind, 'fill_per_s'):,.0f} | "
              f"{m(kind, 'drain_per_s'):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
