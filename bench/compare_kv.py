"""Redis and memcached stores: fastgear vs gearmand on the same server, durable background jobs/s.

    python bench/compare_kv.py --rounds 3 --jobs 50000 --gearmand-jobs 5000
    python bench/compare_kv.py --no-memcached

Starts a throw-away Redis with `appendonly yes` and `appendfsync always` (every write
on disk before its reply: the durable setting) and a throw-away memcached
(tests/kvservers.py), then fastgear and gearmand 1.1.20 with `-q redis` and
`-q libmemcached` on them (a key prefix each), and fastgear in memory for reference.
Background jobs with a unique key each (gearmand's layouts keep one job per
function+unique, so empty keys would overwrite each other there); gearmand writes one job
per round trip, so it gets fewer jobs per round (--gearmand-jobs). Alternating servers,
medians of the rounds.
"""
import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from kvservers import MemcachedServer, RedisServer
from store_bench import alternate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=50000)
    ap.add_argument("--gearmand-jobs", type=int, default=5000)
    ap.add_argument("--no-memcached", action="store_true")
    args = ap.parse_args(argv)
    redis = RedisServer(fsync="always").start()
    mc = None if args.no_memcached else MemcachedServer(item_max="2m").start()
    try:
        with redis.client() as r:
            info = r.info("server")["redis_version"]
            aof = r.config_get("appendfsync")["appendfsync"]
        print(f"Redis {info}, appendonly yes, appendfsync {aof}", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            base = ["-L", "127.0.0.1", "-t", "0", "--log-file", "none"]
            fg = [sys.executable, "-m", "fastgear", "serve", "--monitor", "off"]
            gm = ["/usr/sbin/gearmand"]
            rq = ["-q", "redis", "--redis-server", "127.0.0.1", "--redis-port", str(redis.port)]
            servers = {
                "fastgear -q redis": lambda p: fg + ["-p", str(p), "-P", f"{tmp}/a.pid"]
                + rq + ["--redis-prefix", "fgb"] + base,
                "gearmand -q redis": lambda p: gm + ["-p", str(p), "-P", f"{tmp}/b.pid"]
                + rq + ["--redis-prefix", "gdb"] + base,
                "fastgear memory": lambda p: fg + ["-p", str(p), "-P", f"{tmp}/c.pid"] + base,
            }
            if mc is not None:
                mq = ["-q", "libmemcached", "--libmemcached-servers", mc.address]
                servers["fastgear -q libmemcached"] = lambda p: fg + [
                    "-p", str(p), "-P", f"{tmp}/d.pid"] + mq + [
                    "--libmemcached-prefix", "fgb_"] + base
                servers["gearmand -q libmemcached"] = lambda p: gm + [
                    "-p", str(p), "-P", f"{tmp}/e.pid"] + mq + [
                    "--libmemcached-prefix", "gdb_"] + base
            results = alternate(servers, args.rounds, args.jobs, args.gearmand_jobs)
    finally:
        redis.stop()
        if mc is not None:
            mc.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"Redis {info}, appendonly yes, appendfsync {aof}\n")
    print("| server | bg jobs/s, unique keys (median, min-max) | vs gearmand, same backend |")
    print("|---|---|---|")
    for name, vals in results.items():
        peer = ("gearmand -q libmemcached" if "memcached" in name else "gearmand -q redis")
        ratio = f"{med[name] / med[peer]:.1f}x" if peer in med and name != "fastgear memory" else ""
        print(f"| {name} | {med[name]:,.0f} ({min(vals):,.0f}-{max(vals):,.0f}) | {ratio} |")
    print(f"\nfastgear -q redis / fastgear in memory: "
          f"{med['fastgear -q redis'] / med['fastgear memory']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
