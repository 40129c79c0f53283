"""Unit tests of the text admin protocol formatter (fastgear/admin.py), no server needed.

A fake context stands in for the server. Expected bytes come from gearmand 1.1.20+ds
(Debian bookworm) probed with a raw socket on 127.0.0.1; `GEARMAND_OBSERVED` replays those
probes verbatim against a context that looks like a freshly started gearmand. Tests marked
`difference` pin a deliberate fix listed in DESIGN.md §5.
"""
import base64

import pytest
from conftest import need_module

from fastgear import admin
from fastgear.admin import CLOSE, handle_line, tokenize

INVALID_ARGS = b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"


class FakeContext:
    """Records every call; answers from plain attributes the test sets."""

    def __init__(self):
        self.function_rows = []
        self.connection_rows = []
        self.job_rows = []
        self.known_handles = set()
        self.drop_result = "ok"
        self.create_result = None
        self.calls = []
        self.pid_value = 8501
        self.version_value = "1.1.20+ds"
        self.verbose_value = "INFO"
        self.keep_results_value = 0
        self.results = []   # kept results, oldest first, as snapshot.result dicts

    def functions(self):
        return list(self.function_rows)

    def connections(self):
        return list(self.connection_rows)

    def jobs(self):
        return list(self.job_rows)

    def cancel_job(self, handle):
        self.calls.append(("cancel_job", handle))
        return handle in self.known_handles

    def create_function(self, name):
        self.calls.append(("create_function", name))
        return self.create_result

    def drop_function(self, name):
        self.calls.append(("drop_function", name))
        return self.drop_result

    def set_maxqueue(self, name, high, normal, low):
        self.calls.append(("set_maxqueue", name, high, normal, low))

    def pid(self):
        return self.pid_value

    def version(self):
        return self.version_value

    def verbose(self):
        return self.verbose_value

    def shutdown(self, graceful):
        self.calls.append(("shutdown", graceful))

    def keep_results(self):
        return self.keep_results_value

    def result(self, handle):
        self.calls.append(("result", handle))
        return next((r for r in self.results if r["handle"] == handle), None)

    def results_by_unique(self, unique):
        self.calls.append(("results_by_unique", unique))
        return [r for r in reversed(self.results) if r["unique"] == unique]


def kept(handle, unique=b"", outcome="complete", data=b"", started_at=1700000000.25,
         worker="w1", background=True, function=b"f"):
    """A kept result as snapshot.result returns it."""
    return {"handle": handle, "function": function, "unique": unique, "outcome": outcome,
            "data": data, "background": background, "submitted_at": 1700000000.0,
            "started_at": started_at, "finished_at": 1700000001.5, "worker": worker}


@pytest.fixture
def ctx():
    return FakeContext()


def ask(ctx, line, loopback=True):
    return handle_line(line, ctx, loopback)


# --- the real gearmand's answers, replayed -------------------------------------------------

# line sent (without its line ending) -> bytes gearmand 1.1.20 answered on an empty server
# (pid 8501, --verbose INFO); None = connection closed without a reply.
GEARMAND_OBSERVED = {
    b"status": b".\n",
    b" status": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
    b"   status": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
    b"status ": b".\n",
    b"status   x": b".\n",
    b"STATUS": b".\n",
    b"status\tx": b"ERR UNKNOWN_COMMAND Unknown+server+commandstatus\tx\r\n",
    b"status\x00zz": b".\n",
    b"": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
    b"   ": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
    b"foo": b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n",
    b"foo bar": b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n",
    b"foo\x00bar": b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n",
    b"foo\x00bar baz": b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n",
    b"a b c d e": b"ERR UNKNOWN_COMMAND Unknown+server+commanda\r\n",
    b"a b c d e f": None,
    b"a b c d e ": None,
    b"status b c d e f": None,
    b"a b c d e\x00 f": None,
    b"a\tb": b"ERR UNKNOWN_COMMAND Unknown+server+commanda\tb\r\n",
    b"a\rb": b"ERR UNKNOWN_COMMAND Unknown+server+commanda\rb\r\n",
    b"prioritystatus": b".\n",
    b"show": b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n",
    b"show x": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"show jobs": b".\n",
    b"show jobs x": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"show unique jobs": b".\n",
    b"show unique": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"show unique jobs x": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"SHOW JOBS": b".\n",
    b"show  jobs": b".\n",
    b"show jobs ": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"show jobs\x00x": b".\n",
    b"cancel": b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n",
    b"cancel job": b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n",
    b"cancel job H:x:1": b"ERR UNKNOWN_JOB\r\n",
    b"cancel job H:x:1 extra": b"ERR UNKNOWN_ERROR\r\n",
    b"cancel foo bar": b"ERR UNKNOWN_ERROR\r\n",
    b"CANCEL JOB nope": b"ERR UNKNOWN_JOB\r\n",
    b"cancel job ": b"ERR UNKNOWN_JOB\r\n",
    b"cancel\x00x job h": b"ERR UNKNOWN_JOB\r\n",
    b"getpid": b"OK 8501\n",
    b"getpid x": b"OK 8501\n",
    b"verbose": b"OK INFO\n",
    b"version": b"OK 1.1.20+ds\n",
    b"VERSION extra": b"OK 1.1.20+ds\n",
    b"maxqueue": INVALID_ARGS + b"maxqueue\r\n",
    b"MAXQUEUE": INVALID_ARGS + b"MAXQUEUE\r\n",
    b"create": INVALID_ARGS + b"create\r\n",
    b"create function": INVALID_ARGS + b"create\r\n",
    b"create func x": INVALID_ARGS + b"create\r\n",
    b"CREATE FUNCTION abc": b"OK\r\n",
    b"create function x y": INVALID_ARGS + b"create\r\n",
    b"create function abc ": INVALID_ARGS + b"create\r\n",
    b"drop": INVALID_ARGS + b"drop\r\n",
    b"drop function": INVALID_ARGS + b"drop\r\n",
    b"drop function x y": INVALID_ARGS + b"drop\r\n",
}


@pytest.mark.parametrize("line", list(GEARMAND_OBSERVED), ids=repr)
def test_every_probed_line_gets_the_bytes_gearmand_sent(ctx, line):
    ctx.known_handles = set()
    expected = GEARMAND_OBSERVED[line]
    assert ask(ctx, line) == (CLOSE if expected is None else expected)


# --- tokenizing ----------------------------------------------------------------------------

def test_tokens_are_split_on_single_spaces_and_runs_of_spaces_are_skipped():
    assert tokenize(b"show  unique   jobs") == [b"show", b"unique", b"jobs"]


def test_a_leading_space_gives_an_empty_first_token():
    assert tokenize(b" status") == [b"", b"status"]
    assert tokenize(b"   status") == [b"", b"status"]


def test_trailing_spaces_give_an_empty_last_token():
    assert tokenize(b"status ") == [b"status", b""]
    assert tokenize(b"status   ") == [b"status", b""]


def test_an_empty_line_is_one_empty_token():
    assert tokenize(b"") == [b""]


def test_tabs_and_carriage_returns_are_not_separators():
    assert tokenize(b"a\tb c\rd") == [b"a\tb", b"c\rd"]


def test_tokenizing_stops_once_the_line_has_too_many_tokens():
    assert len(tokenize(b"a " * 10_000)) == admin.MAX_TOKENS + 1


def test_a_leading_space_makes_the_command_unknown_with_an_empty_name(ctx):
    assert ask(ctx, b" status") == b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"


def test_an_empty_line_is_an_unknown_command_with_nothing_after_command(ctx):
    assert ask(ctx, b"") == b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"


@pytest.mark.parametrize("line", [b"a b c d e f", b"a b c d e ", b"status 1 2 3 4 5 6 7",
                                  b"cancel job h 1 2 3"])
def test_six_or_more_tokens_close_the_connection_without_a_reply(ctx, line):
    assert ask(ctx, line) is CLOSE
    assert ctx.calls == []


def test_five_tokens_are_still_answered(ctx):
    assert ask(ctx, b"maxqueue f 1 2 3") == b"OK\n"


@pytest.mark.parametrize("line", [b"STATUS", b"Status", b"sTaTuS"])
def test_command_words_are_case_insensitive(ctx, line):
    ctx.function_rows = [(b"f", 0, 0, 1, 0, 0, 0)]
    assert ask(ctx, line) == b"f\t0\t0\t1\n.\n"


def test_bytes_after_a_nul_inside_a_token_are_ignored(ctx):
    assert ask(ctx, b"status\x00zz") == b".\n"
    assert ask(ctx, b"foo\x00bar") == b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n"
    ask(ctx, b"cancel job H:1\x00junk")
    assert ctx.calls == [("cancel_job", b"H:1")]


def test_a_tab_is_part_of_the_command_word(ctx):
    assert ask(ctx, b"status\tx") == b"ERR UNKNOWN_COMMAND Unknown+server+commandstatus\tx\r\n"


def test_an_unknown_command_echoes_its_first_word_right_after_command(ctx):
    expected = b"ERR UNKNOWN_COMMAND Unknown+server+commandFrobnicate\r\n"
    assert ask(ctx, b"Frobnicate now") == expected


@pytest.mark.parametrize("line,expected", [
    (b"workers x y", b".\n"), (b"status x", b".\n"), (b"prioritystatus a b c d", b".\n"),
    (b"getpid x", b"OK 8501\n"), (b"verbose x", b"OK INFO\n"),
    (b"VERSION extra", b"OK 1.1.20+ds\n")])
def test_extra_words_after_a_command_without_arguments_are_ignored(ctx, line, expected):
    assert ask(ctx, line) == expected


# --- status, prioritystatus, workers -------------------------------------------------------

def test_status_lists_every_function_with_tab_separated_counts(ctx):
    # observed on gearmand: one job running and one queued on fa (2 workers, fa registered
    # twice by one worker), two queued on fb.
    ctx.function_rows = [(b"fb", 2, 0, 1, 1, 0, 1), (b"fa", 2, 1, 2, 0, 1, 0)]
    assert ask(ctx, b"status") == b"fb\t2\t0\t1\nfa\t2\t1\t2\n.\n"


def test_status_includes_functions_with_nothing_queued_and_no_workers(ctx):
    ctx.function_rows = [(b"idle", 0, 0, 0, 0, 0, 0)]
    assert ask(ctx, b"status") == b"idle\t0\t0\t0\n.\n"


def test_status_of_a_server_without_functions_is_just_the_terminator(ctx):
    assert ask(ctx, b"status") == b".\n"


def test_status_keeps_the_order_the_server_gives(ctx):
    ctx.function_rows = [(b"z", 0, 0, 0, 0, 0, 0), (b"a", 0, 0, 0, 0, 0, 0),
                         (b"m", 0, 0, 0, 0, 0, 0)]
    assert ask(ctx, b"status") == b"z\t0\t0\t0\na\t0\t0\t0\nm\t0\t0\t0\n.\n"


def test_prioritystatus_lists_queued_jobs_per_priority_then_workers(ctx):
    # observed on gearmand with the same state as the status test above
    ctx.function_rows = [(b"fb", 2, 0, 1, 1, 0, 1), (b"fa", 2, 1, 2, 0, 1, 0)]
    assert ask(ctx, b"prioritystatus") == b"fb\t1\t0\t1\t1\nfa\t0\t1\t0\t2\n.\n"


def test_workers_lists_each_connection_with_its_functions_newest_first(ctx):
    # observed on gearmand: two plain connections and a worker with client id worker-7
    # that sent CAN_DO fa, fb, fa (gearmand lists them newest first: fa fb fa)
    ctx.connection_rows = [(17, "127.0.0.1", b"-", []), (16, "127.0.0.1", b"-", []),
                           (15, "127.0.0.1", b"worker-7", [b"fa", b"fb", b"fa"])]
    assert ask(ctx, b"workers") == (b"17 127.0.0.1 - :\n16 127.0.0.1 - :\n"
                                    b"15 127.0.0.1 worker-7 : fa fb fa\n.\n")


def test_workers_prints_ipv6_peers_as_given(ctx):
    ctx.connection_rows = [(9, "::1", b"-", [b"f"])]
    assert ask(ctx, b"workers") == b"9 ::1 - : f\n.\n"


def test_workers_with_no_connections_is_just_the_terminator(ctx):
    assert ask(ctx, b"workers") == b".\n"


# --- show jobs, show unique jobs -----------------------------------------------------------

def test_show_jobs_lists_handle_retries_ignored_and_persisted(ctx):
    ctx.job_rows = [(b"H:vm:1", 1, 0, 1, b"u1"), (b"H:vm:2", 0, 1, 0, b"")]
    assert ask(ctx, b"show jobs") == b"H:vm:1\t1\t0\t1\nH:vm:2\t0\t1\t0\n.\n"


def test_show_unique_jobs_lists_one_unique_per_line_an_empty_one_as_an_empty_line(ctx):
    # observed on gearmand: jobs with uniques "", u1, u4, u3
    ctx.job_rows = [(b"H:vm:2", 0, 0, 1, b""), (b"H:vm:1", 0, 0, 1, b"u1"),
                    (b"H:vm:4", 0, 0, 1, b"u4"), (b"H:vm:3", 0, 0, 1, b"u3")]
    assert ask(ctx, b"show unique jobs") == b"\nu1\nu4\nu3\n.\n"


def test_show_words_are_case_insensitive(ctx):
    assert ask(ctx, b"SHOW Unique JOBS") == b".\n"


def test_show_without_an_argument_is_an_unknown_command(ctx):
    assert ask(ctx, b"show") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"


@pytest.mark.parametrize("line", [b"show x", b"show jobs x", b"show unique", b"show jobs ",
                                  b"show unique jobs x", b"show unique x"])
def test_show_with_other_arguments_is_rejected(ctx, line):
    assert ask(ctx, line) == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"


# --- cancel job ----------------------------------------------------------------------------

def test_cancel_job_of_a_known_handle_answers_ok(ctx):
    ctx.known_handles = {b"H:vm:1"}
    assert ask(ctx, b"cancel job H:vm:1") == b"OK\r\n"
    assert ctx.calls == [("cancel_job", b"H:vm:1")]


def test_cancel_job_of_an_unknown_handle_answers_unknown_job(ctx):
    assert ask(ctx, b"CANCEL JOB nope") == b"ERR UNKNOWN_JOB\r\n"


@pytest.mark.parametrize("line", [b"cancel job H:1 extra", b"cancel foo bar", b"cancel jobs H:1"])
def test_cancel_with_extra_or_wrong_words_answers_unknown_error(ctx, line):
    assert ask(ctx, line) == b"ERR UNKNOWN_ERROR\r\n"
    assert ctx.calls == []


@pytest.mark.parametrize("line", [b"cancel", b"cancel job", b"Cancel x"])
def test_cancel_without_a_handle_is_an_unknown_command(ctx, line):
    word = line.split(b" ")[0]
    assert ask(ctx, line) == b"ERR UNKNOWN_COMMAND Unknown+server+command" + word + b"\r\n"


def test_cancel_job_with_a_trailing_space_looks_up_an_empty_handle(ctx):
    assert ask(ctx, b"cancel job ") == b"ERR UNKNOWN_JOB\r\n"
    assert ctx.calls == [("cancel_job", b"")]


# --- create function, drop function --------------------------------------------------------

def test_create_function_creates_it_and_answers_ok(ctx):
    assert ask(ctx, b"CREATE FUNCTION Abc") == b"OK\r\n"
    assert ctx.calls == [("create_function", b"Abc")]


@pytest.mark.difference
def test_create_function_keeps_the_whole_name_from_an_lf_terminated_line(ctx):
    # gearmand created "xy" for "create function xyz\n"; the I/O loop strips the line ending
    # the same way for LF and CRLF, so the name is always whole here.
    ask(ctx, b"create function xyz")
    assert ctx.calls == [("create_function", b"xyz")]


@pytest.mark.parametrize("line", [b"create", b"create function", b"create func x",
                                  b"create function x y", b"create function abc "])
def test_create_in_any_other_form_is_invalid_arguments(ctx, line):
    assert ask(ctx, line) == INVALID_ARGS + b"create\r\n"
    assert ctx.calls == []


def test_invalid_arguments_echoes_the_command_word_as_sent(ctx):
    assert ask(ctx, b"Create") == INVALID_ARGS + b"Create\r\n"


def test_create_function_refused_by_the_server_answers_create_function_error(ctx):
    ctx.create_result = False
    assert ask(ctx, b"create function bad") == b"ERR CREATE_FUNCTION bad\r\n"


@pytest.mark.parametrize("result,expected", [
    ("ok", b"OK\r\n"),
    ("busy", b"ERR there are still connected workers or executing clients\r\n"),
    ("notfound", b"ERR function not found\r\n")])
def test_drop_function_answers_each_outcome_as_gearmand(ctx, result, expected):
    ctx.drop_result = result
    assert ask(ctx, b"Drop Function fa") == expected
    assert ctx.calls == [("drop_function", b"fa")]


@pytest.mark.difference
def test_drop_function_with_queued_jobs_is_refused_with_an_error_line(ctx):
    ctx.drop_result = "queued"
    assert ask(ctx, b"drop function fa") == b"ERR there are still queued jobs\r\n"


@pytest.mark.parametrize("line", [b"drop", b"drop function", b"drop function x y",
                                  b"drop fn x"])
def test_drop_in_any_other_form_is_invalid_arguments(ctx, line):
    assert ask(ctx, line) == INVALID_ARGS + b"drop\r\n"
    assert ctx.calls == []


# --- maxqueue ------------------------------------------------------------------------------

@pytest.mark.parametrize("word", [b"maxqueue", b"MAXQUEUE"])
def test_maxqueue_without_a_function_is_invalid_arguments(ctx, word):
    assert ask(ctx, word) == INVALID_ARGS + word + b"\r\n"
    assert ctx.calls == []


def test_maxqueue_with_only_a_function_makes_every_priority_unlimited(ctx):
    assert ask(ctx, b"maxqueue f") == b"OK\n"
    assert ctx.calls == [("set_maxqueue", b"f", 0, 0, 0)]


def test_maxqueue_with_one_value_applies_it_to_every_priority(ctx):
    ask(ctx, b"maxqueue f 10")
    assert ctx.calls == [("set_maxqueue", b"f", 10, 10, 10)]


def test_maxqueue_with_two_values_sets_high_and_normal_and_leaves_low_unlimited(ctx):
    # observed on gearmand: `maxqueue f 1 2` accepted 1 high, 2 normal, every low job
    ask(ctx, b"maxqueue f 1 2")
    assert ctx.calls == [("set_maxqueue", b"f", 1, 2, 0)]


def test_maxqueue_with_three_values_sets_high_normal_and_low(ctx):
    ask(ctx, b"maxqueue f 3 2 1")
    assert ctx.calls == [("set_maxqueue", b"f", 3, 2, 1)]


@pytest.mark.parametrize("value,limit", [
    (b"2x", 2), (b"-5", 0), (b"abc", 0), (b"+3", 3), (b"\t2", 2), (b"0", 0),
    (b"4294967297", 1), (b"2147483648", 0), (b"2147483647", 2147483647),
    (b"99999999999999999999", 0), (b"-99999999999999999999", 0), (b"", 0), (b"-", 0)])
def test_maxqueue_values_are_read_like_c_atoi_and_negatives_mean_unlimited(ctx, value, limit):
    # observed on gearmand (by how many jobs it then accepted): 2x -> 2, -5 -> unlimited,
    # abc -> unlimited, +3 -> 3, 4294967297 -> 1, 2147483648 -> unlimited
    ask(ctx, b"maxqueue f " + value)
    assert ctx.calls == [("set_maxqueue", b"f", limit, limit, limit)]


def test_maxqueue_with_a_trailing_space_targets_the_empty_function_name(ctx):
    ask(ctx, b"maxqueue ")
    assert ctx.calls == [("set_maxqueue", b"", 0, 0, 0)]


def test_maxqueue_passes_the_name_as_sent_for_the_server_to_match_exactly(ctx):
    ask(ctx, b"MaxQueue FC 1")
    assert ctx.calls == [("set_maxqueue", b"FC", 1, 1, 1)]


@pytest.mark.difference
def test_maxqueue_answers_ok_with_a_bare_lf_line_ending(ctx):
    assert ask(ctx, b"maxqueue f 1") == b"OK\n"


@pytest.mark.difference
def test_maxqueue_answer_is_accepted_by_the_python_gearman_admin_client(ctx):
    protocol = need_module("python3_gearman.protocol", pip="python3-gearman")
    handler_module = need_module("python3_gearman.admin_client_handler", pip="python3-gearman")
    _, args, used = protocol.parse_text_command(ask(ctx, b"maxqueue f 1"))
    handler = handler_module.GearmanAdminClientCommandHandler(connection_manager=None)
    handler.recv_server_maxqueue(args["raw_text"])  # raises ProtocolError on b"OK\r\n"
    assert used == len(b"OK\n")


# --- getpid, verbose, version --------------------------------------------------------------

def test_getpid_answers_ok_and_the_pid_on_an_lf_line(ctx):
    ctx.pid_value = 13255
    assert ask(ctx, b"getpid") == b"OK 13255\n"


def test_verbose_answers_the_log_level_name(ctx):
    ctx.verbose_value = "ERROR"
    assert ask(ctx, b"Verbose") == b"OK ERROR\n"


def test_version_answers_whatever_version_the_server_reports(ctx):
    ctx.version_value = "0.1.0"
    assert ask(ctx, b"version") == b"OK 0.1.0\n"


# --- shutdown (fastgear only: gearmand 1.1.20 has no such command) -------------------------

@pytest.mark.difference
def test_shutdown_from_loopback_answers_ok_and_stops_at_once(ctx):
    assert ask(ctx, b"shutdown") == b"OK\r\n"
    assert ctx.calls == [("shutdown", False)]


@pytest.mark.difference
def test_shutdown_graceful_from_loopback_asks_for_a_graceful_stop(ctx):
    assert ask(ctx, b"SHUTDOWN Graceful") == b"OK\r\n"
    assert ctx.calls == [("shutdown", True)]


@pytest.mark.difference
@pytest.mark.parametrize("line", [b"shutdown", b"shutdown graceful", b"shutdown now"])
def test_shutdown_from_a_remote_peer_is_refused_and_stops_nothing(ctx, line):
    assert ask(ctx, line, loopback=False) == (
        b"ERR ACCESS_DENIED shutdown+is+only+accepted+from+loopback\r\n")
    assert ctx.calls == []


@pytest.mark.difference
@pytest.mark.parametrize("line", [b"shutdown now", b"shutdown graceful x", b"shutdown "])
def test_shutdown_with_other_arguments_is_invalid_arguments_and_stops_nothing(ctx, line):
    assert ask(ctx, line) == INVALID_ARGS + b"shutdown\r\n"
    assert ctx.calls == []


# --- failures ------------------------------------------------------------------------------

def test_a_failing_server_context_is_answered_unknown_error(ctx, caplog):
    def broken():
        raise RuntimeError("engine snapshot failed")
    ctx.functions = broken
    assert ask(ctx, b"status") == b"ERR UNKNOWN_ERROR\r\n"
    assert "engine snapshot failed" in caplog.text


def test_an_unexpected_drop_outcome_is_answered_unknown_error(ctx):
    ctx.drop_result = "maybe"
    assert ask(ctx, b"drop function f") == b"ERR UNKNOWN_ERROR\r\n"


def test_close_is_a_single_sentinel_distinct_from_any_reply():
    assert not isinstance(CLOSE, bytes)
    assert admin.CLOSE is CLOSE
    assert repr(CLOSE) == "fastgear.admin.CLOSE"


def test_every_reply_is_bytes_ending_in_a_newline(ctx):
    lines = [b"status", b"workers", b"prioritystatus", b"show jobs", b"show unique jobs",
             b"cancel job x", b"create function f", b"drop function f", b"maxqueue f",
             b"getpid", b"verbose", b"version", b"shutdown", b"nonsense", b"",
             b"result H:x:1", b"result unique u"]
    for line in lines:
        reply = ask(ctx, line)
        assert isinstance(reply, bytes) and reply.endswith(b"\n"), line


# --- result (fastgear's own command: kept outcomes of finished jobs) ------------------------

def test_result_of_a_kept_job_is_one_tab_separated_line_then_the_terminator(ctx):
    ctx.keep_results_value = 60
    ctx.results = [kept(b"H:x:1", b"u1", data=b"done")]
    assert ask(ctx, b"result H:x:1") == (
        b"H:x:1\tf\tu1\tcomplete\t1\t1700000000.000000\t1700000000.250000"
        b"\t1700000001.500000\tw1\t4\tZG9uZQ==\n.\n")


def test_result_data_is_base64_so_tabs_newlines_and_binary_stay_on_one_line(ctx):
    ctx.keep_results_value = 60
    ctx.results = [kept(b"H:x:1", data=b"a\tb\nc\xff\x00")]
    reply = ask(ctx, b"result H:x:1")
    line, terminator = reply.split(b"\n", 1)
    assert terminator == b".\n"
    fields = line.split(b"\t")
    assert len(fields) == 11
    assert base64.b64decode(fields[10]) == b"a\tb\nc\xff\x00"
    assert fields[9] == b"7"


def test_result_shows_fail_and_exception_outcomes_and_foreground_jobs(ctx):
    ctx.keep_results_value = 60
    ctx.results = [kept(b"H:x:1", outcome="fail", background=False),
                   kept(b"H:x:2", outcome="exception", data=b"boom")]
    assert ask(ctx, b"result H:x:1").split(b"\t")[3:5] == [b"fail", b"0"]
    assert ask(ctx, b"result H:x:2").split(b"\t")[3:5] == [b"exception", b"1"]


def test_result_of_a_job_no_worker_started_shows_a_dash_for_its_start_time(ctx):
    ctx.keep_results_value = 60
    ctx.results = [kept(b"H:x:1", outcome="fail", started_at=None, worker="")]
    fields = ask(ctx, b"result H:x:1").split(b"\t")
    assert fields[6] == b"-"
    assert fields[8] == b"-"


def test_result_by_unique_lists_every_kept_job_with_that_key_newest_first(ctx):
    ctx.keep_results_value = 60
    ctx.results = [kept(b"H:x:1", b"k"), kept(b"H:x:2", b"other"), kept(b"H:x:3", b"k")]
    reply = ask(ctx, b"result unique k")
    assert [line.split(b"\t")[0] for line in reply.split(b"\n")[:-2]] == [b"H:x:3", b"H:x:1"]
    assert reply.endswith(b"\n.\n")
    assert ("results_by_unique", b"k") in ctx.calls


def test_result_words_are_case_insensitive_but_the_handle_and_key_are_not(ctx):
    ctx.keep_results_value = 60
    ctx.results = [kept(b"H:x:1", b"Key")]
    assert ask(ctx, b"RESULT UNIQUE Key").startswith(b"H:x:1\t")
    assert ask(ctx, b"result unique key") == b"ERR UNKNOWN_JOB\r\n"
    assert ask(ctx, b"result h:x:1") == b"ERR UNKNOWN_JOB\r\n"


def test_result_of_an_unknown_or_expired_job_answers_unknown_job(ctx):
    ctx.keep_results_value = 60
    assert ask(ctx, b"result H:x:9") == b"ERR UNKNOWN_JOB\r\n"
    assert ask(ctx, b"result unique nothing") == b"ERR UNKNOWN_JOB\r\n"


def test_result_when_results_are_not_kept_says_how_to_keep_them(ctx):
    ctx.results = [kept(b"H:x:1")]
    assert ask(ctx, b"result H:x:1") == (
        b"ERR RESULTS_NOT_KEPT start+the+server+with+--keep-results+SECONDS\r\n")
    assert ("result", b"H:x:1") not in ctx.calls


@pytest.mark.parametrize("line", [b"result", b"result ", b"result a b", b"result unique",
                                  b"result unique a b", b"result x y z"])
def test_result_in_any_other_form_is_invalid_arguments(ctx, line):
    ctx.keep_results_value = 60
    assert ask(ctx, line) == INVALID_ARGS + b"result\r\n"
