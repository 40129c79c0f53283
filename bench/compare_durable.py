"""Durable background jobs: fastgear with its SQLite store vs fastgear in memory vs
gearmand `-q libsqlite3`, same generator, same run, alternating servers, medians.

    python bench/compare_durable.py --rounds 3 --jobs 100000

gearmand commits one job at a time, so it gets fewer jobs per round (--gearmand-jobs)
to keep the run short; jobs/s is what is compared.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_threads import free_port, gearload_binary, launch, stop_all

LOAD = ["--mode", "bg", "--clients", "4", "--workers", "64", "--pipeline", "200",
        "--max-backlog", "2000", "--threads", "1"]


def start(cmd):
    port = free_port()
    return launch(cmd(port), port)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=100000)
    ap.add_argument("--gearmand-jobs", type=int, default=5000)
    args = ap.parse_args(argv)
    binary = gearload_binary()
    with tempfile.TemporaryDirectory() as tmp:
        base = ["-L", "127.0.0.1", "-t", "0", "--log-file", "none"]
        fg = [sys.executable, "-m", "fastgear", "serve"]
        servers = {
            "fastgear --store": lambda p: fg + ["-p", str(p), "--store", f"{tmp}/fg.db",
                                                "-P", f"{tmp}/a.pid"] + base,
            "fastgear memory": lambda p: fg + ["-p", str(p), "-P", f"{tmp}/b.pid"] + base,
            "gearmand -q libsqlite3": lambda p: [
                "/usr/sbin/gearmand", "-p", str(p), "-q", "libsqlite3", "--libsqlite3-db",
                f"{tmp}/gd.db", "-P", f"{tmp}/c.pid"] + base,
        }
        running = {name: start(cmd) for name, cmd in servers.items()}
        results = {name: [] for name in servers}
        try:
            for _ in range(args.rounds):
                for name, (proc, port) in running.items():
                    jobs = args.gearmand_jobs if name.startswith("gearmand") else args.jobs
                    res = subprocess.run([binary, "--port", str(port), "--jobs", str(jobs),
                                          "--server-pid", str(proc.pid)] + LOAD,
                                         capture_output=True, text=True, timeout=600,
                                         check=False)
                    line = res.stdout.strip().splitlines()[-1]
                    if "status=ok" not in line:
                        raise RuntimeError(f"{name}: {line}")
                    jps = float(line.split("jobs_per_s=")[1].split()[0])
                    results[name].append(jps)
                    print(f"{name}: {jps:,.0f} jobs/s", file=sys.stderr)
        finally:
            stop_all(proc for proc, _ in running.values())
    med = {k: statistics.median(v) for k, v in results.items()}
    print("| server | bg jobs/s (median, min-max) | vs gearmand -q libsqlite3 |")
    print("|---|---|---|")
    for name, vals in results.items():
        print(f"| {name} | {med[name]:,.0f} ({min(vals):,.0f}-{max(vals):,.0f}) "
              f"| {med[name] / med['gearmand -q libsqlite3']:.1f}x |")
    print(f"\nfastgear durable / fastgear in memory: "
          f"{med['fastgear --store'] / med['fastgear memory']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
