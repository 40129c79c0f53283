"""gearmand's HTTP protocol (-r http, --http-port) with real HTTP peers: curl and Python's
http.client, against fastgear and gearmand side by side. Workers are ordinary binary
workers. Tests marked `difference` pin where fastgear answers what gearmand 1.1.20
gets wrong (no answer, a truncated handle, a malformed response) or goes beyond it
(keep-alive, pipelining, /status, JSON); the README lists each one.
"""
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time

import pytest
from conftest import free_port, missing
from gearproto import (
    CAN_DO,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN_UNIQ,
    NO_JOB,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_FAIL,
    WORK_STATUS,
    Conn,
)


@pytest.fixture(params=["fastgear", "gearmand"])
def kind(request):
    if request.param == "gearmand":
        from conftest import need_gearmand
        need_gearmand()
    return request.param


@pytest.fixture
def hsrv(kind, start_server):
    """A server with -r http: (server, http_port)."""
    port = free_port()
    srv = start_server(kind, "-r", "http", "--http-port", str(port))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return srv, port


def curl(port, *args):
    if shutil.which("curl") is None:
        missing("curl", debian="curl")
    out = subprocess.run(["curl", "-s", "-i", "--max-time", "10", *args],
                         capture_output=True, timeout=15, check=False)
    return out.stdout


def head_of(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    return lines[0], headers, body


def raw_request(port, data, timeout=5):
    """Send raw bytes, read until the server closes (or the timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (TimeoutError, socket.timeout):
        out += b"<timeout>"
    finally:
        s.close()
    return out


def grab(srv, func):
    """A binary worker holding the next job of func: (worker, handle, unique, data)."""
    w = Conn(srv)
    w.send(CAN_DO, func)
    deadline = time.monotonic() + 10
    while True:
        w.send(GRAB_JOB_UNIQ)
        typ, fields = w.recv()
        if typ == JOB_ASSIGN_UNIQ:
            return w, fields[0], fields[2], fields[3]
        assert typ == NO_JOB and time.monotonic() < deadline
        time.sleep(0.02)


def in_thread(fn, *args):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", fn(*args)), daemon=True)
    t.start()
    return t, box


def post(port, func, body=b"", headers=None, method="POST"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, "/" + func, body=body, headers=headers or {})
    r = c.getresponse()
    out = (r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    c.close()
    return out


def test_background_job_answers_job_created_with_its_handle(hsrv):
    srv, port = hsrv
    status, headers, body = head_of(curl(port, "-H", "X-Gearman-Background: true",
                                         "--data-binary", "payload", f"http://127.0.0.1:{port}/bg"))
    assert status == b"HTTP/1.0 200 OK"
    assert headers[b"X-Gearman-Command"] == b"JOB_CREATED"
    assert headers[b"Content-Length"] == b"0" and body == b""
    w, handle, unique, data = grab(srv, "bg")
    assert handle == headers[b"X-Gearman-Job-Handle"]
    assert (unique, data) == (b"-", b"payload")
    w.close()


def test_foreground_job_answers_the_result_as_its_body(hsrv):
    srv, port = hsrv
    t, box = in_thread(post, port, "rev", b"hello", {"X-Gearman-Unique": "u-1"})
    w, handle, unique, data = grab(srv, "rev")
    assert (unique, data) == (b"u-1", b"hello")
    w.send(WORK_COMPLETE, handle, b"olleh")
    t.join(10)
    status, headers, body = box["r"]
    assert status == 200 and body == b"olleh"
    assert headers["x-gearman-command"] == "WORK_COMPLETE"
    assert headers["x-gearman-job-handle"] == handle.decode()
    assert headers["content-length"] == "5"
    w.close()


def test_get_submits_an_empty_payload(hsrv):
    srv, port = hsrv
    t, box = in_thread(post, port, "getf", None, None, "GET")
    w, handle, _, data = grab(srv, "getf")
    assert data == b""
    w.send(WORK_COMPLETE, handle, b"r")
    t.join(10)
    assert box["r"][0] == 200 and box["r"][2] == b"r"
    w.close()


def test_same_unique_key_coalesces_and_priority_orders_the_queue(hsrv):
    srv, port = hsrv
    bg = {"X-Gearman-Background": "true"}
    h1 = post(port, "pq", b"a", dict(bg, **{"X-Gearman-Unique": "k"}))[1]["x-gearman-job-handle"]
    h2 = post(port, "pq", b"b", dict(bg, **{"X-Gearman-Unique": "k"}))[1]["x-gearman-job-handle"]
    assert h1 == h2
    post(port, "pq", b"low", dict(bg, **{"X-Gearman-Priority": "low"}))
    post(port, "pq", b"high", dict(bg, **{"X-Gearman-Priority": "high"}))
    w, _handle, _, data = grab(srv, "pq")
    assert data == b"high"
    w.close()


def test_a_large_body_goes_through_both_ways(hsrv, tmp_path):
    srv, port = hsrv
    payload = bytes(range(256)) * 4096          # 1 MiB
    f = tmp_path / "body"
    f.write_bytes(payload)
    t, box = in_thread(curl, port, "--data-binary", f"@{f}", f"http://127.0.0.1:{port}/big")
    w, handle, _, data = grab(srv, "big")
    assert data == payload
    w.send(WORK_COMPLETE, handle, payload[::-1])
    t.join(15)
    # curl may print an interim "100 Continue" first.
    raw = box["r"].split(b"HTTP/1.1 100 Continue\r\n\r\n")[-1]
    status, _headers, body = head_of(raw)
    assert status == b"HTTP/1.0 200 OK" and body == payload[::-1]
    w.close()


def test_an_empty_path_is_not_found(hsrv):
    _, port = hsrv
    status, _headers, body = head_of(raw_request(port, b"POST / HTTP/1.0\r\n\r\n"))
    assert status == b"HTTP/1.0 404 NOT_FOUND" and body == b""


def test_a_client_that_leaves_while_its_job_runs_harms_nobody(hsrv):
    srv, port = hsrv
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /gone HTTP/1.0\r\nContent-Length: 1\r\n\r\nx")
    w, handle, _, _ = grab(srv, "gone")
    s.close()
    time.sleep(0.2)
    w.send(WORK_COMPLETE, handle, b"late")
    t, box = in_thread(post, port, "gone", b"y")
    w2, h2, _, _data = grab(srv, "gone")
    w2.send(WORK_COMPLETE, h2, b"ok")
    t.join(10)
    assert box["r"][2] == b"ok"
    w.close()
    w2.close()


# -- deliberate differences ----------------------------------------------------------

@pytest.mark.difference
def test_work_fail_names_the_whole_handle(hsrv):
    srv, port = hsrv
    t, box = in_thread(post, port, "ff", b"x")
    w, handle, _, _ = grab(srv, "ff")
    w.send(WORK_FAIL, handle)
    t.join(10)
    _status, headers, body = box["r"]
    assert headers["x-gearman-command"] == "WORK_FAIL"
    assert headers["x-gearman-job-handle"] == handle.decode() and body == b""
    w.close()


@pytest.mark.difference
def test_work_data_starts_the_body_and_work_status_does_not_end_it(hsrv):
    srv, port = hsrv
    t, box = in_thread(post, port, "dd", b"x")
    w, handle, _, _ = grab(srv, "dd")
    w.send(WORK_DATA, handle, b"part-")
    w.send(WORK_STATUS, handle, b"1", b"2")
    w.send(WORK_COMPLETE, handle, b"end")
    t.join(10)
    _status, headers, body = box["r"]
    assert body == b"part-end" and headers["content-length"] == "8"
    w.close()


@pytest.mark.difference
@pytest.mark.parametrize("request_line, status", [
    (b"DELETE /f HTTP/1.0", b"405 METHOD_NOT_ALLOWED"),
    (b"TRACE /f HTTP/1.0", b"405 METHOD_NOT_ALLOWED"),
    (b"GET /f HTTP/2.0", b"505 VERSION_NOT_SUPPORTED"),
    (b"GET /f", b"400 BAD_REQUEST"),
    (b"garbage", b"400 BAD_REQUEST"),
])
def test_bad_requests_are_answered_then_closed(hsrv, request_line, status):
    _, port = hsrv
    out = raw_request(port, request_line + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 " + status + b"\r\n") and out.endswith(b"\r\n\r\n")


@pytest.mark.difference
def test_a_body_over_max_packet_and_huge_headers_are_refused(kind, start_server):
    port = free_port()
    srv = start_server(kind, "-r", "http", "--http-port", str(port), "--max-packet", "1024")
    time.sleep(0.3)
    out = raw_request(port, b"POST /f HTTP/1.0\r\nContent-Length: 2048\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 413 ")
    out = raw_request(port, b"POST /f HTTP/1.0\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 431 ")
    assert srv.alive()


@pytest.mark.difference
def test_keep_alive_serves_many_requests_on_one_connection(hsrv):
    _, port = hsrv
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    handles = set()
    for i in range(20):
        c.request("POST", "/ka", body=b"%d" % i, headers={"X-Gearman-Background": "true"})
        r = c.getresponse()
        r.read()
        assert r.status == 200 and r.getheader("Connection") == "keep-alive"
        handles.add(r.getheader("X-Gearman-Job-Handle"))
    assert len(handles) == 20
    c.close()


@pytest.mark.difference
def test_pipelined_requests_are_answered_in_order(hsrv):
    srv, port = hsrv
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    req = (b"POST /pipe HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA"
           b"POST /pipe HTTP/1.1\r\nHost: x\r\nX-Gearman-Background: true\r\n"
           b"Content-Length: 1\r\n\r\nB"
           b"GET /pipe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.sendall(req)
    w, handle, _, data = grab(srv, "pipe")
    assert data == b"A"
    w.send(WORK_COMPLETE, handle, b"first")
    out = b""
    while out.count(b"HTTP/1.0 200") < 2:
        out += s.recv(65536)
    w2, h3, _, _ = grab(srv, "pipe")    # B is queued before the GET's job
    w2.send(WORK_COMPLETE, h3, b"")
    w3, h4, _, data = grab(srv, "pipe")
    w3.send(WORK_COMPLETE, h4, b"third")
    while not out.endswith(b"third"):
        chunk = s.recv(65536)
        assert chunk
        out += chunk
    assert out.index(b"first") < out.index(b"JOB_CREATED") < out.index(b"third")
    assert s.recv(10) == b""        # Connection: close
    for c in (w, w2, w3):
        c.close()
    s.close()


@pytest.mark.difference
def test_status_of_a_job_is_json_and_results_are_json_when_asked(hsrv):
    srv, port = hsrv
    _, headers, _ = post(port, "st", b"x", {"X-Gearman-Background": "true"})
    handle = headers["x-gearman-job-handle"]
    _status, headers, body = post(port, "status/" + handle, None, None, "GET")
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"handle": handle, "known": True, "running": False,
                                "numerator": 0, "denominator": 0}
    assert json.loads(post(port, "status/H:nope:1", None, None, "GET")[2])["known"] is False
    t, box = in_thread(post, port, "js", b"x", {"Accept": "application/json"})
    w, h, _, _ = grab(srv, "js")
    w.send(WORK_COMPLETE, h, "ü".encode())
    t.join(10)
    assert json.loads(box["r"][2]) == {"handle": h.decode(), "command": "WORK_COMPLETE",
                                       "data": "ü"}
    w.close()


@pytest.mark.difference
def test_a_slow_or_garbage_client_does_not_delay_others(hsrv):
    _srv, port = hsrv
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /slow HTTP/1.1\r\nX-A: ")
    junk = socket.create_connection(("127.0.0.1", port))
    junk.sendall(b"\x00\x01\x02 not http\r\n\r\n")
    t0 = time.monotonic()
    status, _headers, _ = post(port, "fast", b"x", {"X-Gearman-Background": "true"})
    assert status == 200 and time.monotonic() - t0 < 2
    junk.settimeout(5)
    assert junk.recv(100).startswith(b"HTTP/1.0 400 ")
    slow.close()
    junk.close()
