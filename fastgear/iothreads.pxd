# The I/O layer's state: N epoll loops (one native thread each) sharing one engine and
# its lock, the hand-over queues to the Python control thread (text admin lines, and
# events to log, since the loops cannot call Python logging), and the per-connection
# I/O limits (--max-output, --max-connections, keepalive).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from fastgear.engine cimport Engine, Conn, Job
from fastgear.includes.sys cimport (pthread_mutex_t, pthread_mutex_lock, pthread_mutex_unlock,
                                    pthread_self)

cdef enum:
    MAX_LISTENERS = 16
    MAX_LOOPS = 1024
    # Log events waiting for the control thread; beyond this they are counted only,
    # so a flood of bad peers cannot grow memory through the log.
    MAX_LOG_EVENTS = 1024

# What a LogEvent reports.
cdef enum:
    EV_PROTOCOL_ERROR = 1    # code: the ERROR code sent (or LINE_TOO_LONG)
    EV_OUTPUT_HARD = 2       # value: bytes waiting to be sent when it was disconnected
    EV_REFUSED = 3           # value: how many peers were refused in one batch
    EV_ACCEPT_FAILED = 4     # value: errno of accept4()

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_KEEPIDLE
        TCP_KEEPINTVL
        TCP_KEEPCNT

cdef extern from "<sys/socket.h>" nogil:
    enum:
        SHUT_WR

cdef extern from "<errno.h>" nogil:
    enum:
        ECONNABORTED
        EBADF
        ENOTSOCK
        EINVAL

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t ntohs(uint16_t v)

cdef extern from "<fcntl.h>" nogil:
    enum:
        O_RDONLY
        O_CLOEXEC
    int c_open "open"(const char *path, int flags)

# Relaxed atomics for the few values one thread writes and others read without the lock.
cdef extern from *:
    """
    #define fg_load_size(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    #define fg_store_size(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define fg_add_i64(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
    #define fg_load_i64(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    """
    size_t fg_load_size(size_t *p) noexcept nogil
    void fg_store_size(size_t *p, size_t v) noexcept nogil
    int64_t fg_add_i64(int64_t *p, int64_t v) noexcept nogil
    int64_t fg_load_i64(int64_t *p) noexcept nogil

cdef struct Shared

cdef struct AdminReq:
    int fd
    uint64_t conn_id
    uint8_t loopback
    char *line
    size_t len
    AdminReq *next

cdef struct LogEvent:
    int kind
    char ip[48]
    uint16_t port
    uint64_t conn_id
    const char *code         # a static string, never freed
    uint64_t value
    LogEvent *next

cdef struct IOConn:
    # The I/O layer's view of a connection: the engine's Conn first (the engine sees
    # only that part), then what only the I/O layer needs.
    Conn c
    uint16_t port
    size_t wlen              # bytes in c.wbuf, published for other loops (atomic)
    uint8_t paused           # input not read: too much output is waiting
    uint8_t over             # past --max-output-hard: being disconnected
    uint8_t in_unpause
    IOConn *unpause_next     # owner's list of connections to resume reading

cdef struct Loop:
    # Owned by one thread; the fields marked (lock) are also touched by others.
    Shared *S
    int idx
    int epfd
    int wakefd               # poked by other threads: remote output, admin replies, stop
    int spare_fd             # given up to accept (and refuse) a peer when out of fds
    Conn *closing            # to close after the next locked section
    Conn *flush              # staged output to send outside the lock
    Conn *check              # flushed connections that were closing or dead
    Conn *remote             # (lock) own connections made dirty by other threads
    Conn *resume             # (lock) own connections whose admin reply arrived
    IOConn *unpause          # own connections whose output drained: read them again
    uint8_t poke_pending     # (lock) a wake-up is already on its way
    uint64_t accepted        # per-thread counters, summed on read
    uint64_t protocol_errors
    uint64_t batches
    uint64_t refused         # over --max-connections (or out of fds)
    uint64_t paused          # times a connection's input was paused (--max-output)
    uint64_t hard_closed     # connections dropped past --max-output-hard

cdef struct Shared:
    Engine eng
    pthread_mutex_t lock
    Loop *loops
    int nloops
    int next_loop            # round-robin assignment of accepted connections
    int adminfd              # pokes the control thread (admin lines or log events)
    int storefd              # pokes the store thread (rows to write or delete)
    uint8_t store_poked
    int listen_fds[MAX_LISTENERS]
    int nlisten
    Conn **conns             # indexed by fd
    size_t conns_cap
    AdminReq *admin_head
    AdminReq *admin_tail
    LogEvent *ev_head        # (lock) events for the control thread to log
    LogEvent *ev_tail
    uint32_t ev_len
    uint64_t ev_dropped
    size_t max_packet
    size_t max_output        # 0: no limit
    size_t max_output_hard   # 0: no limit
    int64_t max_connections  # 0: no limit
    int64_t open_conns       # (atomic) accepted and not yet closed
    int keepalive            # TCP_KEEP* values for accepted sockets (<= 0: system's)
    int keep_idle
    int keep_intvl
    int keep_cnt
    int draining             # SIGTERM grace period: no new jobs start or are accepted
    int64_t timer_wake_ms    # when loop 0, which runs the timers, will wake next
    int stopping


cdef inline void lock(Shared *S) noexcept nogil:
    pthread_mutex_lock(&S.lock)
    S.eng.owner = pthread_self()


cdef inline void unlock(Shared *S) noexcept nogil:
    S.eng.owner = 0
    pthread_mutex_unlock(&S.lock)


cdef void route(Shared *S, Loop *me) noexcept nogil


cdef class IOLoop:
    cdef Shared *S
    cdef void _ack(self, Job *j, int failed, const char *etext) noexcept nogil
