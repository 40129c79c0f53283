# The I/O layer's state: N epoll loops (one native thread each) sharing one engine and
# its lock, the hand-over queues to the Python control thread (text admin lines, and
# events to log, since the loops cannot call Python logging), and the per-connection
# I/O limits (--max-output, --max-connections, keepalive).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from fastgear.buffer cimport Buf
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
    EV_TLS_FAILED = 5        # code: why the TLS handshake failed (a static string)

cdef struct Shared

cdef struct AdminReq:
    int fd
    uint64_t conn_id
    uint8_t loopback
    uint16_t port
    char ip[48]              # the peer, for --admin-allow and the refusal's log line
    char cn[65]              # its client certificate's CN ("" without one)
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

cdef struct HttpReq:
    # The request an HTTP connection (-r http) has with the engine. One at a time: a
    # pipelined request waits in the input until this one is answered, so responses
    # keep their order without the engine knowing about HTTP.
    uint8_t active           # submitted, not answered yet: input is held
    uint8_t kind             # HK_JOB or HK_STATUS
    uint8_t bg               # X-Gearman-Background: answered at JOB_CREATED
    uint8_t head             # HEAD: headers only
    uint8_t keep             # keep the connection open after the response
    uint8_t json             # Accept: application/json
    uint8_t continued        # "100 Continue" already sent for the request in the input
    Buf body                 # a foreground job's WORK_DATA, sent before its result

cdef struct IOConn:
    # The I/O layer's view of a connection: the engine's Conn first (the engine sees
    # only that part, and a Conn * it hands back casts to IOConn *), then what only
    # the I/O layer needs.
    Conn c
    int thread               # the loop that owns it
    Buf inbuf                # input not parsed yet
    Buf wbuf                 # being sent by the owning I/O thread, no lock needed
    size_t wlen              # bytes in wbuf, published for other loops (atomic)
    uint16_t port
    uint8_t loopback
    uint8_t closing          # flush what is queued, then close
    uint8_t dead             # socket gone: drop output
    uint8_t eof              # peer closed its side: close once replies are out
    uint8_t admin_pending    # a text line is with the control thread: hold input
    uint8_t admin_close      # the admin reply asked for the connection to close
    uint8_t want_out         # EPOLLOUT registered
    uint8_t paused           # input not read: too much output is waiting
    uint8_t over             # past --max-output-hard: being disconnected
    uint8_t in_close
    uint8_t in_resume
    uint8_t in_remote
    uint8_t in_flush
    uint8_t in_check
    uint8_t in_unpause
    uint8_t fence_sleep      # sent PRE_SLEEP while fenced: handed to the engine on unfence
    uint8_t http             # accepted on the --http-port listener: speaks HTTP/1.x
    HttpReq hr
    # The io_uring loop's state (iothreads_uring.pxi); the epoll loop leaves it zero.
    Buf sbuf                 # being sent by the kernel: an io_uring send is in flight
    uint8_t ur_recv          # a multishot receive is armed
    uint8_t ur_cancel        # ... and its cancellation has been asked for
    uint8_t ur_send          # a send on sbuf is in flight
    uint8_t ur_ready         # on this batch's list of connections with news
    uint8_t ur_zombie        # closed; freed when its last operation completes
    IOConn *remote_next      # owner's list of connections made dirty by other threads
    IOConn *flush_next
    IOConn *check_next       # owner's list of flushed connections to maybe close
    IOConn *close_next
    IOConn *resume_next
    IOConn *unpause_next     # owner's list of connections to resume reading
    # TLS (iothreads_tls.pxi); ssl is NULL on a plain connection.
    void *ssl                # its SSL *
    uint8_t tls_open         # handshake done: application data flows
    uint8_t tls_out_for_in   # the handshake or SSL_read waits for the socket to be writable
    const char *tls_error    # why the handshake failed, for the log (a static string)
    int64_t tls_deadline_ms  # (lock) the handshake is dropped past this (engine clock)
    IOConn *hs_prev          # (lock) the owner's handshakes in progress, oldest first
    IOConn *hs_next
    uint8_t in_hs
    char cn[65]              # the verified client certificate's subject CN ("": none)

cdef struct Loop:
    # Owned by one thread; the fields marked (lock) are also touched by others.
    Shared *S
    int idx
    int epfd
    void *ur                 # the io_uring loop's ring (UringLoop); NULL: epoll
    int wakefd               # poked by other threads: remote output, admin replies, stop
    int spare_fd             # given up to accept (and refuse) a peer when out of fds
    IOConn *closing          # to close after the next locked section
    IOConn *flush            # staged output to send outside the lock
    IOConn *check            # flushed connections that were closing or dead
    IOConn *remote           # (lock) own connections made dirty by other threads
    IOConn *resume           # (lock) own connections whose admin reply arrived
    IOConn *unpause          # own connections whose output drained: read them again
    uint8_t poke_pending     # (lock) a wake-up is already on its way
    uint64_t accepted        # per-thread counters, summed on read
    uint64_t protocol_errors
    uint64_t batches
    uint64_t refused         # over --max-connections (or out of fds)
    uint64_t paused          # times a connection's input was paused (--max-output)
    uint64_t hard_closed     # connections dropped past --max-output-hard
    uint64_t trims           # (lock) malloc_trim calls after a drain (--trim-after-jobs)
    IOConn *hs_head          # (lock) TLS handshakes in progress, by deadline
    IOConn *hs_tail
    uint64_t tls_handshakes  # completed
    uint64_t tls_failed      # refused or broken handshakes
    uint64_t tls_timeouts    # handshakes dropped at --ssl-handshake-timeout

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
    uint8_t listen_http[MAX_LISTENERS]
    int nlisten
    int uring                # the loops run on io_uring (iothreads_uring.pxi)
    IOConn **conns           # indexed by fd
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
    int fenced               # store lease lost: no job starts, submissions are refused
    int64_t timer_wake_ms    # when loop 0, which runs the timers, will wake next
    int stopping
    int64_t lock_t0          # FASTGEAR_LOCKSTATS builds: when the holder took the lock,
    uint64_t lock_ns         # ... the time it was held in all,
    uint64_t lock_holds      # ... and how many times it was taken
    void *ssl_ctx            # the server's SSL_CTX (NULL: no TLS listener)
    int64_t tls_timeout_ms   # --ssl-handshake-timeout
    int64_t tls_live         # (atomic) SSL objects not freed yet


cdef inline IOConn *io_of(Conn *c) noexcept nogil:
    # Every Conn the engine hands back was allocated by the I/O layer as an IOConn.
    return <IOConn *>c


# Lock statistics for bench/lock_hold.py: compiled in only by a build made with
# FASTGEAR_LOCKSTATS=1 (setup.py); release builds see a constant 0 and no clock reads.
cdef extern from * nogil:
    """
    #ifndef FASTGEAR_LOCKSTATS
    #define FASTGEAR_LOCKSTATS 0
    #endif
    #include <time.h>
    static inline int64_t fg_now_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
    }
    """
    enum:
        FASTGEAR_LOCKSTATS
    int64_t fg_now_ns()


cdef inline void lock(Shared *S) noexcept nogil:
    pthread_mutex_lock(&S.lock)
    S.eng.owner = pthread_self()
    if FASTGEAR_LOCKSTATS:
        S.lock_t0 = fg_now_ns()


cdef inline void unlock(Shared *S) noexcept nogil:
    if FASTGEAR_LOCKSTATS:
        S.lock_ns += <uint64_t>(fg_now_ns() - S.lock_t0)
        S.lock_holds += 1
    S.eng.owner = 0
    pthread_mutex_unlock(&S.lock)


cdef void route(Shared *S, Loop *me) noexcept nogil


cdef class IOLoop:
    cdef Shared *S
    cdef int64_t leaked
    cdef readonly str io_backend     # "io_uring" or "epoll"
    cdef readonly object io_fallback  # why --io auto uses epoll (None: it did not fall back)
    cdef void _free(self) noexcept
    cdef void _ack(self, Job *j, int failed, const char *etext) noexcept nogil
