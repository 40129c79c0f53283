"""Codec micro benchmarks: packets parsed and encoded per second by the compiled codec
(`fastgear.protocol`) and by the plain-Python reference (`pycodec`), on the same bytes.

    python -m pytest bench/test_codec_bench.py -q
"""
import pycodec
import pytest
from fastgear.bench._loop import EncodeBatch

from fastgear import protocol

# A realistic mix: what a server reads from clients and workers in a bg run.
PACKETS = [
    (18, [b"reverse", b"", b"x" * 16], True),            # SUBMIT_JOB_BG
    (30, [], True),                                       # GRAB_JOB_UNIQ
    (13, [b"H:host:12345", b"result-8"], True),           # WORK_COMPLETE
    (7, [b"reverse", b"unique-key-1", b"y" * 64], True),  # SUBMIT_JOB
    (4, [], True),                                        # PRE_SLEEP
]
BATCH = 1000  # packets per parse call: a pipelined read is many packets at once
DATA = b"".join(protocol.encode(t, f, request=r) for t, f, r in PACKETS) * (BATCH // 5)


def test_reference_codec_agrees_with_compiled():
    ours, rest = protocol.parse(DATA)
    ref, ref_rest = pycodec.parse_all(DATA)
    assert rest == ref_rest == b""
    assert [(t, f) for _, t, f in ours] == ref
    for t, f, r in PACKETS:
        assert pycodec.encode(t, f, r) == protocol.encode(t, f, request=r)


def record(benchmark, per_call):
    benchmark.extra_info["per_second"] = per_call / benchmark.stats.stats.mean


@pytest.mark.benchmark(group="parse")
def test_parse_compiled(benchmark):
    count = benchmark(protocol.parse_count, DATA, 1)
    assert count == BATCH
    record(benchmark, count)


@pytest.mark.benchmark(group="parse")
def test_parse_python_reference(benchmark):
    packets, _ = benchmark(pycodec.parse_all, DATA)
    assert len(packets) == BATCH
    record(benchmark, BATCH)


def encode_all(encode):
    for t, f, r in PACKETS * (BATCH // 5):
        encode(t, f, r)


@pytest.mark.benchmark(group="encode")
def test_encode_compiled(benchmark):
    # The codec as the server uses it: a C loop, no Python call per packet.
    batch = EncodeBatch(PACKETS * (BATCH // 5))
    count = benchmark(batch.run, 1)
    assert count == BATCH
    assert batch.output() == DATA
    record(benchmark, BATCH)


@pytest.mark.benchmark(group="encode")
def test_encode_compiled_one_python_call_per_packet(benchmark):
    # protocol.encode is a convenience for tests: this one measures Python call and
    # argument conversion overhead more than the codec.
    benchmark(encode_all, protocol.encode)
    record(benchmark, BATCH)


@pytest.mark.benchmark(group="encode")
def test_encode_python_reference(benchmark):
    benchmark(encode_all, pycodec.encode)
    record(benchmark, BATCH)
