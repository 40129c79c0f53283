"""The embedded SQLite store (`-q libsqlite3 --libsqlite3-db PATH`, or `--store PATH`).

The table keeps gearmand 1.1.20's columns (unique_key, function_name, priority, data,
when_to_run) so a queue file written by gearmand replays here, but not its primary key
on (unique_key, function_name): that key makes jobs with an empty or repeated unique
key overwrite each other (PROTOCOL.md §6). Rows are keyed by SQLite's rowid instead, and
replayed in rowid (submission) order. A gearmand table found on open is migrated once
into that layout. WAL journal; `--store-sync` sets PRAGMA synchronous. Dead letters and
per-function retry settings live in two tables of their own, TABLE_dead and
TABLE_retry; a dead letter's row is written in the same transaction that deletes its
job's row.
"""
import os
import re
import sqlite3

from fastgear.persist import DEAD_COLUMN_NAMES, DEAD_FIELDS, StoreError, as_bytes, dead_letter

COLUMNS = "unique_key TEXT, function_name TEXT, priority INTEGER, data BLOB, when_to_run INTEGER"
# fastgear's own tables beside it (gearmand ignores them): the dead letters, keyed by
# the engine's dead-letter id, and the per-function retry policy (`retry F N BACKOFF`).
DEAD_COLUMNS = ("id INTEGER PRIMARY KEY, handle BLOB, function_name BLOB, unique_key BLOB, "
                "priority INTEGER, data BLOB, error BLOB, reason INTEGER, attempts INTEGER, "
                "submitted_us INTEGER, failed_us INTEGER")
RETRY_COLUMNS = "function_name BLOB PRIMARY KEY, retries INTEGER, backoff_ms INTEGER"


class SQLiteStore:
    kind = "sqlite"

    def __init__(self, path, table="gearman_queue", sync="normal"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            raise StoreError(f"--libsqlite3-table {table!r}: not a valid table name")
        self.path = path
        self.table = table
        self.sync = sync
        self.db = None

    def open(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open queue file {self.path}: "
                             f"directory {directory} does not exist")
        try:
            # The store thread is the only user after start-up (replay runs before it).
            self.db = sqlite3.connect(self.path, timeout=6, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={self.sync.upper()}")
            self._create_or_migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open queue file {self.path}: {exc}") from exc

    def _create_or_migrate(self):
        t = self.table
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {t}_dead ({DEAD_COLUMNS})")
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {t}_retry ({RETRY_COLUMNS})")
        row = self.db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name=?",
                              (t,)).fetchone()
        if row is None:
            self.db.execute(f"CREATE TABLE {t} ({COLUMNS})")
            return
        sql = row[0].upper()
        cols = [r[1] for r in self.db.execute(f"PRAGMA table_info({t})")]
        if "when_to_run" not in cols:
            self.db.execute(f"ALTER TABLE {t} ADD COLUMN when_to_run INTEGER")
        if "PRIMARY KEY" in sql:
            # A gearmand queue file: keep its rows, drop the key that merges jobs.
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(f"ALTER TABLE {t} RENAME TO {t}_gearmand")
            self.db.execute(f"CREATE TABLE {t} ({COLUMNS})")
            self.db.execute(f"INSERT INTO {t} (unique_key, function_name, priority, data, "
                            f"when_to_run) SELECT unique_key, function_name, priority, data, "
                            f"when_to_run FROM {t}_gearmand")
            self.db.execute(f"DROP TABLE {t}_gearmand")
            self.db.execute("COMMIT")

    def replay(self):
        """Every stored job, oldest first: (row_id, function, unique, priority, data, when)."""
        cur = self.db.execute(f"SELECT rowid, function_name, unique_key, priority, data, "
                              f"when_to_run FROM {self.table} ORDER BY rowid")
        for rid, func, unique, prio, data, when in cur:
            yield (rid, as_bytes(func), as_bytes(unique), int(prio if prio is not None else 1),
                   as_bytes(data), int(when or 0))

    def replay_dead(self):
        """Every stored dead letter, oldest first, as dicts (control.dead_restore)."""
        cur = self.db.execute(f"SELECT {', '.join(DEAD_COLUMN_NAMES)} FROM {self.table}_dead "
                              f"ORDER BY id")
        for row in cur:
            yield dead_letter(row)

    def replay_retry(self):
        """[(function, retries, backoff_s)]: the per-function retry settings."""
        return [(as_bytes(f), int(n), int(ms) / 1000.0) for f, n, ms in self.db.execute(
            f"SELECT function_name, retries, backoff_ms FROM {self.table}_retry")]

    def set_retry(self, function, retries, backoff_s):
        """Keep a function's retry setting (retries < 0: forget it)."""
        if retries < 0:
            self.db.execute(f"DELETE FROM {self.table}_retry WHERE function_name=?",
                            (function,))
        else:
            self.db.execute(f"INSERT OR REPLACE INTO {self.table}_retry VALUES (?, ?, ?)",
                            (function, retries, round(backoff_s * 1000)))

    def write(self, adds, deletes, dead_adds=(), dead_deletes=()):
        """One transaction: insert adds (function, unique, priority, data, when), delete
        row ids, insert dead letters (dicts) and delete dead letters by id; returns the
        new job rows' ids in order."""
        db = self.db
        ids = []
        db.execute("BEGIN")
        try:
            if dead_adds:
                db.executemany(
                    f"INSERT OR REPLACE INTO {self.table}_dead ({', '.join(DEAD_COLUMN_NAMES)}) "
                    f"VALUES ({', '.join('?' * len(DEAD_FIELDS))})",
                    [tuple(d[k] for k in DEAD_FIELDS) for d in dead_adds])
            if dead_deletes:
                db.executemany(f"DELETE FROM {self.table}_dead WHERE id=?",
                               [(i,) for i in dead_deletes])
            if deletes:
                db.executemany(f"DELETE FROM {self.table} WHERE rowid=?",
                               [(d,) for d in deletes])
            if adds:
                # Keys are stored as given (bytes): function names and unique ids are
                # opaque to Gearman and need not be UTF-8.
                db.executemany(
                    f"INSERT INTO {self.table} (unique_key, function_name, priority, data, "
                    f"when_to_run) VALUES (?, ?, ?, ?, ?)",
                    [(unique, func, prio, data, when) for func, unique, prio, data, when in adds])
                # Without AUTOINCREMENT each insert takes max(rowid) + 1, and this
                # connection is the only writer: the new rows are the last len(adds) ids.
                last = db.execute(f"SELECT max(rowid) FROM {self.table}").fetchone()[0]
                ids = list(range(last - len(adds) + 1, last + 1))
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        return ids

    supports_dead = True

    def delete_rows(self, row_ids):
        self.write([], list(row_ids))

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None

