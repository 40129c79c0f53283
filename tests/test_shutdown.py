"""Stopping the server: SIGTERM and SIGINT at once (exit code 0), SIGUSR1 and the
`shutdown` admin command as gearmand, and the shutdown paths of issue 7: SIGTERM with
--shutdown-timeout, each with a durable store.

With --shutdown-timeout S, SIGTERM stops accepting, lets the running jobs finish (their
clients get the results) for up to S seconds while no job starts (GRAB gets NO_JOB,
submissions ERROR SHUTTING_DOWN), then exits 0 and logs what remains; a second SIGTERM
exits at once. On every path no job acknowledged by JOB_CREATED and not finished is
lost from the store: after exit the file holds exactly those jobs, and a server started
on it again hands them to a worker. gearmand has no --shutdown-timeout, so those tests
are marked `difference`.
"""
import select
import signal
import socket
import sqlite3
import threading
import time

import pytest
from conftest import wait_for
from gearproto import (
    ERROR,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN,
    JOB_ASSIGN_UNIQ,
    JOB_CREATED,
    NO_JOB,
    PRE_SLEEP,
    REQ,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    Closed,
    Conn,
    pack,
)

SHUTTING_DOWN = [b"SHUTTING_DOWN", b"Server is shutting down; submit the job to another server"]






def stored_uniques(db):
    with sqlite3.connect(db) as con:
        return {row[0] if isinstance(row[0], bytes) else row[0].encode()
                for row in con.execute("SELECT unique_key FROM gearman_queue")}


def replayed_uniques(srv, func, expected):
    """Every job a worker can grab from `func` on srv (held, not completed). `expected` is
    the set the test measured (what the store holds): grabbing stops with an error once
    more than that many jobs, plus a margin, came back, so the bound grows with whatever
    the machine managed to submit."""
    limit = len(expected) + 100
    got = set()
    with Conn(srv) as w:
        w.worker(func)
        for _ in range(limit):
            ptype, args = w.grab(GRAB_JOB_UNIQ)
            if ptype == NO_JOB:
                return got
            assert ptype == JOB_ASSIGN_UNIQ
            got.add(args[2])
    raise AssertionError(f"more than {limit} jobs replayed, {len(expected)} expected")


def holding_worker(srv, func, count):
    """A worker that has grabbed `count` jobs of func: (conn, [handles])."""
    w = Conn(srv).worker(func)
    handles = []
    for _ in range(count):
        ptype, args = w.grab()
        assert ptype == JOB_ASSIGN
        handles.append(args[0])
    return w, handles


# -- signals and the shutdown command, as gearmand ---------------------------------------------

def test_sigterm_stops_the_server_with_exit_code_zero(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(10) == 0


def test_sigint_stops_the_server_with_exit_code_zero(server):
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(10) == 0


def test_sigusr1_stops_accepting_and_exits_when_the_running_job_completes(server):
    with Conn(server) as client, Conn(server) as worker, Conn(server) as adm:
        worker.worker(b"slow")
        wait_for(lambda: b"slow\t0\t0\t1" in adm.admin(b"status"), what="worker registered")
        client.submit(b"slow", b"x", kind=SUBMIT_JOB_BG)
        t, args = worker.grab()
        assert t == JOB_ASSIGN
        handle = args[0]
        server.proc.send_signal(signal.SIGUSR1)
        wait_for(server.refuses_connections, what="listener closed")
        assert server.alive()
        # The existing connection still works until the last job is done.
        worker.send(WORK_COMPLETE, handle, b"done")
        client.echo()
    assert server.proc.wait(10) == 0


@pytest.mark.difference
def test_shutdown_command_from_loopback_stops_the_server(server):
    with Conn(server) as c:
        assert c.admin(b"shutdown") == b"OK\r\n"
    assert server.proc.wait(10) == 0


@pytest.mark.difference
def test_graceful_shutdown_command_waits_for_queued_jobs(server):
    with Conn(server) as client:
        handle = client.submit(b"later", b"x", kind=SUBMIT_JOB_BG)
        assert client.admin(b"shutdown graceful") == b"OK\r\n"
        wait_for(server.refuses_connections, what="listener closed")
        assert server.alive()
        assert client.admin(b"cancel job " + handle) == b"OK\r\n"
    assert server.proc.wait(10) == 0


# -- the SIGTERM grace period ----------------------------------------------------------------

@pytest.mark.difference
def test_sigterm_with_shutdown_timeout_lets_the_running_job_finish_for_its_client(
        kind, start_server):
    srv = start_server(kind, "--shutdown-timeout", "30", "--verbose", "INFO")
    with Conn(srv) as client, Conn(srv) as worker:
        worker.worker(b"f")
        worker.echo()
        client.send(SUBMIT_JOB, b"f", b"", b"work")
        handle = client.expect(JOB_CREATED)[0]
        assert worker.grab() == (JOB_ASSIGN, [handle, b"f", b"work"])
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(srv.refuses_connections, what="listener closed")
        assert srv.alive()
        worker.send(WORK_COMPLETE, handle, b"result")
        assert client.expect(WORK_COMPLETE) == [handle, b"result"]
    assert srv.proc.wait(10) == 0
    assert "SIGTERM: no running jobs left" in srv.log_text()


@pytest.mark.difference
def test_sigterm_grace_period_starts_no_job_and_refuses_submissions(kind, start_server):
    srv = start_server(kind, "--shutdown-timeout", "30", "--verbose", "INFO")
    with Conn(srv) as client, Conn(srv) as idle:
        running, (handle,) = holding_worker_after(srv, client)
        client.send(SUBMIT_JOB_BG, b"f", b"", b"queued")
        client.expect(JOB_CREATED)
        idle.worker(b"f")
        idle.echo()
        srv.proc.send_signal(signal.SIGTERM)
        wait_for(srv.refuses_connections, what="listener closed")
        assert idle.grab() == (NO_JOB, [])
        idle.send(PRE_SLEEP)
        idle.expect_nothing(0.3)            # not woken for the queued job
        client.send(SUBMIT_JOB_BG, b"f", b"", b"late")
        assert client.expect(ERROR) == SHUTTING_DOWN
        running.send(WORK_COMPLETE, handle, b"ok")
        running.close()
    assert srv.proc.wait(10) == 0
    assert "exiting with 1 jobs queued and 0 running: they are lost (no --store)" \
        in srv.log_text()


def holding_worker_after(srv, client):
    client.send(SUBMIT_JOB_BG, b"f", b"", b"running")
    client.expect(JOB_CREATED)
    return holding_worker(srv, b"f", 1)


@pytest.mark.difference
def test_sigterm_grace_period_ends_at_the_timeout_and_logs_what_remains(kind, start_server):
    srv = start_server(kind, "--shutdown-timeout", "1", "--verbose", "INFO")
    with Conn(srv) as client:
        worker, _ = holding_worker_after(srv, client)
        try:
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(15) == 0
        finally:
            worker.close()
    text = srv.log_text()
    assert "--shutdown-timeout 1s reached with 1 jobs still running" in text
    assert "exiting with 0 jobs queued and 1 running" in text


@pytest.mark.difference
def test_second_sigterm_during_the_grace_period_exits_at_once(kind, start_server):
    srv = start_server(kind, "--shutdown-timeout", "3600")
    with Conn(srv) as client:
        worker, _ = holding_worker_after(srv, client)
        try:
            srv.proc.send_signal(signal.SIGTERM)
            wait_for(srv.refuses_connections, what="listener closed")
            assert srv.alive()
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(15) == 0
        finally:
            worker.close()


def test_sigterm_without_shutdown_timeout_exits_at_once_with_a_running_job(kind, start_server):
    srv = start_server(kind)
    with Conn(srv) as client:
        worker, _ = holding_worker_after(srv, client)
        try:
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(15) == 0
        finally:
            worker.close()


# -- no acknowledged durable job is lost on any path ------------------------------------------

PATHS = ["sigterm", "sigint", "sigterm-timeout", "sigusr1"]


@pytest.mark.difference
@pytest.mark.parametrize("path", PATHS)
def test_every_acknowledged_unfinished_job_is_in_the_store_after_shutdown(
        kind, start_server, tmp_path, path):
    db = tmp_path / "jobs.db"
    flags = ["--store", str(db)]
    if path == "sigterm-timeout":
        flags += ["--shutdown-timeout", "3600"]
    srv = start_server(kind, *flags)
    with Conn(srv) as client:
        acknowledged = set()
        for i in range(30):
            client.send(SUBMIT_JOB_BG, b"f", b"u%d" % i, b"data")
            client.expect(JOB_CREATED)
            acknowledged.add(b"u%d" % i)
    worker = Conn(srv).worker(b"f")
    finished = set()
    held = {}
    try:
        for _ in range(10):
            ptype, args = worker.grab(GRAB_JOB_UNIQ)
            assert ptype == JOB_ASSIGN_UNIQ
            held[args[2]] = args[0]
        for unique in sorted(held)[:8]:
            worker.send(WORK_COMPLETE, held.pop(unique), b"done")
            finished.add(unique)
        worker.echo()                      # the completions have been handled
        if path in ("sigterm", "sigint"):
            srv.proc.send_signal(signal.SIGTERM if path == "sigterm" else signal.SIGINT)
        elif path == "sigterm-timeout":
            srv.proc.send_signal(signal.SIGTERM)
            wait_for(srv.refuses_connections, what="listener closed")
            unique = min(held)
            worker.send(WORK_COMPLETE, held.pop(unique), b"done in the grace period")
            finished.add(unique)
            worker.echo()
            srv.proc.send_signal(signal.SIGTERM)     # the other held job stays unfinished
        else:
            srv.proc.send_signal(signal.SIGUSR1)     # exits once no job is left
            wait_for(srv.refuses_connections, what="listener closed")
            for unique in list(held):
                worker.send(WORK_COMPLETE, held.pop(unique), b"done")
                finished.add(unique)
            for _ in range(100):
                try:
                    ptype, args = worker.grab(GRAB_JOB_UNIQ)
                except Closed:
                    break
                if ptype == NO_JOB:
                    break
                worker.send(WORK_COMPLETE, args[0], b"done")
                finished.add(args[2])
        assert srv.proc.wait(15) == 0
    finally:
        worker.close()
    expected = acknowledged - finished
    if path == "sigusr1":
        assert expected == set()
    assert stored_uniques(db) == expected
    again = start_server(kind, "--store", str(db))
    assert replayed_uniques(again, b"f", expected) == expected


class Submitter(threading.Thread):
    """Background submissions over several connections, one outstanding on each, so every
    reply maps to its unique. It submits until the server closes every connection, however
    many jobs that takes on this machine, and then sets `cut_off`; `stop` (set by the test
    when it fails) and a deadline far past the test's own waits end it otherwise."""

    def __init__(self, srv, conns=8, limit_s=120):
        super().__init__(daemon=True)
        self.socks = [socket.create_connection((srv.host, srv.port)) for _ in range(conns)]
        self.deadline = time.monotonic() + limit_s
        self.stop = threading.Event()
        self.cut_off = False
        self.acknowledged = set()
        self.submitted = set()

    def run(self):
        outstanding, bufs, n = {}, {}, 0
        try:
            for s in self.socks:
                n = self._submit(s, n, outstanding)
                bufs[s] = b""
            while outstanding and not self.stop.is_set() and time.monotonic() < self.deadline:
                ready, _, _ = select.select(list(outstanding), [], [], 0.2)
                for s in ready:
                    try:
                        data = s.recv(65536)
                    except OSError:         # reset: the server went away
                        data = b""
                    if not data:
                        del outstanding[s]
                        continue
                    bufs[s] += data
                    while len(bufs[s]) >= 12 and s in outstanding:
                        size = int.from_bytes(bufs[s][8:12], "big")
                        if len(bufs[s]) < 12 + size:
                            break
                        ptype = int.from_bytes(bufs[s][4:8], "big")
                        bufs[s] = bufs[s][12 + size:]
                        if ptype == JOB_CREATED:
                            self.acknowledged.add(outstanding[s])
                        del outstanding[s]
                        try:
                            n = self._submit(s, n, outstanding)
                        except OSError:     # the server went away: drop this one
                            pass
            self.cut_off = not outstanding
        finally:
            for s in self.socks:
                s.close()

    def _submit(self, s, n, outstanding):
        unique = b"c%d" % n
        self.submitted.add(unique)
        s.sendall(pack(REQ, SUBMIT_JOB_BG, b"g", unique, b"x"))
        outstanding[s] = unique
        return n + 1


@pytest.mark.difference
@pytest.mark.parametrize("path", ["sigterm", "sigint", "sigterm-timeout"])
def test_a_signal_during_submissions_loses_no_acknowledged_job(
        kind, start_server, tmp_path, path):
    db = tmp_path / "jobs.db"
    flags = ["--store", str(db)]
    if path == "sigterm-timeout":
        flags += ["--shutdown-timeout", "3600"]
    srv = start_server(kind, *flags)
    sub = Submitter(srv)
    sub.start()
    try:
        wait_for(lambda: len(sub.acknowledged) >= 300, timeout=30, what="300 acknowledged")
        srv.proc.send_signal(signal.SIGINT if path == "sigint" else signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        sub.join(15)                # reads each connection the exit closed to its end
    finally:
        sub.stop.set()
        sub.join(15)
    # The signal came during submissions: the server closed connections that still had
    # one outstanding, whatever number of jobs got through before.
    assert sub.cut_off, "the submitter stopped before the server closed its connections"
    stored = stored_uniques(db)
    assert sub.acknowledged <= stored, sorted(sub.acknowledged - stored)[:10]
    assert stored <= sub.submitted
    again = start_server(kind, "--store", str(db))
    assert replayed_uniques(again, b"g", stored) == stored
