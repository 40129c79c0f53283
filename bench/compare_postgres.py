"""PostgreSQL store: fastgear durable vs fastgear in memory vs gearmand `-q postgres`, and
the failover time of two fastgear servers sharing one database.

    python bench/compare_postgres.py --rounds 3 --jobs 100000
    python bench/compare_postgres.py --store postgresql://user@host/db   # your server

Without --store it starts a throw-away PostgreSQL cluster (tests/pgcluster.py, fsync on,
synchronous_commit on), so every server writes to the same PostgreSQL with the same
settings. Background jobs with a unique key each (gearmand's table refuses a second job
with the same key, and an empty one is a key too); gearmand commits one job at a time,
so it gets fewer jobs per round (--gearmand-jobs). Alternating servers, medians.

Failover: two fastgear servers on one table (--store-lease --lease), 2,000 background
jobs acknowledged by the first, a worker connected to the second; SIGKILL the first and
time until the last of the 2,000 has completed on the second.
"""
import argparse
import os
import signal
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from compare_threads import free_port, launch, stop_all
from store_bench import alternate


def failover(url, lease, tmp, jobs=2000):
    from gearproto import (
        GRAB_JOB,
        JOB_ASSIGN,
        JOB_CREATED,
        SUBMIT_JOB_BG,
        WORK_COMPLETE,
        Conn,
        packet,
    )
    fg = [sys.executable, "-m", "fastgear", "serve", "-L", "127.0.0.1", "--log-file", "none",
          "--monitor", "off", "--store", url, "--libpq-table", "failover",
          "--store-lease", str(lease)]
    pa, pb = free_port(), free_port()
    a, _ = launch(fg + ["-p", str(pa), "-P", f"{tmp}/fa.pid"], pa)
    b, _ = launch(fg + ["-p", str(pb), "-P", f"{tmp}/fb.pid"], pb)
    try:
        with Conn("127.0.0.1", pa) as c:
            c.send_raw(b"".join(packet(SUBMIT_JOB_BG, b"fo", b"", b"j%05d" % i)
                                for i in range(jobs)))
            for _ in range(jobs):
                assert c.recv(timeout=30)[0] == JOB_CREATED
        time.sleep(lease / 4 + 0.5)      # b has seen a renew at least once
        killed = time.monotonic()
        a.send_signal(signal.SIGKILL)
        a.wait()
        done = set()
        with Conn("127.0.0.1", pb) as w:
            w.worker(b"fo")
            deadline = killed + lease + 60
            while len(done) < jobs and time.monotonic() < deadline:
                t, args = w.grab(GRAB_JOB)
                if t != JOB_ASSIGN:
                    time.sleep(0.02)
                    continue
                w.send(WORK_COMPLETE, args[0], b"")
                done.add(args[2])
            took = time.monotonic() - killed
        if len(done) < jobs:
            raise RuntimeError(f"only {len(done)} of {jobs} jobs completed on the survivor")
        return took
    finally:
        stop_all([a, b])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=100000)
    ap.add_argument("--gearmand-jobs", type=int, default=5000)
    ap.add_argument("--lease", type=int, default=10, help="--store-lease for the failover")
    ap.add_argument("--store", help="postgresql:// URL of an existing database")
    ap.add_argument("--no-failover", action="store_true")
    args = ap.parse_args(argv)
    cluster = None
    if args.store:
        url = args.store
    else:
        from pgcluster import PgCluster
        cluster = PgCluster().start()
        url = cluster.url
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    conninfo = make_conninfo(**conninfo_to_dict(url))
    import psycopg
    with psycopg.connect(conninfo) as con:
        settings = {k: con.execute(f"SHOW {k}").fetchone()[0]
                    for k in ("server_version", "fsync", "synchronous_commit")}
    print(f"PostgreSQL {settings}", file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = ["-L", "127.0.0.1", "-t", "0", "--log-file", "none"]
            fg = [sys.executable, "-m", "fastgear", "serve", "--monitor", "off"]
            servers = {
                "fastgear --store postgresql://": lambda p: fg + [
                    "-p", str(p), "--store", url, "--libpq-table", "fg_bench",
                    "-P", f"{tmp}/a.pid"] + base,
                "fastgear memory": lambda p: fg + ["-p", str(p), "-P", f"{tmp}/b.pid"] + base,
                "gearmand -q postgres": lambda p: [
                    "/usr/sbin/gearmand", "-p", str(p), "-q", "Postgres", "--libpq-conninfo",
                    conninfo, "--libpq-table", "gd_bench", "-P", f"{tmp}/c.pid"] + base,
            }
            results = alternate(servers, args.rounds, args.jobs, args.gearmand_jobs)
            fo = None if args.no_failover else failover(url, args.lease, tmp)
    finally:
        if cluster is not None:
            cluster.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    base_name = "gearmand -q postgres"
    print(f"PostgreSQL {settings['server_version']}, fsync {settings['fsync']}, "
          f"synchronous_commit {settings['synchronous_commit']}\n")
    print("| server | bg jobs/s, unique keys (median, min-max) | vs gearmand -q postgres |")
    print("|---|---|---|")
    for name, vals in results.items():
        print(f"| {name} | {med[name]:,.0f} ({min(vals):,.0f}-{max(vals):,.0f}) "
              f"| {med[name] / med[base_name]:.1f}x |")
    print(f"\nfastgear durable / fastgear in memory: "
          f"{med['fastgear --store postgresql://'] / med['fastgear memory']:.0%}")
    if fo is not None:
        print(f"failover (--store-lease {args.lease}): SIGKILL to the last of 2,000 "
              f"acknowledged jobs completed on the survivor: {fo:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
