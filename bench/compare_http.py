"""HTTP job submission (-r http) throughput: fastgear vs gearmand 1.1.20, side by side.

    python bench/compare_http.py [--seconds 2] [--rounds 3] [--clients 4]

Each round starts both servers fresh on free loopback ports and runs, for each server,
background submissions (no worker: the queue fills) and foreground jobs (binary workers
complete each job at once), with a new connection per request (keep-alive off) and
with one HTTP/1.1 connection per client (keep-alive on). gearmand closes every
connection after its response, so its "keep-alive on" row reconnects as well. Clients
are processes with raw sockets and prebuilt requests, bounded by time; the figure is
the median jobs/s over the rounds. Run from the repository root (PYTHONPATH=.).
"""
import argparse
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from fastgear.bench.procstat import cpu_seconds

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind, tmp):
    port, hport = free_port(), free_port()
    if kind == "fastgear":
        cmd = [sys.executable, "-m", "fastgear", "serve"]
    else:
        cmd = [shutil.which("gearmand") or "/usr/sbin/gearmand"]
    cmd += ["-p", str(port), "-L", "127.0.0.1", "-r", "http", "--http-port", str(hport),
            "--log-file", os.path.join(tmp, f"{kind}.log"),
            "-P", os.path.join(tmp, f"{kind}.pid")]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", hport), timeout=0.2).close()
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, hport
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{kind} did not start") from None
            time.sleep(0.05)


def read_response(s, buf):
    """One response off s (Content-Length framed); returns the rest of the buffer."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0
                         else len(head)]) if i >= 0 else 0
            if len(buf) >= end + 4 + n:
                return buf[end + 4 + n:]
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk


def client(hport, func, bg, keep, seconds, out):
    hdr = b"X-Gearman-Background: true\r\n" if bg else b""
    ver = b"HTTP/1.1" if keep else b"HTTP/1.0"
    req = (b"POST /" + func + b" " + ver + b"\r\nHost: x\r\n" + hdr
           + b"Content-Length: 7\r\n\r\npayload")
    done = 0
    s = None
    buf = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if s is None:
            s = socket.create_connection(("127.0.0.1", hport))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
        s.sendall(req)
        try:
            buf = read_response(s, buf)
        except ConnectionError:
            s.close()
            s = None
            continue
        done += 1
        if not keep or (buf == b"" and not _alive(s)):
            s.close()
            s = None
    if s is not None:
        s.close()
    out.put(done)


def _alive(s):
    # gearmand closes after every response even for HTTP/1.1: notice it before reuse.
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def worker(port, func, stop_at):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pkt(t, body=b""):
        return b"\0REQ" + struct.pack(">II", t, len(body)) + body
    s.sendall(pkt(1, func))
    buf = b""
    s.settimeout(0.5)
    s.sendall(pkt(9))
    while time.monotonic() < stop_at:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, socket.timeout):
            continue
        if not chunk:
            return
        buf += chunk
        out = b""
        while len(buf) >= 12:
            t, n = struct.unpack(">II", buf[4:12])
            if len(buf) < 12 + n:
                break
            body, buf = buf[12:12 + n], buf[12 + n:]
            if t == 11:                        # JOB_ASSIGN: complete it, ask again
                handle = body.split(b"\0", 1)[0]
                out += pkt(13, handle + b"\0done") + pkt(9)
            elif t == 10:                      # NO_JOB
                out += pkt(4)
            elif t == 6:                       # NOOP
                out += pkt(9)
        if out:
            s.sendall(out)
    s.close()


def measure(port, hport, bg, keep, seconds, clients, nworkers, tag, pid):
    """(jobs/s, server CPU µs per job): the CPU shows whether the server or the Python
    clients on the same cores set the rate."""
    func = f"{tag}{'bg' if bg else 'fg'}{int(keep)}".encode()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ws = []
    if not bg:
        stop_at = time.monotonic() + seconds + 3
        ws = [ctx.Process(target=worker, args=(port, func, stop_at)) for _ in range(nworkers)]
        for w in ws:
            w.start()
        time.sleep(0.3)
    ps = [ctx.Process(target=client, args=(hport, func, bg, keep, seconds, q))
          for _ in range(clients)]
    cpu0 = cpu_seconds(pid)
    for p in ps:
        p.start()
    total = sum(q.get(timeout=seconds + 30) for _ in ps)
    cpu = cpu_seconds(pid) - cpu0
    for p in ps:
        p.join()
    for w in ws:
        w.terminate()
        w.join()
    return total / seconds, cpu * 1e6 / total if total else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    cases = [(bg, keep) for bg in (True, False) for keep in (False, True)]
    results = {(k, c): [] for k in ("fastgear", "gearmand") for c in cases}
    for rnd in range(args.rounds):
        for kind in ("fastgear", "gearmand"):
            with tempfile.TemporaryDirectory() as tmp:
                proc, port, hport = start(kind, tmp)
                try:
                    for bg, keep in cases:
                        results[(kind, (bg, keep))].append(
                            measure(port, hport, bg, keep, args.seconds, args.clients,
                                    args.workers, f"r{rnd}", proc.pid))
                finally:
                    proc.terminate()
                    proc.wait(10)
    print(f"median jobs/s over {args.rounds} rounds of {args.seconds:g} s, "
          f"{args.clients} client processes, {args.workers} workers (foreground)\n")
    print("| workload | keep-alive | fastgear | gearmand -r http | ratio "
          "| server CPU µs/job fastgear / gearmand |")
    print("|---|---|---|---|---|---|")
    for bg, keep in cases:
        f = statistics.median(r[0] for r in results[("fastgear", (bg, keep))])
        g = statistics.median(r[0] for r in results[("gearmand", (bg, keep))])
        fc = statistics.median(r[1] for r in results[("fastgear", (bg, keep))])
        gc = statistics.median(r[1] for r in results[("gearmand", (bg, keep))])
        print(f"| {'background' if bg else 'foreground'} | {'on' if keep else 'off'} | "
              f"{f:,.0f} | {g:,.0f} | {f / g if g else float('inf'):.1f}x "
              f"| {fc:.1f} / {gc:.1f} |")


if __name__ == "__main__":
    main()
