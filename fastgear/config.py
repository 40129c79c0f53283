"""Server configuration: every gearmand 1.1.20 flag, the frozen Config, and validate().

This module knows what each flag means and nothing about where the words came from:
`OPTIONS` has one row per flag (long and short name as gearmand spells them, the Config
field it sets, how its value is read, gearmand's default, help text); `build()` turns the
flags a user gave into a `Config`, and `validate()` says whether fastgear can run with it.
The command line, config files and `@file` are cli.py's business.

Values are read the way gearmand's boost::program_options reads them, so that a command
line gearmand accepts parses here and means the same: numbers are plain decimal,
"unsigned" options take "-N" (`-j -1` is 255 retries, as in gearmand), and `-j`/`-w` keep
only their low 8 bits. Where gearmand accepts nonsense that only fails later or silently
(negative thread counts, port 70000, an unknown queue or protocol module), `validate()`
refuses it up front, naming the flag. Features fastgear does not have yet (the queue
modules other than SQLite, PostgreSQL, MySQL, Redis and memcached) are refused the same way rather
than ignored, so nobody believes background jobs are durable when they are not.

Deliberate differences from gearmand 1.1.20, all more lenient or earlier:
* `--verbose`, `-q` and `-r` are case-insensitive (gearmand: `--verbose` upper case only,
  `-r` exactly "http"); they are stored upper / lower case.
* `-p`, `--http-port` and GEARMAND_PORT must be numbers in 1-65535 (gearmand passes the
  word to getaddrinfo() and fails only when it binds).
* Options of a queue module that is not selected are accepted and ignored, as gearmand
  does, so a command line or config file written for gearmand keeps working.
* The libtokyocabinet and libdrizzle options are absent, as in Debian's gearmand build.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from fastgear import access

GEARMAND_PORT = 4730
DEFAULT_PID_FILE = "/var/gearmand.pid"
DEFAULT_LOG_FILE = "/var/log/gearmand.log"
DEFAULT_CONFIG_FILE = "/etc/gearmand.conf"
# The monitoring listener's default: loopback only, the port after gearman's.
DEFAULT_MONITOR = "127.0.0.1:4731"

VERBOSE_LEVELS = ("FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG")

# Every -q name gearmand 1.1.20 knows (compared case-insensitively); libtokyocabinet and
# libdrizzle exist only in upstream builds. Only SUPPORTED_QUEUE_TYPES start.
QUEUE_TYPES = ("builtin", "libsqlite3", "postgres", "mysql", "redis", "libmemcached",
               "libtokyocabinet", "libdrizzle")
SUPPORTED_QUEUE_TYPES = frozenset({"builtin", "libsqlite3", "postgres", "mysql",
                                   "redis", "libmemcached"})
# PRAGMA synchronous for the SQLite store. NORMAL in WAL mode survives a crash of the
# process (the OS still has the data) but not of the machine; FULL survives power loss.
STORE_SYNC = ("off", "normal", "full")
# gearmand fails at start-up without these; enforced once such a queue type is supported.
REQUIRED_QUEUE_OPTIONS = {"libsqlite3": ("libsqlite3_db",), "postgres": ("libpq_conninfo",),
                          "mysql": ("mysql_db",),
                          "libmemcached": ("libmemcached_servers",)}
# `--store URL` with one of these schemes selects the PostgreSQL store.
POSTGRES_URL_SCHEMES = ("postgresql://", "postgres://")

PROTOCOLS = ("http",)
IO_BACKENDS = ("auto", "epoll", "uring")
# --ssl-verify-clients: whether a client certificate is asked for, and needed.
SSL_VERIFY = ("none", "optional", "require")
SUPPORTED_PROTOCOLS: frozenset = frozenset(PROTOCOLS)

# Far past any useful number of I/O threads; gearmand would try 4 billion for `-t -1`.
MAX_THREADS = 1024
UINT32_MAX = 0xFFFFFFFF
# Room above --max-packet that --max-output-hard must leave (headers, handles, replies).
OUTPUT_SLACK = 64 << 10
INT32_MIN, INT32_MAX = -0x80000000, 0x7FFFFFFF


class ConfigError(ValueError):
    """A flag has a value fastgear cannot run with; the message names the flag."""


# -- how values are read (each raises ValueError on a bad word) -------------------------
# boost's lexical_cast takes an optional sign and decimal digits, nothing else (no spaces,
# underscores or 0x), which is stricter than Python's int().
_DECIMAL = re.compile(r"[+-]?[0-9]+\Z")


def decimal(word: str) -> int:
    if not _DECIMAL.match(word):
        raise ValueError(f"{word!r} is not a number")
    return int(word)


def int32(word: str) -> int:
    value = decimal(word)
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{word!r} does not fit in a 32-bit integer")
    return value


def uint32(word: str) -> int:
    """A uint32_t as boost reads it: "-N" is accepted because C wraps it. The sign is kept
    so that validate() can name the mistake and Config can wrap where gearmand does."""
    value = decimal(word)
    if abs(value) > UINT32_MAX:
        raise ValueError(f"{word!r} does not fit in a 32-bit unsigned integer")
    return value


def rlimit(word: str) -> int:
    value = decimal(word)
    if abs(value) >= 1 << 64:
        raise ValueError(f"{word!r} is too large")
    return value


_SECONDS = re.compile(r"[0-9]+(\.[0-9]{1,3})?\Z")


def seconds(word: str) -> float:
    """fastgear's own durations: decimal seconds with up to millisecond precision."""
    if not _SECONDS.match(word):
        raise ValueError(f"{word!r} is not a number of seconds")
    return float(word)


def text(word: str) -> str:
    return word


def optional_text(word: str) -> str | None:
    """Empty means "not given", as gearmand's `.empty()` checks do."""
    return word or None


def upper(word: str) -> str:
    return word.upper()


def lower(word: str) -> str:
    return word.lower()


def protocol_list(word: str) -> tuple[str, ...]:
    return (word.lower(),)


# -- the table ---------------------------------------------------------------------------
class Option(NamedTuple):
    long: str                               # without the leading "--"
    short: str | None                       # one letter, without the "-"
    field: str                              # the Config field it sets
    parse: Callable[[str], Any] | None      # None: a switch that takes no value
    default: Any                            # gearmand 1.1.20's default
    help: str

    @property
    def takes_value(self) -> bool:
        return self.parse is not None


OPTIONS: tuple[Option, ...] = (
    # General options, in gearmand's --help order
    Option("backlog", "b", "backlog", int32, 4096,
           "Number of backlog connections for listen (fastgear: default 4096 instead of "
           "gearmand's 32, capped by net.core.somaxconn, so thousands of workers can "
           "reconnect at once)."),
    Option("daemon", "d", "daemon", None, False, "Daemon, detach and run in the background."),
    Option("exceptions", None, "exceptions", None, False,
           "Enable protocol exceptions by default."),
    Option("file-descriptors", "f", "file_descriptors", rlimit, None,
           "Number of file descriptors to allow for the process (total connections will be "
           "slightly less). Default is max allowed for user."),
    Option("job-retries", "j", "job_retries", uint32, 0,
           "Number of attempts to run the job before the job server removes it (only the "
           "low 8 bits count, as in gearmand). Default is no limit."),
    Option("job-handle-prefix", None, "job_handle_prefix", optional_text, None,
           'Prefix used to generate a job handle string. Default "H:<host_name>".'),
    Option("hashtable-buckets", None, "hashtable_buckets", uint32, 991,
           "Number of buckets in the internal job hash tables (accepted; fastgear's "
           "tables grow with the number of jobs)."),
    Option("keepalive", None, "keepalive", None, False, "Enable keepalive on sockets."),
    Option("keepalive-idle", None, "keepalive_idle", int32, -1,
           "If keepalive is enabled, TCP_KEEPIDLE in seconds; -1: the system's value."),
    Option("keepalive-interval", None, "keepalive_interval", int32, -1,
           "If keepalive is enabled, TCP_KEEPINTVL in seconds; -1: the system's value."),
    Option("keepalive-count", None, "keepalive_count", int32, -1,
           "If keepalive is enabled, TCP_KEEPCNT; -1: the system's value."),
    Option("log-file", "l", "log_file", text, DEFAULT_LOG_FILE,
           "Log file to write errors and information to; 'stderr' for stderr, 'none' for "
           "no log file."),
    Option("listen", "L", "listen", optional_text, None,
           "Address the server should listen on. Default is every address."),
    Option("pid-file", "P", "pid_file", text, DEFAULT_PID_FILE,
           "File to write process ID out to."),
    Option("protocol", "r", "protocol", protocol_list, (), "Load protocol module (http: "
           "gearmand's HTTP job submission on --http-port, served by the I/O loops)."),
    Option("round-robin", "R", "round_robin", None, False,
           "Assign work in round-robin order per worker connection. The default is to "
           "assign work in the order of functions added by the worker (fastgear: a "
           "worker's functions with work always take turns; accepted, changes nothing)."),
    Option("queue-type", "q", "queue_type", lower, "builtin",
           "Persistent queue type to use (fastgear: builtin, libsqlite3, postgres, mysql, "
           "redis or libmemcached)."),
    Option("config-file", None, "config_file", text, DEFAULT_CONFIG_FILE,
           "Read options from this file (whitespace-separated words; the command line "
           "wins). Can be specified with '@name', too."),
    Option("syslog", None, "syslog", None, False,
           "Use syslog: log lines also go to the local syslog, as gearmand's do (ident "
           "gearmand, facility user, levels as syslog priorities; see --syslog-socket)."),
    Option("coredump", None, "coredump", None, False,
           "Whether to create a core dump for uncaught signals."),
    Option("threads", "t", "threads", uint32, 4,
           "Number of I/O threads to use (fastgear: N epoll loops sharing one engine; 0 "
           "runs a single loop, as 1 does, where gearmand guesses from the CPUs)."),
    Option("io", None, "io", lower, "auto",
           "fastgear: the I/O loops' kernel interface: 'uring' (io_uring: multishot "
           "receives into provided buffers, sends batched, one system call per batch), "
           "'epoll', or 'auto': io_uring where the kernel allows it (Linux 6.0 or later, not "
           "forbidden by seccomp or kernel.io_uring_disabled) and no TLS is configured, "
           "else epoll with one log line."),
    Option("user", "u", "user", optional_text, None, "Switch to given user after startup."),
    Option("verbose", None, "verbose", upper, "ERROR",
           "Set verbose level (" + ", ".join(VERBOSE_LEVELS) + ")."),
    Option("worker-wakeup", "w", "worker_wakeup", uint32, 0,
           "Number of workers to wakeup for each job received (low 8 bits, as in "
           "gearmand). fastgear's default (0) wakes one sleeping worker per queued job, "
           "rotating; gearmand's 0 wakes every sleeper."),
    Option("check-args", None, "check_args", None, False,
           "Check command line and configuration file arguments and then exit."),
    # HTTP
    Option("http-port", None, "http_port", decimal, 8080, "Port to listen on (with -r http)."),
    # Gear
    Option("port", "p", "port", decimal, GEARMAND_PORT,
           "Port the server should listen on (GEARMAND_PORT, if set, when -p is not given)."),
    Option("ssl", None, "ssl", None, False,
           "Enable ssl connections: -p speaks TLS 1.2 or newer (fastgear; gearmand 1.1.20 "
           "accepts the flag and serves plain text)."),
    Option("ssl-ca-file", None, "ssl_ca_file", text, None,
           "CA file (GEARMAND_CA_CERTIFICATE when not given): the CAs client certificates "
           "must be signed by (--ssl-verify-clients)."),
    Option("ssl-certificate", None, "ssl_certificate", text, None,
           "SSL certificate, PEM, with its chain (GEARMAND_SERVER_PEM when not given)."),
    Option("ssl-key", None, "ssl_key", text, None,
           "SSL key for certificate, PEM, not encrypted (GEARMAND_SERVER_KEY when not given)."),
    Option("ssl-port", None, "ssl_port", decimal, None,
           "fastgear: also listen on this port for TLS, beside the plain -p (a fleet can "
           "move to TLS one client at a time)."),
    Option("ssl-handshake-timeout", None, "ssl_handshake_timeout", seconds, 10.0,
           "fastgear: seconds a TLS handshake may take before the connection is dropped."),
    Option("ssl-verify-clients", None, "ssl_verify_clients", lower, "none",
           "fastgear: client certificates: 'none' (not asked for, as gearmand), 'optional' "
           "(checked against --ssl-ca-file when given) or 'require' (a connection without "
           "a valid one is refused in the handshake)."),
    # queue modules, as Debian's build has them
    Option("libmemcached-servers", None, "libmemcached_servers", text, None,
           "List of Memcached servers to use (HOST:PORT, comma separated). memcached is "
           "not durable: an eviction or a restart of memcached loses queued jobs."),
    Option("libmemcached-prefix", None, "libmemcached_prefix", text, "gear_",
           "Prefix to use in memcached keys"),
    Option("libsqlite3-db", None, "libsqlite3_db", text, None, "Database file to use."),
    Option("store-queue-on-shutdown", None, "store_queue_on_shutdown", None, False,
           "Store queue on shutdown."),
    Option("libsqlite3-table", None, "libsqlite3_table", text, "gearman_queue",
           "Table to use."),
    # fastgear's own spellings of the SQLite store
    Option("store", None, "store", text, None,
           "fastgear: keep background jobs in this SQLite file (short for -q libsqlite3 "
           "--libsqlite3-db PATH), or in PostgreSQL with postgresql://user@host:port/db "
           "(short for -q postgres --libpq-conninfo URL)."),
    Option("store-sync", None, "store_sync", lower, "normal",
           "fastgear: SQLite durability: 'normal' survives a crash of the server process, "
           "'full' also a crash of the machine (slower), 'off' neither."),
    Option("store-lease", None, "store_lease", decimal, 10,
           "fastgear: PostgreSQL store lease in seconds. A server renews it in every commit "
           "and on a timer; once a server's lease has expired the others take over its "
           "jobs, and a server that could not renew for half of it stops dispatching."),
    # fastgear's monitoring listener and kept results (not in gearmand)
    Option("monitor", None, "monitor", lower, DEFAULT_MONITOR,
           "fastgear: HTTP monitoring listener HOST:PORT (JSON /status, Prometheus "
           "/metrics, kept results /jobs/HANDLE, dashboard /); 'off' disables it. Port 0 "
           "picks a free port. A busy default port is logged, not fatal."),
    Option("keep-results", None, "keep_results", decimal, 0,
           "fastgear: keep the outcome of finished jobs (complete/fail/exception, data, "
           "times, worker) for this many seconds; 0 keeps none."),
    Option("keep-results-bytes", None, "keep_results_bytes", decimal, 64 << 20,
           "fastgear: memory bound of the kept results; the oldest go first."),
    # fastgear's retry policy for background jobs and its dead letters
    Option("bg-retries", None, "bg_retries", decimal, 0,
           "fastgear: run a background job that ends in WORK_FAIL, WORK_EXCEPTION or "
           "CAN_DO_TIMEOUT again, up to this many times (per function: admin `retry`)."),
    Option("bg-retry-backoff", None, "bg_retry_backoff", seconds, 1.0,
           "fastgear: seconds before the first retry of a background job; doubled for "
           "each further retry, less up to a quarter at random."),
    Option("bg-retry-backoff-max", None, "bg_retry_backoff_max", seconds, 300.0,
           "fastgear: longest back-off between two retries, in seconds."),
    Option("dead-letters", None, "dead_letters", decimal, 10000,
           "fastgear: background jobs that used up their retries (or --job-retries) are "
           "kept, at most this many, to be listed, re-queued or discarded; 0 keeps none."),
    Option("dead-letters-bytes", None, "dead_letters_bytes", decimal, 64 << 20,
           "fastgear: memory bound of the dead letters; the oldest go first."),
    # fastgear's admin access control (gearmand has none)
    Option("admin-allow", None, "admin_allow", text, None,
           "fastgear: only these peers may use the admin commands that change the server "
           "(shutdown, cancel job, create/drop function, maxqueue, verbose, retry, dead "
           "requeue/discard) and the monitor's changing actions: comma-separated CIDRs, "
           "addresses, cn:NAME (TLS client certificate CN), or 'none'. Default: everyone, "
           "as gearmand (shutdown from loopback only)."),
    Option("admin-allow-read", None, "admin_allow_read", text, None,
           "fastgear: only these peers (and those of --admin-allow) may use the read-only "
           "admin commands (status, workers, show jobs, version, ...) and the monitor's "
           "pages; same list syntax. Default: everyone."),
    # fastgear's limits (gearmand has none of these; defaults sized in the README)
    Option("max-packet", None, "max_packet", decimal, 256 << 20,
           "fastgear: largest packet accepted, in bytes; a bigger one gets ERROR and the "
           "connection is closed."),
    Option("max-function-name", None, "max_function_name", decimal, 8192,
           "fastgear: longest function name accepted, in bytes."),
    Option("max-unique", None, "max_unique", decimal, 64,
           "fastgear: longest unique key accepted, in bytes (gearmand: 64)."),
    Option("max-output", None, "max_output", decimal, 16 << 20,
           "fastgear: bytes waiting to be sent to a connection beyond which the server "
           "stops reading its input (until half of it has been sent)."),
    Option("max-output-hard", None, "max_output_hard", decimal, 512 << 20,
           "fastgear: bytes waiting to be sent to a connection beyond which it is "
           "disconnected (and logged); at least --max-packet + 64 KiB, so the largest "
           "job can be delivered."),
    Option("max-connections", None, "max_connections", decimal, 0,
           "fastgear: connections beyond this are refused with an ERROR packet; 0: the "
           "file descriptor limit less a reserve of 64."),
    Option("max-queued-bytes", None, "max_queued_bytes", decimal, 0,
           "fastgear: memory budget for jobs held (payloads, keys and bookkeeping); "
           "submissions beyond it get ERROR QUEUE_ERROR. 0: half of physical memory."),
    Option("trim-after-jobs", None, "trim_after_jobs", decimal, 100000,
           "fastgear: once the jobs in memory fall to 0 after peaking at this many or "
           "more, the I/O thread that emptied the queue gives the freed memory back to "
           "the system (malloc_trim, outside the engine lock); 0: never."),
    Option("shutdown-timeout", None, "shutdown_timeout", decimal, 0,
           "fastgear: on SIGTERM stop accepting and starting jobs, and wait up to this many "
           "seconds for running jobs to finish before exiting (a second SIGTERM exits at "
           "once); 0 exits at once, as gearmand."),
    Option("wakeup-timeout", None, "wakeup_timeout", decimal, 1000,
           "fastgear: milliseconds a woken worker has to GRAB before another sleeper is "
           "woken for the job (gearmand #343); 0 disables."),
    # fastgear's start-up and logging settings
    Option("bind-retry-timeout", None, "bind_retry_timeout", decimal, 20,
           "fastgear: seconds to keep retrying a listening address that is in use (an old "
           "server still exiting), as gearmand does for about 20 s; each retry is logged, "
           "and an address still busy then ends start-up with status 1. 0: no retry."),
    Option("syslog-socket", None, "syslog_socket", text, "/dev/log",
           "fastgear: the local syslog socket --syslog writes to (unix datagram or "
           "stream). A missing socket is a start-up warning, not an error."),
    Option("libpq-conninfo", None, "libpq_conninfo", text, None,
           "PostgreSQL connection information string."),
    Option("libpq-table", None, "libpq_table", text, "queue", "Table to use."),
    Option("redis-server", None, "redis_server", text, None,
           "Redis server (fastgear: 127.0.0.1 when not given). Jobs are as durable as "
           "the server's persistence: appendonly yes with appendfsync always loses none."),
    Option("redis-port", None, "redis_port", text, None,
           "Redis server port/service (fastgear: 6379 when not given)"),
    Option("redis-password", None, "redis_password", text, None,
           "Redis server password/service"),
    # gearmand sets this in the plugin's constructor, so its --help shows no default.
    Option("redis-prefix", None, "redis_prefix", text, "_gear_", "Prefix to use in redis keys"),
    Option("mysql-host", None, "mysql_host", text, "localhost",
           "MySQL host (localhost: the unix socket, MYSQL_UNIX_PORT or "
           "/run/mysqld/mysqld.sock, as gearmand's client library does)."),
    Option("mysql-port", None, "mysql_port", int32, 3306, "Port of server."),
    Option("mysql-user", None, "mysql_user", text, None, "MySQL user."),
    Option("mysql-password", None, "mysql_password", text, None, "MySQL user password."),
    Option("mysql-db", None, "mysql_db", text, None, "MySQL database."),
    Option("mysql-table", None, "mysql_table", text, "gearman_queue", "MySQL table name."),
    Option("mysql-timeout", None, "mysql_timeout", decimal, 10,
           "fastgear: seconds a MySQL connect, read or write may take; past it the batch "
           "being written gets QUEUE_ERROR and the next one reconnects."),
)
OPTIONS_BY_FIELD: Mapping[str, Option] = {opt.field: opt for opt in OPTIONS}


# -- the configuration -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    """What the server runs with. Defaults are gearmand 1.1.20's (OPTIONS has them too; a
    test keeps the two equal). Build directly in tests, or from flags with build()."""

    port: int = GEARMAND_PORT
    listen: str | None = None            # None: every address, IPv4 and IPv6
    backlog: int = 4096                  # gearmand: 32 (see the OPTIONS row)
    daemon: bool = False
    exceptions: bool = False
    file_descriptors: int | None = None  # None or 0: leave RLIMIT_NOFILE alone
    job_retries: int = 0                 # 0: unlimited
    job_handle_prefix: str | None = None  # None: "H:<hostname>"
    hashtable_buckets: int = 991
    keepalive: bool = False
    keepalive_idle: int = -1
    keepalive_interval: int = -1
    keepalive_count: int = -1
    log_file: str = DEFAULT_LOG_FILE     # or "stderr" / "none"
    pid_file: str = DEFAULT_PID_FILE
    # A pid file that cannot be written is fatal only when the user named it.
    pid_file_is_default: bool = True
    protocol: tuple[str, ...] = ()
    round_robin: bool = False
    queue_type: str = "builtin"
    syslog: bool = False
    coredump: bool = False
    threads: int = 4                     # 0: one loop, as 1 (gearmand: guess from the CPUs)
    io: str = "auto"                     # auto, epoll or uring (the I/O loops' backend)
    user: str | None = None
    verbose: str = "ERROR"
    worker_wakeup: int = 0               # 0: one sleeper per queued job (gearmand: all)
    ssl: bool = False
    ssl_ca_file: str | None = None       # None: gearmand's build path or env variable
    ssl_certificate: str | None = None
    ssl_key: str | None = None
    ssl_port: int | None = None          # a TLS listener beside the plain -p
    ssl_handshake_timeout: float = 10.0  # seconds
    ssl_verify_clients: str = "none"     # none, optional, require
    http_port: int = 8080
    libsqlite3_db: str | None = None
    libsqlite3_table: str = "gearman_queue"
    store_queue_on_shutdown: bool = False
    store: str | None = None
    store_sync: str = "normal"
    store_lease: int = 10                # seconds (PostgreSQL store)
    monitor: str = DEFAULT_MONITOR       # "off", or HOST:PORT
    keep_results: int = 0                # seconds; 0: keep none
    keep_results_bytes: int = 64 << 20
    bg_retries: int = 0                  # 0: background jobs are not run again
    bg_retry_backoff: float = 1.0        # seconds, doubled per retry
    bg_retry_backoff_max: float = 300.0
    dead_letters: int = 10000            # 0: keep none
    dead_letters_bytes: int = 64 << 20
    admin_allow: str | None = None       # None: everyone (gearmand); see access.py
    admin_allow_read: str | None = None  # None: everyone
    max_packet: int = 256 << 20
    max_function_name: int = 8192
    max_unique: int = 64
    max_output: int = 16 << 20
    max_output_hard: int = 512 << 20      # above max_packet: one largest reply fits
    max_connections: int = 0             # 0: RLIMIT_NOFILE less a reserve
    max_queued_bytes: int = 0            # 0: half of physical memory
    trim_after_jobs: int = 100000        # 0: never give memory back after a drain
    shutdown_timeout: int = 0            # seconds; 0: SIGTERM exits at once
    wakeup_timeout: int = 1000           # ms; 0: never wake another sleeper
    bind_retry_timeout: int = 20         # seconds of bind() retries on EADDRINUSE
    syslog_socket: str = "/dev/log"      # where --syslog sends
    libpq_conninfo: str | None = None
    libpq_table: str = "queue"
    mysql_host: str = "localhost"
    mysql_port: int = 3306
    mysql_user: str | None = None
    mysql_password: str | None = None
    mysql_db: str | None = None
    mysql_table: str = "gearman_queue"
    mysql_timeout: int = 10              # seconds (MySQL store: connect, read, write)
    redis_server: str | None = None
    redis_port: str | None = None        # a port or a service name, as hiredis takes it
    redis_password: str | None = None
    redis_prefix: str = "_gear_"
    libmemcached_servers: str | None = None
    libmemcached_prefix: str = "gear_"
    config_file: str = DEFAULT_CONFIG_FILE
    check_args: bool = False

    def __post_init__(self):
        # Normalised here rather than only in the parsers so that a Config built directly
        # (tests, embedding) means the same as one built from a command line.
        def put(name, value):
            object.__setattr__(self, name, value)

        # gearmand reads -j and -w as uint32 and hands them on as uint8_t: 256 is 0
        # (unlimited retries / the default wake-up) and -1 is 255.
        if isinstance(self.job_retries, int):
            put("job_retries", self.job_retries & 0xFF)
        if isinstance(self.worker_wakeup, int):
            put("worker_wakeup", self.worker_wakeup & 0xFF)
        if isinstance(self.verbose, str):
            put("verbose", self.verbose.upper())
        if isinstance(self.queue_type, str):
            put("queue_type", self.queue_type.lower())
        if self.store and self.store.lower().startswith(POSTGRES_URL_SCHEMES):
            put("queue_type", "postgres")
            put("libpq_conninfo", self.store)
        elif self.store:
            put("queue_type", "libsqlite3")
            put("libsqlite3_db", self.store)
        if isinstance(self.io, str):
            put("io", self.io.lower())
        if isinstance(self.store_sync, str):
            put("store_sync", self.store_sync.lower())
        if isinstance(self.protocol, str):
            put("protocol", (self.protocol.lower(),) if self.protocol else ())
        else:
            put("protocol", tuple(p.lower() for p in self.protocol))


def fields() -> tuple[str, ...]:
    """The names of Config's fields."""
    return tuple(f.name for f in dataclasses.fields(Config))


def build(given: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """A Config from the flags a user gave (field -> value as OPTIONS' parsers read it;
    fields not given keep gearmand's defaults). Not validated: call validate().

    `environ` supplies GEARMAND_PORT, used when no -p was given, and, with --ssl,
    gearmand's certificate variables (GEARMAND_CA_CERTIFICATE, _SERVER_PEM, _SERVER_KEY).
    """
    env = {} if environ is None else environ
    unknown = sorted(set(given) - set(OPTIONS_BY_FIELD))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}")
    values = dict(given)
    if "port" not in values and env.get("GEARMAND_PORT"):
        try:
            values["port"] = decimal(env["GEARMAND_PORT"])
        except ValueError as exc:
            raise ConfigError(f"GEARMAND_PORT: {exc}") from None
    if values.get("ssl") or values.get("ssl_port"):
        # gearmand's fallbacks: a flag given on the command line wins.
        for var, name in (("GEARMAND_CA_CERTIFICATE", "ssl_ca_file"),
                          ("GEARMAND_SERVER_PEM", "ssl_certificate"),
                          ("GEARMAND_SERVER_KEY", "ssl_key")):
            if env.get(var) and not values.get(name):
                values[name] = env[var]
    values["pid_file_is_default"] = "pid_file" not in given
    return Config(**values)


def _flag(name: str, cfg: Config, show_value: bool = True) -> str:
    """How a refusal names what was given: "--port 70000", "--ssl"."""
    opt = OPTIONS_BY_FIELD[name]
    value = getattr(cfg, name)
    if not opt.takes_value or not show_value:
        return f"--{opt.long}"
    if isinstance(value, tuple):
        value = " ".join(value)
    return f"--{opt.long} {value}"


def validate(cfg: Config) -> Config:
    """Return cfg, or raise ConfigError naming the flag fastgear cannot run with."""
    def fail(name, message, show_value=True):
        raise ConfigError(f"{_flag(name, cfg, show_value)}: {message}")

    for name in ("port", "http_port"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or not 1 <= value <= 65535:
            fail(name, "must be between 1 and 65535")
    if not isinstance(cfg.threads, int) or not 0 <= cfg.threads <= MAX_THREADS:
        fail("threads", f"must be between 0 (a single loop) and {MAX_THREADS}")
    if not isinstance(cfg.backlog, int):
        fail("backlog", "must be a number")
    if not isinstance(cfg.hashtable_buckets, int) or not 0 < cfg.hashtable_buckets <= UINT32_MAX:
        # gearmand's own wording
        fail("hashtable_buckets", "hashtable-buckets has to be greater than 0", False)
    if cfg.file_descriptors is not None and (not isinstance(cfg.file_descriptors, int)
                                             or cfg.file_descriptors < 0):
        fail("file_descriptors", "must be 0 (keep the system's limit) or more")
    for name in ("keepalive_idle", "keepalive_interval", "keepalive_count"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or not (value == -1 or 1 <= value <= INT32_MAX):
            fail(name, "must be -1 (the system's value) or a positive number")
    if cfg.verbose not in VERBOSE_LEVELS:
        fail("verbose", f"unknown level (one of {', '.join(VERBOSE_LEVELS)})")

    if cfg.queue_type not in QUEUE_TYPES:
        fail("queue_type", f"unknown queue type (gearmand 1.1.20 knows "
                           f"{', '.join(QUEUE_TYPES)})")
    if cfg.queue_type not in SUPPORTED_QUEUE_TYPES:
        fail("queue_type", f"this queue type is not supported by this fastgear version yet "
                           f"(only {', '.join(sorted(SUPPORTED_QUEUE_TYPES))})")
    for name in REQUIRED_QUEUE_OPTIONS.get(cfg.queue_type, ()):
        if not getattr(cfg, name):
            fail(name, f"is required with --queue-type {cfg.queue_type}", False)
    if cfg.store_sync not in STORE_SYNC:
        fail("store_sync", f"must be one of {', '.join(STORE_SYNC)}")
    for proto in cfg.protocol:
        if proto not in PROTOCOLS:
            fail("protocol", f"unknown protocol module (gearmand 1.1.20 knows only "
                             f"{', '.join(PROTOCOLS)})")
        if proto not in SUPPORTED_PROTOCOLS:
            fail("protocol", f"the {proto.upper()} protocol is not supported by this "
                             "fastgear version yet")
    if "http" in cfg.protocol and cfg.http_port == cfg.port:
        fail("http_port", "must differ from --port")
    if parse_monitor(cfg.monitor) is False:
        fail("monitor", "must be HOST:PORT (port 0-65535) or 'off'")
    for name, low, high in (("keep_results", 0, 10 * 365 * 86400),
                            ("keep_results_bytes", 0, 1 << 48),
                            ("bg_retries", 0, 1000000),
                            ("dead_letters", 0, 1 << 32),
                            ("dead_letters_bytes", 0, 1 << 48),
                            ("max_packet", 1024, UINT32_MAX),
                            ("max_function_name", 1, UINT32_MAX),
                            ("max_unique", 1, 4096),
                            ("max_output", 4096, 1 << 48),
                            ("max_output_hard", 4096, 1 << 48),
                            ("max_connections", 0, 1 << 31),
                            ("max_queued_bytes", 0, 1 << 56),
                            ("trim_after_jobs", 0, 1 << 56),
                            ("shutdown_timeout", 0, 86400),
                            ("store_lease", 1, 3600),
                            ("mysql_timeout", 1, 3600),
                            ("bind_retry_timeout", 0, 3600),
                            ("wakeup_timeout", 0, 3600 * 1000)):
        value = getattr(cfg, name)
        if not isinstance(value, int) or not low <= value <= high:
            fail(name, f"must be between {low} and {high}")
    for name in ("bg_retry_backoff", "bg_retry_backoff_max"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not 0 <= value <= 86400 * 30:
            fail(name, "must be between 0 and 2592000 seconds")
    if cfg.max_output_hard < cfg.max_output:
        fail("max_output_hard", "must not be less than --max-output")
    if cfg.max_output_hard < cfg.max_packet + OUTPUT_SLACK:
        # A job of --max-packet bytes goes out as one JOB_ASSIGN or WORK_COMPLETE.
        fail("max_output_hard", f"must be at least --max-packet + {OUTPUT_SLACK} "
                                f"({cfg.max_packet + OUTPUT_SLACK})")
    if cfg.io not in IO_BACKENDS:
        fail("io", f"must be one of {', '.join(IO_BACKENDS)}")
    if cfg.io == "uring" and io_uring_excluded(cfg):
        fail("io", f"{io_uring_excluded(cfg)}; use --io auto or --io epoll")
    for name in ("admin_allow", "admin_allow_read"):
        value = getattr(cfg, name)
        if value is not None:
            try:
                access.parse_list(value)
            except access.AccessError as exc:
                fail(name, str(exc), False)
    if cfg.ssl_port is not None:
        if not isinstance(cfg.ssl_port, int) or not 1 <= cfg.ssl_port <= 65535:
            fail("ssl_port", "must be between 1 and 65535")
        if cfg.ssl_port == cfg.port or ("http" in cfg.protocol and cfg.ssl_port == cfg.http_port):
            fail("ssl_port", "must differ from --port and --http-port")
    if cfg.ssl_verify_clients not in SSL_VERIFY:
        fail("ssl_verify_clients", f"must be one of {', '.join(SSL_VERIFY)}")
    if (not isinstance(cfg.ssl_handshake_timeout, (int, float))
            or not 0.001 <= cfg.ssl_handshake_timeout <= 3600):
        fail("ssl_handshake_timeout", "must be between 0.001 and 3600 seconds")
    if cfg.ssl or cfg.ssl_port is not None:
        which = "ssl" if cfg.ssl else "ssl_port"
        for name, var in (("ssl_certificate", "GEARMAND_SERVER_PEM"),
                          ("ssl_key", "GEARMAND_SERVER_KEY")):
            if not getattr(cfg, name):
                fail(which, f"needs --{OPTIONS_BY_FIELD[name].long} (or {var})")
        if cfg.ssl_verify_clients != "none" and not cfg.ssl_ca_file:
            fail("ssl_verify_clients", "needs --ssl-ca-file (or GEARMAND_CA_CERTIFICATE)")
    if cfg.syslog and not cfg.syslog_socket:
        fail("syslog_socket", "must name the syslog socket", False)
    return cfg


def io_uring_excluded(cfg: Config) -> str | None:
    """Why this configuration needs the epoll loop whatever the kernel offers, or None.
    TLS connections are served by the epoll loop only, so with TLS `--io auto` means
    epoll (one log line says so) and `--io uring` is refused."""
    if cfg.ssl or cfg.ssl_port is not None:
        return "TLS (--ssl, --ssl-port) is served by the epoll loop only"
    return None


def parse_monitor(value: str) -> tuple[str, int] | None | bool:
    """--monitor as (host, port), None for 'off', or False when it is not valid. The
    host may be an IPv6 address in brackets: [::1]:4731."""
    if not isinstance(value, str):
        return False
    if value in ("off", "none", "no", "false", "0"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not _DECIMAL.match(port) or port.startswith(("+", "-")):
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not 0 <= int(port) <= 65535:
        return False
    return host, int(port)


def flag_table_markdown() -> str:
    """The README's flag table, generated so that it cannot drift from OPTIONS."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for opt in OPTIONS:
        if opt.field == "check_args":
            continue  # hidden, as in gearmand
        names = f"`-{opt.short}`, `--{opt.long}`" if opt.short else f"`--{opt.long}`"
        if not opt.takes_value:
            default = "on" if opt.default else "off"
        elif opt.default in (None, ()):
            default = ""
        else:
            default = f"`{opt.default}`"
        rows.append(f"| {names} | {default} | {opt.help} |")
    return "\n".join(rows)
