"""MySQL / MariaDB store: durable background jobs/s, fastgear `-q mysql` vs fastgear in
memory vs gearmand 1.1.20 `-q mysql`, all writing to the same MariaDB.

    python bench/compare_mysql.py --rounds 5 --jobs 50000
    python bench/compare_mysql.py --host 127.0.0.1 --port 3306 --user u --password p --db d

Without --host it starts a throw-away MariaDB (tests/mariadb.py) with MariaDB's defaults:
InnoDB, innodb_flush_log_at_trx_commit=1 (the log flushed at every commit), so every
acknowledged job is on disk. Background jobs with a unique key each (gearmand's table
refuses a second job with the same key, and an empty one is a key too); gearmand commits
one job at a time, so it gets fewer jobs per round (--gearmand-jobs). Servers take turns
round by round; the table prints medians (min-max).
"""
import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from store_bench import alternate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=50000)
    ap.add_argument("--gearmand-jobs", type=int, default=5000)
    ap.add_argument("--host", help="an existing MySQL / MariaDB server (else a throw-away one)")
    ap.add_argument("--port", type=int, default=3306)
    ap.add_argument("--user")
    ap.add_argument("--password", default="")
    ap.add_argument("--db", default="fastgear_bench")
    args = ap.parse_args(argv)
    server = None
    if args.host:
        flags = ["-q", "mysql", "--mysql-host", args.host, "--mysql-port", str(args.port),
                 "--mysql-password", args.password, "--mysql-db", args.db]
        if args.user:
            flags += ["--mysql-user", args.user]
        import pymysql
        con = pymysql.connect(host=args.host, port=args.port, user=args.user,
                              password=args.password, database=args.db)
    else:
        from mariadb import MariaDB
        server = MariaDB().start()
        server.add_database(args.db)
        flags = server.flags(args.db)
        con = server.connect(args.db)
    with con.cursor() as cur:
        cur.execute("SELECT @@version, @@innodb_flush_log_at_trx_commit, @@sync_binlog, "
                    "@@log_bin")
        version, flush, sync_binlog, log_bin = cur.fetchone()
        for table in ("fg_bench", "gd_bench"):
            cur.execute(f"DROP TABLE IF EXISTS {table}, {table}_dead, {table}_retry")
    con.close()
    settings = (f"MariaDB/MySQL {version}, innodb_flush_log_at_trx_commit={flush}, "
                f"log_bin={log_bin}, sync_binlog={sync_binlog}")
    print(settings, file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = ["-L", "127.0.0.1", "-t", "0", "--log-file", "none"]
            fg = [sys.executable, "-m", "fastgear", "serve", "--monitor", "off"]
            servers = {
                "fastgear -q mysql": lambda p: fg + [
                    "-p", str(p), "--mysql-table", "fg_bench", "-P", f"{tmp}/a.pid"] + flags
                + base,
                "fastgear memory": lambda p: fg + ["-p", str(p), "-P", f"{tmp}/b.pid"] + base,
                "gearmand -q mysql": lambda p: [
                    "/usr/sbin/gearmand", "-p", str(p), "--mysql-table", "gd_bench",
                    "-P", f"{tmp}/c.pid"] + flags + base,
            }
            results = alternate(servers, args.rounds, args.jobs, args.gearmand_jobs)
    finally:
        if server is not None:
            server.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    base_name = "gearmand -q mysql"
    print(settings + "\n")
    print("| server | bg jobs/s, unique keys (median, min-max) | vs gearmand -q mysql |")
    print("|---|---|---|")
    for name, vals in results.items():
        print(f"| {name} | {med[name]:,.0f} ({min(vals):,.0f}-{max(vals):,.0f}) "
              f"| {med[name] / med[base_name]:.1f}x |")
    print(f"\nfastgear durable / fastgear in memory: "
          f"{med['fastgear -q mysql'] / med['fastgear memory']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
