"""The gearmand command line, as fastgear parses it: names, defaults, quirks, refusals.

Nothing here starts a server: `serve` is exercised with `--check-args` or with a fake
`fastgear.server` module, and the real gearmand is only ever run with `--check-args`.
"""
import dataclasses
import os
import subprocess
import sys
import types

import pytest
from conftest import GEARMAND, ROOT, need_gearmand

import fastgear
from fastgear import cli, config
from fastgear.config import Config, ConfigError

# gearmand 1.1.20's defaults as `gearmand --help` and PROTOCOL.md section 5 state them,
# written out independently of the OPTIONS table so a wrong row cannot hide.
GEARMAND_DEFAULTS = {
    "port": 4730, "listen": None, "backlog": 32, "daemon": False, "exceptions": False,
    "file_descriptors": None, "job_retries": 0, "job_handle_prefix": None,
    "hashtable_buckets": 991, "keepalive": False, "keepalive_idle": -1,
    "keepalive_interval": -1, "keepalive_count": -1, "log_file": "/var/log/gearmand.log",
    "pid_file": "/var/gearmand.pid", "pid_file_is_default": True, "protocol": (),
    "round_robin": False, "queue_type": "builtin", "syslog": False, "coredump": False,
    "threads": 4, "io": "auto", "user": None, "verbose": "ERROR", "worker_wakeup": 0,
    "ssl": False,
    "ssl_ca_file": None, "ssl_certificate": None, "ssl_key": None, "http_port": 8080,
    "libsqlite3_db": None, "libsqlite3_table": "gearman_queue",
    "store_queue_on_shutdown": False, "store": None, "store_sync": "normal", "store_lease": 10,
    "monitor": "127.0.0.1:4731", "keep_results": 0, "keep_results_bytes": 64 << 20,
    "bg_retries": 0, "bg_retry_backoff": 1.0, "bg_retry_backoff_max": 300.0,
    "dead_letters": 10000, "dead_letters_bytes": 64 << 20,
    "admin_allow": None, "admin_allow_read": None,
    "max_packet": 256 << 20, "max_function_name": 8192, "max_unique": 64,
    "max_output": 16 << 20, "max_output_hard": 512 << 20, "max_connections": 0,
    "max_queued_bytes": 0, "trim_after_jobs": 100000, "shutdown_timeout": 0, "wakeup_timeout": 1000,
    # gearmand's fixed bind() retry period and glibc's syslog socket (_PATH_LOG)
    "bind_retry_timeout": 20, "syslog_socket": "/dev/log",
    "libpq_conninfo": None, "libpq_table": "queue",
    "mysql_host": "localhost", "mysql_port": 3306, "mysql_user": None,
    "mysql_password": None, "mysql_db": None, "mysql_table": "gearman_queue",
    "mysql_timeout": 10,
    "redis_server": None, "redis_port": None, "redis_password": None,
    "redis_prefix": "_gear_", "libmemcached_servers": None, "libmemcached_prefix": "gear_",
    "config_file": "/etc/gearmand.conf", "check_args": False,
}

# Defaults fastgear changes on purpose (README, compatibility table): a listen backlog
# of 32 drops connections when thousands of workers reconnect at once after a restart.
DELIBERATE_DEFAULTS = {"backlog": 4096}
FASTGEAR_DEFAULTS = {**GEARMAND_DEFAULTS, **DELIBERATE_DEFAULTS}

# (long, short, field, token given, value expected) for every gearmand 1.1.20 flag.
FLAGS = [
    ("backlog", "b", "backlog", "64", 64),
    ("daemon", "d", "daemon", None, True),
    ("exceptions", None, "exceptions", None, True),
    ("file-descriptors", "f", "file_descriptors", "2048", 2048),
    ("job-retries", "j", "job_retries", "3", 3),
    ("job-handle-prefix", None, "job_handle_prefix", "H:box", "H:box"),
    ("hashtable-buckets", None, "hashtable_buckets", "1733003", 1733003),
    ("keepalive", None, "keepalive", None, True),
    ("keepalive-idle", None, "keepalive_idle", "30", 30),
    ("keepalive-interval", None, "keepalive_interval", "10", 10),
    ("keepalive-count", None, "keepalive_count", "5", 5),
    ("log-file", "l", "log_file", "stderr", "stderr"),
    ("listen", "L", "listen", "127.0.0.1", "127.0.0.1"),
    ("pid-file", "P", "pid_file", "/tmp/g.pid", "/tmp/g.pid"),
    ("protocol", "r", "protocol", "HTTP", ("http",)),
    ("round-robin", "R", "round_robin", None, True),
    ("queue-type", "q", "queue_type", "LibSQLite3", "libsqlite3"),
    ("config-file", None, "config_file", os.devnull, os.devnull),
    ("syslog", None, "syslog", None, True),
    ("coredump", None, "coredump", None, True),
    ("threads", "t", "threads", "8", 8),
    ("io", None, "io", "EPOLL", "epoll"),      # fastgear's: the I/O loops' backend
    ("user", "u", "user", "nobody", "nobody"),
    ("verbose", None, "verbose", "info", "INFO"),
    ("worker-wakeup", "w", "worker_wakeup", "2", 2),
    ("check-args", None, "check_args", None, True),
    ("http-port", None, "http_port", "8081", 8081),
    ("port", "p", "port", "4731", 4731),
    ("ssl", None, "ssl", None, True),
    ("ssl-ca-file", None, "ssl_ca_file", "/ca.pem", "/ca.pem"),
    ("ssl-certificate", None, "ssl_certificate", "/cert.pem", "/cert.pem"),
    ("ssl-key", None, "ssl_key", "/key.pem", "/key.pem"),
    ("libmemcached-servers", None, "libmemcached_servers", "a:11211", "a:11211"),
    ("libmemcached-prefix", None, "libmemcached_prefix", "x_", "x_"),
    ("libsqlite3-db", None, "libsqlite3_db", "/q.db", "/q.db"),
    ("store-queue-on-shutdown", None, "store_queue_on_shutdown", None, True),
    ("libsqlite3-table", None, "libsqlite3_table", "jobs", "jobs"),
    ("store", None, "store", "/s.db", "/s.db"),
    ("store-sync", None, "store_sync", "FULL", "full"),
    ("store-lease", None, "store_lease", "3", 3),
    ("monitor", None, "monitor", "[::1]:0", "[::1]:0"),
    ("keep-results", None, "keep_results", "600", 600),
    ("keep-results-bytes", None, "keep_results_bytes", "1048576", 1048576),
    ("bg-retries", None, "bg_retries", "3", 3),
    ("bg-retry-backoff", None, "bg_retry_backoff", "0.25", 0.25),
    ("bg-retry-backoff-max", None, "bg_retry_backoff_max", "60", 60.0),
    ("dead-letters", None, "dead_letters", "500", 500),
    ("dead-letters-bytes", None, "dead_letters_bytes", "1048576", 1048576),
    ("admin-allow", None, "admin_allow", "10.0.0.0/8,cn:ops", "10.0.0.0/8,cn:ops"),
    ("admin-allow-read", None, "admin_allow_read", "::1", "::1"),
    ("max-packet", None, "max_packet", "1048576", 1048576),
    ("max-function-name", None, "max_function_name", "512", 512),
    ("max-unique", None, "max_unique", "128", 128),
    ("max-output", None, "max_output", "65536", 65536),
    ("max-output-hard", None, "max_output_hard", "1048576", 1048576),
    ("max-connections", None, "max_connections", "10000", 10000),
    ("max-queued-bytes", None, "max_queued_bytes", "1073741824", 1073741824),
    ("trim-after-jobs", None, "trim_after_jobs", "5000", 5000),
    ("shutdown-timeout", None, "shutdown_timeout", "30", 30),
    ("wakeup-timeout", None, "wakeup_timeout", "250", 250),
    ("bind-retry-timeout", None, "bind_retry_timeout", "3", 3),
    ("syslog-socket", None, "syslog_socket", "/run/log.sock", "/run/log.sock"),
    ("libpq-conninfo", None, "libpq_conninfo", "dbname=g", "dbname=g"),
    ("libpq-table", None, "libpq_table", "jobs", "jobs"),
    ("redis-server", None, "redis_server", "r1", "r1"),
    ("redis-port", None, "redis_port", "6380", "6380"),
    ("redis-password", None, "redis_password", "pw", "pw"),
    ("redis-prefix", None, "redis_prefix", "p_", "p_"),
    ("mysql-host", None, "mysql_host", "db", "db"),
    ("mysql-port", None, "mysql_port", "3307", 3307),
    ("mysql-user", None, "mysql_user", "u", "u"),
    ("mysql-password", None, "mysql_password", "pw", "pw"),
    ("mysql-db", None, "mysql_db", "g", "g"),
    ("mysql-table", None, "mysql_table", "jobs", "jobs"),
    ("mysql-timeout", None, "mysql_timeout", "3", 3),
]


@pytest.fixture(autouse=True)
def no_system_config_file(monkeypatch, tmp_path):
    """Keep a real /etc/gearmand.conf on the test machine out of every test."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.conf"))
    monkeypatch.delenv("GEARMAND_PORT", raising=False)


def parse(*argv, environ=None):
    return cli.config_from_argv(list(argv), environ={} if environ is None else environ)


def refusal(*argv):
    with pytest.raises(ConfigError) as info:
        config.validate(parse(*argv))
    return str(info.value)


@pytest.fixture
def fake_server(monkeypatch):
    """Stands in for the compiled server so `serve` can be run to the hand-over point."""
    calls = []
    fake = types.ModuleType("fastgear.server")

    def run(cfg):
        calls.append(cfg)
        return 7
    fake.run = run
    monkeypatch.setitem(sys.modules, "fastgear.server", fake)
    monkeypatch.setattr(fastgear, "server", fake, raising=False)
    return calls


# --- every flag, its names and its default -------------------------------------------


def test_the_options_table_has_one_row_per_gearmand_flag():
    assert [(o.long, o.short, o.field) for o in config.OPTIONS] == \
        [(long, short, field) for long, short, field, _, _ in FLAGS]


def test_config_has_exactly_the_fields_the_server_reads():
    assert set(config.fields()) == set(GEARMAND_DEFAULTS)
    assert set(config.fields()) == {o.field for o in config.OPTIONS} | {"pid_file_is_default"}


@pytest.mark.parametrize("long, short, field, token, expected", FLAGS,
                         ids=[row[0] for row in FLAGS])
def test_long_flag_sets_its_field(long, short, field, token, expected):
    argv = ["--" + long] + ([] if token is None else [token])
    assert getattr(parse(*argv), field) == expected


@pytest.mark.parametrize("long, short, field, token, expected",
                         [row for row in FLAGS if row[1]], ids=[r[0] for r in FLAGS if r[1]])
def test_short_flag_sets_the_same_field_as_its_long_name(long, short, field, token, expected):
    argv = ["-" + short] + ([] if token is None else [token])
    assert getattr(parse(*argv), field) == expected


def test_defaults_equal_gearmands_except_the_deliberate_differences():
    assert dataclasses.asdict(Config()) == FASTGEAR_DEFAULTS
    assert dataclasses.asdict(parse()) == FASTGEAR_DEFAULTS
    for row in config.OPTIONS:
        assert row.default == FASTGEAR_DEFAULTS[row.field], row.long


def test_an_explicit_backlog_is_honoured_even_gearmands_default():
    assert parse("-b", "32").backlog == 32
    assert parse("--backlog", "100000").backlog == 100000


def test_defaults_pass_validation():
    assert config.validate(parse()) == Config()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().port = 1


def test_short_flags_cluster_and_take_attached_values_like_boost():
    cfg = parse("-dR", "-p4731", "--threads=2", "-j7")
    assert (cfg.daemon, cfg.round_robin, cfg.port, cfg.threads, cfg.job_retries) == \
        (True, True, 4731, 2, 7)


def test_negative_numbers_are_values_not_options():
    assert parse("-b", "-1").backlog == -1
    assert parse("--keepalive-idle", "-1").keepalive_idle == -1


# --- gearmand's quirks -----------------------------------------------------------------


@pytest.mark.parametrize("given, stored", [("255", 255), ("256", 0), ("257", 1), ("-1", 255)])
def test_job_retries_is_truncated_to_eight_bits_like_gearmand(given, stored):
    assert parse("-j", given).job_retries == stored


@pytest.mark.parametrize("given, stored", [("300", 44), ("256", 0), ("1", 1)])
def test_worker_wakeup_is_truncated_to_eight_bits_like_gearmand(given, stored):
    assert parse("-w", given).worker_wakeup == stored


@pytest.mark.parametrize("level", config.VERBOSE_LEVELS)
def test_every_verbose_level_is_accepted_in_any_case(level):
    assert config.validate(parse("--verbose", level.lower())).verbose == level
    assert config.validate(parse("--verbose", level)).verbose == level


def test_pid_file_is_default_only_when_no_pid_file_was_given():
    assert parse().pid_file_is_default is True
    assert parse("-P", "/var/gearmand.pid").pid_file_is_default is False


def test_queue_type_builtin_is_accepted_in_any_case():
    assert config.validate(parse("-q", "BUILTIN")).queue_type == "builtin"


def test_queue_module_options_without_their_queue_type_are_accepted_like_gearmand():
    cfg = config.validate(parse("--libsqlite3-db", "/q.db", "--mysql-port", "3307",
                                "--redis-server", "r", "--libpq-conninfo", "x",
                                "--libmemcached-servers", "m", "--store-queue-on-shutdown"))
    assert cfg.queue_type == "builtin" and cfg.libsqlite3_db == "/q.db"


def test_ssl_files_and_http_port_alone_are_accepted_like_gearmand():
    config.validate(parse("--ssl-ca-file", "a", "--ssl-certificate", "b", "--ssl-key", "c",
                          "--http-port", "8081"))


def test_user_is_accepted_here_and_checked_by_the_server():
    assert config.validate(parse("-u", "nobody")).user == "nobody"


def test_zero_threads_is_accepted_as_gearmands_guess():
    assert config.validate(parse("-t", "0")).threads == 0


# --- refusals name the flag ------------------------------------------------------------


@pytest.mark.parametrize("queue_type", ["libtokyocabinet", "libdrizzle"])
def test_persistent_queue_types_are_refused_naming_the_flag(queue_type):
    message = refusal("-q", queue_type)
    assert message == (f"--queue-type {queue_type}: this queue type is not supported by "
                       "this fastgear version yet (only builtin, libmemcached, libsqlite3, "
                       "mysql, postgres, redis)")


def test_mysql_queue_without_a_database_is_refused_as_gearmand_fails_without_one():
    assert refusal("-q", "mysql") == "--mysql-db: is required with --queue-type mysql"


def test_redis_and_memcached_queues_take_gearmands_flags():
    cfg = config.validate(parse("-q", "redis", "--redis-port", "6380", "--redis-prefix", "p"))
    assert (cfg.queue_type, cfg.redis_port, cfg.redis_prefix) == ("redis", "6380", "p")
    assert refusal("-q", "libmemcached") == (
        "--libmemcached-servers: is required with --queue-type libmemcached")


def test_unknown_queue_type_is_refused_naming_the_flag():
    assert "--queue-type nosuch: unknown queue type" in refusal("-q", "nosuch")


@pytest.mark.parametrize("argv, flag", [
    (["--ssl"], "--ssl"),
    (["-r", "spdy"], "--protocol spdy"),
    (["-p", "0"], "--port 0"),
    (["-p", "65536"], "--port 65536"),
    (["-t", "-1"], "--threads -1"),
    (["--verbose", "LOUD"], "--verbose LOUD"),
    (["--hashtable-buckets", "0"], "--hashtable-buckets"),
    (["-f", "-5"], "--file-descriptors -5"),
])
def test_unsupported_or_invalid_values_are_refused_naming_the_flag(argv, flag):
    assert refusal(*argv).startswith(flag + ":")


def test_max_output_hard_must_leave_room_for_the_largest_packet():
    assert refusal("--max-output-hard", str(256 << 20)).startswith(
        f"--max-output-hard {256 << 20}: must be at least --max-packet + 65536")
    assert config.validate(parse("--max-output-hard", str(1 << 20), "--max-packet",
                                 str(512 << 10), "--max-output", str(64 << 10)))


def test_validate_checks_a_config_built_directly():
    with pytest.raises(ConfigError, match="--verbose"):
        config.validate(Config(verbose="chatty"))


@pytest.mark.parametrize("argv, message", [
    (["-p", "1", "-p", "2"], "option '--port' cannot be specified more than once"),
    (["-d", "--daemon"], "option '--daemon' cannot be specified more than once"),
    (["-j", "abc"], "the argument ('abc') for option '--job-retries' is invalid"),
    (["--mysql-port", "x"], "the argument ('x') for option '--mysql-port' is invalid"),
])
def test_parse_errors_use_gearmands_wording(argv, message):
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert str(info.value) == message


@pytest.mark.parametrize("argv", [["--back", "5"], ["--verb", "INFO"], ["--po", "1"],
                                  ["--daemo"], ["-v"], ["--check-args=1"], ["stray"]])
def test_abbreviations_and_unknown_flags_are_rejected(argv, capsys):
    assert cli.main(["serve", "--check-args"] + argv) == 1
    assert capsys.readouterr().err.startswith("fastgear: error: ")


# --- config file and @file -------------------------------------------------------------


def test_config_file_fills_in_what_the_command_line_left_unset(tmp_path):
    conf = tmp_path / "g.conf"
    conf.write_text("--port 4999\n--verbose INFO\t-R\n-j\n3\n")
    cfg = parse("--config-file", str(conf), "-p", "5000")
    assert (cfg.port, cfg.verbose, cfg.round_robin, cfg.job_retries) == (5000, "INFO", True, 3)
    assert cfg.config_file == str(conf)


def test_at_file_is_the_same_as_config_file(tmp_path):
    conf = tmp_path / "g.conf"
    conf.write_text("-w 2 --listen 127.0.0.1")
    cfg = parse("@" + str(conf))
    assert (cfg.worker_wakeup, cfg.listen, cfg.config_file) == (2, "127.0.0.1", str(conf))


def test_an_at_sign_in_an_option_value_is_not_a_file():
    assert parse("--job-handle-prefix", "@x").job_handle_prefix == "@x"
    assert parse("-L", "@x", "-dl", "@y").log_file == "@y"


def test_missing_default_config_file_is_silently_ignored_even_when_named():
    assert parse() == Config()
    assert parse("--config-file", config.DEFAULT_CONFIG_FILE).threads == 4


def test_missing_named_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="--config-file .*could not open"):
        parse("--config-file", str(tmp_path / "nope.conf"))
    with pytest.raises(ConfigError, match="could not open"):
        parse("@" + str(tmp_path / "nope.conf"))


def test_config_file_and_at_file_together_count_as_a_repeat(tmp_path):
    conf = tmp_path / "g.conf"
    conf.write_text("")
    with pytest.raises(ConfigError, match="'--config-file' cannot be specified more than once"):
        parse("--config-file", str(conf), "@" + str(conf))


def test_errors_in_the_config_file_name_the_file(tmp_path):
    conf = tmp_path / "g.conf"
    conf.write_text("-p 1 -p 2")
    with pytest.raises(ConfigError, match=f"^{conf}: option '--port' cannot be specified"):
        parse("--config-file", str(conf))


def test_default_config_file_is_read_when_present(tmp_path):
    with open(config.DEFAULT_CONFIG_FILE, "w") as f:
        f.write("--threads 2")
    assert parse().threads == 2


def test_config_file_named_inside_a_config_file_is_not_followed(tmp_path):
    inner = tmp_path / "inner.conf"
    inner.write_text("-t 9")
    outer = tmp_path / "outer.conf"
    outer.write_text(f"--config-file {inner} -t 3")
    cfg = parse("@" + str(outer))
    assert (cfg.threads, cfg.config_file) == (3, str(outer))


# --- GEARMAND_PORT ---------------------------------------------------------------------


def test_gearmand_port_env_sets_the_port_when_no_port_flag_is_given(tmp_path):
    assert parse(environ={"GEARMAND_PORT": "4999"}).port == 4999
    assert parse("-p", "5000", environ={"GEARMAND_PORT": "4999"}).port == 5000
    conf = tmp_path / "g.conf"
    conf.write_text("-p 5001")
    assert parse("@" + str(conf), environ={"GEARMAND_PORT": "4999"}).port == 5001


def test_empty_gearmand_port_env_is_ignored():
    assert parse(environ={"GEARMAND_PORT": ""}).port == 4730


def test_invalid_gearmand_port_env_is_an_error():
    with pytest.raises(ConfigError, match="GEARMAND_PORT"):
        parse(environ={"GEARMAND_PORT": "gearman"})


def test_main_reads_gearmand_port_from_the_environment(monkeypatch, fake_server):
    monkeypatch.setenv("GEARMAND_PORT", "4998")
    assert cli.main(["serve"]) == 7
    assert fake_server[0].port == 4998


# --- main: check-args, version, hand-over ------------------------------------------------


def test_check_args_validates_and_exits_zero_without_serving(fake_server):
    assert cli.main(["serve", "--check-args", "-p", "4731"]) == 0
    assert fake_server == []


def test_check_args_still_refuses_unsupported_flags(fake_server, capsys):
    assert cli.main(["serve", "--check-args", "--ssl"]) == 1
    assert capsys.readouterr().err == \
        "fastgear: error: --ssl: needs --ssl-certificate (or GEARMAND_SERVER_PEM)\n"
    assert fake_server == []


@pytest.mark.parametrize("argv", [["--syslog"], ["--syslog", "-l", "none"],
                                  ["--syslog", "--syslog-socket", "/nonexistent/log"],
                                  ["--bind-retry-timeout", "0"], ["-L", "localhost"]])
def test_check_args_accepts_valid_combinations_with_status_0(argv, fake_server):
    assert cli.main(["serve", "--check-args"] + argv) == 0
    assert fake_server == []


@pytest.mark.parametrize("argv, flag", [
    (["--bind-retry-timeout", "-1"], "--bind-retry-timeout -1"),
    (["--bind-retry-timeout", "3601"], "--bind-retry-timeout 3601"),
    (["--syslog", "--syslog-socket", ""], "--syslog-socket"),
])
def test_start_up_settings_out_of_range_are_refused(argv, flag):
    assert refusal(*argv).startswith(flag + ":")


def test_serve_hands_the_validated_config_to_the_server(fake_server):
    assert cli.main(["serve", "-p", "4731", "--verbose", "debug", "-j", "256"]) == 7
    assert fake_server == [dataclasses.replace(Config(), port=4731, verbose="DEBUG")]


def test_serve_does_not_start_the_server_when_config_is_refused(fake_server, capsys):
    assert cli.main(["serve", "-p", "0"]) == 1
    assert "--port 0" in capsys.readouterr().err
    assert fake_server == []


@pytest.mark.parametrize("argv", [["serve", "-V"], ["serve", "--version"], ["--version"],
                                  ["-V"]])
def test_version_names_fastgear_and_the_gearmand_it_replaces(argv, capsys, fake_server):
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == \
        f"fastgear {fastgear.__version__} (gearmand 1.1.20 compatible)\n"
    assert fake_server == []


def test_serve_help_lists_every_flag_but_hides_check_args(capsys):
    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for row in config.OPTIONS:
        if row.long != "check-args":
            assert "--" + row.long in out
    assert "--check-args" not in out


def test_no_subcommand_prints_usage_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: fastgear" in capsys.readouterr().err


def test_unknown_subcommand_fails(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert capsys.readouterr().err.startswith("fastgear: error: ")


def test_python_dash_m_fastgear_runs_the_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GEARMAND_PORT", None)
    res = subprocess.run([sys.executable, "-m", "fastgear", "serve", "--check-args",
                          "--config-file", os.devnull, "-p", "70000"],
                         capture_output=True, text=True, timeout=30, check=False,
                         cwd=tmp_path, env=env)
    assert res.returncode == 1  # gearmand's status for a bad command line
    assert res.stderr == "fastgear: error: --port 70000: must be between 1 and 65535\n"


# --- acceptance compared with the real gearmand ---------------------------------------

SAME_AS_GEARMAND = [
    ["-dR", "-p4731"],
    ["--port=4731", "-j", "256", "-w", "300"],
    ["-b", "-1", "--keepalive", "--keepalive-idle", "5", "-t", "0"],
    ["-q", "BUILTIN", "--libsqlite3-db", "x.db", "--mysql-port", "3307"],
    ["--verbose", "DEBUG", "--coredump", "--exceptions", "--job-handle-prefix", "@x"],
    ["-v"],
    ["--back", "5"],
    ["-p", "1", "-p", "2"],
    ["-d", "-d"],
    ["-j", "abc"],
    ["--keepalive-idle", "x"],
    ["--mysql-port", "x"],
    ["--hashtable-buckets", "0"],
    ["--check-args=1"],
    ["-t"],
    ["--libtokyocabinet-file", "x"],
    ["stray"],
    ["--log"],
    ["-vvv"],
    ["--verbose=BAD"],
    ["--config-file", "nope.conf"],
    ["--config-file"],
    ["--syslog"],
    ["--syslog", "--verbose", "INFO"],
]


@pytest.mark.parametrize("argv", SAME_AS_GEARMAND, ids=" ".join)
def test_command_line_is_accepted_or_rejected_like_gearmand(argv, tmp_path, monkeypatch):
    """Same verdict and same exit status (0, or 1 for a bad command line)."""
    need_gearmand()
    env = {k: v for k, v in os.environ.items() if k != "GEARMAND_PORT"}
    real = subprocess.run([GEARMAND, "--check-args", "-l", "none"] + argv, cwd=tmp_path,
                          env=env, capture_output=True, timeout=20, check=False)
    monkeypatch.chdir(tmp_path)
    ours = cli.main(["serve", "--check-args", "-l", "none"] + argv)
    assert ours == real.returncode, real.stderr


def test_store_is_short_for_the_sqlite_queue_type():
    cfg = config.validate(parse("--store", "/tmp/jobs.db"))
    assert cfg.queue_type == "libsqlite3" and cfg.libsqlite3_db == "/tmp/jobs.db"


def test_store_url_is_short_for_the_postgres_queue_type():
    for url in ("postgresql://fg@db:5433/jobs", "postgres://fg@db/jobs"):
        cfg = config.validate(parse("--store", url))
        assert cfg.queue_type == "postgres" and cfg.libpq_conninfo == url


def test_postgres_queue_type_needs_its_conninfo_and_a_sane_lease():
    assert "--libpq-conninfo" in refusal("-q", "Postgres")
    assert "--store-lease" in refusal("--store", "postgresql://x/y", "--store-lease", "0")


def test_sqlite_queue_type_needs_its_database_file():
    assert "--libsqlite3-db" in refusal("-q", "libsqlite3")


def test_store_sync_rejects_unknown_levels():
    assert "--store-sync" in refusal("--store-sync", "sometimes")


def test_readme_flag_table_is_the_one_generated_from_the_options_table():
    readme = (ROOT / "README.md").read_text()
    assert config.flag_table_markdown() in readme
