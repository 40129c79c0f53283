"""The text admin protocol: one complete line in, the exact reply bytes out.

gearmand accepts plain-text commands (`status`, `workers`, `maxqueue f 10`, ...) on the same
port as the binary protocol; monitoring tools, `gearadmin` and client libraries parse the
answers byte for byte, so this module reproduces gearmand 1.1.20 (libgearman-server/text.cc
and the tokenizer in plugins/protocol/gear/protocol.cc) exactly: its tokenizing, its mixed
line endings (`\\n` for lists and `OK <value>`, `\\r\\n` for plain `OK` and `ERR` lines), its
`.` terminators and its error texts. The few places where fastgear answers differently are
deliberate fixes listed in DESIGN.md §5 and marked "Deliberate difference" below. The module
is pure Python and does no I/O: the compiled I/O loop strips the line's `\\n` and one
preceding `\\r`, calls `handle_line` on the control thread, and writes the returned bytes in
order with the connection's binary replies. Server state is read and changed only through
the duck-typed `AdminContext` the server passes in.
"""
from __future__ import annotations

import base64
import logging
from typing import Protocol, Union

__all__ = ["CHANGE", "CLOSE", "READ", "AdminContext", "command_kind", "denied", "handle_line",
           "tokenize"]

log = logging.getLogger(__name__)


class _Close:
    """Type of `CLOSE`; a class of its own so the sentinel has a readable repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "fastgear.admin.CLOSE"


#: Returned instead of bytes when gearmand would drop the connection without a reply
#: (a line of 6 or more tokens: gearmand's text packet holds at most 5 arguments and the
#: 6th is a fatal TOO_MANY_ARGS parse error).
CLOSE = _Close()

MAX_TOKENS = 5

OK = b"OK\r\n"
# Deliberate difference (DESIGN.md §5): gearmand answers `maxqueue` with `OK\r\n`, but the
# python-gearman admin client (gearman 2.0.2 and its forks gearman3, python3-gearman) splits
# replies at `\n` and insists on the line being exactly `OK`, so the stray `\r` makes
# `send_maxqueue` raise ProtocolError (YelpArchive/python-gearman#31). `OK\n` is accepted by
# every client we know: it is what the original Perl Gearman::Server answers, gear reads admin
# replies up to the first `\n`, gearadmin never sends maxqueue and libgearman's
# Operation::response would just print the line, and any reader that strips the line ending
# sees `OK` either way.
MAXQUEUE_OK = b"OK\n"
ERR_UNKNOWN_COMMAND = b"ERR UNKNOWN_COMMAND Unknown+server+command%s\r\n"
ERR_INVALID_ARGUMENTS = (
    b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+%s\r\n")
ERR_CREATE_FUNCTION = b"ERR CREATE_FUNCTION %s\r\n"
# gearmand's answer when a command produced no output at all (e.g. `cancel x y`); we also give
# it when the server context fails, so a bug never leaves the client waiting for a reply.
ERR_UNKNOWN_ERROR = b"ERR UNKNOWN_ERROR\r\n"
ERR_UNKNOWN_SHOW_ARGUMENTS = b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
ERR_UNKNOWN_JOB = b"ERR UNKNOWN_JOB\r\n"
ERR_DROP_BUSY = b"ERR there are still connected workers or executing clients\r\n"
ERR_DROP_NOT_FOUND = b"ERR function not found\r\n"
# Deliberate difference (DESIGN.md §5): gearmand drops a function that still has queued jobs
# and orphans them (still in memory and `show jobs`, but no function owns them, so no worker
# ever gets them). We refuse instead, in the same free-text style as gearmand's other drop
# errors, so gearadmin prints "Error: there are still queued jobs".
ERR_DROP_QUEUED = b"ERR there are still queued jobs\r\n"
# `shutdown` was removed from gearmand in 1.1.15 because anyone who could reach the port could
# stop the server (gearman/gearmand#37, PR #40). fastgear brings it back, because
# python-gearman's admin client and the Perl tools still send it, but only from a loopback
# peer; from anywhere else it is refused with an explicit code (rather than 1.1.20's "unknown
# command") so an operator sees why nothing happened. Answers and argument errors are those
# of gearmand 1.1.14, the last version that had the command.
ERR_SHUTDOWN_DENIED = b"ERR ACCESS_DENIED shutdown+is+only+accepted+from+loopback\r\n"
# `result` is fastgear's own command (gearmand forgets a job once it ends); its errors follow
# gearmand's `ERR CODE text+with+pluses` style.
ERR_RESULTS_NOT_KEPT = (
    b"ERR RESULTS_NOT_KEPT start+the+server+with+--keep-results+SECONDS\r\n")
ERR_QUEUE_FULL = b"ERR QUEUE_FULL the+function+is+at+its+maxqueue+limit\r\n"
ERR_ARGUMENT_TOO_LARGE = (
    b"ERR ARGUMENT_TOO_LARGE function+name+or+unique+key+over+this+server's+limits\r\n")


# What `command_kind` says a line is, for the access checks of --admin-allow and
# --admin-allow-read (access.py).
READ = "read"
CHANGE = "change"
# The read-only commands; anything not here and not a changing command is answered as
# gearmand answers an unknown command, whoever sends it.
_READ_COMMANDS = frozenset({b"workers", b"status", b"prioritystatus", b"show", b"getpid",
                            b"version", b"result", b"results"})
# Commands that change the server whatever their arguments. `verbose` only reports the log
# level (in gearmand 1.1.20 too), but the level is a server setting, so it is gated with
# the commands that change them, as the README lists.
_CHANGE_COMMANDS = frozenset({b"shutdown", b"cancel", b"create", b"drop", b"maxqueue",
                              b"verbose"})
# fastgear's commands that list without arguments and change with them.
_DEAD_CHANGES = frozenset({b"requeue", b"requeue-function", b"discard"})


def command_kind(line: bytes) -> tuple[str | None, str]:
    """(READ, CHANGE or None, the command's name for a log line) of an admin line.

    None: an unknown command or a line gearmand would close the connection for; those
    are answered as usual. The name is the command words only (`cancel job`, `dead
    discard`), never a handle, function name or other argument, and is made printable
    so that a peer cannot forge log lines."""
    tokens = tokenize(line)
    if len(tokens) > MAX_TOKENS:
        return None, ""
    args = [_c_str(token).lower() for token in tokens]
    command = args[0]
    if command in _CHANGE_COMMANDS:
        words = args[:2] if command in (b"cancel", b"create", b"drop") else args[:1]
        return CHANGE, _printable(b" ".join(words))
    if command == b"dead" and len(args) >= 2 and args[1] in _DEAD_CHANGES:
        return CHANGE, _printable(b"dead " + args[1])
    if command == b"retry" and len(args) >= 2:
        return CHANGE, "retry"
    if command in _READ_COMMANDS or command in (b"dead", b"retry"):
        return READ, _printable(b" ".join(args[:3] if command == b"show" else args[:1]))
    return None, ""


def _printable(words: bytes) -> str:
    return words[:40].decode("ascii", "backslashreplace").encode(
        "unicode_escape").decode("ascii")


def denied(kind: str, ip: str, flag: str) -> bytes:
    """The ERR line for a refused command, in gearmand's `ERR CODE text+with+pluses`
    style; it names the address the server saw, which is what the operator must list,
    and the flag that refused it."""
    if kind == CHANGE:
        text = f"{ip} may not change the server ({flag})"
    else:
        text = f"{ip} may not use admin commands ({flag})"
    return b"ERR ACCESS_DENIED %s\r\n" % text.replace(" ", "+").encode("ascii", "replace")


class AdminContext(Protocol):
    """What `handle_line` needs from the server; every method runs on the control thread.

    Names, handles and unique keys are bytes without NUL (the I/O loop's view of them).
    The lists are snapshots; their order is the output order (gearmand prints hash-table
    order, which no client can rely on).
    """

    def functions(self) -> list[tuple[bytes, int, int, int, int, int, int]]:
        """Every known function, including those with no jobs or workers, as
        (name, total, running, workers, high, normal, low): total = queued + running, as
        gearmand's `status`; high/normal/low count queued jobs that are not running."""
        ...

    def connections(self) -> list[tuple[int, str, bytes, list[bytes]]]:
        """Every connection, admin ones included, as (fd, peer ip, client id, functions):
        client id is b"-" when the connection never sent SET_CLIENT_ID; functions are its
        CAN_DO registrations, newest first, a repeated registration listed again."""
        ...

    def jobs(self) -> list[tuple[bytes, int, int, int, bytes]]:
        """Every job in memory as (handle, retries, ignored 0/1, persisted 0/1, unique)."""
        ...

    def cancel_job(self, handle: bytes) -> bool:
        """Cancel a job (WORK_FAIL to its clients, forget it); False if the handle is unknown."""
        ...

    def create_function(self, name: bytes) -> object:
        """Create the function if absent (exact-case match, as gearmand). Returns None;
        an explicit False means the name was refused (answered ERR CREATE_FUNCTION)."""
        ...

    def drop_function(self, name: bytes) -> str:
        """Remove a function, name matched case-insensitively as gearmand does. Returns
        "ok", "busy" (workers registered or jobs running), "notfound", or "queued" (jobs
        still queued: fastgear refuses where gearmand would orphan them)."""
        ...

    def set_maxqueue(self, name: bytes, high: int, normal: int, low: int) -> None:
        """Set queue limits per priority, 0 = unlimited; name matched exactly (gearmand
        compares case-sensitively here); an unknown function is ignored, not created."""
        ...

    def pid(self) -> int:
        """The server's process id."""
        ...

    def version(self) -> str:
        """The version string `version` reports after `OK ` (gearadmin prints it as is)."""
        ...

    def verbose(self) -> str:
        """The log level name: FATAL ALERT CRITICAL ERROR WARNING NOTICE INFO DEBUG."""
        ...

    def shutdown(self, graceful: bool) -> None:
        """Ask the server to stop (graceful: stop accepting, exit once no job is left).
        Must only schedule the stop: the `OK` returned with it still has to be written."""
        ...

    def keep_results(self) -> int:
        """How many seconds finished jobs' outcomes are kept (--keep-results); 0: none."""
        ...

    def result(self, handle: bytes) -> dict | None:
        """The kept outcome of a finished job (snapshot.result's dict: handle, function,
        unique, outcome, data, background, submitted_at, started_at, finished_at,
        worker), or None when unknown, unfinished or expired."""
        ...

    def results_by_unique(self, unique: bytes) -> list[dict]:
        """Kept outcomes of the jobs submitted with this unique key, newest first."""
        ...

    def results_page(self, function: bytes | None, outcome: int,
                     limit: int) -> list[dict]:
        """Kept outcomes newest first (snapshot.results_page's dicts, data cut to a
        preview), of one function or all, of one outcome (0 complete, 1 fail,
        2 exception) or all (-1)."""
        ...

    def set_retry(self, name: bytes, retries: int, backoff_s: float) -> None:
        """A function's own retry policy for background jobs (retries < 0: back to the
        server-wide one); kept in the store when there is one."""
        ...

    def retry_settings(self) -> dict:
        """snapshot.retry_settings(): retries, backoff_s, backoff_max_s, functions."""
        ...

    def dead_letters(self, function: bytes | None = None, limit: int = 1000,
                     before: int = 0) -> list[dict]:
        """Dead letters newest first (snapshot.dead_letters' dicts), paged by id."""
        ...

    def requeue_dead(self, handle: bytes) -> tuple[str, bytes | None]:
        """("ok", new handle), ("coalesced", None), ("full", None), ("refused", None)
        or ("notfound", None)."""
        ...

    def requeue_dead_function(self, name: bytes) -> int:
        """Re-queue every dead letter of a function; how many."""
        ...

    def discard_dead(self, handle: bytes) -> bool:
        """Forget a dead letter; False when the handle is unknown."""
        ...


Reply = Union[bytes, _Close]


def tokenize(line: bytes) -> list[bytes]:
    """Split a line exactly as gearmand does.

    Tokens are separated by single spaces and a run of spaces after a token is skipped, so a
    leading space yields an empty first token and trailing spaces an empty last one (an
    empty line is one empty token). Tabs and other whitespace are ordinary characters. Stops
    early once there are more than MAX_TOKENS, since that line is rejected anyway.
    """
    tokens = []
    pos = 0
    end = len(line)
    while len(tokens) <= MAX_TOKENS:
        space = line.find(b" ", pos)
        if space < 0:
            tokens.append(line[pos:])
            break
        tokens.append(line[pos:space])
        pos = space + 1
        while pos < end and line[pos] == 0x20:
            pos += 1
    return tokens


def _c_str(token: bytes) -> bytes:
    # gearmand keeps each token NUL-terminated and reads it with strcasecmp/strlen/printf,
    # so whatever follows a NUL byte inside a token is invisible to it.
    nul = token.find(b"\0")
    return token if nul < 0 else token[:nul]


def _atoi(token: bytes) -> int:
    """C atoi on 64-bit Linux: optional whitespace and sign, then digits up to the first
    other byte (none -> 0); strtol saturates at the long range and the cast to int keeps the
    low 32 bits, two's complement (observed: `4294967297` sets a limit of 1)."""
    i, n = 0, len(token)
    while i < n and token[i] in b" \t\n\v\f\r":
        i += 1
    negative = False
    if i < n and token[i] in b"+-":
        negative = token[i] == 0x2D
        i += 1
    start = i
    while i < n and 0x30 <= token[i] <= 0x39:
        i += 1
    value = int(token[start:i]) if i > start else 0
    if negative:
        value = -value
    value = max(-(1 << 63), min(value, (1 << 63) - 1))
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _limit(token: bytes) -> int:
    # gearmand stores a negative limit as 0, i.e. unlimited.
    return max(_atoi(token), 0)


def handle_line(line: bytes, ctx: AdminContext, peer_is_loopback: bool) -> Reply:
    """Answer one admin line (without its line ending) from a connection.

    Returns the reply bytes, or `CLOSE` when gearmand would close the connection. An
    exception from `ctx` is logged and answered `ERR UNKNOWN_ERROR`, gearmand's answer for an
    internal failure, so the connection never waits for a reply that will not come.
    """
    tokens = tokenize(line)
    if len(tokens) > MAX_TOKENS:
        return CLOSE
    args = [_c_str(token) for token in tokens]
    try:
        return _dispatch(args, ctx, peer_is_loopback)
    except Exception:
        log.exception("admin command %r failed", line[:200])
        return ERR_UNKNOWN_ERROR


def _dispatch(args: list[bytes], ctx: AdminContext, peer_is_loopback: bool) -> bytes:
    # Same tests in the same order as gearmand's text.cc: the first word picks the command
    # (case-insensitively) and extra words are ignored unless the command takes arguments.
    argc = len(args)
    command = args[0].lower()
    if command == b"workers":
        return _workers(ctx)
    if command == b"prioritystatus":
        return b"".join([b"%s\t%d\t%d\t%d\t%d\n" % (name, high, normal, low, workers)
                         for name, _, _, workers, high, normal, low in ctx.functions()]) + b".\n"
    if command == b"status":
        return b"".join([b"%s\t%d\t%d\t%d\n" % (name, total, running, workers)
                         for name, total, running, workers, _, _, _ in ctx.functions()]) + b".\n"
    if command == b"cancel" and argc >= 3:
        # gearmand answers nothing for a malformed cancel, which its fallback turns into
        # UNKNOWN_ERROR; with fewer than 3 words it is an unknown command instead.
        if argc == 3 and args[1].lower() == b"job":
            return OK if ctx.cancel_job(args[2]) else ERR_UNKNOWN_JOB
        return ERR_UNKNOWN_ERROR
    if command == b"show" and argc >= 2:
        return _show(args, ctx)
    if command == b"create":
        if argc == 3 and args[1].lower() == b"function":
            # Deliberate difference: gearmand takes the name as token length - 2, which
            # loses the last byte of a LF-terminated line; we always use the whole name.
            if ctx.create_function(args[2]) is False:
                return ERR_CREATE_FUNCTION % args[2]
            return OK
        return ERR_INVALID_ARGUMENTS % args[0]
    if command == b"drop":
        if argc == 3 and args[1].lower() == b"function":
            return _drop(ctx.drop_function(args[2]))
        return ERR_INVALID_ARGUMENTS % args[0]
    if command == b"maxqueue":
        return _maxqueue(args, ctx)
    if command == b"getpid":
        return b"OK %d\n" % ctx.pid()
    if command == b"verbose":
        return b"OK %s\n" % ctx.verbose().encode()
    if command == b"version":
        return b"OK %s\n" % ctx.version().encode()
    if command == b"shutdown":
        return _shutdown(args, ctx, peer_is_loopback)
    if command == b"result":
        return _result(args, ctx)
    if command == b"results":
        return _results(args, ctx)
    if command == b"dead":
        return _dead(args, ctx)
    if command == b"retry":
        return _retry(args, ctx)
    # gearmand prints the word right after "command", without a separator.
    return ERR_UNKNOWN_COMMAND % args[0]


def _workers(ctx: AdminContext) -> bytes:
    out = []
    for fd, ip, client_id, functions in ctx.connections():
        out.append(b"%d %s %s :%s\n" % (fd, ip.encode(), client_id,
                                        b"".join([b" " + name for name in functions])))
    out.append(b".\n")
    return b"".join(out)


def _show(args: list[bytes], ctx: AdminContext) -> bytes:
    argc = len(args)
    if argc == 3 and args[1].lower() == b"unique" and args[2].lower() == b"jobs":
        # One line per job; an empty unique key gives an empty line, as in gearmand.
        return b"".join([unique + b"\n" for *_, unique in ctx.jobs()]) + b".\n"
    if argc == 2 and args[1].lower() == b"jobs":
        return b"".join([b"%s\t%d\t%d\t%d\n" % (handle, retries, ignored, persisted)
                         for handle, retries, ignored, persisted, _ in ctx.jobs()]) + b".\n"
    return ERR_UNKNOWN_SHOW_ARGUMENTS


_DROP_REPLIES = {
    "ok": OK,
    "busy": ERR_DROP_BUSY,
    "notfound": ERR_DROP_NOT_FOUND,
    "queued": ERR_DROP_QUEUED,
}


def _drop(result: str) -> bytes:
    return _DROP_REPLIES[result]


def _maxqueue(args: list[bytes], ctx: AdminContext) -> bytes:
    argc = len(args)
    if argc == 1:
        return ERR_INVALID_ARGUMENTS % args[0]
    # Forms, as gearmand parses them (priority order high, normal, low):
    #   maxqueue f          -> every limit back to 0 (unlimited)
    #   maxqueue f n        -> n for every priority
    #   maxqueue f h n      -> high h, normal n, low unlimited (gearmand quirk, kept: a
    #                          script may rely on it and it is harmless)
    #   maxqueue f h n l    -> one limit per priority
    limits = [_limit(arg) for arg in args[2:]] + [0] * (5 - argc)
    if argc <= 3:
        limits = [limits[0]] * 3
    ctx.set_maxqueue(args[1], limits[0], limits[1], limits[2])
    return MAXQUEUE_OK


def _shutdown(args: list[bytes], ctx: AdminContext, peer_is_loopback: bool) -> bytes:
    if not peer_is_loopback:
        return ERR_SHUTDOWN_DENIED
    # The forms and answers of gearmand up to 1.1.14, the last version with the command.
    if len(args) == 1:
        graceful = False
    elif len(args) == 2 and args[1].lower() == b"graceful":
        graceful = True
    else:
        return ERR_INVALID_ARGUMENTS % args[0]
    ctx.shutdown(graceful)
    return OK


def _result(args: list[bytes], ctx: AdminContext) -> bytes:
    """`result HANDLE` or `result unique KEY`: the kept outcomes as a `.`-terminated
    listing like `show jobs`, one tab-separated line per result:

        handle function unique outcome background submitted_at started_at finished_at
        worker data_size data_base64

    outcome is complete, fail or exception; background 0/1; times are Unix seconds with
    microseconds (`-` for a job no worker started); the data is base64 because it is
    binary and may hold tabs and newlines. No kept result answers ERR UNKNOWN_JOB, as
    `cancel job` does for an unknown handle."""
    argc = len(args)
    # `result unique` without a key is a mistake, not the handle "unique".
    if argc == 2 and args[1] and args[1].lower() != b"unique":
        by_unique = False
    elif argc == 3 and args[1].lower() == b"unique":
        by_unique = True
    else:
        return ERR_INVALID_ARGUMENTS % args[0]
    if not ctx.keep_results():
        return ERR_RESULTS_NOT_KEPT
    if by_unique:
        found = ctx.results_by_unique(args[2])
    else:
        one = ctx.result(args[1])
        found = [one] if one is not None else []
    if not found:
        return ERR_UNKNOWN_JOB
    return b"".join([_result_line(r) for r in found]) + b".\n"


_OUTCOMES = (b"complete", b"fail", b"exception")


def _results(args: list[bytes], ctx: AdminContext) -> bytes:
    """`results [FUNCTION|*] [OUTCOME|*] [LIMIT]`: the newest kept outcomes (100 unless
    LIMIT, at most 1000), of one function or all (`*`), of one outcome (complete, fail,
    exception) or all, as `result` lists them but with each data cut to its first 256
    bytes (data_size is the whole). `.`-terminated; an empty listing when none match."""
    argc = len(args)
    if argc > 4:
        return ERR_INVALID_ARGUMENTS % args[0]
    function = args[1] if argc >= 2 and args[1] != b"*" else None
    outcome = -1
    if argc >= 3 and args[2] != b"*":
        if args[2].lower() not in _OUTCOMES:
            return ERR_INVALID_ARGUMENTS % args[0]
        outcome = _OUTCOMES.index(args[2].lower())
    limit = 100
    if argc == 4:
        if not args[3].isdigit() or not 1 <= int(args[3]) <= 1000:
            return ERR_INVALID_ARGUMENTS % args[0]
        limit = int(args[3])
    if not ctx.keep_results():
        return ERR_RESULTS_NOT_KEPT
    return b"".join([_result_line(r) for r in ctx.results_page(function, outcome, limit)]
                    ) + b".\n"


def _result_line(r: dict) -> bytes:
    started = r["started_at"]
    return b"%s\t%s\t%s\t%s\t%d\t%.6f\t%s\t%.6f\t%s\t%d\t%s\n" % (
        r["handle"], r["function"], r["unique"], r["outcome"].encode(),
        1 if r["background"] else 0, r["submitted_at"],
        b"%.6f" % started if started else b"-", r["finished_at"],
        r["worker"].encode("utf-8", "backslashreplace") or b"-",
        r.get("data_size", len(r["data"])),
        base64.b64encode(r["data"]))


def _escape(text: bytes) -> bytes:
    # One line per dead letter: the error text keeps its content, not its layout.
    return (text.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r"))


def _dead(args: list[bytes], ctx: AdminContext) -> bytes:
    """fastgear's dead letters (background jobs that used up their retries):

        dead [FUNCTION]                 listing, newest first, `.`-terminated:
            handle function unique reason attempts failed_at data_size error
        dead requeue HANDLE             OK NEW_HANDLE (OK coalesced: a job with its
                                        unique key is in memory already)
        dead requeue-function FUNCTION  OK COUNT
        dead discard HANDLE             OK

    reason is fail, exception, worker_lost or timeout; failed_at Unix seconds; the error
    text (a WORK_EXCEPTION's) has backslash, tab, CR and LF escaped as \\ \t \r \n.
    An unknown handle answers ERR UNKNOWN_JOB, as `cancel job` does."""
    argc = len(args)
    sub = args[1].lower() if argc >= 2 else b""
    if sub == b"requeue" and argc == 3:
        status, handle = ctx.requeue_dead(args[2])
        if status == "ok":
            return b"OK %s\n" % handle
        if status == "coalesced":
            return b"OK coalesced\n"
        if status == "refused":
            return ERR_ARGUMENT_TOO_LARGE
        return ERR_QUEUE_FULL if status == "full" else ERR_UNKNOWN_JOB
    if sub == b"requeue-function" and argc == 3:
        return b"OK %d\n" % ctx.requeue_dead_function(args[2])
    if sub == b"discard" and argc == 3:
        return OK if ctx.discard_dead(args[2]) else ERR_UNKNOWN_JOB
    if argc > 2 or (argc == 2 and sub in (b"requeue", b"requeue-function", b"discard")):
        return ERR_INVALID_ARGUMENTS % args[0]
    function = args[1] if argc == 2 else None
    out = []
    before = 0
    while True:
        page = ctx.dead_letters(function, 1000, before)
        for d in page:
            out.append(b"%s\t%s\t%s\t%s\t%d\t%.6f\t%d\t%s\n" % (
                d["handle"], d["function"], d["unique"], d["reason"].encode(),
                d["attempts"], d["failed_at"], d["data_size"], _escape(d["error"])))
        if len(page) < 1000:
            break
        before = page[-1]["id"]
    out.append(b".\n")
    return b"".join(out)


def _retry(args: list[bytes], ctx: AdminContext) -> bytes:
    """`retry FUNCTION N BACKOFF`: the function's background jobs run again up to N times
    after WORK_FAIL/EXCEPTION, the first after BACKOFF seconds (doubled each time, capped
    by --bg-retry-backoff-max). `retry FUNCTION default` goes back to --bg-retries.
    `retry` alone lists the policy: a `*` line for the server-wide one, then one line
    per function with its own (name, retries, backoff seconds), `.`-terminated."""
    argc = len(args)
    if argc == 1:
        r = ctx.retry_settings()
        lines = [b"*\t%d\t%g\n" % (r["retries"], r["backoff_s"])]
        lines += [b"%s\t%d\t%g\n" % row for row in r["functions"]]
        return b"".join(lines) + b".\n"
    if argc == 3 and args[2].lower() == b"default":
        ctx.set_retry(args[1], -1, 0.0)
        return OK
    if argc != 4:
        return ERR_INVALID_ARGUMENTS % args[0]
    try:
        retries = int(args[2])
        backoff = float(args[3])
    except ValueError:
        return ERR_INVALID_ARGUMENTS % args[0]
    if not 0 <= retries <= 1000000 or not 0 <= backoff <= 86400 * 30:
        return ERR_INVALID_ARGUMENTS % args[0]
    ctx.set_retry(args[1], retries, backoff)
    return OK
