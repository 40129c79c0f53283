"""Coverage-guided fuzzer of the packet codec (fastgear/protocol.pyx), on atheris/libFuzzer.

Each input is checked three ways. (1) Raw: the bytes are parsed item by item, both by
the C `parse_packet` (input fenced by PROT_NONE pages, see native.py) and by the spec
model (model.py); status, type, magic, fields, consumed size and `need` must agree, every
field must lie inside the item, re-parsing only the item's own bytes must give the same
answer (so nothing past the declared length was looked at), every proper prefix of a
complete item must be "need more", and the Python wrappers `parse`/`parse_count` must
agree with the item-by-item walk. Every packet found is re-encoded by the C encoder and
the Python wrapper and must come back byte for byte and parse to itself. (2)
Structured: the same bytes drive a FuzzedDataProvider that builds a stream of valid
packets of every type and text admin lines, which must parse back to exactly that
sequence, whole and when fed in random chunks as the I/O loop does. (3) A small
max_size runs the too-large path.

Coverage: with clang available the C parser is an instrumented copy
(build_instrumented.py, ASan + sancov edges); otherwise only the Python harness and the
model are instrumented, whose branches mirror the parser's decisions, and the run says so.

    python tests/fuzz/codec_fuzz.py --time 3600            # an hour, instrumented if possible
    python tests/fuzz/codec_fuzz.py --time 20 --seed 1     # what CI runs (plus a random seed)
    python tests/fuzz/codec_fuzz.py crash-1234abcd         # replay one input
    python tests/fuzz/codec_fuzz.py --merge WORK/corpus    # add a run's coverage-new finds
"""
import argparse
import ctypes
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))

import native

try:
    import atheris
except ImportError:
    atheris = None

if atheris is not None:
    # The model's branches mirror the parser's decisions: instrumented, they guide
    # libFuzzer even when the C parser itself is not instrumented.
    with atheris.instrument_imports():
        import model
else:
    import model

CORPUS = HERE / "corpus" / "codec"
MAX_LEN = 16384
SMALL_MAX = 100          # max_size for the too-large path
ITEM_CHECKS = 16         # items per input checked against the fence (each copies the rest)
PREFIX_CHECKS = 4        # items per input whose every short prefix is parsed too
CHILD_ENV = "FASTGEAR_FUZZ_PROTOCOL"
NO_ATHERIS_RC = 3


class Mismatch(AssertionError):
    """The compiled codec disagrees with the spec or breaks one of its own invariants."""


def check(cond, what, *details):
    if not cond:
        raise Mismatch(what + "".join(f"\n  {d!r}" for d in details))


class Harness:
    def __init__(self, mod):
        self.mod = mod
        self.codec = native.Codec(mod)
        self.fence = native.Fenced(max(MAX_LEN, model.MAX_TEXT_LINE) + 64)
        self.pkt = native.Packet()
        for t, spec in model.SPEC.items():
            check(self.codec.commands[t] == spec, "command table differs from PROTOCOL.md §2",
                  t, self.codec.commands[t], spec)

    # -- one item at a boundary --------------------------------------------------------
    def c_parse(self, data, max_size):
        """The C parser on fenced `data` -> model.Result, with its pointers checked."""
        addr = self.fence.place(data)
        pkt = self.pkt
        ctypes.memset(ctypes.addressof(pkt), 0xA5, ctypes.sizeof(pkt))
        st = self.codec.parse_packet(addr, len(data), max_size, ctypes.byref(pkt))
        check(st in model.STATUS_NAMES, "unknown parse status", st)
        if st == model.PACKET or st == model.TEXT:
            check(0 < pkt.size <= len(data), "consumed size outside the input",
                  pkt.size, len(data))
            check(pkt.nfields <= native.MAX_FIELDS, "too many fields", pkt.nfields)
            fields, prev_end = [], addr
            for i in range(pkt.nfields):
                f, n = pkt.f[i], pkt.flen[i]
                # A terminated field's NUL must be inside the item too.
                last = i == pkt.nfields - 1
                check(f is not None and prev_end <= f
                      and f + n + (0 if last else 1) <= addr + pkt.size,
                      "field outside its item", i, f, n, addr, pkt.size)
                if not last:
                    check(ctypes.string_at(f + n, 1) == b"\0", "field not NUL-terminated", i)
                fields.append(ctypes.string_at(f, n) if n else b"")
                prev_end = f + n + 1
            return model.Result(st, pkt.type if st == model.PACKET else 0, pkt.res_magic,
                                fields, pkt.size)
        if st == model.NEED_MORE:
            return model.Result(st, need=pkt.need)
        if st == model.BAD_TYPE:
            return model.Result(st, ptype=pkt.type)
        if st == model.TOO_LARGE:
            return model.Result(st, size=pkt.size)
        return model.Result(st)

    def check_item(self, data, max_size, prefixes=True):
        """Compare C and model at the start of `data`; return the model's result."""
        want = model.parse_one(data, max_size)
        got = self.c_parse(data, max_size)
        check(got.key() == want.key(), "C parser differs from the spec model",
              data[:64], got, want)
        if want.status in (model.PACKET, model.TEXT):
            size = want.size
            # Bounded by the declared length: the item alone, fenced, parses the same.
            alone = self.c_parse(data[:size], max_size)
            check(alone.key() == want.key(), "result depends on bytes after the item",
                  data[:64], alone, want)
            for k in sorted({0, 1, 2, 3, 4, 11, 12, size // 2, size - 1}):
                if prefixes and k < size:
                    part = self.c_parse(data[:k], max_size)
                    check(part.status == model.NEED_MORE,
                          "a proper prefix of a complete item is not 'need more'",
                          data[:64], k, part)
        elif want.status == model.NEED_MORE and want.need:
            check(want.need > len(data), "need not beyond what is there", want.need)
        return want

    # -- a whole input -----------------------------------------------------------------
    def check_stream(self, data, max_size, item_checks=ITEM_CHECKS):
        items, consumed = model.parse_stream(data, max_size)
        off = 0
        for i, r in enumerate(items[:item_checks]):
            self.check_item(data[off:], max_size, prefixes=i < PREFIX_CHECKS)
            if r.status > 0:
                off += r.size
        # The item after the last complete one (an error, or an incomplete item).
        self.check_item(data[consumed:], max_size, prefixes=False)
        got, rest = self.mod.parse(data, max_size)
        want = [(model.STATUS_NAMES[r.status], r.ptype, r.fields if r.status > 0 else [])
                for r in items]
        check(got == want, "protocol.parse differs from the item-by-item walk",
              data[:64], got[:4], want[:4])
        check(rest == data[consumed:], "protocol.parse rest is not the unconsumed tail",
              len(rest), len(data) - consumed)
        if max_size == 0xFFFFFFFF:
            n = sum(1 for r in items if r.status > 0)
            check(self.mod.parse_count(data) == n, "parse_count disagrees", n)
        return items

    def check_roundtrip(self, r):
        """A parsed packet re-encoded (C encoder and Python wrapper) parses to itself."""
        want = model.encode(r.ptype, r.fields, request=not r.res_magic)
        c_enc = self.codec.encode(r.res_magic, r.ptype, r.fields)
        py_enc = self.mod.encode(r.ptype, r.fields, request=not r.res_magic)
        check(c_enc == want and py_enc == want, "encoder output is not the canonical bytes",
              r, c_enc[:64] if c_enc else c_enc, want[:64])
        back = self.c_parse(want, 0xFFFFFFFF)
        check(back.key() == (model.PACKET, r.ptype, r.res_magic, tuple(r.fields), len(want)),
              "parse(encode(x)) != x", r, back)

    def one_input(self, data):
        items = self.check_stream(data, 0xFFFFFFFF)
        off = 0
        for r in items:
            if r.status == model.PACKET:
                self.check_roundtrip(r)
                if model.nfields(r.ptype):
                    # A packet with fields is canonical, so it re-encodes to its own bytes.
                    check(model.encode(r.ptype, r.fields, not r.res_magic)
                          == data[off:off + r.size], "packet is not its canonical encoding")
            if r.status > 0:
                off += r.size
        self.check_stream(data, SMALL_MAX, item_checks=4)
        self.check_structured(data)

    # -- structured streams --------------------------------------------------------------
    def check_structured(self, data):
        fdp = ByteReader(data)
        expected, chunks = [], []
        for _ in range(fdp.ConsumeIntInRange(1, 12)):
            if fdp.ConsumeIntInRange(0, 3) == 0:
                content = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)).replace(b"\n", b" ")
                content = (content or b"status").lstrip(b"\0") or b"s"
                raw = content + (b"\r\n" if fdp.ConsumeBool() else b"\n")
                line = raw[:-1]
                if line.endswith(b"\r"):
                    line = line[:-1]
                expected.append(("text", 0, [line]))
                chunks.append(raw)
            else:
                t = fdp.ConsumeIntInRange(1, model.CMD_MAX - 1)
                n = model.nfields(t)
                fields = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)).replace(b"\0", b"")
                          for _ in range(n - 1)]
                if n:
                    fields.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300)))
                request = fdp.ConsumeBool()
                raw = self.mod.encode(t, fields, request=request)
                expected.append(("packet", t, fields))
                chunks.append(raw)
        stream = b"".join(chunks)
        got, rest = self.mod.parse(stream)
        check(got == expected and rest == b"", "a stream of valid items does not parse back",
              expected[:4], got[:4], rest[:32])
        # The I/O loop's view: bytes arrive in arbitrary pieces and parsing resumes at the
        # last boundary; the items and their order must not depend on where reads split.
        pending, seen, pos = b"", [], 0
        while pos < len(stream):
            step = fdp.ConsumeIntInRange(1, 64) if fdp.remaining_bytes() else 4096
            pending += stream[pos:pos + step]
            pos += step
            items, pending = self.mod.parse(pending)
            seen.extend(items)
        check(seen == expected and pending == b"", "split reads change the parsed items",
              expected[:4], seen[:4])


class ByteReader:
    """The structured generator's source of choices: a minimal FuzzedDataProvider that
    also works without atheris. Exhausted input reads as zeros."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def remaining_bytes(self):
        return len(self.data) - self.pos

    def ConsumeIntInRange(self, lo, hi):
        span = hi - lo
        nbytes = (span.bit_length() + 7) // 8
        raw = self.data[self.pos:self.pos + nbytes]
        self.pos += len(raw)
        return lo + int.from_bytes(raw, "little") % (span + 1) if raw else lo

    def ConsumeBool(self):
        return bool(self.ConsumeIntInRange(0, 1))

    def ConsumeBytes(self, n):
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


# ---- running -----------------------------------------------------------------------------

def mutate(rng, data, pool):
    """The fallback fuzzer's mutations (used only without atheris): flip, insert, delete,
    overwrite a header word, splice another seed."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[rng.randrange(len(b) + 1):0] = bytes(rng.randrange(256)
                                                   for _ in range(rng.randint(1, 8)))
        elif op == 2 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 16)]
        elif op == 3 and len(b) >= 12:
            off = rng.choice((4, 8))
            b[off:off + 4] = struct.pack(">I", rng.choice(
                (0, 1, 5, 42, 43, 2**31, 2**32 - 1, rng.randrange(2**32), len(b))))
        elif op == 4:
            b += rng.choice(pool)
        elif op == 5 and b:
            b = b[:rng.randrange(len(b) + 1)]
    return bytes(b[:MAX_LEN])


def run_fallback(harness, args):
    print("=" * 78 + "\nATHERIS IS NOT INSTALLED: no coverage guidance, falling back to a plain\n"
          "seeded mutation loop. `pip install atheris` (it is in the `test` extra).\n"
          + "=" * 78, file=sys.stderr, flush=True)
    rng = random.Random(args.seed)
    pool = [p.read_bytes() for p in sorted(CORPUS.iterdir())] or [b""]
    deadline = time.monotonic() + args.time
    runs = 0
    while time.monotonic() < deadline and (not args.runs or runs < args.runs):
        data = mutate(rng, rng.choice(pool), pool)
        try:
            harness.one_input(data)
        except Exception:
            crash = Path(args.work) / f"crash-fallback-{runs}"
            crash.write_bytes(data)
            print(f"crash input written to {crash}", file=sys.stderr)
            raise
        runs += 1
    print(f"Done {runs} runs (fallback, no coverage) in {args.time} second(s)", file=sys.stderr)
    sys.exit(0 if args.allow_no_atheris else NO_ATHERIS_RC)


def reexec_instrumented(args, argv):
    """Build the instrumented module and restart this script with the ASan runtime
    preloaded (it must be in the process before Python starts)."""
    import build_instrumented as bi
    try:
        so = bi.build()
        runtime = bi.runtime_library()
    except bi.Unavailable as e:
        if args.mode == "instrumented":
            sys.exit(f"instrumented build unavailable: {e}")
        print(f"codec_fuzz: instrumented build unavailable ({e}); the C parser runs "
              "uninstrumented: coverage comes from the Python harness and model only",
              file=sys.stderr, flush=True)
        return
    env = dict(os.environ)
    env[CHILD_ENV] = str(so)
    env["LD_PRELOAD"] = str(runtime)
    # CPython's own allocations are not leak-clean; allocation failures are answers.
    # A small quarantine and short allocation stacks keep RSS flat: every CPython
    # allocation goes through ASan here, and its defaults grow by ~100 MB per 1000 runs.
    env["ASAN_OPTIONS"] = ("detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=16:"
                           "malloc_context_size=4:") + env.get(
        "ASAN_OPTIONS", "")
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve())] + argv, env)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description="Coverage-guided fuzzer of fastgear's codec.")
    ap.add_argument("--time", type=int, default=60, help="seconds to fuzz (default 60)")
    ap.add_argument("--runs", type=int, default=0, help="stop after this many inputs")
    ap.add_argument("--seed", type=int, default=None, help="libFuzzer seed (default random)")
    ap.add_argument("--mode", choices=("auto", "instrumented", "plain"), default="auto",
                    help="instrumented C parser (needs clang) or the installed module")
    ap.add_argument("--work", default=None, help="directory for new inputs and crashes")
    ap.add_argument("--merge", metavar="DIR",
                    help="instead of fuzzing, add DIR's inputs that bring new coverage to "
                         "the checked-in corpus (libFuzzer -merge=1)")
    ap.add_argument("--allow-no-atheris", action="store_true",
                    help="exit 0 after the fallback loop when atheris is missing")
    ap.add_argument("inputs", nargs="*", help="files to replay instead of fuzzing, or "
                    "extra libFuzzer flags (-flag=value)")
    args, extra = ap.parse_known_args(argv)
    args.inputs += extra   # libFuzzer's own -flag=value options pass through
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    so = os.environ.get(CHILD_ENV)
    if so is None and args.mode != "plain" and atheris is not None:
        reexec_instrumented(args, argv)
    mod = native.load_protocol(so)
    harness = Harness(mod)
    work = Path(args.work or tempfile.mkdtemp(prefix="fastgear-codec-fuzz-"))
    args.work = str(work)
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    print(f"codec_fuzz: seed={args.seed} time={args.time}s module={mod.__file__} "
          f"instrumented={'yes (ASan + sancov)' if so else 'no'} work={work}",
          file=sys.stderr, flush=True)
    if not atheris is not None:
        run_fallback(harness, args)

    def test_one_input(data):
        harness.one_input(data)

    flags = [a for a in args.inputs if a.startswith("-")]
    files = [a for a in args.inputs if not a.startswith("-")]
    lf = [sys.argv[0], f"-seed={args.seed}", f"-max_len={MAX_LEN}", "-timeout=10",
          f"-artifact_prefix={work}/", "-print_final_stats=1", *flags]
    if args.merge:
        # libFuzzer merges in a child that it starts by executing argv[0] itself: give it
        # a wrapper that runs this script with this interpreter.
        wrapper = work / "run-codec-fuzz"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" '
                           f'"$@"\n')
        wrapper.chmod(0o755)
        lf[0] = str(wrapper)
        lf += ["-merge=1", str(CORPUS), args.merge]
    elif files:
        lf += files
    else:
        lf += [f"-max_total_time={args.time}", str(work / "corpus"), str(CORPUS)]
        if args.runs:
            lf.append(f"-runs={args.runs}")
    atheris.Setup(lf, test_one_input)
    atheris.Fuzz()


if atheris is not None:
    # instrument_func takes functions, not classes: patch each method in place.
    for _cls in (Harness, ByteReader):
        for _name, _fn in list(vars(_cls).items()):
            if callable(_fn) and hasattr(_fn, "__code__"):
                setattr(_cls, _name, atheris.instrument_func(_fn))

if __name__ == "__main__":
    main()
