"""The MySQL / MariaDB store (`-q mysql --mysql-host --mysql-port --mysql-user
--mysql-password --mysql-db --mysql-table`, gearmand's flags and defaults).

Driver: PyMySQL (pure Python, so `pip install 'fastgear[mysql]'` needs no C headers or
compiler; the store thread's cost is one statement per group commit, not per job, so a
C driver would buy little). Connections to "localhost" go through the unix socket, as
libmysqlclient's do for gearmand (MYSQL_UNIX_PORT, else /run/mysqld/mysqld.sock).

Table (`--mysql-table`, default gearman_queue): gearmand 1.1.20's columns (unique_key,
function_name, priority, data, when_to_run) plus `id`, the row id the engine keeps. Read
off a real gearmand, its table is `unique_key varchar(64), function_name varchar(255),
priority int, data longblob, when_to_run int, UNIQUE KEY (unique_key, function_name)`:
that key makes a second job with an empty or equal unique key fail with QUEUE_ERROR
(gearmand #157, #80), the varchars cut function names at a NUL and refuse non-ASCII
bytes, and when_to_run overflows in 2038. A gearmand table is migrated on open, once:
the unique key goes, keys become BLOBs, when_to_run BIGINT, and `id` numbers the rows in
their insertion order (InnoDB's hidden row id), so a queue gearmand left behind replays
in order. Dead letters and per-function retry settings live in TABLE_dead / TABLE_retry.

Writes: one transaction per group commit: batched DELETE ... WHERE id IN (...), then
multi-row INSERTs (each statement under the server's max_allowed_packet), then COMMIT;
JOB_CREATED follows the commit. Row ids are given by this server (MAX(id) + 1 at open),
so they are known without relying on auto-increment lock modes; a GET_LOCK named after
the table keeps a second server off it. A job whose row alone exceeds max_allowed_packet
is refused on its own (StoreRefused: QUEUE_ERROR naming the limit) and the rest of the
batch is written (gearmand #126 retried such a job for ever). A lost connection fails
the batch at once (QUEUE_ERROR; reads and writes are bounded by --mysql-timeout) and the
next commit reconnects; rows of a batch whose COMMIT went unanswered are deleted in the
next successful transaction, so a QUEUE_ERROR always means "not stored".
"""
import logging
import os
import re
import time

from fastgear.persist import (
    DEAD_COLUMN_NAMES,
    DEAD_FIELDS,
    StoreError,
    StoreRefused,
    as_bytes,
    dead_letter,
)

log = logging.getLogger("fastgear.store")

COLUMNS = ("id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, unique_key BLOB, "
           "function_name BLOB, priority INT, data LONGBLOB, when_to_run BIGINT")
DEAD_COLUMNS = ("id BIGINT NOT NULL PRIMARY KEY, handle BLOB, function_name BLOB, "
                "unique_key BLOB, priority INT, data LONGBLOB, error BLOB, reason INT, "
                "attempts INT, submitted_us BIGINT, failed_us BIGINT")
RETRY_COLUMNS = "function_name BLOB, retries INT, backoff_ms BIGINT"
DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
# A BLOB holds 65535 bytes: longer function names or unique keys are refused per job.
BLOB_MAX = 65535
DELETE_CHUNK = 5000
# Room in a statement for everything but the rows (INSERT ... VALUES, packet header).
STATEMENT_SLACK = 1024
RECONNECT_EVERY_S = 0.5


def _pymysql():
    try:
        import pymysql
    except ImportError as exc:
        raise StoreError("the MySQL store needs the PyMySQL driver: "
                         "pip install 'fastgear[mysql]'") from exc
    return pymysql


def _esc(b):
    """bytes -> a _binary string literal (backslash escapes; sql_mode is set to allow them)."""
    if b"\\" in b:
        b = b.replace(b"\\", b"\\\\")
    if b"'" in b:
        b = b.replace(b"'", b"\\'")
    if b"\0" in b:
        b = b.replace(b"\0", b"\\0")
    return b"_binary'" + b + b"'"


def _lit(v):
    if v is None:
        return b"NULL"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _esc(bytes(v))
    if isinstance(v, str):
        return _esc(v.encode("utf-8", "surrogateescape"))
    return str(int(v)).encode()


def _first_line(exc):
    args = getattr(exc, "args", ())
    if len(args) == 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


class MySQLStore:
    kind = "mysql"
    supports_dead = True

    def __init__(self, host="localhost", port=3306, user=None, password=None, db=None,
                 table="gearman_queue", timeout_s=10):
        if not re.fullmatch(r"[A-Za-z0-9_$]{1,58}", table or ""):
            raise StoreError(f"--mysql-table {table!r}: not a valid table name")
        if not db:
            raise StoreError("--mysql-db is required with -q mysql")
        self.pymysql = _pymysql()
        self.host = host or "localhost"
        self.port = int(port)
        self.user = user
        self.password = password or ""
        self.db = db
        self.table = table
        self.timeout_s = max(1, int(timeout_s))
        self.t = f"`{table}`".encode()
        self.t_dead = f"`{table}_dead`".encode()
        self.t_retry = f"`{table}_retry`".encode()
        self.lock_name = f"fastgear:{db}.{table}"[:64]
        self.con = None
        self.next_id = 1
        self.max_packet = 16 << 20
        self.unsure = []                # id ranges of batches whose COMMIT went unanswered
        self.next_connect = 0.0
        self.last_error = None
        self.reconnects = 0
        self.refused = 0

    # -- connection ---------------------------------------------------------------------

    def where(self):
        at = (f"unix socket {self._socket()}" if self.host == "localhost"
              else f"{self.host}:{self.port}")
        return f"MySQL {at}, database {self.db}, table {self.table}"

    @staticmethod
    def _socket():
        return os.environ.get("MYSQL_UNIX_PORT") or DEFAULT_SOCKET

    def _connect(self):
        pymysql = self.pymysql
        kw = {"user": self.user, "password": self.password, "database": self.db,
              "charset": "utf8mb4", "autocommit": False, "connect_timeout": self.timeout_s,
              "read_timeout": self.timeout_s, "write_timeout": self.timeout_s,
              "max_allowed_packet": 1 << 30, "program_name": "fastgear"}
        if self.host == "localhost":
            kw["unix_socket"] = self._socket()
        else:
            kw["host"], kw["port"] = self.host, self.port
        con = pymysql.connect(**kw)
        try:
            with con.cursor() as cur:
                # Backslash escapes on (the literals rely on them); values that do not
                # fit a column are an error, never truncated.
                cur.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'")
                cur.execute(f"SET SESSION innodb_lock_wait_timeout = {self.timeout_s}")
                cur.execute("SELECT @@max_allowed_packet, GET_LOCK(%s, 0)", (self.lock_name,))
                self.max_packet, locked = cur.fetchone()
            if locked != 1:
                raise StoreError(f"table {self.db}.{self.table} is in use by another fastgear "
                                 f"server (lock {self.lock_name!r} is held)")
            con.commit()
        except BaseException:
            con.close()
            raise
        return con

    def _drop_connection(self):
        if self.con is not None:
            try:
                self.con.close()
            except Exception as exc:  # noqa: BLE001 (closing a broken connection)
                log.debug("closing the store connection: %s", exc)
            self.con = None

    def _ensure_connection(self):
        if self.con is not None:
            return self.con
        now = time.monotonic()
        if now < self.next_connect:
            raise StoreError(f"MySQL unreachable: {self.last_error}")
        self.next_connect = now + RECONNECT_EVERY_S
        try:
            self.con = self._connect()
            self._resume_ids()
        except self.pymysql.Error as exc:
            self._drop_connection()
            self.last_error = _first_line(exc)
            raise StoreError(f"MySQL unreachable: {self.last_error}") from exc
        self.reconnects += 1
        log.warning("reconnected to the MySQL store")
        return self.con

    def _resume_ids(self):
        with self.con.cursor() as cur:
            cur.execute(b"SELECT COALESCE(MAX(id), 0) FROM " + self.t)
            self.next_id = max(self.next_id, int(cur.fetchone()[0]) + 1)
        self.con.commit()

    # -- open: table, migration -------------------------------------------------------------

    def open(self):
        pymysql = self.pymysql
        try:
            self.con = self._connect()
        except pymysql.Error as exc:
            raise StoreError(f"cannot connect to {self.where()}: {_first_line(exc)}") from exc
        try:
            self._create_or_migrate()
            self._resume_ids()
        except pymysql.Error as exc:
            self._drop_connection()
            raise StoreError(f"cannot open {self.where()}: {_first_line(exc)}") from exc

    def _columns(self, cur, name):
        cur.execute("SELECT column_name, column_type FROM information_schema.columns WHERE "
                    "table_schema = DATABASE() AND table_name = %s", (name,))
        return {c.lower(): str(t).lower() for c, t in cur.fetchall()}

    def _create_or_migrate(self):
        with self.con.cursor() as cur:
            cols = self._columns(cur, self.table)
            if not cols:
                cur.execute(b"CREATE TABLE IF NOT EXISTS " + self.t +
                            b" (" + COLUMNS.encode() + b") ENGINE=InnoDB")
            elif "id" not in cols:
                self._migrate_gearmand(cur, cols)
            cur.execute(b"CREATE TABLE IF NOT EXISTS " + self.t_dead + b" (" +
                        DEAD_COLUMNS.encode() + b") ENGINE=InnoDB")
            cur.execute(b"CREATE TABLE IF NOT EXISTS " + self.t_retry + b" (" +
                        RETRY_COLUMNS.encode() + b") ENGINE=InnoDB")
        self.con.commit()

    def _migrate_gearmand(self, cur, cols):
        """gearmand's table: keep its rows in their order, drop the key that merges jobs."""
        log.warning("migrating gearmand's queue table %s.%s", self.db, self.table)
        cur.execute("SELECT DISTINCT index_name FROM information_schema.statistics WHERE "
                    "table_schema = DATABASE() AND table_name = %s AND non_unique = 0",
                    (self.table,))
        alters = [b"DROP INDEX `" + name.encode() + b"`" for (name,) in cur.fetchall()]
        for col, kind in (("unique_key", b"BLOB"), ("function_name", b"BLOB"),
                          ("priority", b"INT"), ("data", b"LONGBLOB"),
                          ("when_to_run", b"BIGINT")):
            verb = b"MODIFY" if col in cols else b"ADD"
            alters.append(verb + b" COLUMN `" + col.encode() + b"` " + kind)
        # Numbered in the clustered (insertion) order of gearmand's rows.
        alters.append(b"ADD COLUMN id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY "
                      b"FIRST")
        cur.execute(b"ALTER TABLE " + self.t + b" " + b", ".join(alters) + b", ENGINE=InnoDB")

    # -- replay ---------------------------------------------------------------------------------

    def replay(self):
        """Every stored job, oldest first: (row_id, function, unique, priority, data, when)."""
        cur = self.con.cursor(self.pymysql.cursors.SSCursor)
        try:
            cur.execute(b"SELECT id, function_name, unique_key, priority, data, when_to_run "
                        b"FROM " + self.t + b" ORDER BY id")
            for rid, func, unique, prio, data, when in cur:
                yield (int(rid), as_bytes(func), as_bytes(unique),
                       int(prio if prio is not None else 1), as_bytes(data), int(when or 0))
        finally:
            cur.close()
            self.con.commit()

    def replay_dead(self):
        with self.con.cursor() as cur:
            cur.execute(b"SELECT " + ", ".join(DEAD_COLUMN_NAMES).encode() + b" FROM " +
                        self.t_dead + b" ORDER BY id")
            rows = cur.fetchall()
        self.con.commit()
        for row in rows:
            yield dead_letter(row)

    def replay_retry(self):
        with self.con.cursor() as cur:
            cur.execute(b"SELECT function_name, retries, backoff_ms FROM " + self.t_retry)
            rows = cur.fetchall()
        self.con.commit()
        return [(as_bytes(f), int(n), int(ms) / 1000.0) for f, n, ms in rows]

    def set_retry(self, function, retries, backoff_s):
        """Keep a function's retry setting (retries < 0: forget it)."""
        def run(cur):
            cur.execute(b"DELETE FROM " + self.t_retry + b" WHERE function_name = " +
                        _esc(function))
            if retries >= 0:
                cur.execute(b"INSERT INTO " + self.t_retry + b" VALUES (" + _esc(function) +
                            b", " + _lit(retries) + b", " + _lit(round(backoff_s * 1000)) +
                            b")")
        self._transaction(run)

    # -- writes ---------------------------------------------------------------------------------

    def _transaction(self, body):
        """body(cursor) then COMMIT on a live connection. A lost connection is dropped
        (the next call reconnects); every failure comes back as StoreError."""
        pymysql = self.pymysql
        con = self._ensure_connection()
        try:
            with con.cursor() as cur:
                out = body(cur)
            con.commit()
            return out
        except pymysql.Error as exc:
            self.last_error = _first_line(exc)
            if isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)):
                self._drop_connection()
            else:
                try:
                    con.rollback()
                except pymysql.Error:
                    self._drop_connection()
            raise StoreError(f"MySQL error: {self.last_error}") from exc

    def write(self, adds, deletes, dead_adds=(), dead_deletes=()):
        """One transaction: delete finished rows, insert adds (function, unique,
        priority, data, when), write and delete dead letters. Returns, per add in order,
        its row id or a StoreRefused for a job the table cannot take."""
        limit = self.max_packet - STATEMENT_SLACK
        result = []
        statements = []
        head = (b"INSERT INTO " + self.t +
                b" (id, unique_key, function_name, priority, data, when_to_run) VALUES ")
        values, size = [], len(head)
        first_id = self.next_id
        next_id = first_id
        for func, unique, prio, data, when in adds:
            if len(func) > BLOB_MAX or len(unique) > BLOB_MAX:
                result.append(StoreRefused(
                    f"function name or unique key longer than {BLOB_MAX} bytes does not fit "
                    f"the MySQL table"))
                continue
            row = b"(%d,%s,%s,%d,%s,%d)" % (next_id, _esc(unique), _esc(func), prio,
                                            _esc(data), when)
            if len(head) + len(row) > limit:
                self.refused += 1
                result.append(StoreRefused(
                    f"job of {len(data)} bytes does not fit MySQL's max_allowed_packet "
                    f"({self.max_packet} bytes)"))
                continue
            if values and size + len(row) + 1 > limit:
                statements.append(head + b",".join(values))
                values, size = [], len(head)
            values.append(row)
            size += len(row) + 1
            result.append(next_id)
            next_id += 1
        if values:
            statements.append(head + b",".join(values))
        # Ids are never given twice, even when this batch fails.
        self.next_id = next_id
        unsure = list(self.unsure)

        def body(cur):
            for lo, hi in unsure:
                cur.execute(b"DELETE FROM " + self.t + b" WHERE id BETWEEN %d AND %d" % (lo, hi))
            for i in range(0, len(deletes), DELETE_CHUNK):
                ids = b",".join(b"%d" % d for d in deletes[i:i + DELETE_CHUNK])
                cur.execute(b"DELETE FROM " + self.t + b" WHERE id IN (" + ids + b")")
            if dead_deletes:
                for i in range(0, len(dead_deletes), DELETE_CHUNK):
                    ids = b",".join(b"%d" % d for d in dead_deletes[i:i + DELETE_CHUNK])
                    cur.execute(b"DELETE FROM " + self.t_dead + b" WHERE id IN (" + ids + b")")
            for d in dead_adds:
                cur.execute(b"REPLACE INTO " + self.t_dead + b" (" +
                            ", ".join(DEAD_COLUMN_NAMES).encode() + b") VALUES (" +
                            b",".join(_lit(d[k]) for k in DEAD_FIELDS) + b")")
            for stmt in statements:
                cur.execute(stmt)
        try:
            self._transaction(body)
        except StoreError:
            if next_id > first_id:
                # Maybe committed after all (the answer to COMMIT was lost): the next
                # successful transaction removes these rows, whose jobs were refused.
                self.unsure.append((first_id, next_id - 1))
            raise
        del self.unsure[:len(unsure)]
        return result

    def delete_rows(self, row_ids):
        self.write([], list(row_ids))

    # -- visibility and close ----------------------------------------------------------------------

    def status(self):
        return {"kind": "mysql", "table": f"{self.db}.{self.table}",
                "connected": self.con is not None, "last_error": self.last_error,
                "reconnects": self.reconnects, "max_allowed_packet": self.max_packet,
                "jobs_refused_too_large": self.refused}

    def close(self):
        self._drop_connection()

