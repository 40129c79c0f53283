"""The PostgreSQL store: several fastgear servers, one database, no single point of failure.

Selected by gearmand's flags (`-q postgres --libpq-conninfo "..." [--libpq-table queue]`)
or `--store postgresql://user@host:port/db`. The database is a durable log with
ownership; dispatch stays in memory on the server that accepted the job (DESIGN.md §6).

Tables (created in an empty database, as gearmand does):
* the queue table (`--libpq-table`, default `queue`): gearmand's columns (unique_key,
  function_name, priority, data, when_to_run) plus `id` (the row id the engine keeps),
  `owner` and `owner_epoch`. Keys are bytea, since Gearman names are opaque bytes, and
  there is no unique key on (unique_key, function_name): jobs with empty or equal keys
  never collide. A table written by gearmand's `-q postgres` is migrated on open (its
  rows keep their order and become unowned, so the first server to start claims them).
* `<table>_servers`: one row per running server process: `server_id` (unique per
  process), `epoch` (from the sequence `<table>_epoch`), `addr`, `lease_until`.
* `<table>_dead`: dead letters, owned like job rows (`owner`, `owner_epoch`), so a
  survivor's takeover claims a dead server's dead letters with its jobs. Their ids are the
  engine's dead-letter ids, which start at `epoch << 32` on every server (control.
  dead_id_floor): servers never collide. A dead letter's row is written in the same
  transaction that deletes its job's row.
* `<table>_retry`: per-function retry settings (`retry F N BACKOFF`), one row per function
  for every server on the table; a server reads them at start-up.

Writes: one statement per group commit renews this server's lease, deletes finished rows
(only where `owner` and `owner_epoch` are still ours) and inserts the new rows through
`unnest()` over binary arrays; when the lease row no longer carries our epoch nothing is
written and the batch fails with QUEUE_ERROR (fencing). `synchronous_commit` is forced
on, so a JOB_CREATED always follows a durable commit.

Ownership: `maintain()`, called by the store thread every `tick_s`, renews the lease,
and claims the rows of servers whose lease has expired: it bumps the dead server's epoch
and sets its lease to -infinity (so the dead one can never renew or write again), then
moves its rows to itself in slices (`FOR UPDATE SKIP LOCKED`, so survivors share the
work) and hands them to the engine. A server restarted on the same host and port takes
over its predecessor at once, without waiting for the lease. Locally a lease counts for
half its length from the moment a renewal was sent (monotonic clock): past that the
server is fenced (no dispatch, submissions refused) until it re-registers under a new
epoch. If its registration was taken over meanwhile it drops the stored jobs it holds
(their rows belong to the survivors now) and registers as a new server.
"""
import logging
import os
import re
import secrets
import socket
import time

from fastgear.persist import StoreError, as_bytes, dead_letter

log = logging.getLogger("fastgear.store")

CLAIM_SLICE = 1000
# While serving, a takeover claims at most this many slices per store tick, then the
# store thread commits what is waiting and comes straight back for more: a dead server's
# big backlog never holds this server's own acknowledgements for longer than that.
CLAIM_SLICES_PER_STEP = 4
# libpq settings that keep every call bounded when the database or the network goes
# away (the user's conninfo wins where it sets them).
CONNECT_DEFAULTS = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "5",
                    "keepalives_interval": "2", "keepalives_count": "2",
                    "tcp_user_timeout": "8000", "application_name": "fastgear"}
STATEMENT_TIMEOUT_MS = 8000


def _psycopg():
    try:
        import psycopg
    except ImportError as exc:
        raise StoreError("the PostgreSQL store needs the psycopg driver: "
                         "pip install 'fastgear[postgres]'") from exc
    return psycopg


def server_identity(port):
    """(server_id, addr): addr names the host and port this server listens on; the id
    adds the process and a random part, so it is unique per process."""
    host = socket.gethostname()
    return f"{host}:{port}:{os.getpid()}:{secrets.token_hex(4)}", f"{host}:{port}"


class PostgresStore:
    kind = "postgres"

    def __init__(self, conninfo, table="queue", lease_s=10, port=4730, server_id=None):
        if not re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*", table or ""):
            raise StoreError(f"--libpq-table {table!r}: not a valid table name")
        self.psycopg = _psycopg()
        self.conninfo = conninfo
        self.table = table
        self.lease_s = max(1, int(lease_s))
        self.tick_s = min(1.0, self.lease_s / 4)
        self.server_id, self.addr = server_identity(port)
        if server_id:
            self.server_id = server_id
        self.epoch = None
        self.con = None
        self.valid_until = 0.0          # monotonic: the lease counts until then
        self.renewed_at = 0.0           # monotonic: when the last renewal was sent
        self.lost = False               # the registration was taken over
        self.next_connect = 0.0
        self.last_error = None
        self.takeovers = 0
        self.jobs_claimed = 0
        self.last_takeover = None       # wall clock
        self.claim_more = False         # a takeover stopped at its step's budget
        self._claim_budget = None       # slices left in this step (None: no limit)
        self._taking = set()            # victims whose takeover is counted, not done
        self._claim_after = {}          # victim -> highest id claimed in this pass
        self.peers = []                 # [(server_id, addr, epoch, lease age s)]
        self.reconnects = 0
        self.claimed_dead = []          # dead letters claimed, for adopted_dead()
        self._q = self._sql_names()

    # -- names and connection -------------------------------------------------------

    def _sql_names(self):
        from psycopg import sql
        parts = self.table.split(".")
        schema, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])

        def ident(n):
            return sql.Identifier(schema, n) if schema else sql.Identifier(n)
        return {"q": ident(name), "servers": ident(name + "_servers"),
                "dead": ident(name + "_dead"), "retry": ident(name + "_retry"),
                "dead_idx": sql.Identifier(name + "_dead_owner"),
                "seq": sql.Literal(f"{schema + '.' if schema else ''}{name}_epoch"),
                "seq_ident": ident(name + "_epoch"),
                "owner_idx": sql.Identifier(name + "_owner"), "name": name,
                "schema": schema or "public"}

    def _connect(self):
        psycopg = self.psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo
        try:
            params = conninfo_to_dict(self.conninfo)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"bad --libpq-conninfo: {exc}") from exc
        for k, v in CONNECT_DEFAULTS.items():
            params.setdefault(k, v)
        con = psycopg.connect(make_conninfo(**params), autocommit=True)
        # Acknowledged means committed: never let a database default weaken that.
        con.execute("SET synchronous_commit = on")
        con.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        con.execute("SET lock_timeout = 5000")
        return con

    def _drop_connection(self):
        if self.con is not None:
            try:
                self.con.close()
            except Exception as exc:  # noqa: BLE001 (closing a broken connection)
                log.debug("closing the store connection: %s", exc)
            self.con = None

    def _ensure_connection(self):
        if self.con is not None and not self.con.closed:
            return self.con
        self.con = None
        now = time.monotonic()
        if now < self.next_connect:
            raise StoreError(f"database unreachable: {self.last_error}")
        self.next_connect = now + 0.5
        try:
            self.con = self._connect()
        except self.psycopg.Error as exc:
            self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise StoreError(f"database unreachable: {self.last_error}") from exc
        self.reconnects += 1
        log.info("connected to the PostgreSQL store")
        return self.con

    def _run(self, fn):
        """fn(con) on a live connection; a connection error drops it (the next call
        reconnects) and comes back as StoreError."""
        con = self._ensure_connection()
        try:
            return fn(con)
        except self.psycopg.OperationalError as exc:
            self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            self._drop_connection()
            raise StoreError(f"database error: {self.last_error}") from exc
        except self.psycopg.Error as exc:
            self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            if self.con is not None and self.con.info.transaction_status != 0:
                self._drop_connection()
            raise StoreError(f"database error: {self.last_error}") from exc

    # -- open: tables, migration, registration ------------------------------------------

    def open(self):
        psycopg = self.psycopg
        try:
            self.con = self._connect()
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL ({self.conninfo}): "
                             f"{str(exc).strip()}") from exc
        try:
            with self.con.transaction():
                # Servers starting together create or migrate the tables one at a time.
                self.con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                 (f"fastgear:{self._q['schema']}.{self._q['name']}",))
                self._create_or_migrate()
            self._check_privileges()
            self._register()
        except psycopg.Error as exc:
            self._drop_connection()
            raise StoreError(f"cannot open PostgreSQL table {self.table}: "
                             f"{str(exc).strip()}") from exc
        except StoreError:
            self._drop_connection()
            raise

    def _columns(self, name):
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s", (self._q["schema"], name)).fetchall()
        return dict(rows)

    def _create_or_migrate(self):
        from psycopg import sql
        q = self._q
        ex = self.con.execute
        cols = self._columns(q["name"])
        if not cols:
            ex(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, unique_key bytea, "
                       "function_name bytea, priority integer, data bytea, "
                       "when_to_run bigint, owner text, owner_epoch bigint)").format(q["q"]))
        else:
            self._check_privileges(self.table)
            if "owner" not in cols:
                self._migrate_gearmand(cols)
        idx = ex("SELECT to_regclass(%s)", (f"{q['schema']}.{q['name']}_owner",)).fetchone()[0]
        if idx is None:
            ex(sql.SQL("CREATE INDEX {} ON {} (owner, owner_epoch)").format(
                q["owner_idx"], q["q"]))
        ex(sql.SQL("CREATE TABLE IF NOT EXISTS {} (server_id text PRIMARY KEY, "
                   "epoch bigint NOT NULL, addr text NOT NULL, pid integer, "
                   "started timestamptz NOT NULL DEFAULT now(), "
                   "renewed timestamptz NOT NULL DEFAULT now(), "
                   "lease_until timestamptz NOT NULL)").format(q["servers"]))
        ex(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(q["seq_ident"]))
        ex(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, owner text, "
                   "owner_epoch bigint, handle bytea, function_name bytea, unique_key bytea, "
                   "priority integer, data bytea, error bytea, reason integer, "
                   "attempts integer, submitted_us bigint, failed_us bigint)").format(q["dead"]))
        ex(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (owner, owner_epoch)").format(
            q["dead_idx"], q["dead"]))
        ex(sql.SQL("CREATE TABLE IF NOT EXISTS {} (function_name bytea PRIMARY KEY, "
                   "retries integer NOT NULL, backoff_ms bigint NOT NULL)").format(q["retry"]))

    def _migrate_gearmand(self, cols):
        """gearmand's `-q postgres` table: (unique_key varchar, function_name varchar,
        priority int, data bytea, when_to_run int) with UNIQUE(unique_key, function_name).
        Its rows are kept, in their order, and become unowned."""
        from psycopg import sql
        q = self._q
        ex = self.con.execute
        log.info("migrating gearmand's queue table %s", self.table)
        for (con_name,) in ex("SELECT conname FROM pg_constraint WHERE contype = 'u' AND "
                              "conrelid = %s::regclass", (self.table,)).fetchall():
            ex(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                q["q"], sql.Identifier(con_name)))
        for col in ("unique_key", "function_name"):
            if col in cols and cols[col] != "bytea":
                ex(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE bytea USING "
                           "convert_to({}, 'UTF8')").format(q["q"], sql.Identifier(col),
                                                            sql.Identifier(col)))
        if "when_to_run" not in cols:
            ex(sql.SQL("ALTER TABLE {} ADD COLUMN when_to_run bigint").format(q["q"]))
        else:
            ex(sql.SQL("ALTER TABLE {} ALTER COLUMN when_to_run TYPE bigint").format(q["q"]))
        if "id" not in cols:
            # Numbered in the table's physical order, which is gearmand's insert order.
            ex(sql.SQL("ALTER TABLE {} ADD COLUMN id bigserial PRIMARY KEY").format(q["q"]))
        ex(sql.SQL("ALTER TABLE {} ADD COLUMN owner text, ADD COLUMN owner_epoch bigint")
           .format(q["q"]))

    def _check_privileges(self, table=None):
        for name in (table,) if table else (self.table, f"{self.table}_servers",
                                            f"{self.table}_dead", f"{self.table}_retry"):
            for priv in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                ok = self.con.execute("SELECT has_table_privilege(%s, %s)",
                                      (name, priv)).fetchone()[0]
                if not ok:
                    raise StoreError(f"the PostgreSQL user lacks the {priv} privilege on "
                                     f"table {name}")
        if table:
            return
        ok = self.con.execute("SELECT has_sequence_privilege(%s, 'USAGE')",
                              (f"{self.table}_epoch",)).fetchone()[0]
        if not ok:
            raise StoreError(f"the PostgreSQL user lacks USAGE on sequence {self.table}_epoch")

    def _register(self):
        from psycopg import sql
        t0 = time.monotonic()
        row = self.con.execute(
            sql.SQL("INSERT INTO {} (server_id, epoch, addr, pid, lease_until) VALUES "
                    "(%s, nextval({}), %s, %s, now() + make_interval(secs => %s)) "
                    "RETURNING epoch").format(self._q["servers"], self._q["seq"]),
            (self.server_id, self.addr, os.getpid(), self.lease_s)).fetchone()
        self.epoch = row[0]
        self._renewed(t0)
        log.info("registered in the PostgreSQL store as %s, epoch %d", self.server_id,
                 self.epoch)

    def _renewed(self, t0):
        self.renewed_at = t0
        self.valid_until = t0 + self.lease_s / 2

    # -- replay at start-up ------------------------------------------------------------

    def replay(self):
        """Rows this server takes at start-up: those of its predecessor on this host and
        port, of servers whose lease has expired, and rows without a live owner
        (gearmand's, after a migration)."""
        rows = self._takeover(startup=True)
        return rows

    supports_dead = True

    @property
    def dead_id_floor(self):
        """The first dead-letter id of this registration: epochs are unique, so each
        server writes its dead letters' rows in a range of its own."""
        return (self.epoch or 0) << 32

    def replay_dead(self):
        """The dead letters claimed with the jobs at start-up, oldest first (a new
        registration owns no others)."""
        return self.adopted_dead()

    def adopted_dead(self):
        """Dead letters claimed since the last call, as dicts (control.dead_restore)."""
        rows, self.claimed_dead = self.claimed_dead, []
        rows.sort(key=lambda r: r["id"])
        return rows

    def replay_retry(self):
        """[(function, retries, backoff_s)]: the per-function retry settings."""
        from psycopg import sql
        return [(as_bytes(f), int(n), int(ms) / 1000.0) for f, n, ms in self._run(
            lambda con: con.execute(sql.SQL("SELECT function_name, retries, backoff_ms "
                                            "FROM {}").format(self._q["retry"])).fetchall())]

    def set_retry(self, function, retries, backoff_s):
        """Keep a function's retry setting (retries < 0: forget it)."""
        from psycopg import sql
        if retries < 0:
            stmt = sql.SQL("DELETE FROM {} WHERE function_name = %s").format(self._q["retry"])
            params = (function,)
        else:
            stmt = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s) ON CONFLICT (function_name) "
                           "DO UPDATE SET retries = EXCLUDED.retries, "
                           "backoff_ms = EXCLUDED.backoff_ms").format(self._q["retry"])
            params = (function, retries, round(backoff_s * 1000))
        self._run(lambda con: con.execute(stmt, params))

    # -- group commit ------------------------------------------------------------------

    def write(self, adds, deletes, dead_adds=(), dead_deletes=()):
        """One statement: renew the lease, delete our finished rows, insert adds
        (function, unique, priority, data, when); returns the new rows' ids in order.
        With dead letters to insert (dicts) or delete (ids), one transaction: that
        statement, then the dead letters' rows, under the same lease check."""
        if self.fenced():
            # maintain() re-registers; until then nothing is acknowledged.
            raise StoreError("store lease lost (database unreachable)" if self.con is None
                             else "store lease lost")
        from psycopg import sql
        q = self._q
        funcs, uniqs, prios, datas, whens = (list(c) for c in zip(*adds)) if adds else (
            [], [], [], [], [])
        stmt = sql.SQL(
            "WITH lease AS (UPDATE {s} SET lease_until = now() + make_interval(secs => %(ttl)s), "
            "  renewed = now() WHERE server_id = %(me)s AND epoch = %(ep)s RETURNING 1), "
            "del AS (DELETE FROM {q} WHERE id = ANY(%(dels)s::bigint[]) AND owner = %(me)s "
            "  AND owner_epoch = %(ep)s AND EXISTS (SELECT 1 FROM lease) RETURNING 1), "
            "ins AS (INSERT INTO {q} (function_name, unique_key, priority, data, when_to_run, "
            "  owner, owner_epoch) SELECT f, u, p, d, w, %(me)s, %(ep)s FROM "
            "  unnest(%(f)b::bytea[], %(u)b::bytea[], %(p)b::int[], %(d)b::bytea[], "
            "  %(w)b::bigint[]) WITH ORDINALITY AS t(f, u, p, d, w, n) "
            "  WHERE EXISTS (SELECT 1 FROM lease) ORDER BY n RETURNING id) "
            "SELECT (SELECT count(*) FROM lease), (SELECT array_agg(id) FROM ins)"
        ).format(s=q["servers"], q=q["q"])
        params = {"ttl": self.lease_s, "me": self.server_id, "ep": self.epoch,
                  "dels": list(deletes), "f": funcs, "u": uniqs, "p": prios, "d": datas,
                  "w": whens}
        t0 = time.monotonic()
        if dead_adds or dead_deletes:
            leased, ids = self._run(lambda con: self._write_with_dead(
                con, stmt, params, dead_adds, dead_deletes))
        else:
            leased, ids = self._run(lambda con: con.execute(stmt, params).fetchone())
        if not leased:
            self._lost()
            raise StoreError("store lease lost: another server took over this one's jobs")
        self._renewed(t0)
        # Ids come from one sequence in insertion order (ORDER BY n).
        return sorted(ids or [])

    def _write_with_dead(self, con, stmt, params, dead_adds, dead_deletes):
        from psycopg import sql
        q = self._q
        mine = sql.SQL("EXISTS (SELECT 1 FROM {} WHERE server_id = %(me)s AND "
                       "epoch = %(ep)s)").format(q["servers"])
        with con.transaction():
            leased, ids = con.execute(stmt, params).fetchone()
            if not leased:
                return leased, ids
            if dead_adds:
                with con.cursor() as cur:
                    cur.executemany(sql.SQL(
                        "INSERT INTO {d} (id, owner, owner_epoch, handle, function_name, "
                        "unique_key, priority, data, error, reason, attempts, submitted_us, "
                        "failed_us) SELECT %(id)s, %(me)s, %(ep)s, %(handle)s, %(function)s, "
                        "%(unique)s, %(priority)s, %(data)s, %(error)s, %(reason)s, %(attempts)s, "
                        "%(submitted_us)s, %(failed_us)s WHERE {mine} ON CONFLICT (id) DO UPDATE "
                        "SET owner = EXCLUDED.owner, owner_epoch = EXCLUDED.owner_epoch, "
                        "handle = EXCLUDED.handle, function_name = EXCLUDED.function_name, "
                        "unique_key = EXCLUDED.unique_key, priority = EXCLUDED.priority, "
                        "data = EXCLUDED.data, error = EXCLUDED.error, reason = EXCLUDED.reason, "
                        "attempts = EXCLUDED.attempts, submitted_us = EXCLUDED.submitted_us, "
                        "failed_us = EXCLUDED.failed_us").format(d=q["dead"], mine=mine),
                        [dict(d, me=self.server_id, ep=self.epoch) for d in dead_adds])
            if dead_deletes:
                con.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%(ids)s::bigint[]) AND "
                                    "owner = %(me)s AND owner_epoch = %(ep)s").format(
                                        q["dead"]),
                            {"ids": list(dead_deletes), "me": self.server_id,
                             "ep": self.epoch})
        return leased, ids

    def delete_rows(self, row_ids):
        self.write([], list(row_ids))

    # -- lease, fencing and takeover (the store thread, every tick_s) --------------------

    def fenced(self):
        return self.lost or time.monotonic() > self.valid_until

    def _lost(self):
        if not self.lost:
            log.error("store lease lost: server %s epoch %d was taken over", self.server_id,
                      self.epoch)
        self.lost = True
        self.valid_until = 0.0

    def maintain(self):
        """Renew the lease when due, recover from a lapse, claim dead servers' rows.
        Returns (rows to load into the engine, whether the engine must first forget
        every stored job it holds)."""
        forget = False
        if self.fenced():
            forget = self._recover()
            if self.fenced():
                return [], forget
        elif time.monotonic() - self.renewed_at > self.lease_s / 4:
            self._renew()
            if self.fenced():
                return [], forget
        return self._takeover(startup=forget), forget

    def _renew(self):
        from psycopg import sql
        t0 = time.monotonic()
        n = self._run(lambda con: con.execute(
            sql.SQL("UPDATE {} SET lease_until = now() + make_interval(secs => %s), "
                    "renewed = now() WHERE server_id = %s AND epoch = %s").format(
                        self._q["servers"]),
            (self.lease_s, self.server_id, self.epoch)).rowcount)
        if n == 1:
            self._renewed(t0)
        else:
            self._lost()

    def _recover(self):
        """Re-register under a new epoch after the lease lapsed. True when the old
        registration had been taken over: the caller drops the stored jobs it holds,
        and this server has become a new one."""
        from psycopg import sql
        q = self._q
        try:
            self._ensure_connection()
        except StoreError:
            return False
        old = self.epoch

        def same_identity(con):
            t0 = time.monotonic()
            with con.transaction():
                # Every takeover bumps the epoch first (under this row's lock), so an
                # unchanged epoch means no survivor has claimed or can claim our rows.
                row = con.execute(
                    sql.SQL("UPDATE {s} SET epoch = nextval({seq}), lease_until = now() + "
                            "make_interval(secs => %s), renewed = now() WHERE server_id = %s "
                            "AND epoch = %s RETURNING epoch").format(
                                s=q["servers"], seq=q["seq"]),
                    (self.lease_s, self.server_id, old)).fetchone()
                if row is None:
                    return None, t0
                for t in (q["q"], q["dead"]):
                    con.execute(sql.SQL("UPDATE {} SET owner_epoch = %s WHERE owner = %s "
                                        "AND owner_epoch = %s").format(t),
                                (row[0], self.server_id, old))
                return row[0], t0
        if not self.lost:
            try:
                epoch, t0 = self._run(same_identity)
            except StoreError:
                return False
            if epoch is not None:
                self.epoch = epoch
                self._renewed(t0)
                log.warning("store lease regained: re-registered as %s, epoch %d",
                            self.server_id, epoch)
                return False
        # Taken over (or expired, so survivors may be claiming): a new server identity.
        # The old one's rows, those no survivor claimed yet, come back through takeover.
        previous = self.server_id
        self.server_id = server_identity(self.addr.rpartition(":")[2])[0]
        try:
            self._run(lambda con: self._register())
        except StoreError:
            self.server_id = previous
            return False
        self.lost = False
        log.warning("store registration %s was taken over; jobs held for it are dropped, "
                    "now %s epoch %d", previous, self.server_id, self.epoch)
        return True

    def _takeover(self, startup=False):
        """Claim the rows of every server whose lease has expired (at start-up also our
        predecessor on this address, and rows nobody live owns). Returns the rows, FIFO."""
        from psycopg import sql
        q = self._q

        def scan(con):
            peers = con.execute(
                sql.SQL("SELECT server_id, addr, epoch, "
                        "extract(epoch FROM now() - renewed), "
                        "lease_until < now() OR (addr = %s AND %s) FROM {} WHERE server_id <> %s "
                        "ORDER BY started").format(q["servers"]),
                (self.addr, startup, self.server_id)).fetchall()
            orphans = []
            if startup:
                orphans = [r[0] for r in con.execute(
                    sql.SQL("SELECT DISTINCT owner FROM {q} WHERE owner IS NULL OR NOT EXISTS "
                            "(SELECT 1 FROM {s} s WHERE s.server_id = owner) UNION SELECT "
                            "owner FROM {d} WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE "
                            "s.server_id = owner)").format(
                                q=q["q"], s=q["servers"], d=q["dead"])).fetchall()]
            return peers, orphans
        peers, orphans = self._run(scan)
        self.peers = [(sid, addr, ep, float(age) if age is not None else None)
                      for sid, addr, ep, age, _dead in peers]
        dead = [sid for sid, _addr, _ep, _age, is_dead in peers if is_dead]
        rows = []
        self.claim_more = False
        self._claim_budget = None if startup else CLAIM_SLICES_PER_STEP
        for sid in dead:
            got, done = self._claim(sid, fence=True)
            if got:
                if sid not in self._taking:     # one takeover, however many steps
                    self._taking.add(sid)
                    self.takeovers += 1
                self.jobs_claimed += len(got)
                self.last_takeover = time.time()
                log.warning("took over %d jobs of server %s (lease expired)%s", len(got), sid,
                            "" if done else "; more to come")
            if done:
                self._taking.discard(sid)
            rows.extend(got)
            if not done:
                break
        for owner in orphans:
            rows.extend(self._claim(owner, fence=False)[0])
        rows.sort(key=lambda r: r[0])
        return rows

    def _keep_lease(self):
        """Renew the lease when due in the middle of a long claim: a big takeover must
        not cost the survivor its own lease. False once it is lost or lapsed."""
        if time.monotonic() - self.renewed_at > self.lease_s / 4:
            self._renew()
        return not self.fenced()

    def _claim(self, victim, fence):
        from psycopg import sql
        q = self._q
        if fence:
            # The dead server can never renew or write again, whoever of the survivors
            # gets here first.
            self._run(lambda con: con.execute(
                sql.SQL("UPDATE {s} SET epoch = nextval({seq}), lease_until = '-infinity' "
                        "WHERE server_id = %s AND lease_until > '-infinity' AND "
                        "(lease_until < now() OR addr = %s)").format(
                            s=q["servers"], seq=q["seq"]), (victim, self.addr)))
        # The victim's lease is checked once (an init plan), not per row: a per-row
        # check kept the planner from walking the primary key in id order, so every
        # slice read and sorted all the victim's remaining rows (120 ms per 1,000 rows
        # with 300,000 left, against 6 ms). Sorting is also ruled out for the slice's
        # transaction, so a table without statistics yet gets the same plan.
        owner_cond = sql.SQL("owner IS NULL") if victim is None else sql.SQL(
            "owner = %(v)s AND NOT EXISTS (SELECT 1 FROM {s} WHERE server_id = %(v)s AND "
            "lease_until >= now())").format(s=q["servers"])
        stmt = sql.SQL(
            "WITH c AS (SELECT id FROM {q} WHERE {cond} AND EXISTS (SELECT 1 "
            "  FROM {s} WHERE server_id = %(me)s AND epoch = %(ep)s AND lease_until >= now()) "
            "  AND id > %(after)s ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED) "
            "UPDATE {q} SET owner = %(me)s, owner_epoch = %(ep)s FROM c WHERE {q}.id = c.id "
            "RETURNING {q}.id, {q}.function_name, {q}.unique_key, {q}.priority, {q}.data, "
            "{q}.when_to_run").format(q=q["q"], s=q["servers"], cond=owner_cond)
        # Each slice starts after the last one's highest id: the rows claimed before
        # are dead versions in the primary key until VACUUM, and a scan from the start
        # would step over all of them in every slice. A row skipped because another
        # survivor had it locked, and then not taken by it, is found when the next pass
        # starts from the beginning (the cursor goes when a pass ends).
        params = {"v": victim, "me": self.server_id, "ep": self.epoch, "n": CLAIM_SLICE,
                  "after": self._claim_after.get(victim, 0)}
        rows = []
        for _ in range(1_000_000):
            if self._claim_budget is not None:
                if self._claim_budget <= 0:
                    self.claim_more = True
                    return rows, False
                self._claim_budget -= 1
            if not self._keep_lease():
                return rows, False
            got = self._run(lambda con: self._claim_slice(con, stmt, params))
            rows.extend((rid, as_bytes(f), as_bytes(u), int(p if p is not None else 1), as_bytes(d),
                         int(w or 0)) for rid, f, u, p, d, w in got)
            if got:
                params["after"] = self._claim_after[victim] = max(r[0] for r in got)
            if len(got) < CLAIM_SLICE:
                break
        self._claim_after.pop(victim, None)
        self._claim_dead(victim)
        if fence:
            # Gone once every row of it is claimed (rows another survivor still holds
            # locked keep it until that survivor commits).
            self._run(lambda con: con.execute(
                sql.SQL("DELETE FROM {s} WHERE server_id = %s AND lease_until < now() AND "
                        "NOT EXISTS (SELECT 1 FROM {q} WHERE owner = %s) AND "
                        "NOT EXISTS (SELECT 1 FROM {d} WHERE owner = %s)").format(
                            s=q["servers"], q=q["q"], d=q["dead"]),
                (victim, victim, victim)))
        return rows, True

    @staticmethod
    def _claim_slice(con, stmt, params):
        with con.transaction():
            con.execute("SET LOCAL enable_sort = off")
            return con.execute(stmt, params).fetchall()

    def _claim_dead(self, victim):
        """The victim's dead letters become ours (kept in claimed_dead for the engine)."""
        from psycopg import sql
        if victim is None:
            return
        q = self._q
        stmt = sql.SQL(
            "UPDATE {d} SET owner = %(me)s, owner_epoch = %(ep)s WHERE owner = %(v)s AND "
            "NOT EXISTS (SELECT 1 FROM {s} WHERE server_id = %(v)s AND lease_until >= now()) "
            "AND EXISTS (SELECT 1 FROM {s} WHERE server_id = %(me)s AND epoch = %(ep)s AND "
            "lease_until >= now()) RETURNING id, handle, function_name, unique_key, priority, "
            "data, error, reason, attempts, submitted_us, failed_us").format(
                d=q["dead"], s=q["servers"])
        got = self._run(lambda con: con.execute(
            stmt, {"v": victim, "me": self.server_id, "ep": self.epoch}).fetchall())
        self.claimed_dead.extend(dead_letter(r) for r in got)
        if got:
            log.warning("took over %d dead letters of server %s", len(got), victim)

    # -- visibility and close --------------------------------------------------------------

    def status(self):
        now = time.monotonic()
        return {
            "kind": "postgres",
            "table": self.table,
            "server_id": self.server_id,
            "epoch": self.epoch,
            "lease_s": self.lease_s,
            "lease_left_s": round(max(0.0, self.valid_until - now), 3),
            "fenced": self.fenced(),
            "connected": self.con is not None and not self.con.closed,
            "last_error": self.last_error,
            "peers": [{"server_id": sid, "addr": addr, "epoch": ep,
                       "lease_age_s": round(age, 3) if age is not None else None}
                      for sid, addr, ep, age in self.peers],
            "takeovers": self.takeovers,
            "jobs_claimed": self.jobs_claimed,
            "last_takeover": self.last_takeover,
        }

    def close(self):
        """Leave cleanly: the registration goes (our unfinished rows stay, owned by this
        id, and are claimed by a survivor at once, or by the next server on this
        address)."""
        if self.con is not None and not self.con.closed and not self.fenced():
            from psycopg import sql
            try:
                self.con.execute(sql.SQL("UPDATE {} SET lease_until = now() - interval '1 s' "
                                         "WHERE server_id = %s AND epoch = %s").format(
                                             self._q["servers"]),
                                 (self.server_id, self.epoch))
            except self.psycopg.Error:
                pass
        self._drop_connection()

