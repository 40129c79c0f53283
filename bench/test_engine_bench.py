"""Engine micro benchmark: background submit + grab + complete cycles per second without
sockets, compiled (`EngineHarness.run_cycle`, no GIL) versus the same cycle written in
plain Python over the reference codec, so the gain of compiling the job path is visible.

    python -m pytest bench/test_engine_bench.py -q
"""
from collections import deque

import pycodec
import pytest
from fastgear.engine_harness import EngineHarness

CYCLES = 20_000


@pytest.mark.benchmark(group="engine")
def test_engine_cycle_compiled(benchmark):
    harness = EngineHarness()
    done = benchmark(harness.run_cycle, b"bench", CYCLES)
    assert done == CYCLES
    assert harness.counts()["jobs"] == 0  # every job completed and freed
    benchmark.extra_info["per_second"] = CYCLES / benchmark.stats.stats.mean


def python_cycles(n):
    """The reference: parse the request, queue the job, hand it out, parse the result."""
    submit = pycodec.encode(18, [b"bench", b"", b"x" * 16], True)
    grab = pycodec.encode(30, [], True)
    queue = deque()
    jobs = {}
    done = 0
    for i in range(n):
        (_, (func, unique, data)), = pycodec.parse_all(submit)[0]
        handle = b"H:test:%d" % i
        jobs[handle] = (func, unique, data)
        queue.append(handle)
        pycodec.parse_all(grab)
        h = queue.popleft()
        func, unique, data = jobs[h]
        assign = pycodec.encode(31, [h, func, unique, data])
        (_, fields), = pycodec.parse_all(assign)[0]
        complete = pycodec.encode(13, [fields[0], b""], True)
        (_, (h2, _result)), = pycodec.parse_all(complete)[0]
        del jobs[h2]
        done += 1
    return done


@pytest.mark.benchmark(group="engine")
def test_engine_cycle_python_reference(benchmark):
    done = benchmark(python_cycles, CYCLES)
    assert done == CYCLES
    benchmark.extra_info["per_second"] = CYCLES / benchmark.stats.stats.mean
