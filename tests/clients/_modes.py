"""Shared helpers for the Python worker scripts beside this file."""
import os
import time

MODES = ("reverse", "log", "stream", "status", "fail", "exception", "hang")
USAGE = ("usage: %s HOST:PORT FUNCTION MODE [ARG]\n"
         "MODE: " + " | ".join(MODES))


def wait_file(path, timeout=30.0):
    """Wait (bounded) until `path` exists."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def append_line(path, payload):
    with open(path, "ab") as f:
        f.write(payload + b"\n")


def write_pid_then_sleep(path):
    """Say "I hold the job" by writing our pid to `path` (atomically), then sleep."""
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(path + ".tmp", path)
    time.sleep(60)
