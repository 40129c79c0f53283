"""Writes the seed corpus in tests/fuzz/corpus/codec/: one valid request of every packet
type (and a \\0RES one of each reply type), the text admin lines gearadmin and people
send, binary and text mixed on one stream, and the inputs known to hurt gearmand or a
careless parser (wrong magic, type 0 / 43 / 2^31 / 2^32-1, missing NULs, declared
lengths past the data, oversized lengths, over-long lines). Seeds are named after what
they are so a failing one explains itself; the fuzzer's own finds, merged with
`codec_fuzz.py --merge`, sit beside them under hash names. Rerun after changing this
file: python tests/fuzz/make_corpus.py
"""
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import model

OUT = HERE / "corpus" / "codec"

# Plausible field values per packet type, in the order of PROTOCOL.md §2's body column.
FIELDS = {
    "CAN_DO": [b"reverse"], "CANT_DO": [b"reverse"], "SUBMIT_JOB": [b"reverse", b"u1", b"hello"],
    "JOB_CREATED": [b"H:host:1"], "JOB_ASSIGN": [b"H:host:1", b"reverse", b"hello"],
    "WORK_STATUS": [b"H:host:1", b"3", b"10"], "WORK_COMPLETE": [b"H:host:1", b"olleh"],
    "WORK_FAIL": [b"H:host:1"], "GET_STATUS": [b"H:host:1"], "ECHO_REQ": [b"ping\0\n"],
    "ECHO_RES": [b"ping"], "SUBMIT_JOB_BG": [b"reverse", b"", b"x" * 64],
    "ERROR": [b"INVALID_MAGIC", b"Request magic expected"],
    "STATUS_RES": [b"H:host:1", b"1", b"1", b"3", b"10"],
    "SUBMIT_JOB_HIGH": [b"f", b"-", b"same payload"], "SET_CLIENT_ID": [b"client 1"],
    "CAN_DO_TIMEOUT": [b"reverse", b"1500"], "WORK_EXCEPTION": [b"H:host:1", b"boom"],
    "OPTION_REQ": [b"exceptions"], "OPTION_RES": [b"exceptions"],
    "WORK_DATA": [b"H:host:1", b"part"], "WORK_WARNING": [b"H:host:1", b"careful"],
    "JOB_ASSIGN_UNIQ": [b"H:host:1", b"reverse", b"u1", b"hello"],
    "SUBMIT_JOB_HIGH_BG": [b"f", b"u", b""], "SUBMIT_JOB_LOW": [b"f", b"u", b"d"],
    "SUBMIT_JOB_LOW_BG": [b"f", b"u", b"d"],
    "SUBMIT_JOB_SCHED": [b"f", b"u", b"0", b"12", b"1", b"1", b"0", b"d"],
    "SUBMIT_JOB_EPOCH": [b"f", b"u", b"1795840063", b"later"],
    "SUBMIT_REDUCE_JOB": [b"map", b"u", b"reduce", b"", b"d"],
    "SUBMIT_REDUCE_JOB_BACKGROUND": [b"map", b"u", b"reduce", b"", b"d"],
    "JOB_ASSIGN_ALL": [b"H:host:1", b"map", b"u", b"reduce", b"d"],
    "GET_STATUS_UNIQUE": [b"u1"],
    "STATUS_RES_UNIQUE": [b"u1", b"1", b"0", b"0", b"0", b"1"],
}

ADMIN = [b"status", b"workers", b"prioritystatus", b"version", b"getpid", b"verbose",
         b"show jobs", b"show unique jobs", b"cancel job H:host:1", b"create function f",
         b"drop function f", b"maxqueue f 1 2 3", b"maxqueue", b"show", b"shutdown", b"",
         b" status", b"a b c d e f g", b"STATUS"]


def header(magic, ptype, length):
    return struct.pack(">4sII", magic, ptype, length)


def seeds():
    for t, (name, _argc, _has_data, request) in model.SPEC.items():
        fields = FIELDS.get(name, [])
        yield f"req-{t:02d}-{name.lower()}", model.encode(t, fields, request=True)
        if not request:
            yield f"res-{t:02d}-{name.lower()}", model.encode(t, fields, request=False)
    for i, line in enumerate(ADMIN):
        yield f"admin-{i:02d}-crlf", line + b"\r\n"
    yield "admin-lf-only", b"create function xyz\n"
    yield "admin-two-lines-and-partial", b"status\r\nworkers\nver"
    echo = model.encode(16, [b"a"])
    yield "mixed-binary-text-binary", echo + b"version\r\n" + model.encode(16, [b"b"])
    yield "mixed-pipeline", b"".join([
        model.encode(1, [b"f"]), model.encode(7, [b"f", b"", b"d"]), b"status\n",
        model.encode(9, []), model.encode(4, []), b"workers\r\n"])
    yield "bad-magic", b"\0XYZ" + struct.pack(">II", 16, 0)
    yield "bad-magic-early", b"\0RX"
    yield "bad-magic-zero", b"\0\0\0\0" + struct.pack(">II", 16, 0)
    for t in (0, 5, 43, 2**31, 2**32 - 1):
        yield f"bad-type-{t}", header(b"\0REQ", t, 0)
    yield "missing-nul-bounded", header(b"\0REQ", 7, 3) + b"abc" + model.encode(16, [b"next"])
    yield "job-assign-empty-body", header(b"\0RES", 11, 0)
    yield "declared-past-data", header(b"\0REQ", 16, 100) + b"short"
    yield "length-4gib", header(b"\0REQ", 16, 0xFFFFFFFF)
    yield "length-2gib", header(b"\0REQ", 7, 0x80000000) + b"f\0u\0"
    yield "grab-job-junk-body", header(b"\0REQ", 9, 8) + b"junkjunk"
    yield "truncated-header", b"\0REQ\0\0\0"
    yield "text-8191-no-newline", b"x" * 8191
    yield "text-8192-no-newline", b"y" * 8192
    yield "text-8191-then-newline", b"z" * 8191 + b"\n"
    yield "text-with-nul", b"sta\0tus\r\n"
    yield "res-magic-request", model.encode(16, [b"x"], request=False)
    yield "nul-then-text", b"\0" + b"status\n"
    # Found by state_fuzz.py (tests/test_fuzz_regressions.py pins each).
    yield "found-gearmand-create-empty-lf", b"create function \n"
    yield "found-sched-minute-60", model.encode(35, [b"f", b"", b"60", b"", b"", b"", b"", b"d"])
    yield "found-sched-hour-24", model.encode(35, [b"f", b"", b"", b"24", b"", b"", b"", b"d"])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, data in seeds():
        (OUT / name).write_bytes(data)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(list(OUT.iterdir()))} files, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
