"""Memory given back after a burst (--trim-after-jobs): once the jobs in memory fall to
0 after peaking at the threshold or more, the I/O thread that emptied the queue calls
malloc_trim outside the engine lock, and /status counts it (server.memory_trims).
Nothing here is timed: the RSS figures belong in bench/compare_memory.py."""
import pytest
from conftest import wait_for
from gearproto import CAN_DO, JOB_CREATED, SUBMIT_JOB_BG, WORK_COMPLETE, Conn
from test_monitor import start_monitored, status


def fill_and_drain(srv, jobs):
    with Conn(srv) as c, Conn(srv) as w:
        for i in range(jobs):
            c.send(SUBMIT_JOB_BG, b"burst", b"", b"%016d" % i)
        for _ in range(jobs):
            assert c.recv()[0] == JOB_CREATED
        w.send(CAN_DO, b"burst")
        for _ in range(jobs):
            w.send(WORK_COMPLETE, w.grab()[1][0], b"")
        w.echo()


@pytest.mark.difference
@pytest.mark.parametrize("threads", ["0", "2"])
def test_draining_a_burst_past_the_threshold_gives_memory_back_once(start_server, threads):
    srv = start_monitored(start_server, "--trim-after-jobs", "50", "-t", threads)
    fill_and_drain(srv, 60)
    wait_for(lambda: status(srv)["server"]["memory_trims"] == 1 and
             status(srv)["server"]["jobs"] == 0, what="one trim after the drain")
    # A second burst is a new peak: one more trim.
    fill_and_drain(srv, 60)
    wait_for(lambda: status(srv)["server"]["memory_trims"] == 2, what="a second trim")


@pytest.mark.difference
def test_a_queue_below_the_threshold_or_with_trimming_off_is_never_trimmed(start_server):
    below = start_monitored(start_server, "--trim-after-jobs", "100")
    off = start_monitored(start_server, "--trim-after-jobs", "0")
    for srv in (below, off):
        fill_and_drain(srv, 60)
        wait_for(lambda s=srv: status(s)["server"]["jobs"] == 0, what="queue drained")
        assert status(srv)["server"]["memory_trims"] == 0
