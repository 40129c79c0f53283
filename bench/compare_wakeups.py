"""Many workers, many functions: fastgear against gearmand with the neutral C generator.

Issue 8's benchmarks, each run alternately against both servers (A B A B ...) with
medians over the rounds:

* idle1000: one client submits foreground jobs one at a time (pipeline 1) to a
  function with 1,000 idle workers; compared with the same load and one worker.
  gearmand wakes all 1,000 sleepers per job; fastgear one.
* funcs2000: 64 workers each registered for 2,000 functions, background jobs spread
  over them; compared with the same load on one function.

    python bench/compare_wakeups.py --rounds 3

The generator is ../shared/tools/gearload.c (compiled on first use by
compare_threads.gearload_binary); servers start on free loopback ports.
"""
import argparse
import resource
import statistics
import sys
import tempfile

from compare_threads import gearload_binary, run_load, start, stop_all

SCENARIOS = {
    # name: (gearload flags, fastgear jobs, gearmand jobs)
    "idle1000": (["--mode", "fg", "--clients", "1", "--workers", "1000",
                  "--pipeline", "1"], 20000, 200),
    "idle1": (["--mode", "fg", "--clients", "1", "--workers", "1", "--pipeline", "1"],
              20000, 20000),
    "funcs2000": (["--mode", "bg", "--clients", "1", "--workers", "64", "--functions",
                   "2000", "--pipeline", "100", "--max-backlog", "1000"], 200000, 200000),
    "funcs1": (["--mode", "bg", "--clients", "1", "--workers", "64", "--functions", "1",
                "--pipeline", "100", "--max-backlog", "1000"], 200000, 200000),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="-t for both servers")
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    binary = gearload_binary()
    import compare_threads
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {k: start(k, args.threads, tmp) for k in ("fastgear", "gearmand")}
        try:
            for name in args.scenarios:
                flags, fjobs, gjobs = SCENARIOS[name]
                compare_threads.WORKLOADS[name] = flags
                for _ in range(args.rounds):
                    for kind, (proc, port) in servers.items():
                        jobs = fjobs if kind == "fastgear" else gjobs
                        f = run_load(binary, port, proc.pid, name, jobs, 1)
                        results.setdefault((name, kind), []).append(f)
                        print(f"{name} {kind}: {f['jobs_per_s']} jobs/s p50 "
                              f"{f.get('p50_us', '-')} us", file=sys.stderr)
        finally:
            stop_all(proc for proc, _ in servers.values())

    def med(name, kind, key):
        vals = [float(f[key]) for f in results.get((name, kind), []) if key in f]
        return statistics.median(vals) if vals else float("nan")

    print("| scenario | fastgear jobs/s | gearmand jobs/s | ratio | p50 µs fastgear / gearmand |")
    print("|---|---|---|---|---|")
    for name in args.scenarios:
        fj, gj = med(name, "fastgear", "jobs_per_s"), med(name, "gearmand", "jobs_per_s")
        p50 = ""
        if SCENARIOS[name][0][1] == "fg":
            p50 = f"{med(name, 'fastgear', 'p50_us'):.0f} / {med(name, 'gearmand', 'p50_us'):.0f}"
        print(f"| {name} | {fj:,.0f} | {gj:,.0f} | {fj / gj:.2f}x | {p50} |")
    for many, one in (("idle1000", "idle1"), ("funcs2000", "funcs1")):
        if many in args.scenarios and one in args.scenarios:
            for kind in ("fastgear", "gearmand"):
                print(f"{kind}: {many} / {one} = "
                      f"{med(many, kind, 'jobs_per_s') / med(one, kind, 'jobs_per_s'):.2f} "
                      f"of the jobs/s", end="")
                if SCENARIOS[many][0][1] == "fg":
                    print(f", p50 {med(many, kind, 'p50_us') / med(one, kind, 'p50_us'):.2f}x",
                          end="")
                print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
