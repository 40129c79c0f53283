"""Composition root: turns a validated Config into a running server.

It binds the listening sockets (every address like gearmand, or `-L`), applies the
process options (file-descriptor limit, daemon, pid file, user), sets up logging, starts
the compiled I/O loop in a native thread, and then becomes the control thread: it answers
text admin lines handed over by the loop (formatted by admin.py) and reacts to signals
(SIGTERM/SIGINT stop, SIGUSR1 stop accepting and exit once no job is left, SIGHUP reopen
the log). The control thread is the only one that holds the GIL; the loop never waits
for it except on the one connection whose admin line it is answering. It also logs the
events the loops queue for it (protocol errors, refused and dropped peers), which they
cannot log themselves.

Shutdown paths: SIGINT, and SIGTERM without --shutdown-timeout, stop at once (as
gearmand); SIGTERM with --shutdown-timeout S stops accepting, lets running jobs finish
for up to S seconds while no new job starts, then exits (a second SIGTERM exits at
once); SIGUSR1 stops accepting and exits once no job is left (gearmand's meaning). On
every path the I/O loops stop before the store thread's last commit, so every job that
was acknowledged and not finished is still in the store file.
"""
import dataclasses
import errno
import logging
import logging.handlers
import os
import select
import signal
import socket
import sys
import threading
import time

from fastgear import __version__, access, admin, control, monitor, snapshot
from fastgear.config import io_uring_excluded
from fastgear.persist import StoreThread
from fastgear.persist.sqlite import SQLiteStore, StoreError

log = logging.getLogger("fastgear")

LEVELS = {"FATAL": logging.CRITICAL, "ALERT": logging.CRITICAL, "CRITICAL": logging.CRITICAL,
          "ERROR": logging.ERROR, "WARNING": logging.WARNING, "NOTICE": logging.INFO,
          "INFO": logging.INFO, "DEBUG": logging.DEBUG}
COMPAT_VERSION = "1.1.20"


class StartupError(Exception):
    """A fatal problem found before serving (bind, pid file, user)."""


_SYSLOG = logging.handlers.SysLogHandler
SYSLOG_PRIORITIES = {"CRITICAL": _SYSLOG.LOG_CRIT, "ERROR": _SYSLOG.LOG_ERR,
                     "WARNING": _SYSLOG.LOG_WARNING, "NOTICE": _SYSLOG.LOG_NOTICE,
                     "INFO": _SYSLOG.LOG_INFO, "DEBUG": _SYSLOG.LOG_DEBUG}


class GearmandSyslog(logging.handlers.SysLogHandler):
    """What gearmand's --syslog sends: openlog("gearmand", LOG_PID, LOG_USER), each level
    as the syslog priority of the same name, and, as with syslog(3), a line the syslog
    daemon cannot take is dropped rather than reported on a stderr nobody reads."""

    def __init__(self, path):
        self.probe(path)
        super().__init__(address=path, facility=self.LOG_USER)
        self.append_nul = False  # glibc's syslog() sends none
        self.setFormatter(logging.Formatter("%(levelname)7s %(message)s"))

    @staticmethod
    def probe(path):
        """Raise OSError when nothing listens at `path`: SysLogHandler would say nothing
        and drop every line, as syslog(3) does, and the user would never know."""
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_UNIX, kind) as s:
                try:
                    s.connect(path)
                    return
                except OSError as exc:
                    error = exc
        raise error

    def format(self, record):
        # The header syslog(3) writes; the pid is taken per line, so it is right after -d.
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime(record.created))
        return f"{stamp} gearmand[{record.process}]: {super().format(record)}"

    def mapPriority(self, levelName):
        return SYSLOG_PRIORITIES.get(levelName, self.LOG_NOTICE)

    def handleError(self, record):
        pass


def setup_logging(cfg):
    """Log to the file gearmand would, falling back to stderr when it cannot be opened,
    and with --syslog to the local syslog as well; no syslog socket is a warning."""
    root = logging.getLogger("fastgear")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    target = cfg.log_file
    if target == "none":
        handler = logging.NullHandler()
    elif target == "stderr" or not target:
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.FileHandler(target)
        except OSError as exc:
            handler = logging.StreamHandler(sys.stderr)
            print(f"fastgear: cannot open log file {target}: {exc}; logging to stderr",
                  file=sys.stderr)
            target = "stderr"
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(LEVELS.get(cfg.verbose.upper(), logging.ERROR))
    root.propagate = False
    if cfg.syslog:
        try:
            root.addHandler(GearmandSyslog(cfg.syslog_socket))
        except OSError as exc:
            where = "nowhere (--log-file none)" if target == "none" else f"to {target} only"
            warning = (f"--syslog: cannot reach the syslog socket {cfg.syslog_socket} "
                       f"({exc.strerror or exc}); logging {where}")
            if target != "stderr":
                print(f"fastgear: warning: {warning}", file=sys.stderr)
            log_always(logging.WARNING, "WARNING", warning)


def _address(sock):
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def startup_line(cfg, sockets, threads, replayed, mon, http_sockets=(), tls_sockets=(),
                 io="epoll"):
    """What a first-time user needs to know, in one line: where the server listens and
    with what (compare uvicorn's "running on" line and redis's banner)."""
    if cfg.queue_type == "libsqlite3":
        store = f"SQLite {os.path.abspath(cfg.libsqlite3_db)} ({replayed} jobs replayed)"
    elif cfg.queue_type == "postgres":
        store = (f"PostgreSQL table {cfg.libpq_table}, lease {cfg.store_lease}s "
                 f"({replayed} jobs replayed)")
    elif cfg.queue_type == "mysql":
        store = f"MySQL table {cfg.mysql_db}.{cfg.mysql_table} ({replayed} jobs replayed)"
    elif cfg.queue_type == "redis":
        store = (f"Redis {cfg.redis_server or '127.0.0.1'}:{cfg.redis_port or 6379} "
                 f"prefix {cfg.redis_prefix} ({replayed} jobs replayed)")
    elif cfg.queue_type == "libmemcached":
        store = (f"memcached {cfg.libmemcached_servers} prefix {cfg.libmemcached_prefix}, "
                 f"NOT durable ({replayed} jobs replayed)")
    else:
        store = "memory (background jobs are lost on exit; --store FILE keeps them)"
    monitor_at = mon.url if mon is not None else "off"
    http = (f", HTTP job submission on {', '.join(_address(s) for s in http_sockets)}"
            if http_sockets else "")
    main = ", ".join(_address(s) for s in sockets) + (" (TLS)" if cfg.ssl else "")
    if tls_sockets:
        main += f", TLS on {', '.join(_address(s) for s in tls_sockets)}"
    return (f"fastgear {__version__} ready on {main}{http}"
            f" (pid {os.getpid()}): {threads} I/O thread{'s' if threads != 1 else ''}"
            f" ({io}),"
            f" store {store}, monitor {monitor_at}")


def log_always(levelno, levelname, message):
    """Log `message` whatever --verbose says (handle() skips the level check)."""
    record = log.makeRecord(log.name, levelno, __file__, 0, message, None, None)
    record.levelname = levelname
    log.handle(record)


def log_notice(message):
    """Log `message` whatever --verbose says: gearmand's default level (ERROR) would
    hide the start-up line, and a user needs it most when nothing else is logged."""
    log_always(logging.INFO, "NOTICE", message)
    # Someone at a terminal whose log goes to a file (gearmand's default) sees it too.
    to_stderr = any(getattr(h, "stream", None) is sys.stderr for h in log.handlers)
    if not to_stderr and sys.stderr.isatty():
        print(f"fastgear: {message}", file=sys.stderr)


def _where(addr):
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


# First pause between bind() retries, doubling up to the last: a restart whose old server
# exits within a second is served at once (gearmand waits 1, 2, 4, 6, 9 s).
BIND_RETRY_FIRST, BIND_RETRY_MAX = 0.1, 2.0


def bind_listeners(cfg, stopping=lambda: False):
    """Bind like gearmand: every passive address (IPv4 and IPv6) unless -L names one.

    Every address asked for must be bound, or clients of the missing one are refused
    with no hint: one in use (an old server still exiting) is retried for
    --bind-retry-timeout seconds, each retry logged, and then start-up fails, as in
    gearmand; any other bind() error fails at once. Only an address family the host
    lacks (socket() fails) is skipped with a warning, as gearmand does.
    """
    host = cfg.listen or None
    try:
        infos = socket.getaddrinfo(host, cfg.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve listen address {host!r}: {exc}") from exc
    socks, busy, skipped = [], [], []
    seen = set()

    def close_all():
        for s in socks + [b[0] for b in busy]:
            s.close()

    def try_bind(s, addr):
        """True once bound and listening, False while the address is in use."""
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            close_all()
            s.close()
            raise StartupError(f"cannot listen on {_where(addr)}: "
                               f"{exc.strerror or exc}") from exc
        # The kernel caps the backlog at net.core.somaxconn (gearmand's 32 drops
        # SYNs when thousands of workers reconnect after a restart).
        s.listen(cfg.backlog)
        s.setblocking(False)
        return True

    for family, stype, proto, _, addr in infos:
        if (family, addr) in seen:
            continue
        seen.add((family, addr))
        try:
            s = socket.socket(family, stype, proto)
        except OSError as exc:
            skipped.append(f"{_where(addr)}: {exc.strerror or exc}")
            continue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if try_bind(s, addr):
            socks.append(s)
        else:
            busy.append((s, addr))
    deadline = time.monotonic() + cfg.bind_retry_timeout
    pause = BIND_RETRY_FIRST
    while busy and not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for _, addr in busy:
            # Logged whatever --verbose says: a server silent for 20 s looks hung.
            log_always(logging.WARNING, "WARNING",
                       f"{_where(addr)} is in use; retrying bind() for {left:.1f}s more "
                       f"(--bind-retry-timeout {cfg.bind_retry_timeout})")
        until = time.monotonic() + min(pause, left)
        while time.monotonic() < until and not stopping():
            time.sleep(min(0.05, max(0.0, until - time.monotonic())))
        pause = min(pause * 2, BIND_RETRY_MAX)
        still = []
        for s, addr in busy:
            if try_bind(s, addr):
                socks.append(s)
            else:
                still.append((s, addr))
        busy = still
    if busy:
        close_all()
        where = ", ".join(_where(addr) for _, addr in busy)
        if stopping():
            raise StartupError(f"stopped while waiting for {where} to be free")
        raise StartupError(f"cannot listen on {where}: Address already in use (still after "
                           f"--bind-retry-timeout {cfg.bind_retry_timeout})")
    if not socks:
        raise StartupError(f"cannot listen on port {cfg.port} ({'; '.join(skipped)})")
    for e in skipped:
        log.warning("not listening on %s", e)
    return socks


def daemonize():
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def apply_process_options(cfg):
    if cfg.file_descriptors:
        import resource
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (cfg.file_descriptors, cfg.file_descriptors))
        except (ValueError, OSError) as exc:
            raise StartupError(
                f"cannot set file descriptor limit to {cfg.file_descriptors}: {exc}") from exc


FD_RESERVE = 64


def connection_limit(cfg):
    """--max-connections, or with 0 the descriptor limit (after -f) less a reserve for
    listeners, epoll and eventfds, the log and the store; 0 back means no limit."""
    if cfg.max_connections:
        return cfg.max_connections
    import resource
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(1, soft - FD_RESERVE)


def write_pid_file(cfg):
    path = cfg.pid_file
    if not path:
        return None
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
        return path
    except OSError as exc:
        if getattr(cfg, "pid_file_is_default", False):
            log.warning("cannot write pid file %s: %s", path, exc)
            return None
        raise StartupError(f"cannot write pid file {path}: {exc}") from exc


def drop_privileges(cfg):
    if not cfg.user:
        return
    import pwd
    try:
        pw = pwd.getpwnam(cfg.user)
    except KeyError as exc:
        raise StartupError(f"unknown user {cfg.user!r}") from exc
    if os.getuid() != 0:
        raise StartupError("--user needs the server to be started as root")
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)


def configure_tls(cfg, loop):
    """With --ssl or --ssl-port, build the loops' TLS context (iothreads_tls.pxi); a file
    that cannot be read, or a key that does not match its certificate, is a start-up
    error naming the flag. Only paths and OpenSSL's reasons are ever reported."""
    from fastgear import iothreads

    if not (cfg.ssl or cfg.ssl_port is not None):
        return
    verify = {"none": iothreads.VERIFY_NONE, "optional": iothreads.VERIFY_OPTIONAL,
              "require": iothreads.VERIFY_REQUIRE}[cfg.ssl_verify_clients]
    try:
        iothreads.tls_configure(loop, cfg.ssl_certificate, cfg.ssl_key, cfg.ssl_ca_file,
                                verify, cfg.ssl_handshake_timeout)
    except iothreads.TLSConfigError as exc:
        raise StartupError(str(exc)) from None


def open_store(cfg, loop):
    """Open the store and replay it into the engine before any connection is served;
    background jobs are acknowledged after their commit from then on."""
    if cfg.queue_type == "postgres":
        from fastgear.persist.postgres import PostgresStore
        store = PostgresStore(cfg.libpq_conninfo, cfg.libpq_table, cfg.store_lease, cfg.port)
        where = f"PostgreSQL table {cfg.libpq_table}"
    elif cfg.queue_type == "mysql":
        from fastgear.persist.mysql import MySQLStore
        store = MySQLStore(cfg.mysql_host, cfg.mysql_port, cfg.mysql_user, cfg.mysql_password,
                           cfg.mysql_db, cfg.mysql_table, cfg.mysql_timeout)
        where = store.where()
    elif cfg.queue_type == "redis":
        from fastgear.persist.redis import RedisStore
        store = RedisStore(cfg.redis_server, cfg.redis_port, cfg.redis_password,
                           cfg.redis_prefix)
        where = store.where
    elif cfg.queue_type == "libmemcached":
        from fastgear.persist.memcached import NOT_DURABLE, MemcachedStore
        store = MemcachedStore(cfg.libmemcached_servers, cfg.libmemcached_prefix)
        where = store.where
        # Whatever --verbose says: nobody should believe these jobs are safe.
        log_always(logging.WARNING, "WARNING", NOT_DURABLE)
    else:
        store = SQLiteStore(cfg.libsqlite3_db, cfg.libsqlite3_table, cfg.store_sync)
        where = f"queue file {cfg.libsqlite3_db}"
    store.open()
    try:
        rows = list(store.replay())
        duplicates = loop.replay(rows)
        if duplicates:
            store.delete_rows(duplicates)
        if getattr(store, "supports_dead", False):
            for function, retries, backoff_s in store.replay_retry():
                control.set_retry(loop, function, retries, backoff_s)
            control.dead_restore(loop, store.replay_dead())
            # A shared store gives each server a range of dead-letter ids of its own.
            floor = getattr(store, "dead_id_floor", 0)
            if floor:
                control.dead_id_floor(loop, floor)
    except Exception as exc:  # any failure here is a start-up error
        store.close()
        raise StoreError(f"cannot replay {where}: {exc}") from exc
    replayed = len(rows) - len(duplicates)
    log.info("replayed %d background jobs from %s", replayed, where)
    return store, replayed


class Control:
    """The admin context (admin.AdminContext) over the running loop."""

    def __init__(self, loop, cfg, server):
        self.loop = loop
        self.cfg = cfg
        self.server = server

    def functions(self):
        return [(name, total, running, workers, high, normal + future, low)
                for name, total, running, workers, high, normal, low, future
                in snapshot.functions(self.loop)]

    def connections(self):
        return snapshot.connections(self.loop)

    def jobs(self):
        return snapshot.jobs(self.loop)

    def cancel_job(self, handle):
        return control.cancel_job(self.loop, handle)

    def create_function(self, name):
        control.create_function(self.loop, name)

    def drop_function(self, name):
        return control.drop_function(self.loop, name)

    def set_maxqueue(self, name, high, normal, low):
        control.set_maxqueue(self.loop, name, high, normal, low)

    def keep_results(self):
        return self.cfg.keep_results

    def result(self, handle):
        return snapshot.result(self.loop, handle)

    def results_by_unique(self, unique):
        return snapshot.results_by_unique(self.loop, unique)

    def results_page(self, function, outcome, limit):
        return snapshot.results_page(self.loop, function, outcome, 0, limit)[0]

    def set_retry(self, name, retries, backoff_s):
        control.set_retry(self.loop, name, retries, backoff_s)
        if self.server.store_thread is not None:
            self.server.store_thread.set_retry(name, retries, backoff_s)

    def retry_settings(self):
        return snapshot.retry_settings(self.loop)

    def dead_letters(self, function=None, limit=1000, before=0):
        return snapshot.dead_letters(self.loop, function, limit, before)

    def dead_letter(self, handle):
        return snapshot.dead_letter(self.loop, handle)

    def requeue_dead(self, handle):
        return control.requeue_dead(self.loop, handle)

    def requeue_dead_function(self, name):
        return control.requeue_dead_function(self.loop, name)

    def discard_dead(self, handle):
        return control.discard_dead(self.loop, handle)

    def pid(self):
        return os.getpid()

    def version(self):
        return f"{COMPAT_VERSION}+fastgear.{__version__}"

    def verbose(self):
        return self.cfg.verbose.upper()

    def shutdown(self, graceful):
        self.server.request_stop(graceful)


class Server:
    def __init__(self, cfg):
        from fastgear.coreconfig import core_settings
        from fastgear.iothreads import IOLoop

        self.cfg = cfg
        # After -f (apply_process_options), which --max-connections 0 follows.
        self.max_connections = connection_limit(cfg)
        try:
            self.loop = IOLoop(core_settings(cfg, self.max_connections))
        except OSError as exc:
            if str(exc).startswith("--io"):
                raise StartupError(str(exc)) from None
            raise
        # --io auto on a kernel without io_uring, or with TLS: one line says why.
        why = self.loop.io_fallback or (cfg.io == "auto" and io_uring_excluded(cfg))
        if why:
            log_always(logging.WARNING, "WARNING", f"I/O: epoll, not io_uring ({why})")
        self.control = Control(self.loop, cfg, self)
        # --admin-allow / --admin-allow-read, parsed once (validate() checked them).
        self.access = access.Policy.from_config(cfg)
        self.refusals = access.RefusalLog(
            lambda message: log_always(logging.WARNING, "WARNING", message))
        self.sockets = []
        self.threads = []
        self._stop = False
        self._graceful = False
        self._term = False          # SIGTERM with --shutdown-timeout: the grace period
        self._reopen_log = False
        self.store_status = None        # the store thread's status(), for monitoring
        self.store_thread = None        # keeps per-function retry settings, if any

    def request_stop(self, graceful=False):
        if graceful:
            self._graceful = True
        else:
            self._stop = True

    def install_signal_handlers(self):
        """Before the port is bound, so a signal that arrives as soon as clients can
        connect is already handled the server's way."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGTERM and self.cfg.shutdown_timeout > 0 and not self._term:
            self._term = True
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self._stop = True
        elif signum == signal.SIGUSR1:
            self._graceful = True
        elif signum == signal.SIGHUP:
            self._reopen_log = True

    def start(self, sockets, http_sockets=(), tls_sockets=()):
        self.sockets = list(sockets) + list(http_sockets) + list(tls_sockets)
        for s in sockets:
            self.loop.add_listener(s.fileno(), tls=self.cfg.ssl)
        for s in http_sockets:
            self.loop.add_listener(s.fileno(), http=True)
        for s in tls_sockets:
            self.loop.add_listener(s.fileno(), tls=True)
        self.threads = [threading.Thread(target=self.loop.run, args=(i,),
                                         name=f"fastgear-io-{i}", daemon=True)
                        for i in range(self.loop.threads)]
        for t in self.threads:
            t.start()

    def stop_accepting(self):
        self.loop.stop_accepting()
        for s in self.sockets:
            s.close()
        self.sockets = []

    def serve_admin(self):
        policy = self.access
        for fd, conn_id, line, loopback, ip, port, cn in self.loop.admin_take():
            # Without --admin-allow, `shutdown` keeps its loopback-only rule; with it,
            # the list decides, as for every other changing command.
            shutdown_ok = loopback if policy.write is None else True
            if not policy.open:
                kind, name = admin.command_kind(line)
                peer = access.Peer(ip, cn)
                if kind is not None and not (policy.may_change(peer) if kind == admin.CHANGE
                                             else policy.may_read(peer)):
                    flag = policy.flag_for(kind == admin.CHANGE)
                    self.refusals.refused("admin command", name, peer, port, flag)
                    self.loop.admin_reply(fd, conn_id, admin.denied(kind, ip, flag))
                    continue
            try:
                reply = admin.handle_line(line, self.control, shutdown_ok)
            except Exception:
                log.exception("admin command %r failed", line[:80])
                reply = b"ERR UNKNOWN_ERROR Internal+server+error\r\n"
            if reply is admin.CLOSE:
                self.loop.admin_reply(fd, conn_id, b"", True)
            else:
                self.loop.admin_reply(fd, conn_id, reply)

    def log_events(self):
        """Log what the loops queued: they run without the GIL and cannot log."""
        from fastgear import iothreads as io

        events, dropped = self.loop.events_take()
        for kind, ip, port, conn_id, code, value in events:
            peer = f"{ip}:{port}" if ip else "?"
            if kind == io.EVENT_PROTOCOL_ERROR:
                log.warning("protocol error from %s (connection %d): %s; connection closed",
                            peer, conn_id, code)
            elif kind == io.EVENT_OUTPUT_HARD:
                log.error("disconnected %s (connection %d): %d bytes of output it does not "
                          "read (--max-output-hard %d)", peer, conn_id, value,
                          self.cfg.max_output_hard)
            elif kind == io.EVENT_REFUSED:
                log.warning("refused %d connection(s): connection limit %d reached "
                            "(--max-connections, -f)", value, self.max_connections)
            elif kind == io.EVENT_ACCEPT_FAILED:
                log.error("accept failed: %s", os.strerror(value))
            elif kind == io.EVENT_TLS_FAILED:
                log.warning("TLS handshake with %s (connection %d) failed: %s; connection "
                            "closed", peer, conn_id, code)
        if dropped:
            log.warning("%d more events were not logged (too many at once)", dropped)

    def job_counts(self):
        """(queued, running) over every function; queued includes future jobs."""
        queued = running = 0
        for _name, total, run, *_ in snapshot.functions(self.loop):
            queued += total - run
            running += run
        return queued, running

    def control_loop(self):
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        old_wakeup = signal.set_wakeup_fd(wfd)
        poller = select.poll()
        poller.register(self.loop.admin_fd, select.POLLIN)
        poller.register(rfd, select.POLLIN)
        draining = False
        term_deadline = None
        try:
            while not self._stop:
                try:
                    ready = poller.poll(50 if draining or term_deadline else 250)
                except InterruptedError:
                    ready = []
                for fd, _ in ready:
                    if fd == rfd:
                        try:
                            os.read(rfd, 512)
                        except BlockingIOError:
                            pass
                    else:
                        self.serve_admin()
                        self.log_events()
                if self._reopen_log:
                    self._reopen_log = False
                    setup_logging(self.cfg)
                    log.info("log file reopened")
                if self._graceful and not draining:
                    draining = True
                    log.info("graceful shutdown: no longer accepting connections")
                    self.stop_accepting()
                if draining and snapshot.stats(self.loop)["jobs"] == 0:
                    log.info("graceful shutdown: no jobs left")
                    break
                if self._term and term_deadline is None:
                    term_deadline = time.monotonic() + self.cfg.shutdown_timeout
                    self.loop.set_draining(True)
                    if not draining:
                        self.stop_accepting()
                    queued, running = self.job_counts()
                    log.info("SIGTERM: no longer accepting connections or starting jobs; "
                             "waiting up to %ds for %d running jobs (%d queued)",
                             self.cfg.shutdown_timeout, running, queued)
                if term_deadline is not None:
                    queued, running = self.job_counts()
                    if running == 0:
                        log.info("SIGTERM: no running jobs left")
                        break
                    if time.monotonic() >= term_deadline:
                        log.warning("SIGTERM: --shutdown-timeout %ds reached with %d jobs "
                                    "still running", self.cfg.shutdown_timeout, running)
                        break
        finally:
            self.log_events()
            signal.set_wakeup_fd(old_wakeup)
            os.close(rfd)
            os.close(wfd)

    def report_remaining(self, durable):
        queued, running = self.job_counts()
        if queued or running:
            where = ("background jobs stay in the store" if durable
                     else "they are lost (no --store)")
            log.warning("exiting with %d jobs queued and %d running: %s", queued, running,
                        where)

    def shutdown(self):
        """Stop the loops; True once every loop thread has ended."""
        self.loop.stop()
        for t in self.threads:
            t.join(10)
        for s in self.sockets:
            s.close()
        self.sockets = []
        return not any(t.is_alive() for t in self.threads)


def run(cfg):
    """Serve until told to stop; returns the process exit code."""
    setup_logging(cfg)
    try:
        # -f first: the connection limit handed to the core follows it.
        apply_process_options(cfg)
    except StartupError as exc:
        log.error("%s", exc)
        print(f"fastgear: {exc}", file=sys.stderr)
        return 1
    try:
        srv = Server(cfg)
    except StartupError as exc:
        log.error("%s", exc)
        print(f"fastgear: {exc}", file=sys.stderr)
        return 1
    srv.install_signal_handlers()
    if srv.access.has_names() and not (cfg.ssl or cfg.ssl_port is not None):
        log.warning("cn: entries of --admin-allow / --admin-allow-read match only TLS "
                    "peers with a client certificate; without TLS none will match")
    sockets, http_sockets, tls_sockets, store, pid_path, replayed = [], [], [], None, None, 0
    mon_bound = None
    try:
        # Key and certificates are read here, once, before binding and before -u drops
        # the privileges that may be needed to read them.
        configure_tls(cfg, srv.loop)
        stopping = lambda: srv._stop or srv._term
        sockets = bind_listeners(cfg, stopping)
        if "http" in cfg.protocol:
            # -r http: the same binding rules on --http-port.
            http_sockets = bind_listeners(dataclasses.replace(cfg, port=cfg.http_port),
                                          stopping)
        if cfg.ssl_port is not None:
            tls_sockets = bind_listeners(dataclasses.replace(cfg, port=cfg.ssl_port),
                                         stopping)
        # Opened and replayed before detaching, so a bad queue file is reported on the
        # terminal; its thread starts after the fork (threads do not survive fork()).
        if cfg.queue_type != "builtin":
            store, replayed = open_store(cfg, srv.loop)
        # The monitor's address too, so that a busy one the user chose is reported on
        # the terminal; it is served once the loops run (monitor.start below).
        mon_bound = monitor.bind(cfg)
        if cfg.daemon:
            daemonize()
        pid_path = write_pid_file(cfg)
        drop_privileges(cfg)
    except (StartupError, StoreError, monitor.MonitorError) as exc:
        log.error("%s", exc)
        print(f"fastgear: {exc}", file=sys.stderr)
        for s in sockets + http_sockets + tls_sockets:
            s.close()
        if mon_bound is not None:
            mon_bound.close()
        if store is not None:
            store.close()
        remove_pid_file(pid_path)
        return 1
    store_thread = None
    if store is not None:
        store_thread = StoreThread(srv.loop, store)
        store_thread.start()
        srv.store_status = store_thread.status
        srv.store_thread = store_thread
    mon = None
    try:
        # The monitor first: once connections are served its listener is already there.
        if mon_bound is not None:
            mon = monitor.start(cfg, srv, mon_bound)
        srv.start(sockets, http_sockets, tls_sockets)
        log_notice(startup_line(cfg, sockets, srv.loop.threads, replayed, mon, http_sockets,
                                tls_sockets, srv.loop.io_backend))
        srv.control_loop()
    finally:
        if mon is not None:
            mon.stop()
        srv.report_remaining(store is not None)
        # Loops first: after this no job is acknowledged or finished, so the store
        # thread's last commit holds every acknowledged, unfinished job.
        stopped = srv.shutdown()
        if store_thread is not None:
            if store_thread.stop():
                store.close()
            else:
                stopped = False
                log.error("store thread did not finish its last commit in time; "
                          "acknowledged jobs are in the file, the last deletes may not be")
        if stopped:
            # Only the debug build counts; a release build always answers 0.
            leaked = srv.loop.close()
            if leaked:
                log.error("debug build: %d engine allocations were not freed at shutdown",
                          leaked)
        remove_pid_file(pid_path)
    log.info("fastgear stopped")
    return 0


def remove_pid_file(path):
    if not path:
        return
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove pid file %s: %s", path, exc)
