"""Admin listings do not stall the I/O loops, however much they list.

`show jobs` over a million queued jobs is a big listing; the engine lock must be held
only for short copies (in slices), never while Python builds the reply, or every other
connection waits for the whole listing. These tests queue a million background jobs and
time another client's ECHO round trips while an admin client lists in a loop.
"""
import subprocess
import sys
import textwrap
import threading
import time

from gearproto import ECHO_REQ, ECHO_RES, HEADER, RES, SUBMIT_JOB_BG, Conn, pack

JOBS = 1_000_000
CHUNK = 20_000
ADMIN_ROUNDS = 4             # rounds of show jobs, status, workers
ADMIN_SECONDS = 60           # ... or until this long has passed
MAX_ROUND_TRIP = 0.020


def _queue_background_jobs(server, n):
    """Pipeline n SUBMIT_JOB_BG packets (empty unique key: none coalesce) on one
    connection while a thread drains the JOB_CREATED replies, then wait for an ECHO
    sent after them: every job is queued once it comes back."""
    job = pack(b"\0REQ", SUBMIT_JOB_BG, b"views", b"", data=b"x")
    sentinel = b"queued-%d" % n
    echo_res = HEADER.pack(RES, ECHO_RES, len(sentinel)) + sentinel
    c = Conn(server)
    c.sock.settimeout(120)
    tail = bytearray()
    done = threading.Event()

    def drain():
        while not done.is_set():
            data = c.sock.recv(1 << 20)
            if not data:
                break
            tail.extend(data)
            del tail[:-len(echo_res)]
            if bytes(tail) == echo_res:
                done.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    blob = job * CHUNK
    for _ in range(n // CHUNK):
        c.sock.sendall(blob)
    c.sock.sendall(job * (n % CHUNK) + pack(b"\0REQ", ECHO_REQ, sentinel))
    assert done.wait(120), "the submissions were not all answered"
    reader.join(5)
    c.close()


def _worst_round_trip(server, stop, min_seconds=0.0, max_seconds=120.0):
    """ECHO round trips back to back until `stop()` (and at least min_seconds); returns
    (worst, count)."""
    with Conn(server) as c:
        for _ in range(20):          # warm up: connection set-up is not what we time
            c.echo()
        worst, count = 0.0, 0
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            c.echo(b"ping")
            t1 = time.perf_counter()
            worst = max(worst, t1 - t0)
            count += 1
            if t1 - start >= min_seconds and stop():
                break
            assert t1 - start < max_seconds, "the admin client did not finish"
    return worst, count


# Runs in its own process, so that reading multi-megabyte listings does not hold the GIL
# of the process that times the round trips.
ADMIN_LOOP = textwrap.dedent("""
    import socket, sys, time
    host, port, rounds, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s = socket.create_connection((host, port), timeout=120)
    def listing(line):
        s.sendall(line + b"\\r\\n")
        buf = bytearray()
        while not (buf == b".\\n" or buf.endswith(b"\\n.\\n")):
            data = s.recv(1 << 20)
            if not data:
                raise SystemExit("connection closed")
            buf += data
        return len(buf)
    deadline = time.monotonic() + seconds
    sizes = []
    for _ in range(rounds):
        sizes.append(listing(b"show jobs"))
        listing(b"status")
        listing(b"workers")
        if time.monotonic() > deadline:
            break
    print(len(sizes), min(sizes), flush=True)
""")


# Keeps one core busy, as the server's control thread is while it formats a listing.
BURN_CPU = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\n" \
           "while time.monotonic() < end:\n    pass\n"


def test_admin_listings_over_a_million_jobs_do_not_stall_other_clients(start_server):
    """The worst ECHO round trip of one client stays under 20 ms while another lists
    `show jobs` (a million jobs), `status` and `workers` in a loop. Before the views
    copied in slices, one `show jobs` held the engine lock for over 600 ms.

    This machine has two cores shared with other work, so scheduling alone delays a
    round trip by several milliseconds, and more while the server formats a listing (a
    core's worth of Python). So the same client's worst round trip is also measured
    without the admin client, for as long and with one core kept busy by another
    process, and the bound is 20 ms or three times that baseline, whichever is larger.
    A listing that held the engine lock would still miss it by an order of magnitude."""
    server = start_server("fastgear")
    _queue_background_jobs(server, JOBS)
    with Conn(server) as adm:
        status = adm.admin("status")
    assert status == b"views\t%d\t0\t0\n.\n" % JOBS

    admin = subprocess.Popen(
        [sys.executable, "-c", ADMIN_LOOP, server.host, str(server.port),
         str(ADMIN_ROUNDS), str(ADMIN_SECONDS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = time.monotonic()
    try:
        worst, count = _worst_round_trip(server, lambda: admin.poll() is not None,
                                         max_seconds=ADMIN_SECONDS + 60)
        out, err = admin.communicate(timeout=10)
    finally:
        if admin.poll() is None:
            admin.kill()
            admin.wait(5)
    loaded_for = time.monotonic() - started
    assert admin.returncode == 0, err.decode(errors="replace")
    rounds, smallest = (int(w) for w in out.split())
    # Every listing was complete: one line per job (at least the handle and a newline).
    assert rounds >= 1 and smallest > JOBS * 8

    burner = subprocess.Popen([sys.executable, "-c", BURN_CPU, str(loaded_for + 5)])
    try:
        baseline, _ = _worst_round_trip(server, lambda: True, min_seconds=loaded_for)
    finally:
        burner.kill()
        burner.wait(5)

    bound = max(MAX_ROUND_TRIP, 3 * baseline)
    print(f"with admin worst {worst * 1e3:.1f} ms over {count} round trips and {rounds} "
          f"admin rounds ({loaded_for:.1f} s); baseline worst {baseline * 1e3:.1f} ms")
    assert worst < bound, (f"worst round trip {worst * 1e3:.1f} ms with the admin client "
                           f"(baseline {baseline * 1e3:.1f} ms, bound {bound * 1e3:.1f} ms)")
