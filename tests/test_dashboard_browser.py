"""The dashboard page (`/` of the monitoring listener) in a real headless Chromium.

A fastgear process runs with its monitor on a free loopback port; Chromium (Debian's
`chromium`, installed by ci/install-peers.sh) is started headless with a DevTools port and
driven over the DevTools protocol by the small WebSocket client below (standard library
only, no selenium). The tests check what a person would see: the page loads, lists a
function the test created, and follows changes made afterwards (new functions, queued
jobs, a worker finishing them) without a reload. Every wait is on a condition in the page;
Chromium and the server are stopped at teardown.
"""
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import urllib.request

import pytest
from conftest import free_port, missing, wait_for
from gearproto import CAN_DO, GRAB_JOB, JOB_ASSIGN, SUBMIT_JOB_BG, WORK_COMPLETE, WORK_STATUS, Conn

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser",
                                                       "google-chrome")) if p), None)


class WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: masked text frames out; text,
    continuation, ping and close frames in."""

    def __init__(self, url, timeout=10):
        assert url.startswith("ws://")
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status, head
        self.buf = head.split(b"\r\n\r\n", 1)[1]

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text):
        self._send_frame(0x1, text.encode())

    def recv(self):
        """The next whole text message."""
        parts = []
        while True:
            b0, b1 = self._exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x0, 0x1):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, ws_url):
        self.ws = WebSocket(ws_url)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        for _ in range(10000):  # events may come first; they are skipped
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]
        raise AssertionError(f"no answer to {method}")

    def js(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        self.ws.close()


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium with a DevTools port; yields a function opening a Page."""
    if CHROMIUM is None:
        missing("chromium", debian="chromium")
    profile = tmp_path / "chromium-profile"
    log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115 (closed at teardown)
    # Its own session, so the renderer and helper processes go with it at teardown.
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pages = []

    def devtools_port():
        if proc.poll() is not None:
            raise AssertionError(f"chromium exited with {proc.returncode}: "
                                 f"{(tmp_path / 'chromium.log').read_text()[-2000:]}")
        try:
            return int((profile / "DevToolsActivePort").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def open_page(url):
        port = wait_for(devtools_port, timeout=30, what="chromium's DevTools port")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        target = next(t for t in targets if t["type"] == "page")
        page = Page(target["webSocketDebuggerUrl"])
        pages.append(page)
        page.call("Page.navigate", url=url)
        wait_for(lambda: page.js("location.href + ' ' + document.readyState")
                 == url + " complete", timeout=20, what=f"{url} to load")
        return page

    try:
        yield open_page
    finally:
        for page in pages:
            page.close()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture
def monitored(start_server):
    port = free_port()
    srv = start_server("fastgear", "--monitor", f"127.0.0.1:{port}")
    srv.url = f"http://127.0.0.1:{port}/"
    return srv


ROWS = "[...document.querySelectorAll('#functions tbody tr')]"


def row_cells(page, name):
    """The text of the cells of the function's row, or None while it is not shown."""
    return page.js(f"(() => {{ const r = {ROWS}.find(r => r.dataset.function === "
                   f"{json.dumps(name)}); return r ? [...r.cells].map(c => c.textContent)"
                   f" : null; }})()")


def wait_row(page, name, predicate, what):
    """The function's row cells once predicate(cells) holds."""
    def ready():
        cells = row_cells(page, name)
        return cells if cells and predicate(cells) else None
    return wait_for(ready, timeout=20, what=what)


def test_the_dashboard_loads_and_lists_a_function_the_test_created(monitored, chromium):
    with Conn(monitored) as admin:
        assert admin.admin(b"create function dashboard_probe") == b"OK\r\n"
    page = chromium(monitored.url)
    wait_for(lambda: row_cells(page, "dashboard_probe"), timeout=20,
             what="the created function in the functions table")
    assert page.js("document.title") == "fastgear"
    assert page.js("document.getElementById('state').textContent") == "live"
    assert page.js("document.getElementById('version').textContent").startswith("1.1.20+")
    assert page.js("document.getElementById('functions-empty').style.display") == "none"


def test_the_dashboard_follows_queues_and_workers_without_a_reload(monitored, chromium):
    page = chromium(monitored.url)
    wait_for(lambda: int(page.js("document.body.dataset.polls") or 0) >= 1, timeout=20,
             what="the first poll of /status")
    assert row_cells(page, "arrives_later") is None
    with Conn(monitored) as client, Conn(monitored) as worker:
        handles = [client.submit(b"arrives_later", b"x", kind=SUBMIT_JOB_BG)
                   for _ in range(3)]
        # Columns: function, queued, high, normal, low, scheduled, running, workers, ...
        cells = wait_row(page, "arrives_later", lambda c: c[1] == "3",
                         "3 queued jobs on the page")
        assert cells[3] == "3" and cells[7] == "0"
        assert page.js(f"{ROWS}.find(r => r.dataset.function === 'arrives_later')"
                       ".className") == "bad"  # jobs waiting and no worker: flagged
        worker.send(CAN_DO, b"arrives_later")
        for i, handle in enumerate(handles):
            worker.send(GRAB_JOB)
            assert worker.expect(JOB_ASSIGN)[0] == handle
            if i == 0:
                # A running job's WORK_STATUS shows in the workers table as num/den.
                worker.send(WORK_STATUS, handle, b"3", b"10")
                wait_for(lambda: "3/10" in (page.js(
                    "document.querySelector('#workers tbody tr')?.cells[4].textContent")
                    or ""), timeout=20, what="the running job's progress 3/10")
            worker.send(WORK_COMPLETE, handle, b"done")
        worker.echo()
        wait_row(page, "arrives_later", lambda c: c[1] == "0" and c[7] == "1" and c[12] == "3",
                 "the queue to empty and 3 completions on the page")
        wait_for(lambda: page.js("document.querySelectorAll('#workers tbody tr').length")
                 >= 1, timeout=20, what="the worker in the workers table")
        assert page.js("document.getElementById('t-workers').textContent") == "1"


def test_failed_jobs_are_filtered_opened_and_requeued_from_the_dead_letters(start_server,
                                                                            chromium):
    from gearproto import GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ, WORK_FAIL, status_table
    port = free_port()
    srv = start_server("fastgear", "--monitor", f"127.0.0.1:{port}", "--keep-results", "60")
    page = chromium(f"http://127.0.0.1:{port}/")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.send(CAN_DO, b"flaky")
        client.submit(b"flaky", b"good", kind=SUBMIT_JOB_BG)
        worker.send(GRAB_JOB)
        worker.send(WORK_COMPLETE, worker.expect(JOB_ASSIGN)[0], b"fine")
        failed = client.submit(b"flaky", b"payload \x00\xff", b"u-9",
                               kind=SUBMIT_JOB_BG).decode()
        worker.send(GRAB_JOB)
        worker.send(WORK_FAIL, worker.expect(JOB_ASSIGN)[0])
        worker.echo()
        page.js("document.getElementById('f-outcome').value = 'fail';"
                "document.getElementById('f-outcome').dispatchEvent(new Event('change'))")
        outcomes = "[...document.querySelectorAll('#outcomes tbody tr')]"
        wait_for(lambda: page.js(f"{outcomes}.map(r => r.dataset.handle + ' ' + r.className)"
                                 ) == [failed + " pick bad"], timeout=20,
                 what="only the failed job, highlighted, in the outcomes panel")
        page.js(f"{outcomes}[0].click()")
        field = "(k) => document.querySelector(`#job-detail dd[data-field=\"${k}\"]`)"
        wait_for(lambda: page.js(f"(({field})('unique') || {{}}).textContent") == "u-9",
                 timeout=20, what="the job's detail view")
        assert page.js(f"({field})('outcome').textContent") == "fail"
        assert page.js(f"({field})('payload').textContent").startswith("(binary) 70 61")
        dead_rows = "[...document.querySelectorAll('#dead tbody tr')]"
        wait_for(lambda: page.js(f"{dead_rows}.map(r => r.dataset.handle)") == [failed],
                 timeout=20, what="the dead letter in its panel")
        page.js(f"{dead_rows}[0].querySelector('button.re-queue').click()")
        # The click's request runs in the page: grab once the job is queued again.
        wait_for(lambda: status_table(client).get(b"flaky", (0,))[0] == 1,
                 timeout=20, what="the re-queued job")
        worker.send(GRAB_JOB_UNIQ)
        again = worker.expect(JOB_ASSIGN_UNIQ)
        assert again[2:] == [b"u-9", b"payload \x00\xff"]
        worker.send(WORK_COMPLETE, again[0], b"second time lucky")
        worker.echo()
        wait_for(lambda: page.js(f"{dead_rows}.length") == 0, timeout=20,
                 what="the dead-letter panel to empty")
        page.js("document.getElementById('f-outcome').value = 'complete';"
                "document.getElementById('f-function').value = 'flaky';"
                "document.getElementById('f-outcome').dispatchEvent(new Event('change'))")
        wait_for(lambda: page.js(f"{outcomes}.map(r => r.cells[3].textContent)")
                 == ["u-9", "–"], timeout=20, what="the re-queued job's completion")
