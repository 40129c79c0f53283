"""Reconnect storm: N workers connect at once and register, fastgear against gearmand.

What a restart looks like to the server (issue 8): every worker of a pool reconnects at
the same moment and sends CAN_DO and PRE_SLEEP. This opens N non-blocking connections
as fast as one process can (no batching), sends CAN_DO + PRE_SLEEP on each as soon as
it is connected, and measures from the first connect:

* connected: every connect() has completed;
* registered: `status` shows N workers for the function;
* job: a foreground job submitted at that moment has been completed by one of the storm's
  workers (the server NOOPs sleepers, they GRAB, one gets it) and its client has the
  result.

Servers run alternately (A B A B ...), each with `-f` raised; medians over the rounds.
gearmand runs with its default backlog (32) and, as a control, with `-b 4096`.

    python bench/reconnect_storm.py --workers 5000 --rounds 3
"""
import argparse
import os
import resource
import select
import socket
import statistics
import struct
import sys
import tempfile
import time

from compare_threads import free_port, launch, stop_all

REQ = b"\0REQ"
CAN_DO, PRE_SLEEP, NOOP, SUBMIT_JOB, JOB_CREATED, GRAB_JOB = 1, 4, 6, 7, 8, 9
NO_JOB, JOB_ASSIGN, WORK_COMPLETE = 10, 11, 13


def pack(ptype, *args):
    body = b"\0".join(args)
    return REQ + struct.pack(">II", ptype, len(body)) + body


def packets(buf):
    """Complete packets in buf: ([(type, body)], rest)."""
    out = []
    while len(buf) >= 12:
        ptype, size = struct.unpack(">II", buf[4:12])
        if len(buf) < 12 + size:
            break
        out.append((ptype, buf[12:12 + size]))
        buf = buf[12 + size:]
    return out, buf


def workers_registered(admin, func):
    admin.sendall(b"status\r\n")
    data = b""
    deadline = time.monotonic() + 30
    while not (data.startswith(b".\n") or b"\n.\n" in data):
        if time.monotonic() > deadline:
            raise TimeoutError("no status reply")
        chunk = admin.recv(65536)
        if not chunk:
            raise ConnectionError("admin connection closed")
        data += chunk
    for line in data.split(b"\n"):
        parts = line.split(b"\t")
        if len(parts) == 4 and parts[0] == func:
            return int(parts[3])
    return 0


def storm(port, n, limit_s=60):
    """One storm against the server on port; returns the three times in seconds."""
    func = b"storm"
    admin = socket.create_connection(("127.0.0.1", port))
    client = socket.create_connection(("127.0.0.1", port))
    hello = pack(CAN_DO, func) + pack(PRE_SLEEP)
    poller = select.poll()
    socks, bufs, connecting = {}, {}, set()
    t0 = time.monotonic()
    deadline = t0 + limit_s
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks[s.fileno()] = s
            bufs[s.fileno()] = b""
            connecting.add(s.fileno())
            poller.register(s, select.POLLOUT)
        t_connected = t_registered = t_job = None
        handle = None
        registered = 0
        next_status = 0.0
        cbuf = b""
        while t_job is None:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"storm not absorbed in {limit_s}s: {n - len(connecting)} "
                                   f"connected, {registered} registered")
            for fd, ev in poller.poll(10):
                s = socks[fd]
                if fd in connecting:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"connect: {os.strerror(err)}")
                    connecting.discard(fd)
                    s.send(hello)
                    poller.modify(s, select.POLLIN)
                    continue
                data = s.recv(65536)
                if not data:
                    raise ConnectionError("server closed a worker connection")
                pkts, bufs[fd] = packets(bufs[fd] + data)
                for ptype, body in pkts:
                    if ptype == NOOP:
                        s.send(pack(GRAB_JOB))
                    elif ptype == NO_JOB:
                        s.send(pack(PRE_SLEEP))
                    elif ptype == JOB_ASSIGN:
                        s.send(pack(WORK_COMPLETE, body.split(b"\0")[0], b"done"))
            now = time.monotonic()
            if t_connected is None and not connecting:
                t_connected = now - t0
            if t_registered is None and t_connected is not None and now >= next_status:
                next_status = now + 0.02
                registered = workers_registered(admin, func)
                if registered >= n:
                    t_registered = time.monotonic() - t0
                    client.sendall(pack(SUBMIT_JOB, func, b"", b"x"))
            if t_registered is not None:
                r, _, _ = select.select([client], [], [], 0)
                if r:
                    got, cbuf = packets(cbuf + client.recv(65536))
                    for ptype, body in got:
                        if ptype == JOB_CREATED:
                            handle = body
                        elif ptype == WORK_COMPLETE and body.split(b"\0")[0] == handle:
                            t_job = time.monotonic() - t0
        return t_connected, t_registered, t_job
    finally:
        for s in socks.values():
            s.close()
        admin.close()
        client.close()


def start(kind, flags, tmp):
    port = free_port()
    if kind == "fastgear":
        cmd = [sys.executable, "-m", "fastgear", "serve", "--monitor", "off"]
    else:
        cmd = ["/usr/sbin/gearmand" if os.path.exists("/usr/sbin/gearmand") else "gearmand"]
    cmd += ["-p", str(port), "-L", "127.0.0.1", "--log-file", "none",
            "-P", os.path.join(tmp, f"{kind}-{port}.pid")] + flags
    return launch(cmd, port)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4, help="-t for every server")
    args = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.workers + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is below {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    fd_flag = ["-f", str(need + 256), "-t", str(args.threads)]
    variants = {
        "fastgear": ("fastgear", fd_flag),
        "gearmand": ("gearmand", fd_flag),
        "gearmand -b 4096": ("gearmand", fd_flag + ["-b", "4096"]),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, (kind, flags) in variants.items():
                proc, port = start(kind, flags, tmp)
                try:
                    times = storm(port, args.workers)
                except (OSError, TimeoutError) as exc:
                    times = None
                    print(f"round {r} {name}: failed: {exc}", file=sys.stderr)
                finally:
                    stop_all([proc])
                if times:
                    results.setdefault(name, []).append(times)
                    print(f"round {r} {name}: connected {times[0]:.3f}s registered "
                          f"{times[1]:.3f}s job {times[2]:.3f}s", file=sys.stderr)
    print(f"{args.workers} workers reconnecting at once (-t {args.threads}), medians of "
          f"{args.rounds} rounds, seconds from the first connect:")
    print("| server | all connected | all registered | first job done |")
    print("|---|---|---|---|")
    for name in variants:
        runs = results.get(name)
        if not runs:
            print(f"| {name} | failed | failed | failed |")
            continue
        med = [statistics.median(t[i] for t in runs) for i in range(3)]
        print(f"| {name} | {med[0]:.3f} | {med[1]:.3f} | {med[2]:.3f} |")


if __name__ == "__main__":
    main()
