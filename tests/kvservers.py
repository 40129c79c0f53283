"""Throw-away Redis and memcached servers for the tests and the benchmark.

`RedisServer` runs Debian's redis-server on a free loopback port with its data folder
(and append-only file) in a folder of its own; `MemcachedServer` runs memcached likewise
(as `nobody` when root, since memcached refuses to run as root). Both can be killed and
started again on the same port (`restart()`), for the outage tests, and `stop()` ends the
process by its pid. Nothing here talks Gearman.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from throwaway import free_port, listening, wait


class _Daemon:
    name = "server"

    def __init__(self, folder=None):
        self.port = free_port()
        self.own_dir = folder is None
        self.dir = folder or tempfile.mkdtemp(prefix=f"fastgear-{self.name}-")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.log = None

    def command(self):
        raise NotImplementedError

    def start(self):
        self.log = open(os.path.join(self.dir, f"{self.name}.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(), stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.dir)

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.output()}")
            return listening(self.port)
        wait(up, 15, f"{self.name} on port {self.port}")
        return self

    def output(self):
        try:
            with open(os.path.join(self.dir, f"{self.name}.log"), "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log is not None:
            self.log.close()
            self.log = None

    def restart(self, down_s=0.0, sig=signal.SIGKILL):
        self.kill(sig)
        if down_s:
            time.sleep(down_s)
        return self.start()

    def stop(self):
        self.kill(signal.SIGTERM)
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_Daemon):
    """redis-server with `appendonly yes` and `appendfsync always` by default: every
    acknowledged write is on disk before the reply."""
    name = "redis"

    def __init__(self, folder=None, fsync="always", password=None, settings=()):
        super().__init__(folder)
        self.fsync = fsync
        self.password = password
        self.settings = list(settings)

    def command(self):
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", self.dir, "--save", "", "--daemonize", "no",
               "--appendonly", "yes" if self.fsync else "no"]
        if self.fsync:
            cmd += ["--appendfsync", self.fsync]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.settings

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=10)


class MemcachedServer(_Daemon):
    name = "memcached"

    def __init__(self, folder=None, item_max="1m"):
        super().__init__(folder)
        self.item_max = item_max
        if os.getuid() == 0 and self.own_dir is False:
            os.chmod(self.dir, 0o777)

    def command(self):
        cmd = ["memcached", "-p", str(self.port), "-l", "127.0.0.1", "-U", "0",
               "-I", self.item_max, "-m", "64"]
        if os.getuid() == 0:
            cmd += ["-u", "nobody"]
        return cmd

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stored_keys(self):
        """Every key memcached holds (lru_crawler metadump), URL-decoded."""
        import urllib.parse
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"lru_crawler metadump all\r\n")
            buf = b""
            while not buf.endswith(b"END\r\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
        return sorted(urllib.parse.unquote_to_bytes(line.split(b" ", 1)[0][4:])
                      for line in buf.split(b"\n") if line.startswith(b"key="))
