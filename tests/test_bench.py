"""Behaviour of the load generator (`python -m fastgear.bench`): small runs against a real
fastgear server complete every job exactly once and report sane JSON, and runs against a
deliberately broken server fail loudly with exit status 1. No timing is asserted: the
figures depend on the machine.
"""
import json
import selectors
import socket
import subprocess
import sys
import threading

import pytest
from fastgear.protocol import NUMBERS, encode, parse

import fastgear.bench.cli as bench


def run_bench(capsys, *argv):
    rc = bench.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    runs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rc, runs, err


@pytest.fixture
def fastgear_t0(start_server):
    return start_server("fastgear-t0")


def assert_sane(run, workload, jobs):
    assert run["status"] == "ok"
    assert run["workload"] == workload
    assert run["jobs"] == jobs
    assert run["elapsed_s"] > 0
    assert run["jobs_per_s"] > 0
    assert 0 <= run["gen_cpu_pct"] <= 100 * run["generator_threads"] + 50


def test_bg_run_completes_each_job_once(capsys, fastgear_t0):
    rc, runs, err = run_bench(capsys, "bg", "--port", fastgear_t0.port, "--jobs", 2000,
                              "--workers", 8, "--server-pid", fastgear_t0.pid, "--json")
    assert rc == 0, err
    (run,) = runs
    assert_sane(run, "bg", 2000)
    c = run["counters"]
    assert (c["issued"], c["created"], c["executed"]) == (2000, 2000, 2000)
    assert c["dup_exec"] == 0
    assert run["server_cpu_us_per_job"] >= 0
    assert run["server_rss_kb"] > 0


def test_fg_run_reports_latency_percentiles(capsys, fastgear_t0):
    rc, runs, err = run_bench(capsys, "fg", "--port", fastgear_t0.port, "--jobs", 2000,
                              "--workers", 4, "--json")
    assert rc == 0, err
    (run,) = runs
    assert_sane(run, "fg", 2000)
    assert run["counters"]["results"] == 2000
    lat = run["latency_us"]
    assert lat["count"] == 2000
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_knobs_spread_jobs_over_functions_priorities_threads(capsys, fastgear_t0):
    rc, runs, err = run_bench(capsys, "fg", "--port", fastgear_t0.port, "--jobs", 3000,
                              "--functions", 7, "--unique", "--priority", "mixed",
                              "--payload", 1000, "--threads", 2, "--clients", 3,
                              "--workers", 5, "--pipeline", 7, "--grab", 3, "--json")
    assert rc == 0, err
    (run,) = runs
    assert_sane(run, "fg", 3000)
    assert run["generator_threads"] == 2
    assert run["config"]["functions"] == 7 and run["config"]["unique"] is True
    assert run["config"]["grab"] == 3


def test_fill_then_drain_measure_the_queue(capsys, fastgear_t0):
    rc, runs, err = run_bench(capsys, "drain", "--port", fastgear_t0.port, "--jobs", 2000,
                              "--workers", 8, "--server-pid", fastgear_t0.pid, "--json")
    assert rc == 0, err
    (run,) = runs
    assert_sane(run, "drain", 2000)
    assert run["fill_jobs_per_s"] > 0
    assert "rss_bytes_per_job" in run
    rc, runs, err = run_bench(capsys, "fill", "--port", fastgear_t0.port, "--jobs", 2000,
                              "--unique", "--json")
    assert rc == 0, err
    assert_sane(runs[0], "fill", 2000)


def test_duration_run_stops_submitting_and_still_verifies(capsys, fastgear_t0):
    rc, runs, err = run_bench(capsys, "bg", "--port", fastgear_t0.port, "--duration", 0.3,
                              "--workers", 4, "--json")
    assert rc == 0, err
    (run,) = runs
    assert run["status"] == "ok" and run["jobs"] > 0
    assert run["counters"]["executed"] == run["jobs"]


def test_command_line_entry_points(fastgear_t0):
    for cmd in ([sys.executable, "-m", "fastgear.bench"],
                [sys.executable, "-m", "fastgear", "bench"]):
        res = subprocess.run(cmd + ["bg", "--port", str(fastgear_t0.port), "--jobs", "500",
                                    "--workers", "2"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        assert "500 jobs" in res.stdout and "jobs/s" in res.stdout


def test_start_runs_its_own_server_and_reports_its_cpu(capsys):
    rc, runs, err = run_bench(capsys, "fg", "--start", "fastgear", "--server-threads", 1,
                              "--jobs", 1000, "--workers", 2, "--json")
    assert rc == 0, err
    (run,) = runs
    assert_sane(run, "fg", 1000)
    assert run["server"] == "fastgear -t 1"
    assert run["server_cpu_pct"] >= 0 and run["server_rss_kb"] > 0


def test_usage_errors(capsys):
    assert bench.main(["nosuchworkload"]) == 2
    rc, _, err = run_bench(capsys, "bg", "--payload", 4, "--port", 1)
    assert rc == 1 and "payload" in err
    rc, _, err = run_bench(capsys, "bg", "--compare", "--gearmand", "/nonexistent/gearmand")
    assert rc == 1 and "gearmand" in err


def test_unreachable_server_fails(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        rc, _, err = run_bench(capsys, "bg", "--port", port, "--jobs", 10)
    assert rc == 1 and "cannot connect" in err


class FakeServer(threading.Thread):
    """Just enough of a job server for the generator, broken on purpose: `drop` loses
    every 10th background job, `dup` hands every 10th job out twice, `mute` never
    acknowledges a submit."""

    def __init__(self, fault):
        super().__init__(daemon=True)
        self.fault = fault
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ)
        self.queue = []
        self.sleepers = set()
        self.bufs = {}
        self.submitted = 0
        self.running = True

    def send(self, conn, ptype, fields=()):
        conn.sendall(encode(NUMBERS[ptype], fields))

    def handle(self, conn, kind, ptype, fields):
        if kind == "text":
            conn.sendall(b".\n")
        elif ptype == NUMBERS["SUBMIT_JOB_BG"]:
            self.submitted += 1
            handle = b"H:fake:%d" % self.submitted
            if self.fault != "mute":
                self.send(conn, "JOB_CREATED", [handle])
            copies = 1
            if self.submitted % 10 == 0:
                copies = {"drop": 0, "dup": 2}.get(self.fault, 1)
            self.queue += [(handle, *fields)] * copies
            for sleeper in list(self.sleepers):
                self.send(sleeper, "NOOP")
            self.sleepers.clear()
        elif ptype == NUMBERS["GRAB_JOB_UNIQ"]:
            if self.queue:
                self.send(conn, "JOB_ASSIGN_UNIQ", self.queue.pop(0))
            else:
                self.send(conn, "NO_JOB")
        elif ptype == NUMBERS["PRE_SLEEP"]:
            if self.queue:
                self.send(conn, "NOOP")
            else:
                self.sleepers.add(conn)

    def run(self):
        while self.running:
            for key, _ in self.sel.select(0.05):
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    self.bufs[conn] = b""
                    self.sel.register(conn, selectors.EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self.sel.unregister(conn)
                    self.sleepers.discard(conn)
                    conn.close()
                    continue
                packets, self.bufs[conn] = parse(self.bufs[conn] + data)
                for kind, ptype, fields in packets:
                    self.handle(conn, kind, ptype, fields)

    def stop(self):
        self.running = False
        self.join(5)
        self.listener.close()


@pytest.fixture
def fake_server(request):
    srv = FakeServer(request.param)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("fake_server, expected", [
    ("drop", "no progress"),
    ("dup", "executed more than once"),
    ("mute", "no progress"),
], indirect=["fake_server"])
def test_broken_server_fails_loudly(capsys, fake_server, expected):
    rc, runs, err = run_bench(capsys, "bg", "--port", fake_server.port, "--jobs", 200,
                              "--workers", 2, "--stall", 0.5, "--json")
    assert rc == 1
    assert expected in err
    (run,) = runs
    assert run["status"] == "failed" and expected in run["error"]


def test_compare_runs_both_servers(capsys):
    from conftest import need_gearmand
    need_gearmand()
    rc, runs, err = run_bench(capsys, "bg", "--compare", "--rounds", 1, "--jobs", 2000,
                              "--workers", 4, "--json")
    assert rc == 0, err
    assert [r["server"] for r in runs[:2]] == ["fastgear -t 0", "gearmand -t 0"]
    summary = runs[-1]
    assert summary["kind"] == "summary"
    assert summary["metrics"]["jobs_per_s"]["ratio"] > 0
    # The floor server (bench/floor/floor.c) runs the same load as a third server.
    assert runs[2]["server"] == "floor" and runs[2]["status"] == "ok"
    assert summary["metrics"]["jobs_per_s"]["ratio_floor"] > 0
