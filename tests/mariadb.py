"""A throw-away MariaDB server for the tests and the benchmark.

`MariaDB()` runs mariadb-install-db into a fresh temporary folder; `start()` runs
mariadbd on a free loopback port with its unix socket in that folder, so nothing is
shared with a system server. mariadbd refuses to run as root without --user, and CI runs
as root: the server then runs as the `mysql` user the Debian package creates (or
`nobody`), through runuser. Settings are MariaDB's defaults (InnoDB, the log flushed at
every commit) plus what `settings` adds. `halt()` stops it (SIGTERM, or SIGKILL: a
crash) keeping the data, `start()` again recovers it on the same port, and `stop()`
ends it by its pid and removes the folder. `sql()` runs statements as root over the
socket; `add_database()` makes a database and a user `gear` (password `pw`) for it.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

from throwaway import free_port, log_tail, read_pid, unprivileged_owner

USER, PASSWORD = "gear", "pw"


def binaries():
    """(mariadb-install-db, mariadbd) or None where MariaDB is not installed."""
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    server = shutil.which("mariadbd") or next(
        (p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld") if os.path.exists(p)), None)
    return (install, server) if install and server else None


class MariaDB:
    def __init__(self, settings=()):
        found = binaries()
        if found is None:
            raise FileNotFoundError("mariadb-install-db / mariadbd not found")
        self.install, self.server = found
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastgear-mariadb-")
        self.data = os.path.join(self.dir, "data")
        self.socket = os.path.join(self.dir, "sock")
        self.settings = list(settings)
        self.proc = None
        self.user = unprivileged_owner(self.dir, ("mysql", "nobody"), "mariadbd")
        r = subprocess.run(self._as_user([self.install, "--no-defaults", f"--datadir={self.data}",
                                          "--auth-root-authentication-method=normal",
                                          "--skip-test-db", "--skip-name-resolve"]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                           cwd=self.dir, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {r.stdout.decode(errors='replace')}")

    def _as_user(self, cmd):
        return (["runuser", "-u", self.user, "--"] + cmd) if self.user else cmd

    def start(self, timeout=60):
        cmd = [self.server, "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
               f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
               f"--pid-file={os.path.join(self.dir, 'pid')}",
               f"--log-error={os.path.join(self.dir, 'log')}"] + \
              [f"--{s}" for s in self.settings]
        self.proc = subprocess.Popen(self._as_user(cmd), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.dir,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}: {self.log()}")
            try:
                self.sql("SELECT 1")
                return self
            except Exception:  # noqa: BLE001 (not up yet)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mariadbd did not start: {self.log()}") from None
                time.sleep(0.1)

    def log(self):
        return log_tail(os.path.join(self.dir, "log"))

    def _server_pid(self):
        """mariadbd's own pid (runuser is its parent when we run as root)."""
        return read_pid(os.path.join(self.dir, "pid"))

    def halt(self, sig=signal.SIGTERM, timeout=60):
        """Stop the server and keep its data; SIGKILL is a crash (InnoDB recovers)."""
        if self.proc is None:
            return
        pid = self._server_pid()
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)
        self.proc = None

    def stop(self):
        self.halt(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def connect(self, database=None):
        import pymysql
        return pymysql.connect(unix_socket=self.socket, user="root", database=database,
                               autocommit=True, connect_timeout=5)

    def sql(self, query, params=None, database=None):
        """Run one statement as root; rows for a SELECT, else None."""
        con = self.connect(database)
        try:
            with con.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else None
        finally:
            con.close()

    def add_database(self, name):
        self.sql(f"CREATE DATABASE `{name}`")
        self.sql(f"CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'")
        self.sql(f"GRANT ALL ON `{name}`.* TO '{USER}'@'%'")

    def flags(self, database, table=None):
        """gearmand's -q mysql flags for this server and database (both servers take them)."""
        out = ["-q", "mysql", "--mysql-host", "127.0.0.1", "--mysql-port", str(self.port),
               "--mysql-user", USER, "--mysql-password", PASSWORD, "--mysql-db", database]
        return out + (["--mysql-table", table] if table else [])
