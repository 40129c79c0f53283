"""What the throw-away peer servers of the tests share (tests/pgcluster.py,
tests/mariadb.py, tests/kvservers.py): a free loopback port, waiting for a condition
with a bound, and, since CI runs as root and PostgreSQL, mariadbd and memcached refuse
to, the unprivileged system user a server is run as and given its folder to."""
import os
import pwd
import socket
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def unprivileged_owner(folder, candidates, server):
    """None when not root; otherwise the first of `candidates` that exists, made owner
    of `folder` (RuntimeError naming `server` when none does)."""
    if os.getuid() != 0:
        return None
    for name in candidates:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        return name
    raise RuntimeError(f"running as root and no unprivileged user to run {server}")


def log_tail(path, size=3000):
    """The end of a server's log file, for an error message ("" when there is none)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()[-size:]
    except OSError:
        return ""


def read_pid(path):
    """The pid on the first line of a pid file, or None."""
    try:
        with open(path) as f:
            return int(f.readline().strip())
    except (OSError, ValueError):
        return None
