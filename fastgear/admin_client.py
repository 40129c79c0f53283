"""`fastgear admin`: gearadmin's job, as a Python client and a command line, plus JSON.

`AdminClient` speaks only the text admin protocol over TCP, so it works against fastgear
and gearmand alike: it sends one line per command on one connection and reads the whole
reply (a listing up to its `.` terminator, anything else up to its line end), where
gearadmin stops reading after 5 ms of silence and can cut a long listing short. Its
methods return parsed rows (`AdminClient(host, port).status()`), raise `ServerError` for
an `ERR` line and `AdminConnectionError` for refused connections, timeouts and
disconnects. `main` is the command line: without `--json` it prints exactly what
gearadmin 1.1.20 prints for the same server state (its own text transformation of each
reply, its order of operations when several are given), so scripts written around
gearadmin keep working; with `--json` it prints one JSON document instead. Unlike
gearadmin, a failure is a message on stderr and a non-zero exit code: 1 for an `ERR`
answer, 2 for a usage error, 3 when the server could not be reached or did not answer.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "AdminClient", "AdminConnectionError", "AdminError", "FunctionStatus", "Job",
    "PriorityStatus", "ProtocolError", "ServerError", "Worker", "main",
]

DEFAULT_HOST = "localhost"  # gearadmin's defaults
DEFAULT_PORT = 4730
DEFAULT_TIMEOUT = 10.0

EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3


class AdminError(Exception):
    """Base of every error this module raises."""


class AdminConnectionError(AdminError):
    """The server could not be reached, closed the connection, or did not answer in time."""


class ProtocolError(AdminError):
    """The server answered something this client cannot parse."""


class ServerError(AdminError):
    """The server answered an `ERR` line. `code` is its first word (gearmand's drop errors
    are free text, so it is then just the first word of that text), `text` the rest with
    gearmand's `+` for spaces turned back into spaces, `raw` the line's bytes."""

    def __init__(self, command: str, raw: bytes):
        self.command = command
        self.raw = raw
        body = _text(raw[4:].rstrip(b"\r\n"))
        code, _, rest = body.partition(" ")
        self.code = code
        self.text = rest.replace("+", " ")
        if re.fullmatch(r"[A-Z][A-Z_]*", code):
            message = f"{code} {self.text}".rstrip()
        else:
            message = body  # free text, as in `ERR function not found`
        super().__init__(message)


@dataclass(frozen=True)
class FunctionStatus:
    """One `status` row: total = queued + running jobs, workers = registrations."""
    function: str
    total: int
    running: int
    workers: int


@dataclass(frozen=True)
class PriorityStatus:
    """One `prioritystatus` row: queued (not running) jobs per priority."""
    function: str
    high: int
    normal: int
    low: int
    workers: int


@dataclass(frozen=True)
class Worker:
    """One `workers` row: every connection (clients and admin ones too), its CAN_DO
    registrations newest first, a repeated registration listed again."""
    fd: int
    ip: str
    client_id: str
    functions: list[str]


@dataclass(frozen=True)
class Job:
    """One `show jobs` row: `ignored` is set for a cancelled or abandoned job that has
    not been reaped yet, `persisted` for a job kept in the persistent store."""
    handle: str
    retries: int
    ignored: bool
    persisted: bool


def _text(raw: bytes) -> str:
    # surrogateescape keeps any byte: a name read here can be sent back unchanged.
    return raw.decode("utf-8", "surrogateescape")


def _wire(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _lines(listing: bytes) -> list[bytes]:
    """The rows of a `.`-terminated listing, without line ends."""
    body = listing[:-2]  # ".\n"
    return body.split(b"\n")[:-1] if body else []


def _ints(fields: list[bytes], line: bytes) -> list[int]:
    try:
        return [int(f) for f in fields]
    except ValueError:
        raise ProtocolError(f"unexpected row {line[:200]!r}") from None


def _columns(line: bytes, numbers: int) -> tuple[str, list[int]]:
    # Function names and handles may contain tabs; the numbers never do, so split from
    # the right.
    fields = line.rsplit(b"\t", numbers)
    if len(fields) != numbers + 1:
        raise ProtocolError(f"unexpected row {line[:200]!r}")
    return _text(fields[0]), _ints(fields[1:], line)


# `<fd> <ip> <client id> :` then ` <function>` per registration. Both a client id (free
# text from SET_CLIENT_ID) and a function name may contain ` :`, so a row can be
# ambiguous; the client id is taken to end at the last ` :` followed by a space or the
# line end, because free text is likelier to hold ` : ` than a function name is.
_WORKER_ROW = re.compile(rb"(\d+) (\S*) (.*) :((?: .*)?)", re.DOTALL)


def _join_known(tokens: list[str], known: set[str]) -> list[str]:
    """Rejoin function names that contain spaces: at each token, the longest run of
    tokens that names a known function is one name."""
    names, i = [], 0
    while i < len(tokens):
        j = next((j for j in range(len(tokens), i + 1, -1)
                  if " ".join(tokens[i:j]) in known), i + 1)
        names.append(" ".join(tokens[i:j]))
        i = j
    return names


def _worker(line: bytes, known: set[str] | None = None) -> Worker:
    match = _WORKER_ROW.fullmatch(line)
    if match is None:
        raise ProtocolError(f"unexpected workers row {line[:200]!r}")
    fd, ip, client_id, functions = match.groups()
    names = [_text(f) for f in functions[1:].split(b" ")] if functions else []
    if known and len(names) > 1:
        names = _join_known(names, known)
    return Worker(int(fd), _text(ip), _text(client_id), names)


def _ok_value(reply: bytes) -> str:
    if not reply.startswith(b"OK "):
        raise ProtocolError(f"unexpected reply {reply[:200]!r}")
    return _text(reply[3:].rstrip(b"\r\n"))


def parse_status(listing: bytes) -> list[FunctionStatus]:
    return [FunctionStatus(name, *numbers)
            for name, numbers in (_columns(line, 3) for line in _lines(listing))]


def parse_priority_status(listing: bytes) -> list[PriorityStatus]:
    return [PriorityStatus(name, *numbers)
            for name, numbers in (_columns(line, 4) for line in _lines(listing))]


def parse_workers(listing: bytes, known: set[str] | None = None) -> list[Worker]:
    """`known`: every function name (from `status`), to keep names with spaces whole."""
    return [_worker(line, known) for line in _lines(listing)]


def parse_jobs(listing: bytes) -> list[Job]:
    rows = []
    for line in _lines(listing):
        handle, (retries, ignored, persisted) = _columns(line, 3)
        rows.append(Job(handle, retries, bool(ignored), bool(persisted)))
    return rows


def parse_unique_jobs(listing: bytes) -> list[str]:
    return [_text(line) for line in _lines(listing)]


def _pid(reply: bytes) -> int:
    value = _ok_value(reply)
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(f"unexpected pid {value!r}") from None


class AdminClient:
    """A text admin protocol connection to a Gearman server (fastgear or gearmand).

    Connects on first use; one connection serves every call until `close()` (also a
    context manager). `timeout` bounds the connect and each reply, in seconds.
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int | str = DEFAULT_PORT,
                 timeout: float = DEFAULT_TIMEOUT):
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def connect(self) -> None:
        if self._sock is not None:
            return
        try:
            # A string port may be a service name, as gearadmin allows ("gearman").
            self._sock = socket.create_connection((self.host, self.port), self.timeout)
        except socket.gaierror as exc:
            raise AdminConnectionError(
                f"cannot resolve {self.address}: {exc.strerror}") from None
        except OSError as exc:
            reason = "timed out" if isinstance(exc, socket.timeout) else (
                exc.strerror or str(exc))
            raise AdminConnectionError(f"cannot connect to {self.address}: {reason}") from None
        self._buf = b""

    # -- raw commands ------------------------------------------------------------------
    def command(self, line: str | bytes, listing: bool = False) -> bytes:
        """Send one admin line and return its reply bytes, line ending included: through
        the `.\\n` terminator when `listing`, else one line. An `ERR` line raises
        ServerError; the connection stays usable."""
        line = _wire(line)
        if any(c in line for c in (b"\r", b"\n", b"\0")):
            # A line break would smuggle a second command onto the connection.
            raise ValueError(f"admin line must not contain CR, LF or NUL: {line!r}")
        self.connect()
        name = _text(line)
        try:
            self._sock.sendall(line + b"\r\n")
        except OSError as exc:
            self.close()
            raise AdminConnectionError(
                f"lost the connection to {self.address} sending '{name}': "
                f"{exc.strerror or exc}") from None
        reply = self._read_reply(name, listing)
        if reply.startswith(b"ERR ") and reply.endswith(b"\r\n") and reply.count(b"\n") == 1:
            raise ServerError(name, reply)
        return reply

    def _reply_end(self, listing: bool) -> int:
        """Length of the complete reply at the start of the buffer, 0 if incomplete."""
        buf = self._buf
        first = buf.find(b"\n")
        if first < 0:
            return 0
        # An error answer to a listing command is one `ERR ...\r\n` line (rows never end
        # in `\r`: gearmand and fastgear both end them with a bare `\n`).
        if not listing or (buf.startswith(b"ERR ") and buf[first - 1:first] == b"\r"):
            return first + 1
        if buf.startswith(b".\n"):
            return 2
        end = buf.find(b"\n.\n")
        return end + 3 if end >= 0 else 0

    def _read_reply(self, name: str, listing: bool) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            end = self._reply_end(listing)
            if end:
                reply, self._buf = self._buf[:end], self._buf[end:]
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise AdminConnectionError(
                    f"no complete answer to '{name}' from {self.address} within "
                    f"{self.timeout:g}s")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue  # the deadline check above reports it
            except OSError as exc:
                self.close()
                raise AdminConnectionError(
                    f"lost the connection to {self.address} waiting for the answer to "
                    f"'{name}': {exc.strerror or exc}") from None
            if not data:
                self.close()
                raise AdminConnectionError(
                    f"{self.address} closed the connection before answering '{name}'")
            self._buf += data

    # -- parsed commands ---------------------------------------------------------------
    def status(self) -> list[FunctionStatus]:
        return parse_status(self.command("status", listing=True))

    def priority_status(self) -> list[PriorityStatus]:
        return parse_priority_status(self.command("prioritystatus", listing=True))

    def workers(self) -> list[Worker]:
        return self._workers(self.command("workers", listing=True))

    def _workers(self, listing: bytes) -> list[Worker]:
        # The listing separates function names with spaces, which names may contain
        # too; the names `status` lists settle it, at the cost of a second command, only
        # when some row has more than one word after its ` :`.
        rows = parse_workers(listing)
        if all(len(row.functions) < 2 for row in rows):
            return rows
        try:
            known = {row.function for row in self.status()}
        except ServerError:
            return rows
        return parse_workers(listing, known)

    def show_jobs(self) -> list[Job]:
        return parse_jobs(self.command("show jobs", listing=True))

    def show_unique_jobs(self) -> list[str]:
        """Unique keys of the jobs in memory, one per job ("" for an empty key)."""
        return parse_unique_jobs(self.command("show unique jobs", listing=True))

    def version(self) -> str:
        return _ok_value(self.command("version"))

    def verbose(self) -> str:
        return _ok_value(self.command("verbose"))

    def getpid(self) -> int:
        return _pid(self.command("getpid"))

    def _ok(self, line: bytes) -> None:
        reply = self.command(line)
        if not reply.startswith(b"OK"):
            raise ProtocolError(f"unexpected reply {reply[:200]!r} to {_text(line)!r}")

    def create_function(self, name: str | bytes) -> None:
        self._ok(b"create function " + _wire(name))

    def drop_function(self, name: str | bytes) -> None:
        """Raises ServerError if workers are registered or jobs running (fastgear also
        refuses while jobs are queued) or the function is unknown."""
        self._ok(b"drop function " + _wire(name))

    def cancel_job(self, handle: str | bytes) -> None:
        """Raises ServerError (code UNKNOWN_JOB) if the server has no such job."""
        self._ok(b"cancel job " + _wire(handle))

    def shutdown(self, graceful: bool = False) -> None:
        """Stop a fastgear server (loopback connections only). gearmand 1.1.20 has no
        such command and answers ServerError UNKNOWN_COMMAND."""
        self._ok(b"shutdown graceful" if graceful else b"shutdown")


# -------------------------------------------------------------------- command line

@dataclass(frozen=True)
class Action:
    """One thing the command line can ask for: its option, the admin line it sends, and
    how its answer becomes JSON."""
    dest: str
    flags: tuple[str, ...]
    help: str
    line: Callable[[Any], bytes]
    listing: bool = False
    metavar: str | None = None
    to_json: Callable[[AdminClient, bytes, Any], Any] | None = None


def _rows(parse: Callable[[bytes], list]) -> Callable[[AdminClient, bytes, Any], Any]:
    return lambda _client, raw, _value: [dataclasses.asdict(row) for row in parse(raw)]


def _status_json(client: AdminClient, raw: bytes, _value) -> list[dict]:
    rows = [{**dataclasses.asdict(row), "queued": None} for row in parse_status(raw)]
    # Queued jobs per priority come from a second command (gearmand and fastgear both
    # have it); a server without it leaves "queued" null. The two answers are separate
    # snapshots, so a function created in between appears in one of them only.
    try:
        by_name = {row.function: row for row in client.priority_status()}
    except ServerError:
        return rows
    for row in rows:
        queued = by_name.get(row["function"])
        if queued is not None:
            row["queued"] = {"high": queued.high, "normal": queued.normal,
                             "low": queued.low}
    return rows


def _ok_json(key: str):
    def convert(_client, _raw, value) -> dict:
        return {key: value, "ok": True}
    return convert


def _unescape(raw: bytes) -> str:
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 1 < len(raw):
            out += {0x74: b"\t", 0x6E: b"\n", 0x72: b"\r"}.get(raw[i + 1], raw[i + 1:i + 2])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return _text(bytes(out))


def parse_dead(listing: bytes) -> list[dict]:
    """fastgear's `dead [FUNCTION]` listing, newest first: handle, function, unique,
    reason, attempts, failed_at, data_size, error."""
    rows = []
    for line in _lines(listing):
        fields = line.split(b"\t")
        if len(fields) != 8:
            raise ProtocolError(f"unexpected dead-letter line {line!r}")
        rows.append({"handle": _text(fields[0]), "function": _text(fields[1]),
                     "unique": _text(fields[2]), "reason": _text(fields[3]),
                     "attempts": int(fields[4]), "failed_at": float(fields[5]),
                     "data_size": int(fields[6]), "error": _unescape(fields[7])})
    return rows


def parse_results(listing: bytes) -> list[dict]:
    """fastgear's `results` (and `result`) listing, newest first: handle, function,
    unique, outcome, background, submitted_at, started_at, finished_at, worker,
    data_size and data_base64 (the first 256 bytes of the result or exception text)."""
    rows = []
    for line in _lines(listing):
        fields = line.split(b"\t")
        if len(fields) != 11:
            raise ProtocolError(f"unexpected result line {line!r}")
        rows.append({"handle": _text(fields[0]), "function": _text(fields[1]),
                     "unique": _text(fields[2]), "outcome": _text(fields[3]),
                     "background": fields[4] == b"1", "submitted_at": float(fields[5]),
                     "started_at": None if fields[6] == b"-" else float(fields[6]),
                     "finished_at": float(fields[7]),
                     "worker": None if fields[8] == b"-" else _text(fields[8]),
                     "data_size": int(fields[9]), "data_base64": _text(fields[10])})
    return rows


def _results_line(value) -> bytes:
    function, outcome = value
    return b"results %s %s" % (_wire(function) if function else b"*",
                               _wire(outcome) if outcome else b"*")


def _requeue_json(_client, raw: bytes, handle) -> dict:
    new = _ok_value(raw)
    return {"handle": handle, "ok": True,
            "new_handle": None if new == "coalesced" else new, "coalesced": new == "coalesced"}


# In gearadmin 1.1.20's order of execution when several are given (it pushes them onto a
# stack and runs the last pushed first); `shutdown` runs last, as in gearadmin up to 1.1.14.
ACTIONS = [
    Action("getpid", ("--getpid",), "Get Process ID for the server.",
           lambda _: b"getpid",
           to_json=lambda _c, raw, _v: {"pid": _pid(raw)}),
    Action("create_function", ("--create-function",), "Create the function from the server.",
           lambda name: b"create function " + _wire(name), metavar="NAME",
           to_json=_ok_json("function")),
    Action("drop_function", ("--drop-function",), "Drop the function from the server.",
           lambda name: b"drop function " + _wire(name), metavar="NAME",
           to_json=_ok_json("function")),
    Action("show_jobs", ("--show-jobs",), "Show all jobs on the server.",
           lambda _: b"show jobs", listing=True, to_json=_rows(parse_jobs)),
    Action("show_unique_jobs", ("--show-unique-jobs",),
           "Show unique IDs of jobs on the server.",
           lambda _: b"show unique jobs", listing=True,
           to_json=lambda _c, raw, _v: [{"unique": u} for u in parse_unique_jobs(raw)]),
    Action("cancel_job", ("--cancel-job",), "Remove a given job from the server's queue.",
           lambda handle: b"cancel job " + _wire(handle), metavar="HANDLE",
           to_json=_ok_json("handle")),
    Action("server_verbose", ("--server-verbose",), "Fetch the verbose setting for the server.",
           lambda _: b"verbose", to_json=lambda _c, raw, _v: {"verbose": _ok_value(raw)}),
    Action("server_version", ("--server-version",), "Fetch the version number for the server.",
           lambda _: b"version", to_json=lambda _c, raw, _v: {"version": _ok_value(raw)}),
    Action("workers", ("--workers",), "Workers for the server.",
           lambda _: b"workers", listing=True,
           to_json=lambda client, raw, _v: [dataclasses.asdict(row)
                                            for row in client._workers(raw)]),
    Action("priority_status", ("--priority-status",), "Queued jobs status by priority.",
           lambda _: b"prioritystatus", listing=True, to_json=_rows(parse_priority_status)),
    Action("status", ("--status",), "Status for the server.",
           lambda _: b"status", listing=True, to_json=_status_json),
    Action("dead", ("--dead",),
           "fastgear: list the dead letters (background jobs that used up their retries), "
           "newest first; --function F lists one function's.",
           lambda function: b"dead" + (b" " + _wire(function) if function else b""),
           listing=True, to_json=lambda _c, raw, _v: parse_dead(raw)),
    Action("results", ("--results",),
           "fastgear: list the newest kept outcomes (--keep-results), newest first; "
           "--function F and --outcome complete|fail|exception narrow them.",
           _results_line, listing=True, to_json=lambda _c, raw, _v: parse_results(raw)),
    Action("requeue_dead", ("--requeue-dead",),
           "fastgear: queue a dead letter again (same unique key, new handle, printed).",
           lambda handle: b"dead requeue " + _wire(handle), metavar="HANDLE",
           to_json=_requeue_json),
    Action("requeue_dead_function", ("--requeue-dead-function",),
           "fastgear: queue every dead letter of a function again (prints how many).",
           lambda name: b"dead requeue-function " + _wire(name), metavar="FUNCTION",
           to_json=lambda _c, raw, name: {"function": name, "requeued": int(_ok_value(raw)),
                                          "ok": True}),
    Action("discard_dead", ("--discard-dead",), "fastgear: forget a dead letter.",
           lambda handle: b"dead discard " + _wire(handle), metavar="HANDLE",
           to_json=_ok_json("handle")),
    Action("shutdown", ("--shutdown",),
           "Stop the server (fastgear, from loopback only; gearmand 1.1.20 refuses). "
           "With --graceful: stop accepting and exit once no job is left.",
           lambda graceful: b"shutdown graceful" if graceful else b"shutdown",
           to_json=lambda _c, _raw, graceful: {"ok": True, "graceful": graceful}),
]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(message)


def make_parser(prog: str = "fastgear admin") -> argparse.ArgumentParser:
    # `-h` is the host, as in gearadmin, so help is `--help` only.
    parser = _Parser(
        prog=prog, add_help=False, allow_abbrev=False,
        description="Query or change a Gearman job server (fastgear or gearmand) over the "
                    "text admin protocol, like gearadmin. Several actions run on one "
                    "connection in gearadmin's order. Exit codes: 0 ok, 1 the server "
                    "answered an error, 2 usage error, 3 connection failed or timed out.")
    parser.add_argument("--help", action="help", help="Show this help and exit.")
    parser.add_argument("-h", "--host", default=DEFAULT_HOST,
                        help=f"Connect to the host (default: {DEFAULT_HOST}).")
    parser.add_argument("-p", "--port", default=str(DEFAULT_PORT),
                        help=f"Port number or service name (default: {DEFAULT_PORT}).")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help="Seconds to wait for the connection and for each answer "
                             f"(default: {DEFAULT_TIMEOUT:g}).")
    parser.add_argument("--json", action="store_true",
                        help="Print one JSON document instead of gearadmin's text: the "
                             "action's value, or an object keyed by action when several "
                             "are given.")
    parser.add_argument("--graceful", action="store_true",
                        help="With --shutdown: a graceful shutdown.")
    parser.add_argument("--function", metavar="F",
                        help="With --dead or --results: only this function's.")
    parser.add_argument("--outcome", choices=("complete", "fail", "exception"),
                        help="With --results: only this outcome.")
    for action in sorted(ACTIONS, key=lambda a: a.flags[0]):
        if action.metavar:
            parser.add_argument(*action.flags, dest=action.dest, metavar=action.metavar,
                                help=action.help)
        else:
            parser.add_argument(*action.flags, dest=action.dest, action="store_true",
                                help=action.help)
    return parser


def _gearadmin_text(reply: bytes) -> bytes:
    """What gearadmin prints for a successful reply (util/operation.cc and its Finish
    callback): `OK\\r\\n` becomes `OK\\n`, `OK <value>` prints the value, anything else
    (the listings) prints as received."""
    if reply.startswith(b"OK\r"):
        return b"OK\n"
    if reply.startswith(b"OK "):
        return reply[3:]
    return reply


def _to_json_bytes(value: Any) -> bytes:
    def text_only(obj):
        # Names are kept as str with surrogate escapes for undecodable bytes; JSON wants
        # valid text, so those bytes become \\xNN escapes.
        if isinstance(obj, str):
            return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if isinstance(obj, list):
            return [text_only(v) for v in obj]
        if isinstance(obj, dict):
            return {k: text_only(v) for k, v in obj.items()}
        return obj

    value = text_only(value)
    try:
        import orjson
        return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)
    except ImportError:  # orjson is optional: the stdlib writes the same document
        import json
        return (json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _error_message(exc: ServerError) -> str:
    if exc.code == "UNKNOWN_COMMAND" and exc.command.split(" ")[0] == "shutdown":
        return ("the server has no shutdown command (gearmand removed it in 1.1.15; "
                "stop gearmand with SIGTERM)")
    if exc.code == "UNKNOWN_JOB":
        return f"no such job on the server ({exc.code})"
    return str(exc)


def run(args: argparse.Namespace, out, err, prog: str = "fastgear admin") -> int:
    """Run the actions `args` selects; `out` and `err` are binary streams."""
    chosen = [(a, getattr(args, a.dest)) for a in ACTIONS
              if getattr(args, a.dest) not in (None, False)]
    status = 0
    results: dict[str, Any] = {}
    with AdminClient(args.host, args.port, args.timeout) as client:
        for action, value in chosen:
            if action.dest == "shutdown":
                value = args.graceful
            elif action.dest == "dead":
                value = args.function
            elif action.dest == "results":
                value = (args.function, args.outcome)
            line = action.line(value)
            try:
                reply = client.command(line, action.listing)
                if args.json:
                    results[action.flags[0][2:]] = action.to_json(client, reply, value)
            except (ServerError, ProtocolError) as exc:
                # gearadmin goes on with the other actions after an ERR; so do we.
                reason = _error_message(exc) if isinstance(exc, ServerError) else str(exc)
                out.flush()  # keeps stdout and stderr in order on a shared terminal
                err.write(f"{prog}: error: {_text(line)}: {reason}\n"
                          .encode("utf-8", "backslashreplace"))
                err.flush()
                status = EXIT_SERVER_ERROR
                continue
            if not args.json:
                out.write(_gearadmin_text(reply))
    if args.json and results:
        out.write(_to_json_bytes(next(iter(results.values())) if len(chosen) == 1
                                 else results))
    return status


def _check(args: argparse.Namespace) -> None:
    if not (0 < args.timeout < float("inf")):
        raise _UsageError("--timeout must be a number of seconds above 0")
    if args.graceful and not args.shutdown:
        raise _UsageError("--graceful only goes with --shutdown")
    if args.function is not None and not (args.dead or args.results):
        raise _UsageError("--function only goes with --dead or --results")
    if args.outcome is not None and not args.results:
        raise _UsageError("--outcome only goes with --results")
    if not any(getattr(args, a.dest) not in (None, False) for a in ACTIONS):
        raise _UsageError("no action given (for example --status or --workers; "
                          "--help lists them)")
    if args.function is not None and any(c in args.function for c in "\r\n\0"):
        raise _UsageError("--function: the value must not contain CR, LF or NUL")
    for a in ACTIONS:
        value = getattr(args, a.dest)
        if isinstance(value, str) and any(c in value for c in "\r\n\0"):
            raise _UsageError(f"{a.flags[0]}: the value must not contain CR, LF or NUL")


def main(argv: Sequence[str] | None = None, prog: str = "fastgear admin") -> int:
    parser = make_parser(prog)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        _check(args)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        status = run(args, out, err, prog)
        out.flush()
        return status
    except AdminConnectionError as exc:
        out.flush()
        err.write(f"{prog}: error: {exc}\n".encode("utf-8", "backslashreplace"))
        err.flush()
        return EXIT_CONNECTION
    except BrokenPipeError:
        # The reader went away (`| head`); Python would complain again when it flushes
        # stdout at exit, so point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except KeyboardInterrupt:
        return 130
