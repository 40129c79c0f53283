"""Unit tests of the compiled codec (fastgear.protocol): the command table, parsing bounded
by the declared length, split reads, text lines mixed with binary packets, encoding."""
import random
import struct

import pytest

from fastgear import protocol as P


def req(t, *fields):
    return P.encode(t, fields, request=True)


def test_command_table_has_every_gearmand_packet_type():
    assert len(P.NAMES) == 42
    assert P.NAMES[1] == "CAN_DO" and P.NAMES[42] == "STATUS_RES_UNIQUE"
    assert P.NUMBERS["SUBMIT_REDUCE_JOB_BACKGROUND"] == 38


def test_encoded_packet_has_magic_type_and_length_header():
    data = P.encode(8, [b"H:x:1"])
    assert data == b"\0RES" + struct.pack(">II", 8, 5) + b"H:x:1"
    assert req(16, b"abc")[:4] == b"\0REQ"


def test_submit_job_splits_function_unique_and_data_with_nuls_in_data():
    pkts, rest = P.parse(req(7, b"func", b"uniq", b"da\0ta"))
    assert pkts == [("packet", 7, [b"func", b"uniq", b"da\0ta"])] and rest == b""


def test_last_argument_of_no_data_packet_keeps_nul_bytes():
    pkts, _ = P.parse(req(2, b"fu\0nc"))
    assert pkts[0][2] == [b"fu\0nc"]


def test_packet_without_arguments_ignores_body_bytes():
    data = b"\0REQ" + struct.pack(">II", 9, 8) + b"junkjunk"
    pkts, rest = P.parse(data)
    assert pkts == [("packet", 9, [])] and rest == b""


def test_missing_nul_is_an_error_bounded_by_declared_length():
    # gearmand scans past the body into the next packet; we stop at the declared length.
    bad = b"\0REQ" + struct.pack(">II", 7, 3) + b"abc"
    pkts, _ = P.parse(bad + req(16, b"next"))
    assert pkts == [("bad_args", 0, [])]


@pytest.mark.parametrize("magic", [b"\0XYZ", b"\0REX", b"\0\0\0\0"])
def test_bad_magic_is_reported(magic):
    pkts, _ = P.parse(magic + struct.pack(">II", 16, 0))
    assert pkts[0][0] == "bad_magic"


@pytest.mark.parametrize("ptype", [0, 43, 2**31, 2**32 - 1])
def test_unknown_packet_type_is_reported(ptype):
    pkts, _ = P.parse(b"\0REQ" + struct.pack(">II", ptype, 0))
    assert pkts == [("bad_type", ptype, [])]


def test_packet_larger_than_limit_is_refused_before_its_body_arrives():
    pkts, _ = P.parse(b"\0REQ" + struct.pack(">II", 16, 1000), max_size=100)
    assert pkts[0][0] == "too_large"


def test_text_line_strips_one_carriage_return():
    pkts, rest = P.parse(b"status\r\nworkers\nver")
    assert pkts == [("text", 0, [b"status"]), ("text", 0, [b"workers"])] and rest == b"ver"


def test_text_and_binary_mixed_on_one_stream_keep_their_order():
    data = req(16, b"a") + b"version\r\n" + req(16, b"b")
    pkts, _ = P.parse(data)
    assert [p[0] for p in pkts] == ["packet", "text", "packet"]


def test_text_line_longer_than_8192_bytes_is_refused():
    pkts, _ = P.parse(b"x" * 9000)
    assert pkts[0][0] == "line_too_long"


def test_any_read_split_yields_the_same_packets():
    rng = random.Random(7)
    stream = b"".join([req(7, b"f", b"u%d" % i, b"d" * rng.randrange(0, 300)) for i in range(30)]
                      + [b"status\n", req(39), req(13, b"H:x:1", b"")])
    whole, _ = P.parse(stream)
    for _ in range(50):
        got, buf, pos = [], b"", 0
        while pos < len(stream):
            step = rng.randrange(1, 64)
            buf += stream[pos:pos + step]
            pos += step
            pkts, buf = P.parse(buf)
            got.extend(pkts)
        assert got == whole and buf == b""


def test_random_bytes_never_crash_the_parser():
    rng = random.Random(11)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        if rng.random() < 0.5:
            data = b"\0REQ" + data
        P.parse(data)


def test_parse_count_counts_every_packet_without_the_gil():
    data = req(16, b"x") * 100
    assert P.parse_count(data, 3) == 300
