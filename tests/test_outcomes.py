"""Browsing the kept outcomes of finished jobs (`--keep-results`): `GET /jobs?function=F&
outcome=O&since=T&limit=N&before=CURSOR` on the monitoring listener, the text admin
`results [FUNCTION|*] [OUTCOME|*] [LIMIT]` and `fastgear admin --results`, against a real
fastgear process driven with raw Gearman packets (tests/gearproto.py).

Outcomes are listed newest first and paged by cursor; the listing is copied under the
engine lock in slices (more results than one slice are browsed here), so the paging is
checked across slice boundaries too. The kept result also carries what the dashboard's
job view shows: priority, attempt, WORK_STATUS progress, WORK_DATA/WARNING counts, the
worker's address and a preview of the payload.
"""
import base64
import json
import subprocess
import sys
import time

from gearproto import (
    CAN_DO,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN_UNIQ,
    SET_CLIENT_ID,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH_BG,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_EXCEPTION,
    WORK_FAIL,
    WORK_STATUS,
    WORK_WARNING,
    Conn,
)
from test_dead_letters import _http, listing


def _monitored(start_server, *flags):
    from test_monitor import start_monitored
    return start_monitored(start_server, *flags)


def _finish(worker, result, data=b""):
    worker.send(GRAB_JOB_UNIQ)
    handle = worker.expect(JOB_ASSIGN_UNIQ)[0]
    if result == WORK_FAIL:
        worker.send(WORK_FAIL, handle)
    else:
        worker.send(result, handle, data)
    worker.echo()
    return handle


def test_outcomes_are_browsed_newest_first_by_function_and_outcome(start_server):
    srv = _monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker, Conn(srv) as admin:
        worker.send(SET_CLIENT_ID, b"w-1")
        worker.send(CAN_DO, b"f")
        worker.send(CAN_DO, b"g")
        done = []
        for func, result in ((b"f", WORK_COMPLETE), (b"g", WORK_FAIL), (b"f", WORK_EXCEPTION),
                             (b"g", WORK_COMPLETE), (b"f", WORK_FAIL)):
            client.submit(func, b"payload-" + func, kind=SUBMIT_JOB_BG)
            done.append((_finish(worker, result, b"out\x00\xff"), func))
        newest_first = [h.decode() for h, _ in reversed(done)]
        code, doc = _http(srv, "GET", "/jobs")
        assert code == 200 and [r["handle"] for r in doc["results"]] == newest_first
        assert doc["next"] is None
        code, doc = _http(srv, "GET", "/jobs?function=f&outcome=fail")
        assert [r["handle"] for r in doc["results"]] == [newest_first[0]]
        code, doc = _http(srv, "GET", "/jobs?outcome=exception")
        (r,) = doc["results"]
        assert (r["function"], r["data"], r["data_base64"], r["worker"], r["peer"]) == \
            ("f", None, base64.b64encode(b"out\x00\xff").decode(), "w-1", "127.0.0.1")
        assert (r["payload"], r["payload_size"], r["attempt"], r["priority"]) == \
            ("payload-f", 9, 1, "normal")
        code, page = _http(srv, "GET", "/jobs?limit=2")
        pages = [page]
        while page["next"]:
            page = _http(srv, "GET", f"/jobs?limit=2&before={page['next']}")[1]
            pages.append(page)
        assert [r["handle"] for p in pages for r in p["results"]] == newest_first
        assert _http(srv, "GET", f"/jobs?since={time.time() + 60}")[1]["results"] == []
        assert _http(srv, "GET", "/jobs?outcome=bogus")[0] == 400
        assert _http(srv, "GET", "/jobs?limit=x")[0] == 400
        # The unique and handle views are still there.
        assert _http(srv, "GET", "/jobs?unique=nope")[0] == 404
        assert _http(srv, "GET", "/jobs/" + newest_first[0])[1]["outcome"] == "fail"

        rows = listing(admin, "results")
        assert [r[0].decode() for r in rows] == newest_first
        rows = listing(admin, "results f exception")
        assert [(r[1], r[3], r[8], r[9], base64.b64decode(r[10])) for r in rows] == \
            [(b"f", b"exception", b"w-1", b"5", b"out\x00\xff")]
        assert [r[0].decode() for r in listing(admin, "results * complete 1")] == \
            [newest_first[1]]
        assert listing(admin, "results nobody") == []
        assert admin.admin("results f bogus").startswith(b"ERR INVALID_ARGUMENTS")
        assert admin.admin("results f * 0").startswith(b"ERR INVALID_ARGUMENTS")

    res = subprocess.run([sys.executable, "-m", "fastgear", "admin", "-h", srv.host, "-p",
                          str(srv.port), "--results", "--function", "g", "--outcome", "fail",
                          "--json"], capture_output=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    (only,) = json.loads(res.stdout)
    assert (only["handle"], only["function"], only["outcome"], only["worker"]) == \
        (newest_first[3], "g", "fail", "w-1")
    res = subprocess.run([sys.executable, "-m", "fastgear", "admin", "-h", srv.host, "-p",
                          str(srv.port), "--outcome", "fail", "--status"],
                         capture_output=True, timeout=30, check=False)
    assert res.returncode == 2


def test_the_kept_result_holds_progress_packets_attempts_and_a_bounded_payload(
        start_server):
    srv = _monitored(start_server, "--keep-results", "60", "--bg-retries", "1",
                     "--bg-retry-backoff", "0")
    big = bytes(range(256)) * 8
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"f")
        handle = client.submit(b"f", big, b"u-1", kind=SUBMIT_JOB_HIGH_BG)
        _finish(worker, WORK_EXCEPTION, b"Traceback:\n  boom")
        worker.send(GRAB_JOB_UNIQ)
        assert worker.expect(JOB_ASSIGN_UNIQ)[0] == handle
        worker.send(WORK_STATUS, handle, b"3", b"10")
        for _ in range(2):
            worker.send(WORK_DATA, handle, b"chunk")
        worker.send(WORK_WARNING, handle, b"careful")
        worker.send(WORK_COMPLETE, handle, b"ok")
        worker.echo()
    _, doc = _http(srv, "GET", "/jobs?function=f")
    second, first = doc["results"]
    assert (first["outcome"], first["attempt"], first["data"]) == \
        ("exception", 1, "Traceback:\n  boom")
    assert (second["outcome"], second["attempt"], second["progress"],
            second["data_packets"], second["warnings"], second["priority"],
            second["unique"]) == ("complete", 2, [3, 10], 2, 1, "high", "u-1")
    assert base64.b64decode(second["payload_base64"]) == big[:256]
    assert second["payload_size"] == len(big)
    assert second["run_time_s"] >= 0 and second["queue_wait_s"] >= 0


def test_browsing_pages_across_lock_slices_without_losing_or_repeating_one(start_server):
    # More results than one slice (1024) and pages that end inside and across slices.
    srv = _monitored(start_server, "--keep-results", "60")
    n = 2600
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"bulk")
        for i in range(n):
            client.send(SUBMIT_JOB_BG, b"bulk", b"", b"%d" % i)
        for _ in range(n):
            client.recv()
        for i in range(n):
            worker.send(GRAB_JOB_UNIQ)
        handles = [worker.expect(JOB_ASSIGN_UNIQ)[0] for _ in range(n)]
        for i, h in enumerate(handles):
            if i % 3:
                worker.send(WORK_COMPLETE, h, b"")
            else:
                worker.send(WORK_FAIL, h)
        worker.echo()
    seen, cursor = [], 0
    while True:
        _, doc = _http(srv, "GET", f"/jobs?function=bulk&outcome=fail&limit=333"
                                      f"&before={cursor}")
        seen += [r["handle"] for r in doc["results"]]
        cursor = doc["next"]
        if not cursor:
            break
    assert seen == [h.decode() for i, h in reversed(list(enumerate(handles))) if i % 3 == 0]
