"""Start fastgear, gearmand or the floor server on a free loopback port for `--compare`
and `--start`.

All get the same flags (gearmand's syntax, which fastgear and the floor accept), so a
comparison differs only in the server binary. The floor (bench/floor/floor.c in a
checkout, not part of the package) is the least an epoll server spends per job; it is
compiled here with gcc on first use. Each process is stopped by its own PID.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

GEARMAND_CANDIDATES = ("/usr/sbin/gearmand", "/usr/local/sbin/gearmand")


class ServerError(RuntimeError):
    pass


def find_gearmand(explicit: str | None = None) -> str:
    """Path of the gearmand binary, or ServerError saying how to get one."""
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise ServerError(f"--gearmand {explicit}: not an executable file")
    found = shutil.which("gearmand")
    if found:
        return found
    for path in GEARMAND_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    raise ServerError("gearmand is not installed (looked on PATH and in "
                      f"{', '.join(GEARMAND_CANDIDATES)}); install the gearman-job-server "
                      "package or pass --gearmand PATH")


FLOOR_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench", "floor")


def find_floor(explicit: str | None = None) -> str | None:
    """Path of the floor server binary, built from bench/floor/floor.c when needed;
    None where there is no checkout to build it from (an installed package)."""
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise ServerError(f"--floor {explicit}: not an executable file")
    src = os.path.join(FLOOR_DIR, "floor.c")
    if not os.path.exists(src):
        return None
    out = os.path.join(tempfile.gettempdir(), f"fastgear-floor-{os.getuid()}")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        cc = shutil.which("gcc") or shutil.which("cc")
        if cc is None:
            return None
        tmp = f"{out}.{os.getpid()}"
        subprocess.run([cc, "-O2", "-o", tmp, src], check=True)
        os.replace(tmp, out)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """A job server process we started: `.kind`, `.host`, `.port`, `.pid`, `.label`."""

    def __init__(self, kind: str, threads: int | None, extra: list[str] | None = None,
                 gearmand: str | None = None, host: str = "127.0.0.1",
                 floor: str | None = None):
        self.kind = kind
        self.host = host
        self.port = free_port(host)
        self.tmp = tempfile.mkdtemp(prefix=f"fastgear-bench-{kind}-")
        if kind == "fastgear":
            cmd = [sys.executable, "-m", "fastgear", "serve"]
        elif kind == "gearmand":
            cmd = [find_gearmand(gearmand)]
        elif kind == "floor":
            binary = find_floor(floor)
            if binary is None:
                raise ServerError("the floor server needs bench/floor/floor.c and gcc")
            cmd = [binary]
        else:
            raise ServerError(f"unknown server kind {kind!r}")
        cmd += ["-p", str(self.port), "-L", host, "--log-file", "none",
                "-P", os.path.join(self.tmp, "server.pid")]
        if threads is not None:
            cmd += ["-t", str(threads)]
        cmd += [arg.replace("{tmp}", self.tmp) for arg in (extra or [])]
        self.cmd = cmd
        # The floor has one thread whatever -t says.
        self.label = kind if threads is None or kind == "floor" else f"{kind} -t {threads}"
        self._out = open(os.path.join(self.tmp, "server.out"), "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self._wait_listening()

    def _wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.output()
                self.stop()
                raise ServerError(f"{self.label} exited with {self.proc.returncode} at "
                                  f"start: {' '.join(self.cmd)}\n{out}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.label} did not listen within {timeout:.0f}s: "
                          f"{' '.join(self.cmd)}")

    def output(self) -> str:
        try:
            self._out.flush()
            with open(os.path.join(self.tmp, "server.out"), errors="replace") as f:
                return f.read()[-2000:]
        except (OSError, ValueError):
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
