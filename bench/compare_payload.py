"""Large payloads from libgearman-like senders: fastgear against gearmand, same machine,
same run, servers alternating.

libgearman (the PHP extension, the C API, the `gearman` tool) sets 32 KiB SO_SNDBUF and
SO_RCVBUF on its sockets, so a packet larger than that goes out in parts, each once the
server has ACKed the last; PHP also sends OPTION_REQ `exceptions` on every connection,
whose answer puts the server's side in the kernel's request-response ("pingpong") mode,
where ACKs wait for data to carry them or for the delayed-ACK timer. This script sends
one SUBMIT_JOB_BG of each --sizes payload in that way (raw sockets, no client library)
and measures the time to its JOB_CREATED, the throughput, and the kernel's count of
delayed ACKs in that time (TcpExt DelayedACKs: system-wide, so run it on a quiet
machine). Prints medians of --rounds as a Markdown table.

    python bench/compare_payload.py --rounds 3 --sizes 65536 1048576 10485760
"""
import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_threads import kernel_counter, start, stop_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastgear.protocol import encode, parse

OPTION_REQ, OPTION_RES, SUBMIT_JOB_BG, JOB_CREATED = 26, 27, 18, 8


def delayed_acks():
    return kernel_counter("/proc/net/netstat", "TcpExt", "DelayedACKs")


def reply(sock, want):
    """The next packet's fields, through the server's own codec; it must be `want`."""
    data = b""
    while True:
        got, _ = parse(data)
        if got:
            kind, ptype, fields = got[0]
            if kind != "packet" or ptype != want:
                raise RuntimeError(f"expected packet type {want}, got {kind} {ptype}")
            return fields
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        data += chunk


def upload(port, size, timeout):
    """Seconds and delayed ACKs for one SUBMIT_JOB_BG of `size` bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        s.sendall(encode(OPTION_REQ, [b"exceptions"], request=True))
        reply(s, OPTION_RES)
        packet = encode(SUBMIT_JOB_BG, [b"payload", b"", b"x" * size], request=True)
        acks0, t0 = delayed_acks(), time.perf_counter()
        s.sendall(packet)
        reply(s, JOB_CREATED)
        return time.perf_counter() - t0, delayed_acks() - acks0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[65536, 1048576, 10485760])
    ap.add_argument("--timeout", type=float, default=120,
                    help="seconds one upload may take before the run fails")
    ap.add_argument("--io", choices=["auto", "epoll", "uring"], default="auto",
                    help="fastgear's I/O backend (--io)")
    args = ap.parse_args(argv)
    kinds = ["fastgear" if args.io == "auto" else f"fastgear:{args.io}", "gearmand"]
    got = {(k, n): [] for k in kinds for n in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {k: start(k, 0, tmp) for k in kinds}
        try:
            for r in range(args.rounds):
                for size in args.sizes:
                    for kind, (_, port) in servers.items():
                        secs, acks = upload(port, size, args.timeout)
                        got[kind, size].append((secs, acks))
                        print(f"round {r + 1} {kind} {size} B: {secs:.3f} s, "
                              f"{acks} delayed ACKs", file=sys.stderr)
        finally:
            stop_all(proc for proc, _ in servers.values())
    print("| payload | fastgear s (median) | gearmand s | gearmand ÷ fastgear "
          "| fastgear MB/s | gearmand MB/s | delayed ACKs fastgear / gearmand |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        f = [statistics.median(x) for x in zip(*got[kinds[0], size])]
        g = [statistics.median(x) for x in zip(*got["gearmand", size])]
        print(f"| {size:,} B | {f[0]:.4f} | {g[0]:.4f} | {g[0] / f[0]:.1f}x "
              f"| {size / f[0] / 1e6:,.1f} | {size / g[0] / 1e6:,.1f} "
              f"| {f[1]:.0f} / {g[1]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
