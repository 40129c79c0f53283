# The I/O layer's state: N epoll loops (one native thread each) sharing one engine and
# its lock, plus the hand-over queue of text admin lines to the Python control thread.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from fastgear.engine cimport Engine, Conn, Job
from fastgear.includes.sys cimport (pthread_mutex_t, pthread_mutex_lock, pthread_mutex_unlock,
                                    pthread_self)

cdef enum:
    MAX_LISTENERS = 16
    MAX_LOOPS = 1024

cdef struct Shared

cdef struct AdminReq:
    int fd
    uint64_t conn_id
    uint8_t loopback
    char *line
    size_t len
    AdminReq *next

cdef struct Loop:
    # Owned by one thread; the fields marked (lock) are also touched by others.
    Shared *S
    int idx
    int epfd
    int wakefd               # poked by other threads: remote output, admin replies, stop
    Conn *closing            # to close after the next locked section
    Conn *flush              # staged output to send outside the lock
    Conn *check              # flushed connections that were closing or dead
    Conn *remote             # (lock) own connections made dirty by other threads
    Conn *resume             # (lock) own connections whose admin reply arrived
    uint8_t poke_pending     # (lock) a wake-up is already on its way
    uint64_t accepted        # per-thread counters, summed on read
    uint64_t protocol_errors
    uint64_t batches

cdef struct Shared:
    Engine eng
    pthread_mutex_t lock
    Loop *loops
    int nloops
    int next_loop            # round-robin assignment of accepted connections
    int adminfd              # pokes the control thread (admin lines waiting)
    int storefd              # pokes the store thread (rows to write or delete)
    uint8_t store_poked
    int listen_fds[MAX_LISTENERS]
    int nlisten
    Conn **conns             # indexed by fd
    size_t conns_cap
    AdminReq *admin_head
    AdminReq *admin_tail
    size_t max_packet
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
    cdef void _ack(self, Job *j, int failed, const char *etext) noexcept
