"""Protocol state fuzzer: a seeded random crowd of clients, workers, admins and vandals
against one live server, checking that nothing one peer does can hurt the others.

Peers (each a non-blocking loopback socket, all driven from one loop so their packets
interleave at random) come in four roles. *client* and *worker* peers send only
well-framed requests (every type of the command table, server-only ones and \\0RES magic
included, with random field contents, sometimes split across steps or cut off by a
disconnect) and check every reply strictly: only \\0RES packets, ECHO_RES in order with
this peer's own payload, JOB_CREATED/JOB_ASSIGN/NO_JOB/NOOP/STATUS_RES/OPTION_RES never
more than were asked for and only about this peer's own requests, WORK_* only for
handles this peer was given. *admin* peers send text lines; *vandal* peers send wrong
magic, unknown types (2^31 included), missing NULs, huge declared lengths, truncated
headers, random bytes, over-long lines, mutated packets; *sluggard* peers ask for large
replies and never read them (the server's output limits must protect the rest). Echo payloads and GET_STATUS
handles carry a private marker naming their peer: seeing another peer's marker
anywhere is cross-talk. Every `--probe` seconds a fresh client and worker must complete
SUBMIT_JOB -> JOB_ASSIGN -> WORK_COMPLETE and an admin `status` within
`--probe-timeout`, and the server must be alive; at the end, with every peer gone,
`status` must show no running job and no worker. A clean ERROR and close is always an
acceptable answer to a bad input (the server may have limits); a crash, hang or
cross-talk is a failure, reported with the seed and the last actions' bytes.

Runs are seeded, but replies feed back into choices (handles learned), so a seed
reproduces the sequence of decisions, not every interleaving.

    python tests/fuzz/state_fuzz.py --time 600                    # -t 0, 1 and 4
    python tests/fuzz/state_fuzz.py --time 60 --seed 7 --threads 4
    python tests/fuzz/state_fuzz.py --server gearmand --time 60 --keep-going   # by hand
    python tests/fuzz/state_fuzz.py --address 127.0.0.1:4730 --time 30   # a running server
"""
import argparse
import collections
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import model

REQ, RES = b"\0REQ", b"\0RES"
T = {name: t for t, (name, *_rest) in model.SPEC.items()}
SUBMITS = [T[n] for n in ("SUBMIT_JOB", "SUBMIT_JOB_BG", "SUBMIT_JOB_HIGH",
                          "SUBMIT_JOB_HIGH_BG", "SUBMIT_JOB_LOW", "SUBMIT_JOB_LOW_BG")]
ODD_SUBMITS = [T[n] for n in ("SUBMIT_JOB_SCHED", "SUBMIT_JOB_EPOCH", "SUBMIT_REDUCE_JOB",
                              "SUBMIT_REDUCE_JOB_BACKGROUND")]
GRABS = [T["GRAB_JOB"], T["GRAB_JOB_UNIQ"], T["GRAB_JOB_ALL"]]
ASSIGNS = {T["JOB_ASSIGN"], T["JOB_ASSIGN_UNIQ"], T["JOB_ASSIGN_ALL"]}
WORK = [T[n] for n in ("WORK_STATUS", "WORK_COMPLETE", "WORK_FAIL", "WORK_EXCEPTION",
                       "WORK_DATA", "WORK_WARNING")]
SERVER_ONLY = [t for t, spec in model.SPEC.items() if not spec[3]]
FUNCS = [b"f0", b"f1", b"f2", b"f3", b""]
ADMIN_WORDS = [b"status", b"workers", b"prioritystatus", b"show jobs", b"show unique jobs",
               b"version", b"getpid", b"verbose", b"show", b"show x", b"maxqueue",
               b"cancel job", b"create function", b"drop function", b"", b"STATUS"]
# Markers of data only the sending peer may ever receive back.
PRIVATE = re.compile(rb"\x01([EG]):(\d+):")
MAX_LINE = 8192

# Bugs found by this fuzzer that are still open, each pinned by an xfail(strict=True)
# test in tests/test_fuzz_regressions.py. Runs avoid them by default so they can find
# something new (and CI stays green while the owner fixes them); --no-avoid brings them
# back. When a fix lands, the xfail turns into an error: delete the entry here then.
# (Fixed so far: "sched-range", SUBMIT_JOB_SCHED with minute >= 60 or hour >= 24
# wedged the engine, test_sched_job_with_minute_or_hour_out_of_range_is_answered_not_a_hang.)
KNOWN_OPEN = {}

# gearmand 1.1.20's single-input crashes that this fuzzer found or confirmed; avoided in
# runs against gearmand (unless --no-avoid) so that a run can get past them.
KNOWN_GEARMAND = {
    "type-2^31": "a packet type >= 2^31 (either magic) kills gearmand",
    "create-empty-lf": "`create function \\n` (empty name, LF-only line) kills gearmand",
}


class Failure(AssertionError):
    """An invariant broke: the message says which; `trace` holds the last actions."""

    def __init__(self, message, trace=""):
        super().__init__(message + ("\n" + trace if trace else ""))
        self.short = message


def no_shutdown(data):
    # fastgear answers `shutdown` from loopback by stopping: that is not a crash.
    if b"shutdown" in data.lower():
        data = re.sub(rb"(?i)shutdown", b"shutd0wn", data)
    return data


class Peer:
    """One fuzz connection and what it may legitimately receive."""

    def __init__(self, fz, role):
        self.fz = fz
        self.cid = fz.new_cid()
        self.role = role
        self.strict = role in ("client", "worker")
        self.sock = socket.create_connection(fz.address, timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.out = bytearray()
        self.inbuf = bytearray()
        self.gone = False          # we closed it
        self.eof = False           # the server closed it (or reset it)
        self.echoes = collections.deque()
        self.submits = self.grabs = self.sleeps = 0
        self.noops = 0
        self.handles = set()       # from JOB_CREATED: WORK_* may concern only these
        self.assigned = []         # handles this worker holds
        self.funcs = set()         # ever registered: JOB_ASSIGN may concern only these
        self.asked_status, self.asked_unique, self.asked_options = set(), set(), set()
        self.seq = 0
        self.pending = None        # the second half of a split packet
        # Once a peer has sent bytes that may desynchronise framing (a huge declared
        # length swallows what follows into some job's data), it stops using private
        # markers: they could legitimately reach a worker inside that data.
        self.framed = True

    def queue(self, data, what):
        data = no_shutdown(data)
        self.fz.log(self, what, data)
        self.out += data
        self.flush()

    def flush(self):
        if self.gone or self.eof or not self.out:
            return
        try:
            n = self.sock.send(self.out)
            del self.out[:n]
        except BlockingIOError:
            pass
        except OSError:
            self.eof = True

    def read(self):
        if self.gone or self.eof:
            return
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except BlockingIOError:
                break
            except OSError:
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self.fz.bytes_in += len(data)
            self.inbuf += data
            if len(data) < (1 << 18):
                break
        self.check_private()
        if self.strict:
            self.check_replies()
        else:
            del self.inbuf[:-32]   # the tail may hold the start of a marker

    def check_private(self):
        for m in PRIVATE.finditer(self.inbuf):
            if int(m.group(2)) != self.cid:
                raise self.fz.fail(
                    f"cross-talk: peer {self.cid} ({self.role}) received private data "
                    f"{m.group(1).decode()} of peer {m.group(2).decode()}: "
                    f"{bytes(self.inbuf[max(0, m.start() - 40):m.end() + 40])!r}")

    def check_replies(self):
        """Strict reply accounting for peers that only send well-framed packets."""
        while self.inbuf:
            r = model.parse_one(bytes(self.inbuf[:12 + (1 << 26)]))
            if r.status == model.NEED_MORE:
                return
            if r.status != model.PACKET:
                raise self.fz.fail(f"peer {self.cid} ({self.role}), which sent no text, got "
                                   f"{model.STATUS_NAMES[r.status]} from the server: "
                                   f"{bytes(self.inbuf[:80])!r}")
            del self.inbuf[:r.size]
            self.reply(r)

    def reply(self, r):
        t, f = r.ptype, r.fields
        name = model.SPEC[t][0]
        self.fz.replies[name] += 1
        bad = None
        if not r.res_magic:
            bad = "reply with \\0REQ magic"
        elif t == T["ECHO_RES"]:
            if f[0] not in self.echoes:
                bad = "ECHO_RES that this peer did not ask for (or out of order)"
            else:
                while self.echoes.popleft() != f[0]:
                    pass  # those got an ERROR instead (limits); order is still checked
        elif t == T["JOB_CREATED"]:
            self.submits -= 1
            if self.submits < 0:
                bad = "more JOB_CREATED than submissions"
            self.handles.add(f[0])
            self.fz.known_handles.append(f[0])
        elif t in ASSIGNS or t == T["NO_JOB"]:
            self.grabs -= 1
            if self.grabs < 0:
                bad = "more JOB_ASSIGN/NO_JOB than GRAB_JOBs"
            elif t in ASSIGNS:
                if f[1] not in self.funcs:
                    bad = "JOB_ASSIGN for a function this worker never registered"
                self.assigned.append(f[0])
                self.fz.known_handles.append(f[0])
        elif t == T["NOOP"]:
            self.noops += 1
            if self.noops > self.sleeps:
                bad = "more NOOPs than PRE_SLEEPs"
        elif t in WORK:
            handle = f[0].rstrip(b"\0") if t == T["WORK_FAIL"] else f[0]
            if handle not in self.handles:
                bad = "WORK_* for a job this client was never given"
        elif t == T["STATUS_RES"]:
            if f[0] not in self.asked_status:
                bad = "STATUS_RES for a handle this peer did not ask about"
        elif t == T["STATUS_RES_UNIQUE"]:
            if f[0] not in self.asked_unique:
                bad = "STATUS_RES_UNIQUE for a unique this peer did not ask about"
        elif t == T["OPTION_RES"]:
            if f[0] not in self.asked_options:
                bad = "OPTION_RES for an option this peer did not ask for"
        elif t != T["ERROR"]:
            bad = f"unexpected reply type {name}"
        if bad:
            raise self.fz.fail(f"peer {self.cid} ({self.role}): {bad}: {name} {f!r:.300}")

    def close(self, abort=False):
        if self.gone:
            return
        self.gone = True
        try:
            if abort:
                # RST instead of FIN: the server sees ECONNRESET mid-whatever.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


class Fuzzer:
    def __init__(self, address, seed, alive=lambda: True, peers=8, probe_every=0.5,
                 probe_timeout=5.0, out=sys.stderr, label="", avoid=tuple(KNOWN_OPEN),
                 pid=None):
        self.address = address
        self.rng = random.Random(seed)
        self.seed = seed
        self.alive = alive
        self.npeers = peers
        self.probe_every = probe_every
        self.probe_timeout = probe_timeout
        self.out = out
        self.label = label
        self.cids = 0
        self.peers = []
        self.trace = collections.deque(maxlen=60)
        self.sent_log = collections.deque(maxlen=300)   # (cid, bytes) for triage
        self.stats = collections.Counter()
        self.replies = collections.Counter()
        self.bytes_in = 0
        self.known_handles = collections.deque(maxlen=64)
        self.probes = 0
        self.avoid = set(avoid)
        self.pid = pid                 # the server's, to count its sockets (or None)
        self.sockets_at_start = None
        self.name_pool = [self.blob(0, 20) for _ in range(64)]

    # -- bookkeeping --------------------------------------------------------------------
    def new_cid(self):
        self.cids += 1
        return self.cids

    def log(self, peer, what, data):
        self.stats["actions"] += 1
        self.stats["bytes_out"] += len(data)
        self.trace.append((time.monotonic(), peer.cid, peer.role, what, data[:160]))
        self.sent_log.append((peer.cid, bytes(data[:1 << 16])))

    def fail(self, message):
        lines = [(f"seed={self.seed} {self.label} after {self.stats['actions']} actions; "
                  f"last actions (time, peer, role, what, bytes):")]
        t0 = self.trace[0][0] if self.trace else 0
        for t, cid, role, what, data in self.trace:
            lines.append(f"  {t - t0:8.3f} #{cid} {role:7} {what:24} {data!r}")
        return Failure(message, "\n".join(lines))

    # -- field generators ----------------------------------------------------------------
    def blob(self, lo=0, hi=40):
        r = self.rng
        n = r.randint(lo, hi)
        kind = r.random()
        if kind < 0.5:
            return bytes(r.choice(b"abcxyz019-_:. ") for _ in range(n))
        if kind < 0.8:
            return r.randbytes(n)
        return r.choice([b"", b"-", b"\n", b"\r\n", b"\t", b" ", b"%s", b"\xff" * 70,
                         b"9" * 30, b"-5", b"0", b"1", str(2**63).encode()])

    def func(self):
        # Functions are never removed (as in gearmand), and `status` costs O(functions):
        # names come from a bounded pool so a long run tests stalls, not table growth.
        x = self.rng.random()
        if x < 0.85:
            return self.rng.choice(FUNCS)
        if x < 0.995:
            return self.rng.choice(self.name_pool)
        return self.blob(0, 20)

    def unique(self):
        r = self.rng
        return r.choice([b"", b"-", b"u1", b"u2", b"x" * 64, b"y" * 65, self.blob(0, 70)])

    def data(self, peer):
        r = self.rng.random()
        size = self.rng.choice([0, 1, 10, 100]) if r < 0.98 else self.rng.choice(
            [4096, 65536, 300000])
        return self.rng.randbytes(size)

    def handle(self, peer):
        r = self.rng.random()
        if peer.assigned and r < 0.5:
            return self.rng.choice(peer.assigned)
        if self.known_handles and r < 0.8:
            return self.rng.choice(self.known_handles)
        return self.rng.choice([b"H:x:1", b"", b"H:" + b"z" * 70, self.blob(0, 80)])

    def marker(self, peer, kind):
        if not peer.framed:
            return b"unmarked:"
        peer.seq += 1
        return b"\x01%s:%d:%d:" % (kind, peer.cid, peer.seq)

    def number(self):
        return self.rng.choice([b"0", b"1", b"3", b"10", b"-5", b"abc", b"", b"1500",
                                b"99999999999999999999999", b"4294967296", b" 7"])

    # -- well-framed requests -------------------------------------------------------------
    def request(self, peer):
        """Pick and queue one well-framed request; update what the peer may receive."""
        r = self.rng
        worker_bias = 0.6 if peer.role == "worker" else 0.15
        x = r.random()
        if x < worker_bias:
            choice = r.random()
            if choice < 0.25:
                f = self.func()
                # JOB_ASSIGN names the function as a NUL-terminated field.
                peer.funcs.add(f.split(b"\0")[0])
                t = T["CAN_DO"] if r.random() < 0.8 else T["CAN_DO_TIMEOUT"]
                fields = [f] if t == T["CAN_DO"] else [f, self.number()]
            elif choice < 0.3:
                t, fields = r.choice([(T["CANT_DO"], [self.func()]),
                                      (T["RESET_ABILITIES"], [])])
            elif choice < 0.55:
                t, fields = r.choice(GRABS), []
                peer.grabs += 1
            elif choice < 0.65:
                t, fields = T["PRE_SLEEP"], []
                peer.sleeps += 1
            else:
                t = r.choice(WORK)
                h = self.handle(peer)
                nf = model.nfields(t)
                fields = [h] + [self.number() if t == T["WORK_STATUS"] else self.data(peer)
                                for _ in range(nf - 1)]
                if t in (T["WORK_COMPLETE"], T["WORK_FAIL"], T["WORK_EXCEPTION"]) \
                        and h in peer.assigned and r.random() < 0.8:
                    peer.assigned.remove(h)
        else:
            choice = r.random()
            if choice < 0.35:
                t = r.choice(SUBMITS)
                fields = [self.func(), self.unique(), self.data(peer)]
                peer.submits += 1
            elif choice < 0.42:
                t = r.choice(ODD_SUBMITS)
                nf = model.nfields(t)
                args = [self.number() for _ in range(nf - 3)]
                if t == T["SUBMIT_JOB_EPOCH"] and r.random() < 0.7:
                    args = [str(int(time.time()) + r.randint(-5, 3)).encode()]
                fields = [self.func(), self.unique()] + args + [self.data(peer)]
                peer.submits += 1
            elif choice < 0.62:
                t = T["ECHO_REQ"]
                payload = self.marker(peer, b"E") + self.data(peer)
                fields = [payload]
                peer.echoes.append(payload)
            elif choice < 0.72:
                t = T["GET_STATUS"]
                h = self.handle(peer) if r.random() < 0.7 else self.marker(peer, b"G")
                fields = [h]
                peer.asked_status.add(h.split(b"\0")[0])
            elif choice < 0.77:
                t = T["GET_STATUS_UNIQUE"]
                fields = [self.unique()]
                peer.asked_unique.add(fields[0].split(b"\0")[0])
            elif choice < 0.82:
                t = T["OPTION_REQ"]
                fields = [r.choice([b"exceptions", b"EXCEPTIONS", b"bogus", self.blob(0, 70)])]
                peer.asked_options.add(fields[0])
            elif choice < 0.87:
                t, fields = T["SET_CLIENT_ID"], [self.blob(0, 200)]
            elif choice < 0.93:
                t = r.choice(SERVER_ONLY + [T["ALL_YOURS"]])
                fields = [self.blob(0, 20) for _ in range(model.nfields(t))]
            else:
                # Any request type with \0RES magic: gearmand answers INVALID_MAGIC.
                t = r.choice(list(model.SPEC))
                data = model.encode(t, [self.blob(0, 10) for _ in range(model.nfields(t))],
                                    request=False)
                self.send_maybe_split(peer, data, "RES-magic " + model.SPEC[t][0])
                return
        self.send_maybe_split(peer, model.encode(t, fields), model.SPEC[t][0])

    def send_maybe_split(self, peer, data, what):
        if len(data) > 2 and self.rng.random() < 0.1:
            # Half now, half at this peer's next turn: other peers act in between.
            cut = self.rng.randrange(1, len(data))
            peer.queue(data[:cut], what + " (part 1)")
            peer.pending = (data[cut:], what + " (part 2)")
        else:
            peer.queue(data, what)

    # -- text and hostile input --------------------------------------------------------------
    def admin_line(self, peer):
        r = self.rng
        word = r.choice(ADMIN_WORDS)
        extra = []
        if word in (b"cancel job", b"create function", b"drop function", b"maxqueue"):
            target = self.handle(peer) if word == b"cancel job" else self.func()
            extra = [target.replace(b"\n", b"")] + [self.number() for _ in range(
                r.randint(0, 4) if word == b"maxqueue" else 0)]
        if r.random() < 0.1:
            extra += [self.blob(0, 10) for _ in range(r.randint(1, 6))]
        line = b" ".join([word] + extra).replace(b"\n", b" ")
        if "create-empty-lf" in self.avoid and line.rstrip(b" ").lower() == b"create function":
            line = b"create function x"
        if r.random() < 0.05:
            line = r.randbytes(r.randint(1, 300)).replace(b"\n", b" ").lstrip(b"\0") or b"x"
        if line[:1] == b"\0":
            line = b"x" + line
        peer.queue(line + r.choice([b"\r\n", b"\n"]), "admin " + word.decode())

    def vandalise(self, peer):
        r = self.rng
        peer.framed = False
        kind = r.randrange(12 if r.random() < 0.2 else 11)
        t = r.choice(list(model.SPEC))
        valid = model.encode(t, [self.blob(0, 12) for _ in range(model.nfields(t))])
        if kind == 0:
            data, what = r.choice([b"\0XYZ", b"\0REX", b"\0\0\0\0", b"\0RE\0"]) + valid[4:], \
                "bad magic"
        elif kind == 1:
            bad_t = r.choice([0, 43, 44, 255, 2**31, 2**31 + 16, 2**32 - 1,
                              r.randrange(43, 2**32)])
            if "type-2^31" in self.avoid:
                bad_t &= 0x7FFFFFFF
            data, what = struct.pack(">4sII", REQ, bad_t, 0), f"bad type {bad_t}"
        elif kind == 2:
            nul_t = r.choice([t for t in model.SPEC if model.nfields(t) >= 2])
            body = self.blob(0, 20).replace(b"\0", b"")
            data = struct.pack(">4sII", REQ, nul_t, len(body)) + body
            if r.random() < 0.5:
                data += model.encode(T["ECHO_REQ"], [self.marker(peer, b"E")])
            what = "missing NULs"
        elif kind == 3:
            size = r.choice([2**20, 2**24, 2**30, 2**31, 2**32 - 1, r.randrange(2**32)])
            data = struct.pack(">4sII", REQ, r.choice([T["ECHO_REQ"], T["SUBMIT_JOB"], t]),
                               size) + r.randbytes(r.randint(0, 64))
            what = f"declared length {size}"
        elif kind == 4:
            data, what = valid[:r.randrange(0, max(1, min(len(valid), 12)))], "truncated header"
        elif kind == 5:
            data, what = r.randbytes(r.randint(1, 2000)), "random bytes"
        elif kind == 6:
            data, what = b"x" * r.choice([MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 20000]), \
                "long text line"
            if r.random() < 0.5:
                data += b"\n"
        elif kind == 7:
            b = bytearray(valid)
            for _ in range(r.randint(1, 4)):
                b[r.randrange(len(b))] = r.randrange(256)
            data, what = bytes(b), "mutated packet"
        elif kind == 8:
            data, what = b" ".join(self.blob(0, 8) for _ in range(r.randint(5, 12))).replace(
                b"\n", b"") + b"\r\n", "many tokens"
            if data[:1] == b"\0":
                data = b"a" + data
        elif kind == 9:
            data, what = b"\0" + r.randbytes(r.randint(0, 30)), "NUL then junk"
        elif kind == 10:
            data, what = valid + (b"status\r\n" if r.random() < 0.5 else b"version\n") + \
                model.encode(T["ECHO_REQ"], [self.marker(peer, b"E")]), "binary+text mixed"
        else:
            data, what = model.encode(T["SUBMIT_JOB"], [self.func(), b"", r.randbytes(
                r.choice([1 << 16, 1 << 20]))]), "large submit"
        if "type-2^31" in self.avoid:
            # Random and mutated bytes can hold a header with such a type too.
            b = bytearray(data)
            for m in re.finditer(rb"\0RE[QS]", data):
                if m.end() < len(b):
                    b[m.end()] &= 0x7F
            data = bytes(b)
        peer.queue(data, what)

    # -- the loop ----------------------------------------------------------------------------
    def spawn(self, role=None):
        role = role or self.rng.choice(["client", "client", "worker", "worker", "admin",
                                        "vandal"] * 3 + ["sluggard"])
        try:
            p = Peer(self, role)
        except OSError as e:
            time.sleep(0.5)   # a dying server refuses connections a moment before it exits
            if not self.alive():
                raise self.fail("server died") from e
            raise self.fail(f"cannot connect: {e}") from e
        self.stats["connections"] += 1
        self.peers.append(p)
        return p

    def step(self):
        r = self.rng
        live = [p for p in self.peers if not p.gone]
        if len(live) < self.npeers or (live and r.random() < 0.01):
            if len(live) >= self.npeers:
                self.disconnect(r.choice(live))
            self.spawn()
            return
        p = r.choice(live)
        if p.eof:
            p.close()
            return
        if p.pending is not None:
            data, what = p.pending
            p.pending = None
            p.queue(data, what)
            return
        x = r.random()
        if x < 0.02:
            self.disconnect(p)
        elif p.role in ("client", "worker"):
            self.request(p)
        elif p.role == "sluggard":
            self.sluggard(p)
        elif p.role == "admin":
            if x < 0.6:
                self.admin_line(p)
            else:
                self.request(p)
        else:
            if x < 0.5:
                self.vandalise(p)
            elif x < 0.7:
                self.admin_line(p)
            else:
                self.request(p)

    def sluggard(self, p):
        """A peer that asks for a lot and never reads: the server's output limits (pause
        its input, then disconnect it) must protect everyone else."""
        if len(p.out) > (4 << 20):
            return   # the server stopped reading it; do not grow this process instead
        r = self.rng
        if r.random() < 0.7:
            t, fields = T["ECHO_REQ"], [r.randbytes(r.choice([1024, 65536, 262144]))]
        else:
            t, fields = T["SUBMIT_JOB"], [self.func(), b"", r.randbytes(r.randint(0, 4096))]
        p.queue(model.encode(t, fields), "unread " + model.SPEC[t][0])

    def disconnect(self, p):
        abort = self.rng.random() < 0.5
        if self.rng.random() < 0.3 and not p.eof:
            # Mid-packet: the start of a packet, then gone.
            t = self.rng.choice(list(model.SPEC))
            data = model.encode(t, [self.blob(1, 20) for _ in range(model.nfields(t))])
            p.queue(data[:self.rng.randrange(1, len(data))], "partial then close")
        self.log(p, "RST" if abort else "close", b"")
        p.flush()
        p.close(abort)
        self.stats["disconnects"] += 1

    def pump(self, timeout=0.0):
        socks = {p.sock: p for p in self.peers if not p.gone and not p.eof}
        for p in socks.values():
            p.flush()
        socks = {s: p for s, p in socks.items() if p.role != "sluggard"}
        if not socks:
            return
        try:
            ready, _, _ = select.select(list(socks), [], [], timeout)
        except (OSError, ValueError):
            return
        for s in ready:
            socks[s].read()
        self.peers = [p for p in self.peers if not p.gone]

    # -- invariants ------------------------------------------------------------------------------
    def probe(self):
        """A fresh client, worker and admin get full service within probe_timeout."""
        if not self.alive():
            raise self.fail("server process died")
        self.probes += 1
        deadline = time.monotonic() + self.probe_timeout
        fn = b"probe-%d-%d" % (self.seed, self.probes % 16)
        payload = b"payload-%d" % self.probes
        stage = "connect"
        t0 = time.monotonic()
        try:
            with Line(self.address, deadline) as client, Line(self.address, deadline) as worker:
                stage = "SUBMIT_JOB -> JOB_CREATED"
                client.send(model.encode(T["SUBMIT_JOB"], [fn, b"", payload]))
                t, f = client.packet()
                if t != T["JOB_CREATED"]:
                    raise self.fail(f"probe: SUBMIT_JOB answered {model.SPEC[t][0]} {f!r}")
                handle = f[0]
                stage = "CAN_DO + GRAB_JOB -> JOB_ASSIGN"
                worker.send(model.encode(T["CAN_DO"], [fn]) + model.encode(T["GRAB_JOB"], []))
                t, f = worker.packet()
                if t != T["JOB_ASSIGN"] or f != [handle, fn, payload]:
                    raise self.fail(f"probe: GRAB_JOB answered {model.SPEC[t][0]} {f!r}, "
                                    f"expected JOB_ASSIGN {handle!r}")
                stage = "WORK_COMPLETE -> client"
                worker.send(model.encode(T["WORK_COMPLETE"], [handle, b"done"]))
                t, f = client.packet()
                if t != T["WORK_COMPLETE"] or f != [handle, b"done"]:
                    raise self.fail(f"probe: client got {model.SPEC[t][0]} {f!r}")
                stage = "admin status"
                worker.send(b"status\r\n")
                worker.listing()
        except (OSError, TimeoutError) as e:
            alive = self.alive()
            raise self.fail(f"probe failed at {stage} after {time.monotonic() - t0:.1f}s "
                            f"({type(e).__name__}: {e}); server "
                            f"{'alive but not answering' if alive else 'died'}") from e

    def final_check(self):
        for p in self.peers:
            p.close()
        self.peers = []
        deadline = time.monotonic() + max(10.0, self.probe_timeout)
        last = None
        while True:
            if not self.alive():
                raise self.fail("server died at the end")
            try:
                with Line(self.address, time.monotonic() + self.probe_timeout) as admin:
                    admin.send(b"status\n")
                    rows = parse_status(admin.listing())
            except (OSError, TimeoutError) as e:
                raise self.fail(f"final status failed: {e}") from e
            busy = [(name, running, workers) for name, total, running, workers in rows
                    if running or workers]
            if not busy:
                self.check_sockets_closed()
                return rows
            last = busy
            if time.monotonic() > deadline:
                raise self.fail(f"with every peer gone, status still shows running jobs or "
                                f"workers: {last[:10]!r}")
            time.sleep(0.1)

    def check_sockets_closed(self):
        """With every peer gone the server holds no more sockets than at the start."""
        if self.pid is None or self.sockets_at_start is None or "conn-leak" in self.avoid:
            return
        deadline = time.monotonic() + 3
        while True:
            extra = server_sockets(self.pid) - self.sockets_at_start
            if extra <= 0:
                return
            if time.monotonic() > deadline:
                raise self.fail(f"with every peer gone the server still holds {extra} more "
                                f"sockets than at the start (leaked connections)")
            time.sleep(0.1)

    def run(self, seconds, max_actions=10**9):
        if self.pid is not None:
            self.sockets_at_start = server_sockets(self.pid)
        start = time.monotonic()
        end = start + seconds
        next_probe = start
        self.probe()
        while time.monotonic() < end and self.stats["actions"] < max_actions:
            for _ in range(20):
                self.step()
            self.pump(0.0)
            if time.monotonic() >= next_probe:
                self.pump(0.01)
                self.probe()
                next_probe = time.monotonic() + self.probe_every
        self.pump(0.05)
        rows = self.final_check()
        self.stats["probes"] = self.probes
        self.stats["functions_at_end"] = len(rows)
        self.stats["seconds"] = round(time.monotonic() - start, 1)
        return self.stats


class Line:
    """A blocking helper connection with one deadline for everything done on it."""

    def __init__(self, address, deadline):
        self.deadline = deadline
        self.sock = socket.create_connection(address, timeout=max(0.1, self.left()))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def left(self):
        return self.deadline - time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def send(self, data):
        self.sock.settimeout(max(0.01, self.left()))
        self.sock.sendall(data)

    def fill(self):
        if self.left() <= 0:
            raise TimeoutError("no answer in time")
        self.sock.settimeout(max(0.01, self.left()))
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout as e:
            raise TimeoutError("no answer in time") from e
        if not data:
            raise ConnectionError("server closed the connection")
        self.buf += data

    def packet(self):
        while True:
            r = model.parse_one(self.buf)
            if r.status == model.PACKET:
                self.buf = self.buf[r.size:]
                return r.ptype, r.fields
            if r.status != model.NEED_MORE:
                raise ConnectionError(f"unparsable reply {self.buf[:60]!r}")
            self.fill()

    def listing(self):
        while not (self.buf.startswith(b".\n") or b"\n.\n" in self.buf):
            self.fill()
        return self.buf


def parse_status(text):
    """`status` rows as (name, total, running, workers); names may hold any byte, so a
    row is read from its right end and fragments of odd names are skipped."""
    rows = []
    for line in text.split(b"\n"):
        parts = line.rsplit(b"\t", 3)
        if len(parts) == 4 and all(x.isdigit() for x in parts[1:]):
            rows.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return rows


# ---- standalone runs ----------------------------------------------------------------------

def server_sockets(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass   # closed while we looked
    return n


def server_rss_kb(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def diagnose(pid):
    """What a live but unresponsive server is doing: thread states, CPU, native stacks."""
    out = []
    try:
        for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            comm = (task / "comm").read_text().strip()
            out.append(f"  thread {task.name} {comm}: state {fields[0]} "
                       f"utime {fields[11]} stime {fields[12]} wchan "
                       f"{(task / 'wchan').read_text()}")
    except OSError as e:
        out.append(f"  /proc: {e}")
    spy = shutil.which("py-spy")
    if spy:
        import subprocess
        try:
            r = subprocess.run([spy, "dump", "--native", "--pid", str(pid)],
                               capture_output=True, text=True, timeout=60, check=False)
            out.append(r.stdout[-6000:] + r.stderr[-1000:])
        except subprocess.TimeoutExpired:
            out.append("  py-spy timed out")
    return "\n".join(out)


def kills_fresh_server(kind, flags, tmp, data):
    """Does `data`, sent on one connection to a fresh server, make it exit?"""
    from conftest import Server
    srv = Server(kind, flags, tmp)
    try:
        try:
            with socket.create_connection((srv.host, srv.port), timeout=2) as s:
                s.sendall(data)
                time.sleep(0.3)
        except OSError:
            pass
        time.sleep(0.2)
        return not srv.alive()
    finally:
        srv.stop()


def triage(kind, flags, sent, tmp, max_peers=30):
    """Find what alone kills a fresh server: each recent peer's whole stream, most recent
    peer first; then, inside a killing stream, a single send. Returns (data, how) or None."""
    streams = {}
    for cid, data in sent:
        streams.setdefault(cid, []).append(data)
    order = list(dict.fromkeys(cid for cid, _ in reversed(sent)))[:max_peers]
    for cid in order:
        parts = [d for d in streams[cid] if d]
        if not parts or not kills_fresh_server(kind, flags, tmp, b"".join(parts)):
            continue
        for data in reversed(parts[-20:]):
            if kills_fresh_server(kind, flags, tmp, data):
                return data, "this input alone"
        return b"".join(parts), f"peer {cid}'s stream ({len(parts)} sends)"
    return None


def run_one(kind, flags, args, seed, seconds, tmp):
    from conftest import Server
    if kind.startswith("fastgear") and "--monitor" not in flags:
        # The monitoring listener binds just after the Gearman port: its socket would
        # count as one more than "at the start" of the end-of-run socket check.
        flags = list(flags) + ["--monitor", "off"]
    srv = Server(kind, flags, tmp)
    label = f"[{kind} {' '.join(flags)}]"
    known = KNOWN_GEARMAND if kind == "gearmand" else KNOWN_OPEN
    fz = Fuzzer((srv.host, srv.port), seed, alive=srv.alive, peers=args.peers,
                probe_every=args.probe, probe_timeout=args.probe_timeout, label=label,
                avoid=() if args.no_avoid else tuple(known), pid=srv.pid)
    try:
        stats = fz.run(seconds)
        rss = server_rss_kb(srv.pid)
        print(f"{label} seed={seed}: OK {dict(stats)} server peak RSS {rss} kB "
              f"replies {dict(fz.replies)}", flush=True)
        return None
    except Failure as e:
        print(f"{label} seed={seed}: FAILURE {e}", flush=True)
        time.sleep(0.5)
        died = not srv.alive()
        if died:
            print(f"server output: {srv.output()[-1500:]}", flush=True)
        elif args.diagnose:
            print(f"server state:\n{diagnose(srv.pid)}", flush=True)
        return e, died, list(fz.sent_log)
    finally:
        srv.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Protocol state fuzzer against a live server.")
    ap.add_argument("--time", type=float, default=60, help="total seconds (split over modes)")
    ap.add_argument("--seed", type=int, default=None, help="RNG seed (default random)")
    ap.add_argument("--threads", default="0,1,4", help="fastgear -t values to run (comma list)")
    ap.add_argument("--server", choices=("fastgear", "gearmand"), default="fastgear")
    ap.add_argument("--address", help="fuzz an already running server (host:port) instead")
    ap.add_argument("--peers", type=int, default=8, help="concurrent fuzz connections")
    ap.add_argument("--probe", type=float, default=0.5, help="seconds between service probes")
    ap.add_argument("--probe-timeout", type=float, default=5.0)
    ap.add_argument("--flags", default="",
                    help="extra server flags, e.g. '--max-output 65536 --max-packet 65536'")
    ap.add_argument("--no-avoid", action="store_true",
                    help="also send the inputs of the known open bugs (KNOWN_OPEN)")
    ap.add_argument("--diagnose", action="store_true",
                    help="on a hang, print the server's thread states and native stacks")
    ap.add_argument("--keep-going", action="store_true",
                    help="after a failure, triage it, restart the server and go on")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    print(f"state_fuzz: seed={seed}", flush=True)
    if args.address:
        host, port = args.address.rsplit(":", 1)
        stats = Fuzzer((host, int(port)), seed, peers=args.peers, probe_every=args.probe,
                       probe_timeout=args.probe_timeout,
                       avoid=() if args.no_avoid else tuple(KNOWN_OPEN)).run(args.time)
        print(f"OK {dict(stats)}")
        return 0
    sys.path.insert(0, str(HERE.parent))
    modes = [m for m in args.threads.split(",") if m]
    tmp = Path(tempfile.mkdtemp(prefix="fastgear-state-fuzz-"))
    failures = []
    try:
        for i, mode in enumerate(modes):
            flags = ["-t", mode] + args.flags.split()
            budget = args.time / len(modes)
            end = time.monotonic() + budget
            round_seed = seed + i
            while True:
                left = end - time.monotonic()
                if left < 1:
                    break
                result = run_one(args.server, flags, args, round_seed, left, tmp)
                if result is None:
                    break
                failure, died, sent = result
                found = triage(args.server, flags, sent, tmp) if died else None
                failures.append((mode, round_seed, failure.short, found))
                if found:
                    print(f"  triage: {found[1]} kills a fresh server: {found[0][:200]!r}",
                          flush=True)
                elif died:
                    print("  triage: no single connection's recent input kills a fresh "
                          "server (state or a race across connections)", flush=True)
                if not args.keep_going:
                    break
                round_seed += 1000
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"state_fuzz: seed={seed} modes={modes} failures={len(failures)}")
    for mode, s, short, found in failures:
        print(f"  -t {mode} seed={s}: {short}" + (f" | killer ({found[1]}): "
                                                 f"{found[0][:120]!r}" if found else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the servers this run started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
