"""A `gear.Worker` serving one function until killed.

usage: gear_worker.py HOST:PORT FUNCTION MODE [ARG]
MODE: reverse | log (append payload + "\\n" to ARG) | stream (WORK_DATA per comma-separated
piece, then "done") | status (WORK_STATUS 1/2, wait for file ARG, then "finished") |
fail (WORK_FAIL) | exception (WORK_EXCEPTION "boom") | hang (write pid to ARG, sleep)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gear
from _modes import MODES, USAGE, append_line, wait_file, write_pid_then_sleep


def main(argv):
    if len(argv) < 4 or argv[3] not in MODES:
        sys.stderr.write(USAGE % argv[0] + "\n")
        return 2
    host, port = argv[1].rsplit(":", 1)
    func, mode = argv[2], argv[3]
    arg = argv[4] if len(argv) > 4 else ""
    worker = gear.Worker("gear-test-worker")
    worker.addServer(host, int(port))
    worker.waitForServer(timeout=10)
    worker.registerFunction(func)
    while True:
        job = worker.getJob()
        if mode == "reverse":
            job.sendWorkComplete(job.arguments[::-1])
        elif mode == "log":
            append_line(arg, job.arguments)
            job.sendWorkComplete(b"logged")
        elif mode == "stream":
            for piece in job.arguments.split(b","):
                job.sendWorkData(piece)
            job.sendWorkComplete(b"done")
        elif mode == "status":
            job.sendWorkStatus(1, 2)
            wait_file(arg)
            job.sendWorkComplete(b"finished")
        elif mode == "fail":
            job.sendWorkFail()
        elif mode == "exception":
            job.sendWorkException(b"boom")
        elif mode == "hang":
            write_pid_then_sleep(arg)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
