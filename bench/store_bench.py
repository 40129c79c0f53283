"""The driver the store comparisons share (compare_kv.py, compare_mysql.py,
compare_postgres.py): durable background jobs with a unique key each, driven by
`python -m fastgear.bench` against servers started here, alternating server by server
for each round, so that every server sees the same machine state. Not a script."""
import json
import subprocess
import sys

from compare_threads import free_port, launch, stop_all

LOAD = ["--unique", "--clients", "4", "--workers", "64", "--pipeline", "200",
        "--max-backlog", "2000", "--threads", "1"]


def bench(port, pid, jobs):
    """One run of the bg load: jobs/s (raises when the generator reports a failure)."""
    res = subprocess.run([sys.executable, "-m", "fastgear.bench", "bg", "--port", str(port),
                          "--jobs", str(jobs), "--server-pid", str(pid), "--json", "--quiet"]
                         + LOAD, capture_output=True, text=True, timeout=900, check=False)
    for line in reversed(res.stdout.strip().splitlines()):
        rec = json.loads(line)
        if rec.get("kind") == "run":
            if rec["status"] != "ok":
                raise RuntimeError(rec.get("error"))
            return rec["jobs_per_s"]
    raise RuntimeError(res.stderr[-2000:])


def alternate(servers, rounds, jobs, gearmand_jobs):
    """Start every server (name -> command for a port), run `rounds` rounds of the load
    against each in turn (gearmand gets `gearmand_jobs`: it writes a job per round trip)
    and stop them all; name -> jobs/s of each round."""
    running = {}
    results = {name: [] for name in servers}
    try:
        for name, cmd in servers.items():
            port = free_port()
            running[name] = launch(cmd(port), port)
        for _ in range(rounds):
            for name, (proc, port) in running.items():
                n = gearmand_jobs if name.startswith("gearmand") else jobs
                jps = bench(port, proc.pid, n)
                results[name].append(jps)
                print(f"{name}: {jps:,.0f} jobs/s", file=sys.stderr)
    finally:
        stop_all(proc for proc, _ in running.values())
    return results
