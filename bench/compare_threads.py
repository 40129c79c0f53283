"""Thread-scaling comparison of fastgear and gearmand with the neutral C load generator.

For each `-t` value, starts fastgear and gearmand with that many threads on free
loopback ports, runs the same gearload workload against them alternately (A B A B ...)
and prints medians, min-max and the fastgear/gearmand ratio as a Markdown table. The
floor server (bench/floor/floor.c, one thread whatever -t says) runs the same load as a
third server, so each row also shows fastgear / floor: what any epoll server must spend
here. The generator is ../shared/tools/gearload.c (compiled here on first use); it and
the floor are reference instruments, not part of fastgear.

    python bench/compare_threads.py --threads 0 1 2 4 --rounds 5 --jobs 200000

Beside jobs/s and server CPU per job, each row shows what the kernel is asked to do per
job, which no server's code can avoid paying for: TCP segments sent (system-wide, from
/proc/net/snmp; on loopback each is also received) and the server's context switches,
and the generator's own CPU: near 100% it, not the server, is what sets jobs/s.

`--io uring epoll` runs fastgear once per I/O backend (each its own server, all in the
same alternation with gearmand), one table row per backend.
"""
import argparse
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEARLOAD_SRC = ROOT.parent / "shared" / "tools" / "gearload.c"

WORKLOADS = {
    "bg": ["--mode", "bg", "--clients", "1", "--workers", "64", "--pipeline", "100",
           "--max-backlog", "1000"],
    "fg": ["--mode", "fg", "--clients", "2", "--workers", "32", "--pipeline", "100"],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gearload_binary():
    out = Path(tempfile.gettempdir()) / "fastgear-gearload"
    if not out.exists() or out.stat().st_mtime < GEARLOAD_SRC.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(out), str(GEARLOAD_SRC)],
                       check=True)
    return str(out)


def start(kind, threads, tmp):
    port = free_port()
    if kind.startswith("fastgear"):
        # "fastgear:epoll": fastgear with --io epoll
        io = kind.partition(":")[2]
        cmd = [sys.executable, "-m", "fastgear", "serve"] + (["--io", io] if io else [])
    elif kind == "floor":
        sys.path.insert(0, str(ROOT))
        from fastgear.bench.servers import find_floor
        cmd = [find_floor()]
    else:
        cmd = [shutil.which("gearmand") or "/usr/sbin/gearmand"]
    cmd += ["-p", str(port), "-L", "127.0.0.1", "-t", str(threads), "--log-file", "none",
            "-P", os.path.join(tmp, f"{kind.replace(':', '-')}-{port}.pid")]
    return launch(cmd, port)


def launch(cmd, port):
    """Start a server command and wait until it accepts connections on port."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}")


def stop_all(procs, timeout=15):
    """SIGTERM each server started here, killing it if it does not exit in time."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def kernel_counter(path, section, name):
    """One counter of /proc/net/snmp or /proc/net/netstat (a header row of names, then a
    row of values, both starting `section:`), for this network namespace; None where
    it cannot be read."""
    try:
        with open(path) as f:
            rows = [line.split() for line in f if line.startswith(section + ":")]
        return int(rows[1][rows[0].index(name)])
    except (OSError, ValueError, IndexError):
        return None


def tcp_out_segments():
    """The kernel's count of TCP segments sent, all sockets (OutSegs): on loopback each
    one is also received, so per job it is what every server must pay the TCP stack
    for, whatever its code does."""
    return kernel_counter("/proc/net/snmp", "Tcp", "OutSegs")


def context_switches(pid):
    """Voluntary and involuntary context switches of every thread of process pid."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except (OSError, ValueError):
            pass
    return total


def run_load(binary, port, pid, workload, jobs, gen_threads, functions=1):
    cmd = [binary, "--port", str(port), "--jobs", str(jobs), "--threads", str(gen_threads),
           "--server-pid", str(pid), "--functions", str(functions)] + WORKLOADS[workload]
    segs0, csw0 = tcp_out_segments(), context_switches(pid)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    segs1, csw1 = tcp_out_segments(), context_switches(pid)
    line = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    if res.returncode != 0 or fields.get("status") != "ok":
        raise RuntimeError(f"load run failed: {res.stdout[-500:]} {res.stderr[-500:]}")
    # Segments include the other traffic on the machine, which is nothing much during a
    # run; switches are the server's own threads' (threads that exit in the run and
    # the --threads 0 servers' single thread included).
    if segs0 is not None and segs1 is not None:
        fields["segs_per_job"] = (segs1 - segs0) / jobs
    if csw0 is not None and csw1 is not None:
        fields["csw_per_job"] = (csw1 - csw0) / jobs
    return fields


def med(runs, key):
    vals = [float(f[key]) for f in runs if key in f]
    return (statistics.median(vals) if vals else float("nan")), (vals or [float("nan")])


def pair(a, b, key, fmt):
    """'median of a / median of b' for a per-run figure, blank where either lacks it."""
    (x, _), (y, _) = med(a, key), med(b, key)
    if math.isnan(x) or math.isnan(y):     # not measured
        return ""
    return f"{x:{fmt}} / {y:{fmt}}"


def cpu_per_job(runs):
    """Server CPU microseconds per job, from the generator's /proc sampling."""
    vals = [float(f["server_cpu_pct"]) / 100 * 1e6 / float(f["jobs_per_s"])
            for f in runs if "server_cpu_pct" in f]
    return statistics.median(vals) if vals else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--workloads", nargs="+", default=["bg", "fg"], choices=list(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=200000)
    ap.add_argument("--gen-threads", type=int, default=1)
    ap.add_argument("--no-floor", action="store_true", help="leave out the floor server")
    ap.add_argument("--functions", type=int, default=1,
                    help="spread jobs over this many functions (every worker registers all)")
    ap.add_argument("--io", nargs="+", default=["auto"], choices=["auto", "epoll", "uring"],
                    help="fastgear's I/O backend(s) (--io); several: one server each")
    args = ap.parse_args(argv)
    kinds = [f"fastgear:{io}" for io in args.io] + ["gearmand"]
    if not args.no_floor:
        kinds.append("floor")
    binary = gearload_binary()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in args.threads:
            servers = {k: start(k, threads, tmp) for k in kinds}
            try:
                for workload in args.workloads:
                    got = {k: [] for k in kinds}
                    for _ in range(args.rounds):
                        for kind, (proc, port) in servers.items():
                            f = run_load(binary, port, proc.pid, workload, args.jobs,
                                         args.gen_threads, args.functions)
                            got[kind].append(f)
                            print(f"-t {threads} {workload} {kind}: {f['jobs_per_s']} jobs/s "
                                  f"cpu {f.get('server_cpu_pct')}%", file=sys.stderr)
                    rows.append((threads, workload, got))
            finally:
                stop_all(proc for proc, _ in servers.values())
    floor = "floor" in kinds
    print("| -t | workload | --io | fastgear jobs/s (median, min-max) | gearmand jobs/s "
          "| ratio | fastgear µs CPU/job | gearmand µs CPU/job | CPU/job ratio "
          "| fg p99 ms fastgear / gearmand | TCP segments/job fastgear / gearmand "
          "| context switches/job fastgear / gearmand | generator CPU % fastgear / gearmand |"
          + (" floor jobs/s | floor µs CPU/job | fastgear ÷ floor jobs/s, CPU/job |"
             if floor else ""))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|"
          + ("---|---|---|" if floor else ""))
    for threads, workload, got in rows:
        gj, gv = med(got["gearmand"], "jobs_per_s")
        gcpu = cpu_per_job(got["gearmand"])
        for kind in (k for k in kinds if k.startswith("fastgear")):
            fj, fv = med(got[kind], "jobs_per_s")
            fcpu = cpu_per_job(got[kind])
            p99 = ""
            if workload == "fg":
                fp, _ = med(got[kind], "p99_us")
                gp, _ = med(got["gearmand"], "p99_us")
                p99 = f"{fp / 1000:.2f} / {gp / 1000:.2f}"
            print(f"| {threads} | {workload} | {kind.partition(':')[2]} "
                  f"| {fj:,.0f} ({min(fv):,.0f}-{max(fv):,.0f}) "
                  f"| {gj:,.0f} ({min(gv):,.0f}-{max(gv):,.0f}) | {fj / gj:.2f}x "
                  f"| {fcpu:.2f} | {gcpu:.2f} | {fcpu / gcpu:.2f}x | {p99} "
                  f"| {pair(got[kind], got['gearmand'], 'segs_per_job', '.2f')} "
                  f"| {pair(got[kind], got['gearmand'], 'csw_per_job', '.3f')} "
                  f"| {pair(got[kind], got['gearmand'], 'gen_cpu_pct', '.0f')} |", end="")
            if floor:
                lj, _ = med(got["floor"], "jobs_per_s")
                lc = cpu_per_job(got["floor"])
                print(f" {lj:,.0f} | {lc:.2f} | {fj / lj:.2f}x, {fcpu / lc:.2f}x |", end="")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
