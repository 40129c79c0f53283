# Config -> CoreConfig: the one place where the frozen Config's fields become the
# compiled core's start-up settings (see coreconfig.pxd). The server builds one
# CoreSettings with core_settings() and hands it to IOLoop; nothing else configures the
# engine or the loops at start-up.
import os

from fastgear.config import io_uring_excluded


cdef class CoreSettings:
    """A filled CoreConfig, as IOLoop takes it. Build it with core_settings()."""

    def as_dict(self):
        """The settings as a dict of the struct's fields (tests, debugging)."""
        return self.c


def core_settings(cfg, long long max_connections):
    """The core's settings from a validated Config. `max_connections` is the connection
    limit the server resolved (--max-connections, or the descriptor limit after -f)."""
    cdef CoreSettings s = CoreSettings()
    cdef bytes prefix = (cfg.job_handle_prefix or f"H:{os.uname().nodename}").encode()
    cdef size_t n = len(prefix)
    cdef long long budget = cfg.max_queued_bytes
    if budget == 0:
        budget = _half_of_memory()
    core_config_defaults(&s.c, prefix, n)
    # -j and -w are already cut to gearmand's 8 bits by Config.
    s.c.job_retries = cfg.job_retries
    s.c.worker_wakeup = cfg.worker_wakeup
    s.c.exceptions = bool(cfg.exceptions)
    # Background jobs wait for their commit only with a store; replay at start-up is
    # not held up by it (engine_replay).
    # Every -q other than builtin that validate() lets through is a store.
    s.c.durable = cfg.queue_type != "builtin"
    s.c.max_unique = cfg.max_unique
    s.c.max_function_name = cfg.max_function_name
    s.c.max_queued_bytes = budget
    s.c.trim_after_jobs = cfg.trim_after_jobs
    s.c.wakeup_timeout_ms = cfg.wakeup_timeout
    s.c.keep_results_us = cfg.keep_results * 1000000
    s.c.keep_results_bytes = cfg.keep_results_bytes
    s.c.bg_retries = cfg.bg_retries
    s.c.bg_backoff_ms = int(cfg.bg_retry_backoff * 1000)
    s.c.bg_backoff_max_ms = int(cfg.bg_retry_backoff_max * 1000)
    s.c.dead_letters = cfg.dead_letters
    s.c.dead_letters_bytes = cfg.dead_letters_bytes
    # -t 0 is gearmand's "single-threaded": one loop, like -t 1.
    s.c.threads = max(1, cfg.threads)
    s.c.max_packet = cfg.max_packet
    s.c.max_output = cfg.max_output
    s.c.max_output_hard = cfg.max_output_hard
    s.c.max_connections = max_connections if max_connections > 0 else 0
    s.c.keepalive = bool(cfg.keepalive)
    s.c.keep_idle = cfg.keepalive_idle
    s.c.keep_intvl = cfg.keepalive_interval
    s.c.keep_cnt = cfg.keepalive_count
    s.c.io = {"epoll": IO_EPOLL, "uring": IO_URING}.get(getattr(cfg, "io", "auto"), IO_AUTO)
    if s.c.io == IO_AUTO and io_uring_excluded(cfg):
        s.c.io = IO_EPOLL
    return s


def _half_of_memory():
    """--max-queued-bytes 0: half of physical memory (0, no budget, where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError):
        return 0
