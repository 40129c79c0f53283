"""Behaviour of the monitoring listener (`--monitor HOST:PORT`) and of kept results
(`--keep-results`), against a real fastgear process on loopback.

Each test starts fastgear with its monitor on a free loopback port, drives it with raw
Gearman packets (tests/gearproto.py) and reads `/status`, `/metrics` (parsed by
prometheus_client's own text parser), `/jobs/...`, `/healthz` and `/` over HTTP. The
listener serves samples up to 250 ms old, so every check waits for its condition
(`wait_for`) rather than expecting a figure at once. Also covered: the `result` admin
command on the wire, the result TTL and memory bound, `--monitor off`, a busy default
port (logged, not fatal) and a busy chosen port (exit 1).
"""
import base64
import http.client
import json
import re
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
from conftest import free_port, need_module, wait_for
from gearproto import (
    CAN_DO,
    ERROR,
    GET_STATUS,
    GRAB_JOB,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN,
    JOB_ASSIGN_UNIQ,
    JOB_CREATED,
    NOOP,
    PRE_SLEEP,
    SET_CLIENT_ID,
    STATUS_RES,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW_BG,
    WORK_COMPLETE,
    WORK_EXCEPTION,
    WORK_FAIL,
    WORK_STATUS,
    Conn,
)

prometheus_parser = need_module("prometheus_client.parser", pip="prometheus_client")


# --- helpers ---------------------------------------------------------------------------

def start_monitored(start_server, *flags):
    """fastgear with its monitor on a free loopback port; srv.http is (host, port)."""
    port = free_port()
    srv = start_server("fastgear", "--monitor", f"127.0.0.1:{port}", *flags)
    srv.http = ("127.0.0.1", port)
    wait_for(lambda: _answers(srv.http), what="the monitor to listen")
    return srv


def _answers(addr):
    try:
        return request(addr, "/healthz")[0] == 200
    except OSError:
        return False


def request(addr, path, method="GET", body=None, headers=None):
    """(status, headers, body) of one HTTP request on a fresh connection."""
    conn = http.client.HTTPConnection(*addr, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        res = conn.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        conn.close()


def get_json(srv, path):
    status, headers, body = request(srv.http, path)
    assert headers["Content-Type"].startswith("application/json"), headers
    return status, json.loads(body)


def status(srv):
    code, doc = get_json(srv, "/status")
    assert code == 200
    return doc


def function(doc, name):
    """The function's entry in a /status document ({} until it shows up)."""
    return next((f for f in doc["functions"] if f["name"] == name), {})


def wait_value(fetch, predicate, what, timeout=10.0):
    """Poll fetch() until predicate(value) is true; returns that value."""
    latest = []

    def ready():
        latest[:] = [fetch()]
        return predicate(latest[0])
    wait_for(ready, timeout=timeout, what=what)
    return latest[0]


def wait_status(srv, predicate, what, timeout=10.0):
    """The first /status document for which predicate(doc) is true."""
    return wait_value(lambda: status(srv), predicate, what, timeout)


def metrics(srv):
    code, headers, body = request(srv.http, "/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in prometheus_parser.text_string_to_metric_families(
        body.decode("utf-8"))}


def sample(families, family, name=None, **labels):
    """The value of one sample, or None."""
    for s in families[family].samples:
        if (name is None or s.name == name) and all(
                s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def run_job(worker, result_type=WORK_COMPLETE, data=b"", grab=GRAB_JOB):
    """Grab one job on `worker` and end it; returns the JOB_ASSIGN fields."""
    worker.send(grab)
    args = worker.expect(JOB_ASSIGN if grab == GRAB_JOB else JOB_ASSIGN_UNIQ)
    if result_type == WORK_FAIL:
        worker.send(WORK_FAIL, args[0])
    else:
        worker.send(result_type, args[0], data)
    worker.echo()
    return args


# --- the listener ----------------------------------------------------------------------

def test_healthz_answers_ok(start_server):
    srv = start_monitored(start_server)
    code, headers, body = request(srv.http, "/healthz")
    assert (code, body) == (200, b"ok\n")
    assert headers["Content-Type"].startswith("text/plain")


def test_unknown_paths_are_404_with_a_json_error(start_server):
    srv = start_monitored(start_server)
    for path in ("/nope", "/status/x", "/jobs/", "/metrics/"):
        code, doc = get_json(srv, path)
        assert code == 404, path
        assert doc["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_methods_other_than_get_and_head_are_405_and_name_the_allowed_ones(start_server,
                                                                            method):
    srv = start_monitored(start_server)
    code, headers, _ = request(srv.http, "/status", method=method, body=b"x=1")
    assert code == 405
    assert headers["Allow"] == "GET, HEAD"


def test_head_gives_the_headers_of_get_without_a_body(start_server):
    srv = start_monitored(start_server)
    code, headers, body = request(srv.http, "/healthz", method="HEAD")
    assert (code, body) == (200, b"")
    assert headers["Content-Length"] == "3"


def test_one_keep_alive_connection_serves_many_requests(start_server):
    srv = start_monitored(start_server)
    conn = http.client.HTTPConnection(*srv.http, timeout=5)
    try:
        for path in ("/healthz", "/status", "/metrics", "/", "/nope", "/healthz"):
            conn.request("GET", path)
            res = conn.getresponse()
            res.read()
            assert res.status in (200, 404)
    finally:
        conn.close()


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /status HTTP/9.9\r\n\r\n",
    b"GET " + b"/x" * 40000 + b" HTTP/1.1\r\n\r\n",
    b"GET /status HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"\x00\xff\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    b"GET /jobs?unique=%zz%ff HTTP/1.1\r\n\r\n",
    b"GET /status?since=soon HTTP/1.1\r\n\r\n",
])
def test_bad_requests_get_an_error_and_the_listener_keeps_serving(start_server, raw):
    srv = start_monitored(start_server, "--keep-results", "60")
    with socket.create_connection(srv.http, timeout=5) as s:
        s.sendall(raw)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line = reply.split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.[01] (4\d\d|505|200) ", status_line), reply[:200]
    assert request(srv.http, "/healthz")[0] == 200
    assert srv.alive()


def test_a_client_that_connects_and_says_nothing_does_not_block_others(start_server):
    srv = start_monitored(start_server)
    idle = [socket.create_connection(srv.http, timeout=5) for _ in range(8)]
    try:
        assert request(srv.http, "/healthz")[0] == 200
    finally:
        for s in idle:
            s.close()


# --- /status -----------------------------------------------------------------------------

def test_status_describes_the_server(start_server):
    srv = start_monitored(start_server, "-t", "2")
    with Conn(srv) as admin:
        version = admin.admin("version").decode().split()[1]
        doc = wait_status(srv, lambda d: d["server"]["connections"] >= 1,
                          "the admin connection to be counted")
    s = doc["server"]
    assert s["version"] == version
    assert s["pid"] == srv.pid
    assert s["threads"] == 2
    assert s["uptime_s"] > 0
    assert s["rss_bytes"] > 1 << 20
    assert s["jobs"] == 0 and s["bytes_per_job"] is None
    assert doc["functions"] == [] and doc["workers"] == []
    assert doc["results"]["count"] == 0


def test_status_shows_queued_jobs_by_priority_their_age_and_memory(start_server):
    srv = start_monitored(start_server)
    with Conn(srv) as client:
        client.submit(b"resize", b"a", kind=SUBMIT_JOB_HIGH_BG)
        for _ in range(2):
            client.submit(b"resize", b"bb", kind=SUBMIT_JOB_BG)
        for _ in range(3):
            client.submit(b"resize", b"ccc", kind=SUBMIT_JOB_LOW_BG)
        doc = wait_status(srv, lambda d: d["server"]["jobs"] == 6, "6 jobs in memory")
        f = function(doc, "resize")
        assert f["queued"] == {"high": 1, "normal": 2, "low": 3}
        assert (f["running"], f["workers"], f["total"], f["submitted"]) == (0, 0, 6, 6)
        assert f["oldest_queued_s"] is not None and f["oldest_queued_s"] >= 0
        assert doc["server"]["queued"] == 6
        assert doc["server"]["job_bytes"] > 0
        assert doc["server"]["bytes_per_job"] == pytest.approx(
            doc["server"]["job_bytes"] / 6, abs=0.1)
        later = wait_status(srv, lambda d: function(d, "resize")["oldest_queued_s"]
                            > f["oldest_queued_s"], "the oldest job to age")
        assert function(later, "resize")["queued"]["low"] == 3


def test_status_counts_outcomes_and_gives_rates_per_second(start_server):
    srv = start_monitored(start_server)
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"thumb")
        for _ in range(6):
            client.submit(b"thumb", b"x", kind=SUBMIT_JOB_BG)
        for _ in range(4):
            run_job(worker)
        run_job(worker, WORK_FAIL)
        run_job(worker, WORK_EXCEPTION, b"boom")
        doc = wait_status(srv, lambda d: function(d, "thumb").get("exception") == 1
                          and function(d, "thumb")["rates"]["completed"] > 0,
                          "the outcomes and a completion rate")
    f = function(doc, "thumb")
    assert (f["submitted"], f["completed"], f["failed"], f["exception"]) == (6, 4, 1, 1)
    assert f["rates"]["submitted"] > 0
    assert doc["totals"]["completed"] == 4
    assert doc["totals"]["rates"]["completed"] == pytest.approx(f["rates"]["completed"])
    assert f["wait_sum_s"] >= 0 and f["run_sum_s"] >= 0


def test_rates_fall_back_to_zero_once_jobs_stop(start_server):
    srv = start_monitored(start_server)
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"once")
        client.submit(b"once", b"x", kind=SUBMIT_JOB_BG)
        run_job(worker)
        doc = wait_status(srv, lambda d: function(d, "once")
                          and function(d, "once")["rates"]["completed"] > 0,
                          "a completion rate")
        # The completion leaves the rate once it is older than the window the server
        # reports: wait for that window twice over, plus the sampling period.
        wait_status(srv, lambda d: function(d, "once")["rates"]["completed"] == 0,
                    "the rate to return to zero", timeout=2 * doc["rate_window_s"] + 5)


def test_a_job_given_back_by_a_lost_worker_counts_as_retried(start_server):
    srv = start_monitored(start_server)
    with Conn(srv) as client:
        client.submit(b"flaky", b"x", kind=SUBMIT_JOB_BG)
        with Conn(srv) as worker:
            worker.send(CAN_DO, b"flaky")
            worker.send(GRAB_JOB)
            worker.expect(JOB_ASSIGN)
        doc = wait_status(srv, lambda d: function(d, "flaky").get("retried") == 1,
                          "the job to be counted as retried")
    assert function(doc, "flaky")["queued"]["normal"] == 1


def test_status_lists_workers_with_their_current_job_and_since_when(start_server):
    srv = start_monitored(start_server)
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(SET_CLIENT_ID, b"resizer-7")
        worker.send(CAN_DO, b"resize")
        worker.send(CAN_DO, b"crop")
        handle = client.submit(b"resize", b"img", kind=SUBMIT_JOB_BG)
        before = time.time()
        worker.send(GRAB_JOB)
        worker.expect(JOB_ASSIGN)
        doc = wait_status(srv, lambda d: d["workers"] and d["workers"][0]["current"]
                          and function(d, "resize").get("running") == 1,
                          "the worker's current job")
        w = doc["workers"][0]
        assert w["client_id"] == "resizer-7"
        assert w["peer"] == "127.0.0.1"
        assert sorted(w["functions"]) == ["crop", "resize"]
        job = w["current"][0]
        assert (job["handle"], job["function"]) == (handle.decode(), "resize")
        assert before - 1 <= job["started_at"] <= time.time() + 1
        assert job["running_s"] >= 0
        assert job["progress"] == [0, 0]
        assert w["jobs_done"] == 0
        # The worker's WORK_STATUS shows on its current job while the job runs.
        worker.send(WORK_STATUS, handle, b"3", b"10")
        doc = wait_status(srv, lambda d: d["workers"][0]["current"]
                          and d["workers"][0]["current"][0]["progress"] == [3, 10],
                          "the running job's progress 3/10")
        worker.send(WORK_COMPLETE, handle, b"")
        doc = wait_status(srv, lambda d: d["workers"][0]["jobs_done"] == 1,
                          "the worker's count of jobs done")
        assert doc["workers"][0]["current"] == []


def test_status_since_returns_the_sampled_history_after_that_time(start_server):
    srv = start_monitored(start_server)
    doc = wait_value(lambda: get_json(srv, "/status?since=0")[1],
                     lambda d: len(d["history"]) >= 2, "two samples of history")
    times = [h["t"] for h in doc["history"]]
    assert times == sorted(times)
    for key in ("submitted_rate", "completed_rate", "failed_rate", "queued", "running",
                "workers", "connections"):
        assert key in doc["history"][-1]
    newer = get_json(srv, f"/status?since={times[-1]}")[1]["history"]
    assert all(h["t"] > times[-1] for h in newer)
    assert "history" not in status(srv)


# --- /metrics ----------------------------------------------------------------------------

def test_metrics_are_valid_prometheus_text_with_the_status_figures(start_server):
    srv = start_monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"mail")
        client.submit(b"mail", b"x", kind=SUBMIT_JOB_HIGH_BG)
        for _ in range(3):
            client.submit(b"mail", b"x", kind=SUBMIT_JOB_BG)
        run_job(worker)
        run_job(worker, WORK_FAIL)
        client.submit(b"other", b"x", kind=SUBMIT_JOB_LOW_BG)
        fam = wait_value(lambda: metrics(srv), lambda m: sample(
            m, "fastgear_jobs_failed", function="mail") == 1, "the failure in /metrics")
    assert fam["fastgear_jobs_submitted"].type == "counter"
    assert sample(fam, "fastgear_jobs_submitted", function="mail") == 4
    assert sample(fam, "fastgear_jobs_completed", function="mail") == 1
    assert sample(fam, "fastgear_jobs_exceptions", function="mail") == 0
    assert sample(fam, "fastgear_jobs_retried", function="mail") == 0
    assert fam["fastgear_queue_jobs"].type == "gauge"
    assert sample(fam, "fastgear_queue_jobs", function="mail", priority="normal") == 2
    assert sample(fam, "fastgear_queue_jobs", function="mail", priority="high") == 0
    assert sample(fam, "fastgear_queue_jobs", function="other", priority="low") == 1
    assert sample(fam, "fastgear_workers", function="mail") == 1
    assert sample(fam, "fastgear_workers", function="other") == 0
    assert sample(fam, "fastgear_running_jobs", function="mail") == 0
    assert sample(fam, "fastgear_queue_oldest_age_seconds", function="other") >= 0
    assert sample(fam, "fastgear_connections") == 2
    assert sample(fam, "fastgear_uptime_seconds") > 0
    assert sample(fam, "fastgear_resident_memory_bytes") > 1 << 20
    assert sample(fam, "fastgear_jobs") == 3
    assert sample(fam, "fastgear_worker_connections") == 1
    assert sample(fam, "fastgear_kept_results") == 2
    info = fam["fastgear_info"].samples[0]
    assert info.value == 1 and info.labels["version"].startswith("1.1.20+fastgear.")


def test_metrics_count_wake_ups_and_the_connection_limits(start_server):
    srv = start_monitored(start_server, "--max-connections", "3")
    with Conn(srv) as c, Conn(srv) as w:
        w.send(CAN_DO, b"wm")
        w.send(PRE_SLEEP)
        w.echo()
        c.submit(b"wm", b"x", kind=SUBMIT_JOB_BG)
        assert w.recv() == (NOOP, [])
        with Conn(srv) as third, Conn(srv) as refused:
            third.echo()
            assert refused.expect(ERROR)[0] == b"SERVER_BUSY"
        fams = wait_value(lambda: metrics(srv),
                          lambda m: sample(m, "fastgear_connections_refused") == 1,
                          "the refusal to be counted")
        assert sample(fams, "fastgear_worker_wakeups") == 1
        assert sample(fams, "fastgear_worker_rewakes") == 0
        assert sample(fams, "fastgear_connections_paused") == 0


def test_metrics_histograms_of_queue_wait_and_run_time_are_cumulative(start_server):
    srv = start_monitored(start_server)
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"h")
        for _ in range(5):
            client.submit(b"h", b"x", kind=SUBMIT_JOB_BG)
        for _ in range(3):
            run_job(worker)
        run_job(worker, WORK_EXCEPTION, b"e")
        fam = wait_value(lambda: metrics(srv), lambda m: sample(
            m, "fastgear_job_run_seconds", "fastgear_job_run_seconds_count",
            function="h") == 4, "4 runs in the histogram")
    for name, count in (("fastgear_job_queue_wait_seconds", 4),
                        ("fastgear_job_run_seconds", 4)):
        assert fam[name].type == "histogram"
        buckets = [(float(s.labels["le"]), s.value) for s in fam[name].samples
                   if s.name == name + "_bucket" and s.labels["function"] == "h"]
        assert buckets[-1] == (float("inf"), count)
        assert [b for b, _ in buckets] == sorted(b for b, _ in buckets)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
        assert sample(fam, name, name + "_count", function="h") == count
        assert sample(fam, name, name + "_sum", function="h") >= 0


def test_metrics_escape_label_values_so_any_function_name_round_trips(start_server):
    srv = start_monitored(start_server)
    weird = 'say "hi"\\now\nnext line \u00e9'
    with Conn(srv) as client:
        client.submit(weird.encode(), b"x", kind=SUBMIT_JOB_BG)
        fam = wait_value(lambda: metrics(srv), lambda m: sample(
            m, "fastgear_jobs_submitted", function=weird) == 1,
            "the oddly named function in /metrics")
    assert sample(fam, "fastgear_queue_jobs", function=weird, priority="normal") == 1


# --- kept results --------------------------------------------------------------------------

def test_a_completed_background_job_result_is_kept_by_handle(start_server):
    srv = start_monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(SET_CLIENT_ID, b"w-1")
        worker.send(CAN_DO, b"reverse")
        handle = client.submit(b"reverse", b"hello", b"job-1", kind=SUBMIT_JOB_BG)
        run_job(worker, WORK_COMPLETE, "olleh ✓".encode(), grab=GRAB_JOB_UNIQ)
        code, doc = get_json(srv, "/jobs/" + quote(handle.decode(), safe=""))
    assert code == 200
    assert doc["handle"] == handle.decode()
    assert (doc["function"], doc["unique"], doc["outcome"]) == ("reverse", "job-1",
                                                                 "complete")
    assert doc["background"] is True
    assert doc["data"] == "olleh ✓"
    assert base64.b64decode(doc["data_base64"]) == "olleh ✓".encode()
    assert doc["data_size"] == len("olleh ✓".encode())
    assert doc["submitted_at"] <= doc["started_at"] <= doc["finished_at"] <= time.time()
    assert doc["worker"] == "w-1"


def test_binary_result_data_is_given_as_base64_only(start_server):
    srv = start_monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"bin")
        handle = client.submit(b"bin", b"x", kind=SUBMIT_JOB_BG)
        run_job(worker, WORK_COMPLETE, b"\xff\x00\xfe")
        code, doc = get_json(srv, "/jobs/" + quote(handle.decode(), safe=""))
    assert code == 200
    assert doc["data"] is None
    assert base64.b64decode(doc["data_base64"]) == b"\xff\x00\xfe"


def test_foreground_failures_and_exceptions_are_kept_too(start_server):
    srv = start_monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"fg")
        client.send(SUBMIT_JOB, b"fg", b"", b"x")
        failed = client.expect(JOB_CREATED)[0]
        run_job(worker, WORK_FAIL)
        client.expect(WORK_FAIL)
        exc = client.submit(b"fg", b"x", kind=SUBMIT_JOB_BG)
        run_job(worker, WORK_EXCEPTION, b"stack trace")
    code, doc = get_json(srv, "/jobs/" + quote(failed.decode(), safe=""))
    assert code == 200
    assert (doc["outcome"], doc["background"], doc["data"]) == ("fail", False, "")
    code, doc = get_json(srv, "/jobs/" + quote(exc.decode(), safe=""))
    assert (doc["outcome"], doc["data"]) == ("exception", "stack trace")


def test_handles_with_reserved_characters_are_found_when_url_quoted(start_server):
    srv = start_monitored(start_server, "--keep-results", "60",
                          "--job-handle-prefix", "H:a/b c?d#%")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"q")
        handle = client.submit(b"q", b"x", kind=SUBMIT_JOB_BG)
        run_job(worker)
    assert b"/" in handle and b" " in handle
    code, doc = get_json(srv, "/jobs/" + quote(handle.decode(), safe=""))
    assert code == 200 and doc["handle"] == handle.decode()


def test_results_are_found_by_unique_key_newest_first(start_server):
    srv = start_monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"nightly")
        handles = []
        for data in (b"first", b"second"):
            handles.append(client.submit(b"nightly", b"x", b"report 1/2&x",
                                         kind=SUBMIT_JOB_BG))
            run_job(worker, WORK_COMPLETE, data)
        client.submit(b"nightly", b"x", b"another", kind=SUBMIT_JOB_BG)
        run_job(worker)
    code, doc = get_json(srv, "/jobs?unique=" + quote("report 1/2&x", safe=""))
    assert code == 200
    assert doc["unique"] == "report 1/2&x"
    assert [r["handle"] for r in doc["results"]] == [h.decode() for h in reversed(handles)]
    assert [r["data"] for r in doc["results"]] == ["second", "first"]


def test_unknown_handles_and_keys_are_404_with_a_json_error(start_server):
    srv = start_monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client:
        queued = client.submit(b"nobody", b"x", kind=SUBMIT_JOB_BG)
    for path in ("/jobs/H:nope:1", "/jobs?unique=nothing",
                 "/jobs/" + quote(queued.decode(), safe="")):
        code, doc = get_json(srv, path)
        assert code == 404, path
        assert "no kept result" in doc["error"]
    # Without a key, /jobs browses the kept outcomes (tests/test_outcomes.py): none yet.
    code, doc = get_json(srv, "/jobs")
    assert (code, doc["results"]) == (200, [])


def test_without_keep_results_the_jobs_endpoint_says_how_to_turn_it_on(start_server):
    srv = start_monitored(start_server)
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"f")
        handle = client.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        run_job(worker)
    code, doc = get_json(srv, "/jobs/" + quote(handle.decode(), safe=""))
    assert code == 404
    assert "--keep-results" in doc["error"]


def test_kept_results_expire_after_their_ttl(start_server):
    srv = start_monitored(start_server, "--keep-results", "1")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"short")
        handle = client.submit(b"short", b"x", kind=SUBMIT_JOB_BG)
        run_job(worker, WORK_COMPLETE, b"r")
        path = "/jobs/" + quote(handle.decode(), safe="")
        assert get_json(srv, path)[0] == 200
        wait_for(lambda: get_json(srv, path)[0] == 404, timeout=10,
                 what="the result to expire")
    wait_status(srv, lambda d: d["results"]["count"] == 0, "the count to drop to zero")


def test_the_memory_bound_evicts_the_oldest_results_first(start_server):
    srv = start_monitored(start_server, "--keep-results", "600",
                          "--keep-results-bytes", "8192")
    handles = []
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"many")
        for i in range(100):
            handles.append(client.submit(b"many", b"x", kind=SUBMIT_JOB_BG))
            run_job(worker, WORK_COMPLETE, b"%064d" % i)
    found = [get_json(srv, "/jobs/" + quote(h.decode(), safe=""))[0] == 200
             for h in handles]
    assert found[-1] and not found[0]
    # Kept results are a suffix: nothing newer was dropped before something older.
    first_kept = found.index(True)
    assert all(found[first_kept:])
    doc = wait_status(srv, lambda d: d["results"]["count"] == 100 - first_kept,
                      "results stats to match")
    assert doc["results"]["bytes"] <= 8192
    assert doc["results"]["evicted"] == first_kept


def test_get_status_on_the_wire_still_forgets_finished_jobs(start_server):
    """Kept results are for the monitor and admin command; GET_STATUS keeps gearmand's
    answer (unknown job) so clients behave as before."""
    srv = start_monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"f")
        handle = client.submit(b"f", b"x", kind=SUBMIT_JOB_BG)
        run_job(worker)
        client.send(GET_STATUS, handle)
        assert client.expect(STATUS_RES) == [handle, b"0", b"0", b"0", b"0"]


def read_listing(conn, line):
    """Send an admin line; the reply up to its `.` line (or the one ERR line)."""
    conn.send_raw(line + b"\r\n")
    out = b""
    while True:
        got = conn.readline()
        out += got
        if got == b".\n" or (out == got and got.startswith(b"ERR ")):
            return out


def test_the_result_admin_command_shows_kept_results_on_the_wire(start_server):
    srv = start_monitored(start_server, "--keep-results", "60")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(SET_CLIENT_ID, b"w9")
        worker.send(CAN_DO, b"img")
        handle = client.submit(b"img", b"x", b"u-1", kind=SUBMIT_JOB_BG)
        run_job(worker, WORK_COMPLETE, b"done\tok")
        reply = read_listing(client, b"result " + handle)
        fields = reply.split(b"\n")[0].split(b"\t")
        assert reply.endswith(b"\n.\n")
        assert fields[:5] == [handle, b"img", b"u-1", b"complete", b"1"]
        assert fields[8:10] == [b"w9", b"7"]
        assert base64.b64decode(fields[10]) == b"done\tok"
        assert read_listing(client, b"result unique u-1").split(b"\t")[0] == handle
        assert read_listing(client, b"result H:nope") == b"ERR UNKNOWN_JOB\r\n"


def test_the_result_admin_command_without_keep_results_says_so(start_server):
    srv = start_monitored(start_server)
    with Conn(srv) as conn:
        assert conn.admin(b"result H:x:1").startswith(b"ERR RESULTS_NOT_KEPT ")


# --- the dashboard -----------------------------------------------------------------------

def test_the_dashboard_is_one_self_contained_html_page(start_server):
    srv = start_monitored(start_server)
    code, headers, body = request(srv.http, "/")
    assert code == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "<canvas" in page and "status?since=" in page
    # No external assets: machines running the server may have no internet.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", page, re.IGNORECASE)


# --- start-up --------------------------------------------------------------------------------

def test_the_monitor_on_port_zero_logs_the_address_it_bound(start_server):
    srv = start_server("fastgear", "--monitor", "127.0.0.1:0", "--verbose", "INFO")
    m = wait_for(lambda: re.search(r"monitor listening on http://127\.0\.0\.1:(\d+)/",
                                   srv.output()), what="the monitor's address in the log")
    assert request(("127.0.0.1", int(m.group(1))), "/healthz")[0] == 200


def test_monitor_off_starts_no_listener(start_server):
    srv = start_server("fastgear", "--monitor", "off", "--verbose", "INFO")
    with Conn(srv) as conn:
        # The control thread answers admin lines only after monitor.start returned.
        assert conn.admin(b"version").startswith(b"OK ")
    out = srv.output()
    assert "monitor listening" not in out and "monitor not started" not in out
    assert "monitor off" in out  # the start-up line says so


def test_a_busy_default_monitor_port_is_logged_and_not_fatal(start_server):
    from fastgear import config
    host, port = config.parse_monitor(config.DEFAULT_MONITOR)
    holder = socket.socket()

    def hold():
        try:
            holder.bind((host, port))
            holder.listen(1)
            return True
        except OSError:
            return False
    try:
        # Another server on this machine may hold the port now and give it up just as
        # ours starts: wait a while to hold it ourselves; a holder that keeps it that
        # long (a server someone runs) is just as good.
        try:
            wait_for(hold, timeout=20, interval=0.1, what="the default monitor port")
        except AssertionError:
            pass
        srv = start_server("fastgear", "--verbose", "WARNING")
        with Conn(srv) as conn:
            assert conn.admin(b"version").startswith(b"OK ")
        assert srv.alive()
        wait_for(lambda: "monitor not started" in srv.output(), what="the warning")
    finally:
        holder.close()


# With -d too: the address is bound before the server detaches, so the error reaches the
# terminal and the exit status instead of only the log of a daemon that then exits.
@pytest.mark.parametrize("daemon", [[], ["-d"]], ids=["foreground", "daemon"])
def test_a_busy_monitor_port_the_user_chose_stops_the_server_with_exit_code_1(tmp_path,
                                                                              daemon):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgear", "serve", "-p", str(free_port()),
         "-L", "127.0.0.1", "--log-file", "none", "-P", str(tmp_path / "pid"),
         "--monitor", f"127.0.0.1:{busy}"] + daemon,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        holder.close()
    assert proc.returncode == 1
    assert f"cannot listen for monitoring on 127.0.0.1:{busy}" in err.decode()
    assert not (tmp_path / "pid").exists()
