"""Limits the engine enforces on what is submitted: the memory budget for held jobs
(`--max-queued-bytes`) and the argument sizes (`--max-unique`, `--max-function-name`).

A submission over a limit gets an ERROR packet and the connection stays usable; nothing
already queued is touched, and other clients are unaffected. gearmand has none of these
flags (its unique limit is a fixed 64 bytes, which is fastgear's default too).
"""
import pytest
from gearproto import (
    CAN_DO,
    ERROR,
    JOB_ASSIGN,
    JOB_CREATED,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    Conn,
    status_table,
)

pytestmark = pytest.mark.difference


@pytest.fixture(params=["fastgear", "fastgear-t0"])
def fg_kind(request):
    return request.param


def test_submissions_past_the_memory_budget_get_queue_error_and_others_keep_working(
        fg_kind, start_server):
    srv = start_server(fg_kind, "--max-queued-bytes", "200000")
    with Conn(srv) as c, Conn(srv) as other, Conn(srv) as w:
        accepted = 0
        for _ in range(100):
            c.send(SUBMIT_JOB_BG, b"budget", b"", b"x" * 10000)
            t, args = c.recv()
            if t == ERROR:
                assert args == [b"QUEUE_ERROR", b"Job memory budget exhausted"]
                break
            assert t == JOB_CREATED
            accepted += 1
        assert 10 <= accepted < 20     # 10 kB payloads plus bookkeeping in 200 kB
        assert status_table(other)[b"budget"][0] == accepted
        # Small jobs are refused too while the budget is used up...
        other.send(SUBMIT_JOB_BG, b"budget", b"", b"y" * 10000)
        assert other.recv()[0] == ERROR
        # ...and accepted again once workers have made room.
        w.send(CAN_DO, b"budget")
        for _ in range(5):
            h = w.grab()[1][0]
            w.send(WORK_COMPLETE, h, b"")
        w.echo()
        assert other.submit(b"budget", b"z" * 10000, kind=SUBMIT_JOB_BG)


def test_a_unique_key_longer_than_max_unique_is_refused(fg_kind, start_server):
    srv = start_server(fg_kind, "--max-unique", "16")
    with Conn(srv) as c:
        c.send(SUBMIT_JOB, b"f", b"u" * 17, b"x")
        assert c.expect(ERROR) == [b"ARGUMENT_TOO_LARGE", b"Unique value too large"]
        assert c.submit(b"f", b"x", unique=b"u" * 16)


def test_max_unique_can_be_raised_past_gearmands_64_bytes(fg_kind, start_server):
    srv = start_server(fg_kind, "--max-unique", "200")
    with Conn(srv) as c, Conn(srv) as w:
        key = b"k" * 200
        h = c.submit(b"f", b"x", unique=key, kind=SUBMIT_JOB_BG)
        assert c.submit(b"f", b"x", unique=key, kind=SUBMIT_JOB_BG) == h   # coalesces
        w.send(CAN_DO, b"f")
        assert w.grab() == (JOB_ASSIGN, [h, b"f", b"x"])


def test_a_function_name_longer_than_the_limit_is_refused_for_submit_and_can_do(
        fg_kind, start_server):
    srv = start_server(fg_kind, "--max-function-name", "32")
    with Conn(srv) as c, Conn(srv) as w:
        c.send(SUBMIT_JOB_BG, b"f" * 33, b"", b"x")
        assert c.expect(ERROR) == [b"ARGUMENT_TOO_LARGE", b"Function name too large"]
        w.send(CAN_DO, b"g" * 33)
        assert w.expect(ERROR) == [b"ARGUMENT_TOO_LARGE", b"Function name too large"]
        assert c.submit(b"f" * 32, b"x", kind=SUBMIT_JOB_BG)
        assert b"f" * 32 in status_table(c)
        assert b"g" * 33 not in status_table(c)
