"""A python3-gearman `GearmanWorker` serving one function until killed.

usage: python_gearman_worker.py HOST:PORT FUNCTION MODE [ARG]
MODE: reverse | log (append payload + "\\n" to ARG) | stream (WORK_DATA per comma-separated
piece, then "done") | status (WORK_STATUS 1/2, wait for file ARG, then "finished") |
fail (the task raises: the library sends WORK_FAIL) | exception (WORK_EXCEPTION "boom",
then the task raises, so WORK_FAIL follows as the library does it) | hang (write pid, sleep)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import python3_gearman
from _modes import MODES, USAGE, append_line, wait_file, write_pid_then_sleep


def main(argv):
    if len(argv) < 4 or argv[3] not in MODES:
        sys.stderr.write(USAGE % argv[0] + "\n")
        return 2
    server, func, mode = argv[1], argv[2], argv[3]
    arg = argv[4] if len(argv) > 4 else ""

    def task(worker, job):
        data = job.data
        if mode == "reverse":
            return data[::-1]
        if mode == "log":
            append_line(arg, data.encode())
            return "logged"
        if mode == "stream":
            for piece in data.split(","):
                worker.send_job_data(job, piece)
            return "done"
        if mode == "status":
            worker.send_job_status(job, 1, 2)
            wait_file(arg)
            return "finished"
        if mode == "exception":
            worker.send_job_exception(job, "boom")
            raise RuntimeError("boom")
        if mode == "hang":
            write_pid_then_sleep(arg)
        raise RuntimeError("task failed")

    worker = python3_gearman.GearmanWorker([server])
    worker.set_client_id("python-gearman-test-worker")
    worker.register_task(func, task)
    worker.work(poll_timeout=1.0)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
