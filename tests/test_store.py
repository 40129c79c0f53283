"""The SQLite store under a database held locked by another process: submitters get
ERROR QUEUE_ERROR with SQLite's message after the busy timeout, the server keeps
serving, and the next commit succeeds once the lock is gone. (Crash, replay, full disk
and file-format behaviour: tests/test_durable.py.)"""
import sqlite3

from gearproto import ERROR, SUBMIT_JOB_BG, Conn


def test_store_write_failure_gives_queue_error_and_keeps_serving(start_server, tmp_path):
    db = tmp_path / "jobs.db"
    srv = start_server("fastgear", "--store", str(db))
    with Conn(srv) as c:
        c.submit(b"f", b"ok", kind=SUBMIT_JOB_BG)
        # Make the database read-only under the server's feet.
        with sqlite3.connect(db) as other:
            other.execute("PRAGMA query_only=0")
            other.execute("BEGIN EXCLUSIVE")
            c.send(SUBMIT_JOB_BG, b"f", b"", b"refused")
            t, args = c.recv(timeout=15)
            other.execute("ROLLBACK")
        assert t == ERROR and args[0] == b"QUEUE_ERROR"
        c.echo()                                   # the server is still there
        assert c.submit(b"f", b"after", kind=SUBMIT_JOB_BG)
