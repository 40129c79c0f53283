"""TLS against plain text on the same fastgear, side by side, with the neutral C generator.

Starts two fastgear servers on free loopback ports with the same flags, one plain (on
the epoll loop by default, the loop TLS connections run on, so only TLS differs) and
one with `--ssl` and a fresh self-signed P-256 certificate, and drives both
alternately (plain, TLS, plain, TLS, ...) with ../shared/tools/gearload.c: the plain
build for plain text and the same source built with bench/gearload_tls.c force-included
for TLS (keep-alive connections, one handshake each before the load starts). Per
workload it prints the median jobs/s with min-max, the server's CPU microseconds per
job, and TLS as a share of plain (target: >= 70% for 16-byte jobs). gearload's idle
mode then gives, on a fresh pair of servers per round, the server's RSS per idle
connection (VmRSS before and after N connections that each did one ECHO) and the rate
of sequential connects (TCP connect + TLS handshake + one ECHO round trip, one C
client thread, so a latency figure as much as a CPU one). The generator runs on the
same machine and, for TLS, encrypts too: on a small machine it takes CPU from the
server, so the jobs/s ratio is a lower bound; the CPU/job columns are the server's own.

    python bench/compare_tls.py --rounds 3 --jobs 100000 --idle 1000
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_threads import (  # bench/ is not a package: found through sys.path
    GEARLOAD_SRC,
    WORKLOADS,
    free_port,
    gearload_binary,
    launch,
    stop_all,
)

ROOT = Path(__file__).resolve().parent.parent
SHIM = Path(__file__).resolve().parent / "gearload_tls.c"


def gearload_tls_binary():
    """gearload with bench/gearload_tls.c in front: the same generator, over TLS."""
    out = Path(tempfile.gettempdir()) / "fastgear-gearload-tls"
    newest = max(GEARLOAD_SRC.stat().st_mtime, SHIM.stat().st_mtime)
    if not out.exists() or out.stat().st_mtime < newest:
        subprocess.run(["gcc", "-O2", "-pthread", "-include", str(SHIM), "-o", str(out),
                        str(GEARLOAD_SRC), "-lssl", "-lcrypto"], check=True)
    return str(out)


def make_certificate(tmp):
    key, cert = os.path.join(tmp, "server.key"), os.path.join(tmp, "server.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return cert, key


def start(kind, args, tmp, cert, key):
    port = free_port()
    cmd = [sys.executable, "-m", "fastgear", "serve", "-p", str(port), "-L", "127.0.0.1",
           "--log-file", "none", "--monitor", "off",
           "-P", os.path.join(tmp, f"{kind}-{port}.pid")]
    if args.server_threads is not None:
        cmd += ["-t", str(args.server_threads)]
    if kind == "tls":
        cmd += ["--ssl", "--ssl-certificate", cert, "--ssl-key", key]
    else:
        cmd += ["--io", args.plain_io]
    return launch(cmd, port)


def run(binary, port, pid, extra, timeout=300):
    cmd = [binary, "--port", str(port), "--server-pid", str(pid)] + extra
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    if res.returncode != 0 or fields.get("status", "ok") != "ok" or fields.get(
            "errors", "0") != "0":
        raise RuntimeError(f"gearload failed: {res.stdout[-500:]} {res.stderr[-500:]}")
    return fields


def med(values):
    return statistics.median(values), min(values), max(values)


def cpu_us_per_job(f):
    return float(f["server_cpu_pct"]) / 100 * 1e6 / float(f["jobs_per_s"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=100000)
    ap.add_argument("--workloads", nargs="+", default=["bg", "fg"], choices=list(WORKLOADS))
    ap.add_argument("--gen-threads", type=int, default=1)
    ap.add_argument("--grab", type=int, default=1,
                    help="GRAB_JOBs each worker keeps outstanding (gearload --grab)")
    ap.add_argument("--server-threads", type=int, default=None,
                    help="-t for both servers (default: fastgear's)")
    ap.add_argument("--plain-io", default="epoll", choices=["epoll", "auto", "uring"],
                    help="--io of the plain server (TLS always runs on epoll)")
    ap.add_argument("--idle", type=int, default=1000,
                    help="idle connections per server for RSS and connect rate (0: skip)")
    args = ap.parse_args(argv)
    # The servers started here run this tree's fastgear.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    binaries = {"plain": gearload_binary(), "tls": gearload_tls_binary()}
    kinds = ("plain", "tls")
    load = {(w, k): [] for w in args.workloads for k in kinds}
    idle = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = make_certificate(tmp)
        servers = {k: start(k, args, tmp, cert, key) for k in kinds}
        try:
            for r in range(args.rounds):
                for workload in args.workloads:
                    for kind in kinds if r % 2 == 0 else kinds[::-1]:
                        proc, port = servers[kind]
                        f = run(binaries[kind], port, proc.pid,
                                ["--mode", workload, "--jobs", str(args.jobs), "--threads",
                                 str(args.gen_threads), "--grab", str(args.grab)]
                                + WORKLOADS[workload][2:])
                        load[workload, kind].append(f)
                        print(f"round {r + 1} {workload} {kind}: {f['jobs_per_s']} jobs/s, "
                              f"server CPU {f['server_cpu_pct']}%, generator CPU "
                              f"{f.get('gen_cpu_pct')}%", file=sys.stderr)
        finally:
            stop_all(proc for proc, _ in servers.values())
        for r in range(args.rounds if args.idle else 0):
            # Fresh servers: memory freed by an earlier round would be reused and hide
            # the cost of the next one.
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                proc, port = start(kind, args, tmp, cert, key)
                try:
                    f = run(binaries[kind], port, proc.pid,
                            ["--mode", "idle", "--clients", str(args.idle),
                             "--duration", "0.5"])
                finally:
                    stop_all([proc])
                idle[kind].append(f)
                print(f"round {r + 1} idle {kind}: {f['bytes_per_conn']} B/conn, "
                      f"{args.idle / max(float(f['connect_secs']), 1e-6):.0f} connects/s",
                      file=sys.stderr)
    print(f"| workload | plain jobs/s (median, min-max) | TLS jobs/s | TLS / plain "
          f"| plain µs CPU/job | TLS µs CPU/job |  (16-byte jobs, --grab {args.grab}, "
          f"--io {args.plain_io} for plain, {args.rounds} rounds)")
    print("|---|---|---|---|---|---|")
    for workload in args.workloads:
        p = med([float(f["jobs_per_s"]) for f in load[workload, "plain"]])
        t = med([float(f["jobs_per_s"]) for f in load[workload, "tls"]])
        pc = statistics.median(cpu_us_per_job(f) for f in load[workload, "plain"])
        tc = statistics.median(cpu_us_per_job(f) for f in load[workload, "tls"])
        print(f"| {workload} | {p[0]:,.0f} ({p[1]:,.0f}-{p[2]:,.0f}) "
              f"| {t[0]:,.0f} ({t[1]:,.0f}-{t[2]:,.0f}) | {t[0] / p[0]:.0%} "
              f"| {pc:.2f} | {tc:.2f} |")
    if args.idle:
        print()
        print(f"| {args.idle} idle connections | server RSS per connection (median, "
              "min-max) | sequential connects/s (connect [+ handshake] + ECHO) |")
        print("|---|---|---|")
        for kind in kinds:
            b = med([float(f["bytes_per_conn"]) for f in idle[kind]])
            c = med([args.idle / max(float(f["connect_secs"]), 1e-6) for f in idle[kind]])
            print(f"| {kind} | {b[0] / 1024:.1f} KiB ({b[1] / 1024:.1f}-{b[2] / 1024:.1f}) "
                  f"| {c[0]:,.0f} ({c[1]:,.0f}-{c[2]:,.0f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
