# The one hand-off of start-up settings from the frozen Config into the compiled core:
# `CoreConfig` holds everything the engine and the I/O loops take at start-up, filled
# once by coreconfig.core_settings() and given to IOLoop, which passes it on to
# engine_init(). Settings that admin commands change at run time (maxqueue, ...) are not
# here. Only a C struct lives in the engine's path, so the engine stays free of Python.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset


cdef struct CoreConfig:
    # engine (engine_init)
    char prefix[48]          # job handle prefix; Engine.prefix keeps at most 47 bytes
    uint32_t prefix_len
    uint32_t job_retries     # 0 = unlimited
    uint32_t worker_wakeup   # 0 = one sleeper per job (fastgear); N = N per job
    uint8_t exceptions       # protocol exceptions on for new connections
    uint8_t durable          # background jobs are acknowledged after their commit
    uint32_t max_unique
    uint32_t max_function_name
    uint64_t max_queued_bytes  # 0: unlimited
    uint64_t trim_after_jobs   # 0: never malloc_trim after a drain
    int64_t wakeup_timeout_ms  # 0: never wake another sleeper for a silent one
    int64_t keep_results_us    # 0: keep no results
    uint64_t keep_results_bytes
    uint32_t bg_retries        # background jobs run again after WORK_FAIL/EXCEPTION
    int64_t bg_backoff_ms      # first back-off; doubles per retry, jittered
    int64_t bg_backoff_max_ms
    uint64_t dead_letters      # 0: no dead-letter list
    uint64_t dead_letters_bytes
    # I/O loops (IOLoop)
    int threads              # below 1: one loop
    size_t max_packet
    size_t max_output        # 0: no limit
    size_t max_output_hard   # 0: no limit
    int64_t max_connections  # 0: no limit
    int keepalive
    int keep_idle            # TCP_KEEP* values for accepted sockets (<= 0: system's)
    int keep_intvl
    int keep_cnt
    uint8_t io               # IO_AUTO, IO_EPOLL or IO_URING (--io)


cdef enum:
    IO_AUTO = 0              # io_uring where the kernel allows it, else epoll
    IO_EPOLL = 1
    IO_URING = 2


cdef inline void core_config_defaults(CoreConfig *c, const char *prefix,
                                      size_t prefix_len) noexcept nogil:
    """The engine's limits when nothing is configured (the engine test harness):
    gearmand's 64-byte unique keys, no other limit, one loop."""
    memset(c, 0, sizeof(CoreConfig))
    if prefix_len > sizeof(c.prefix) - 1:
        prefix_len = sizeof(c.prefix) - 1
    memcpy(c.prefix, prefix, prefix_len)
    c.prefix_len = <uint32_t>prefix_len
    c.max_unique = 64
    c.max_function_name = 0xFFFFFFFF
    c.threads = 1
    c.max_packet = 0xFFFFFFFF
    c.keep_idle = -1
    c.keep_intvl = -1
    c.keep_cnt = -1


cdef class CoreSettings:
    cdef CoreConfig c
