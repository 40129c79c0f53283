"""A throw-away PostgreSQL cluster for the tests and the benchmark.

`PgCluster` runs initdb into a fresh temporary folder and starts the server on a free
loopback port with its unix socket in that folder, so nothing is shared with a system
cluster. PostgreSQL refuses to run as root, and CI runs as root: the cluster then runs
as the `postgres` user the Debian package creates (or `nobody`), through runuser. The
binaries come from /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH).
`stop()` ends the server (pg_ctl, then SIGKILL of the postmaster by its pid if needed)
and removes the folder; `restart()` stops and starts it on the same port, for the
outage tests.
"""
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time

from throwaway import free_port, log_tail, read_pid, unprivileged_owner


def pg_bindir():
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class PgCluster:
    def __init__(self, bindir=None, settings=()):
        self.bindir = bindir or pg_bindir()
        if self.bindir is None:
            raise FileNotFoundError("PostgreSQL's initdb was not found")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="fastgear-pg-")
        self.data = os.path.join(self.dir, "data")
        self.settings = list(settings)
        self.user = unprivileged_owner(self.dir, ("postgres", "nobody"), "postgres")
        self._run([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])

    def _run(self, cmd, check=True, timeout=60):
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--"] + cmd
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              check=check, timeout=timeout, cwd=self.dir)

    @property
    def conninfo(self):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    @property
    def url(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self):
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c max_connections=200 " + " ".join(f"-c {s}" for s in self.settings))
        r = self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w", "-t", "60",
                       "-l", os.path.join(self.dir, "log"), "-o", opts, "start"], check=False)
        if r.returncode != 0:
            raise RuntimeError(f"postgres did not start: {r.stdout.decode(errors='replace')}"
                               f"{self.log()}")
        return self

    def log(self):
        return log_tail(os.path.join(self.dir, "log"))

    def _postmaster_pid(self):
        return read_pid(os.path.join(self.data, "postmaster.pid"))

    def halt(self, mode="fast"):
        """Stop the server, keep the data (pg_ctl's fast or immediate mode)."""
        pid = self._postmaster_pid()
        r = self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-w", "-t", "30",
                       "-m", mode, "stop"], check=False)
        if r.returncode != 0 and pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._alive(pid):
                time.sleep(0.05)

    @staticmethod
    def _alive(pid):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    def restart(self, mode="fast", down_s=0.0):
        self.halt(mode)
        if down_s:
            time.sleep(down_s)
        self.start()

    def stop(self):
        if os.path.isdir(self.data):
            self.halt("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def sql(self, query, params=None):
        """Run one statement as the superuser; rows for a SELECT, else None."""
        import psycopg
        with psycopg.connect(self.conninfo, autocommit=True) as con:
            cur = con.execute(query, params)
            return cur.fetchall() if cur.description else None
