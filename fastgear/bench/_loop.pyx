"""The load generator's per-packet loop: one epoll loop per native thread, run without
the GIL, over non-blocking sockets, parsing and encoding with fastgear's own codec.

Why compiled: a Python loop tops out far below what gearmand serves, so a Python
generator would measure itself. Here the only per-job costs are the codec and a few
atomic counter updates; syscalls are amortised over pipelined batches.

Accounting: every job id owns one 16-bit state word. The submitting client sets
ST_ISSUED, each execution by one of our workers adds ST_EXEC, each WORK_COMPLETE a
foreground client receives adds ST_RESULT. `verify()` scans the words afterwards,
so "each job completed exactly once" is checked per job, not inferred from totals.
Counters that decide when a run is over live per thread (written only by their owner,
read by the others with atomic loads) so no cache line is shared per job.
"""
from libc.stdint cimport int64_t, uint16_t, uint32_t
from libc.stdlib cimport calloc, malloc, free, qsort
from libc.string cimport memset, strncpy, strerror
from libc.stdio cimport snprintf

from fastgear.buffer cimport Buf, buf_init, buf_free, buf_len, buf_head, buf_reserve
from fastgear.buffer cimport buf_consume
from fastgear.protocol cimport Packet, parse_packet, encode_packet, P_NEED_MORE, P_PACKET
from fastgear.protocol cimport (
    CMD_CAN_DO, CMD_PRE_SLEEP, CMD_NOOP, CMD_SUBMIT_JOB, CMD_JOB_CREATED, CMD_NO_JOB,
    CMD_JOB_ASSIGN, CMD_WORK_STATUS, CMD_WORK_COMPLETE, CMD_WORK_FAIL, CMD_SUBMIT_JOB_BG,
    CMD_ERROR, CMD_SUBMIT_JOB_HIGH, CMD_WORK_EXCEPTION, CMD_WORK_DATA, CMD_WORK_WARNING,
    CMD_GRAB_JOB_UNIQ, CMD_JOB_ASSIGN_UNIQ, CMD_SUBMIT_JOB_HIGH_BG, CMD_SUBMIT_JOB_LOW,
    CMD_SUBMIT_JOB_LOW_BG, CMD_OPTION_RES,
)
from fastgear.includes.sys cimport (
    epoll_event, epoll_create1, epoll_ctl, epoll_wait, EPOLLIN, EPOLLOUT, EPOLLERR,
    EPOLLHUP, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CLOEXEC, recv, send, close, errno,
    EAGAIN, EINTR, MSG_NOSIGNAL, timespec, clock_gettime, CLOCK_MONOTONIC,
)

cdef extern from *:
    """
    #include <stdint.h>
    static inline int64_t fgb_load(const int64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void fgb_store(int64_t *p, int64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int64_t fgb_add(int64_t *p, int64_t v) {
        return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
    static inline uint16_t fgb_add16(uint16_t *p, uint16_t v) {
        return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
    static inline uint16_t fgb_load16(const uint16_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline int fgb_cas(int64_t *p, int64_t expect, int64_t v) {
        return __atomic_compare_exchange_n(p, &expect, v, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE); }
    static int fgb_cmp64(const void *a, const void *b) {
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
        return (x > y) - (x < y); }
    """
    int64_t fgb_load(const int64_t *p) noexcept nogil
    void fgb_store(int64_t *p, int64_t v) noexcept nogil
    int64_t fgb_add(int64_t *p, int64_t v) noexcept nogil
    uint16_t fgb_add16(uint16_t *p, uint16_t v) noexcept nogil
    uint16_t fgb_load16(const uint16_t *p) noexcept nogil
    int fgb_cas(int64_t *p, int64_t expect, int64_t v) noexcept nogil
    int fgb_cmp64(const void *a, const void *b) noexcept nogil


cdef enum:
    MODE_BG = 0
    MODE_FG = 1
    MODE_FILL = 2     # clients only: submit background jobs, no worker
    MODE_DRAIN = 3    # workers only: execute `expected` jobs already queued
    ROLE_CLIENT = 0
    ROLE_WORKER = 1
    W_GRABBING = 0
    W_SLEEPING = 1
    ID_LEN = 8        # a job id is 8 hex digits at the start of its payload
    ID_CHUNK = 64     # ids taken from the shared allocator per atomic add
    MAX_EVENTS = 256
    READ_SIZE = 65536
    MAX_PACKET = 64 * 1024 * 1024
    ST_ISSUED = 1
    ST_EXEC = 2       # bits 1..7: executions by our workers
    ST_RESULT = 256   # bits 8..15: WORK_COMPLETEs received by foreground clients
    # per-thread counters (Thr.cnt)
    C_ISSUED = 0
    C_CREATED = 1
    C_EXECUTED = 2
    C_RESULTS = 3
    C_CLIENTS_DONE = 4
    C_DUP_EXEC = 5
    C_DUP_RESULT = 6
    C_COUNT = 8


cdef struct Conn:
    int fd
    int role
    int state          # worker: W_GRABBING / W_SLEEPING; client: 1 once done submitting
    int writing        # EPOLLOUT is registered
    # client: submits not yet answered (JOB_CREATED, or fg's result);
    # worker: GRAB_JOB_UNIQs not yet answered
    int64_t inflight
    int64_t submitted
    int64_t created
    Buf inb
    Buf outb


cdef struct Thr:
    int64_t cnt[C_COUNT]
    int64_t id_next    # this thread's current chunk of ids
    int64_t id_end
    int nconns
    int nclients       # conns[0:nclients] are the clients, the rest workers
    int throttled      # a client is waiting on the backlog limit, not on the server
    Conn *conns
    char *scratch      # payload being built
    char pad[64]       # keep neighbouring threads' counters off this cache line


cdef struct Shared:
    int mode
    int pipeline
    int payload
    int nfunc
    int unique
    int prio           # 0 normal, 1 high, 2 low, 3 mixed (by id)
    int grab           # GRAB_JOB_UNIQs each worker keeps outstanding
    int nthreads
    int nclients
    int64_t max_jobs
    int64_t expected   # drain: jobs queued beforehand
    int64_t backlog    # bg: clients pause while issued - executed >= backlog (0: off)
    int64_t deadline_ns
    int64_t start_ns
    int64_t end_ns
    int64_t next_id
    int64_t stop
    int64_t error_set
    char errmsg[512]
    uint16_t *state
    int64_t *lat       # fg: send time, replaced by the latency when the result arrives
    Thr *thr
    const char **fname
    size_t *fnlen


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef int fail(Shared *sh, const char *msg) noexcept nogil:
    """Record the first error of the run and stop every thread. Always returns -1."""
    if fgb_cas(&sh.error_set, 0, 1):
        strncpy(sh.errmsg, msg, sizeof(sh.errmsg) - 1)
    fgb_store(&sh.stop, 1)
    return -1


cdef int fail_errno(Shared *sh, const char *what, int err) noexcept nogil:
    cdef char msg[256]
    snprintf(msg, sizeof(msg), "%s: %s", what, strerror(err))
    return fail(sh, msg)


cdef const char *HEX = b"0123456789abcdef"


cdef inline void put_hex8(char *p, uint32_t v) noexcept nogil:
    cdef int i
    for i in range(ID_LEN - 1, -1, -1):
        p[i] = HEX[v & 15]
        v >>= 4


cdef inline int64_t get_hex8(const char *p, size_t n) noexcept nogil:
    """The job id at the start of a payload, or -1 when it is not one of ours."""
    cdef int64_t v = 0
    cdef int i
    cdef char ch
    if n < ID_LEN:
        return -1
    for i in range(ID_LEN):
        ch = p[i]
        if c'0' <= ch <= c'9':
            v = v * 16 + (ch - c'0')
        elif c'a' <= ch <= c'f':
            v = v * 16 + (ch - c'a' + 10)
        else:
            return -1
    return v


cdef int64_t total(Shared *sh, int which) noexcept nogil:
    cdef int64_t s = 0
    cdef int i
    for i in range(sh.nthreads):
        s += fgb_load(&sh.thr[i].cnt[which])
    return s


cdef inline void bump(Thr *t, int which, int64_t n) noexcept nogil:
    # Only the owner writes its counters; the release store publishes them to readers.
    fgb_store(&t.cnt[which], t.cnt[which] + n)


cdef bint finished(Shared *sh) noexcept nogil:
    cdef int64_t issued
    if sh.mode == MODE_DRAIN:
        return total(sh, C_EXECUTED) >= sh.expected
    # Until every client has stopped submitting, `issued` is not final.
    if total(sh, C_CLIENTS_DONE) < sh.nclients:
        return False
    issued = total(sh, C_ISSUED)
    if total(sh, C_CREATED) < issued:
        return False
    if sh.mode == MODE_BG:
        return total(sh, C_EXECUTED) >= issued
    if sh.mode == MODE_FG:
        return total(sh, C_RESULTS) >= issued
    return True


cdef int64_t take_id(Shared *sh, Thr *t) noexcept nogil:
    cdef int64_t first
    if t.id_next >= t.id_end:
        first = fgb_add(&sh.next_id, ID_CHUNK)
        if first >= sh.max_jobs:
            return -1
        t.id_next = first
        t.id_end = first + ID_CHUNK
        if t.id_end > sh.max_jobs:
            t.id_end = sh.max_jobs
    t.id_next += 1
    return t.id_next - 1


cdef int submit_cmd(Shared *sh, int64_t job_id) noexcept nogil:
    cdef int p = sh.prio if sh.prio != 3 else <int>(job_id % 3)
    if sh.mode == MODE_FG:
        return CMD_SUBMIT_JOB_HIGH if p == 1 else CMD_SUBMIT_JOB_LOW if p == 2 else CMD_SUBMIT_JOB
    return (CMD_SUBMIT_JOB_HIGH_BG if p == 1 else CMD_SUBMIT_JOB_LOW_BG if p == 2
            else CMD_SUBMIT_JOB_BG)


cdef void client_done(Thr *t, Conn *c) noexcept nogil:
    if not c.state:
        c.state = 1
        bump(t, C_CLIENTS_DONE, 1)


cdef int client_refill(Shared *sh, Thr *t, Conn *c, int64_t now) noexcept nogil:
    """Top the client's pipeline up. Returns 1 when held back by the backlog limit."""
    cdef int64_t job_id, room = 0
    cdef const char *f[3]
    cdef size_t fl[3]
    cdef int k
    cdef bint limited = (not c.state and c.inflight < sh.pipeline and sh.backlog > 0
                         and sh.mode == MODE_BG)
    if limited:
        # Read the other threads' counters once per refill, not once per job.
        room = sh.backlog - (total(sh, C_ISSUED) - total(sh, C_EXECUTED))
    while not c.state and c.inflight < sh.pipeline:
        if fgb_load(&sh.stop) or (sh.deadline_ns and now >= sh.deadline_ns):
            client_done(t, c)
            break
        if limited:
            if room <= 0:
                return 1
            room -= 1
        job_id = take_id(sh, t)
        if job_id < 0:
            client_done(t, c)
            break
        put_hex8(t.scratch, <uint32_t>job_id)
        k = <int>(job_id % sh.nfunc)
        f[0] = sh.fname[k]
        fl[0] = sh.fnlen[k]
        f[1] = t.scratch
        fl[1] = ID_LEN if sh.unique else 0
        f[2] = t.scratch
        fl[2] = <size_t>sh.payload
        if encode_packet(&c.outb, 0, submit_cmd(sh, job_id), 3, f, fl) != 0:
            return fail(sh, "out of memory")
        # Mark before the bytes leave: a worker may see the job right after send().
        fgb_add16(&sh.state[job_id], ST_ISSUED)
        if sh.mode == MODE_FG:
            sh.lat[job_id] = now
        c.inflight += 1
        c.submitted += 1
        bump(t, C_ISSUED, 1)
    return 0


cdef int worker_grab(Shared *sh, Conn *c) noexcept nogil:
    cdef int _k
    for _k in range(sh.grab):
        if encode_packet(&c.outb, 0, CMD_GRAB_JOB_UNIQ, 0, NULL, NULL) != 0:
            return fail(sh, "out of memory")
    c.state = W_GRABBING
    c.inflight = sh.grab
    return 0


cdef int worker_start(Shared *sh, Conn *c) noexcept nogil:
    cdef int k
    for k in range(sh.nfunc):
        if encode_packet(&c.outb, 0, CMD_CAN_DO, 1, &sh.fname[k], &sh.fnlen[k]) != 0:
            return fail(sh, "out of memory")
    return worker_grab(sh, c)


cdef int on_assign(Shared *sh, Thr *t, Conn *c, Packet *pkt) noexcept nogil:
    cdef const char *data = pkt.f[pkt.nfields - 1]
    cdef size_t dlen = pkt.flen[pkt.nfields - 1]
    cdef int64_t job_id = get_hex8(data, dlen)
    cdef uint16_t old
    cdef const char *f[2]
    cdef size_t fl[2]
    cdef char msg[200]
    if job_id < 0 or job_id >= sh.max_jobs:
        snprintf(msg, sizeof(msg), "a worker was assigned a job this run never submitted "
                 "(payload %.*s)", <int>(dlen if dlen < 16 else 16), data)
        return fail(sh, msg)
    old = fgb_add16(&sh.state[job_id], ST_EXEC)
    if not (old & ST_ISSUED):
        snprintf(msg, sizeof(msg), "a worker was assigned job %lld, which was never "
                 "submitted", <long long>job_id)
        return fail(sh, msg)
    if (old >> 1) & 0x7f:
        bump(t, C_DUP_EXEC, 1)
    f[0] = pkt.f[0]
    fl[0] = pkt.flen[0]
    f[1] = data
    fl[1] = ID_LEN
    if (encode_packet(&c.outb, 0, CMD_WORK_COMPLETE, 2, f, fl) != 0
            or encode_packet(&c.outb, 0, CMD_GRAB_JOB_UNIQ, 0, NULL, NULL) != 0):
        return fail(sh, "out of memory")
    bump(t, C_EXECUTED, 1)
    return 0


cdef int on_result(Shared *sh, Thr *t, Conn *c, Packet *pkt, int64_t now) noexcept nogil:
    cdef int64_t job_id = get_hex8(pkt.f[1], pkt.flen[1])
    cdef uint16_t old
    if job_id < 0 or job_id >= sh.max_jobs:
        return fail(sh, "a client received WORK_COMPLETE with a result it cannot match "
                        "to any job")
    old = fgb_add16(&sh.state[job_id], ST_RESULT)
    if old >> 8:
        bump(t, C_DUP_RESULT, 1)
    else:
        sh.lat[job_id] = now - sh.lat[job_id]
        c.inflight -= 1
    bump(t, C_RESULTS, 1)
    return 0


cdef int on_packet(Shared *sh, Thr *t, Conn *c, Packet *pkt, int64_t now) noexcept nogil:
    cdef char msg[400]
    cdef uint32_t ty = pkt.type
    if ty == CMD_ERROR:
        snprintf(msg, sizeof(msg), "server sent ERROR %.*s: %.*s",
                 <int>pkt.flen[0], pkt.f[0], <int>pkt.flen[1], pkt.f[1])
        return fail(sh, msg)
    if c.role == ROLE_WORKER:
        if ty == CMD_JOB_ASSIGN_UNIQ or ty == CMD_JOB_ASSIGN:
            return on_assign(sh, t, c, pkt)
        if ty == CMD_NO_JOB:
            # Sleep only once every outstanding grab has come back empty.
            c.inflight -= 1
            if c.inflight > 0:
                return 0
            c.state = W_SLEEPING
            return encode_packet(&c.outb, 0, CMD_PRE_SLEEP, 0, NULL, NULL)
        if ty == CMD_NOOP:
            # A NOOP while grabs are in flight is stale: those grabs answer it.
            if c.state == W_SLEEPING:
                return worker_grab(sh, c)
            return 0
        if ty == CMD_OPTION_RES:
            return 0
    else:
        if ty == CMD_JOB_CREATED:
            c.created += 1
            if c.created > c.submitted:
                return fail(sh, "server sent more JOB_CREATED than jobs were submitted")
            if sh.mode != MODE_FG:
                c.inflight -= 1
            bump(t, C_CREATED, 1)
            return 0
        if ty == CMD_WORK_COMPLETE and sh.mode == MODE_FG:
            return on_result(sh, t, c, pkt, now)
        if ty == CMD_WORK_FAIL or ty == CMD_WORK_EXCEPTION:
            return fail(sh, "server reported a job as failed (WORK_FAIL/WORK_EXCEPTION)")
        if ty == CMD_WORK_DATA or ty == CMD_WORK_WARNING or ty == CMD_WORK_STATUS:
            return 0
    snprintf(msg, sizeof(msg), "unexpected packet type %u sent to a %s", ty,
             b"worker" if c.role == ROLE_WORKER else b"client")
    return fail(sh, msg)


cdef int conn_read(Shared *sh, Thr *t, Conn *c, int64_t now) noexcept nogil:
    cdef Packet pkt
    cdef ssize_t n
    cdef size_t room
    cdef int st, rounds = 0
    while rounds < 4:
        rounds += 1
        if buf_reserve(&c.inb, READ_SIZE) != 0:
            return fail(sh, "out of memory")
        room = c.inb.cap - c.inb.end
        n = recv(c.fd, c.inb.data + c.inb.end, room, 0)
        if n == 0:
            return fail(sh, "the server closed a connection")
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return 0
            return fail_errno(sh, "recv", errno)
        c.inb.end += <size_t>n
        while True:
            st = parse_packet(buf_head(&c.inb), buf_len(&c.inb), MAX_PACKET, &pkt)
            if st == P_NEED_MORE:
                break
            if st != P_PACKET or not pkt.res_magic:
                return fail(sh, "the server sent bytes that are not a Gearman response")
            if on_packet(sh, t, c, &pkt, now) != 0:
                return fail(sh, "out of memory")
            buf_consume(&c.inb, pkt.size)
        if <size_t>n < room:
            return 0
    return 0


cdef int conn_flush(Shared *sh, int ep, Conn *c) noexcept nogil:
    cdef ssize_t n
    cdef epoll_event ev
    while buf_len(&c.outb) > 0:
        n = send(c.fd, buf_head(&c.outb), buf_len(&c.outb), MSG_NOSIGNAL)
        if n > 0:
            buf_consume(&c.outb, <size_t>n)
            continue
        if n < 0 and errno == EINTR:
            continue
        if n < 0 and (errno == EAGAIN):
            if not c.writing:
                ev.events = EPOLLIN | EPOLLOUT
                ev.data.ptr = c
                epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev)
                c.writing = 1
            return 0
        return fail_errno(sh, "send", errno)
    if c.writing:
        ev.events = EPOLLIN
        ev.data.ptr = c
        epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev)
        c.writing = 0
    return 0


cdef int run_thread(Shared *sh, int ti) noexcept nogil:
    """One generator thread's whole run. 0 when the run finished, -1 on error/abort."""
    cdef Thr *t = &sh.thr[ti]
    cdef Conn *c
    cdef epoll_event ev
    cdef epoll_event evs[MAX_EVENTS]
    cdef int ep, i, n, throttled, rc = 0
    cdef int64_t now, flush_deadline
    cdef bint pending
    ep = epoll_create1(EPOLL_CLOEXEC)
    if ep < 0:
        return fail_errno(sh, "epoll_create1", errno)
    now = now_ns()
    for i in range(t.nconns):
        c = &t.conns[i]
        ev.events = EPOLLIN
        ev.data.ptr = c
        if epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) != 0:
            rc = fail_errno(sh, "epoll_ctl", errno)
            break
        if c.role == ROLE_WORKER:
            if worker_start(sh, c) != 0:
                rc = -1
                break
        else:
            t.throttled |= client_refill(sh, t, c, now)
        if conn_flush(sh, ep, c) != 0:
            rc = -1
            break
    while rc == 0:
        if fgb_load(&sh.stop):
            rc = -1
            break
        if finished(sh):
            fgb_cas(&sh.end_ns, 0, now_ns())
            break
        # Held-back clients get no event when workers elsewhere catch up: poll for them.
        n = epoll_wait(ep, evs, MAX_EVENTS, 1 if t.throttled else 20)
        if n < 0:
            if errno == EINTR:
                continue
            rc = fail_errno(sh, "epoll_wait", errno)
            break
        now = now_ns()
        for i in range(n):
            c = <Conn *>evs[i].data.ptr
            if evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP):
                if conn_read(sh, t, c, now) != 0:
                    rc = -1
                    break
            if c.role == ROLE_CLIENT:
                client_refill(sh, t, c, now)
            if conn_flush(sh, ep, c) != 0:
                rc = -1
                break
        if rc != 0:
            break
        # Clients with nothing in flight get no event: refill them here (held back by
        # the backlog limit, or done at the deadline).
        throttled = 0
        for i in range(t.nclients):
            c = &t.conns[i]
            if not c.state and (t.throttled or c.inflight == 0):
                throttled |= client_refill(sh, t, c, now)
                if conn_flush(sh, ep, c) != 0:
                    rc = -1
                    break
        t.throttled = throttled
    # Results counted as executed must reach the server before the sockets close.
    flush_deadline = now_ns() + 2000000000
    while True:
        pending = False
        for i in range(t.nconns):
            c = &t.conns[i]
            if buf_len(&c.outb) > 0:
                if conn_flush(sh, ep, c) != 0:
                    break
                pending = pending or buf_len(&c.outb) > 0
        if not pending or now_ns() > flush_deadline:
            break
        epoll_wait(ep, evs, MAX_EVENTS, 1)
    close(ep)
    return rc


cdef class Run:
    """One load run over already-connected sockets (their fds are owned from here on).

    conns: list of (fd, role, thread) with role 0 client / 1 worker. Call
    `thread_main(i)` from one Python thread per generator thread (it releases the GIL
    for the whole run), watch `counters()`, then `verify()` and `latencies()`.
    """
    cdef Shared *sh
    cdef list keep
    cdef int nthreads
    cdef double duration

    def __cinit__(self):
        self.sh = NULL

    def __init__(self, list conns, int nthreads, str mode, list functions, int pipeline=100,
                 int payload=16, bint unique=False, int priority=0, long long jobs=1000,
                 int grab=1,
                 long long expected=0, long long backlog=0, double duration=0.0):
        cdef Shared *sh
        cdef Thr *t
        cdef Conn *c
        cdef int k, counts
        cdef int64_t i
        modes = {"bg": MODE_BG, "fg": MODE_FG, "fill": MODE_FILL, "drain": MODE_DRAIN}
        if mode not in modes:
            raise ValueError(f"unknown mode {mode!r}")
        if payload < ID_LEN:
            raise ValueError(f"payload must be at least {ID_LEN} bytes (it carries the job id)")
        if grab < 1:
            raise ValueError("grab must be at least 1")
        if not functions:
            raise ValueError("at least one function")
        if jobs <= 0 or jobs > 0xffffffff:
            raise ValueError("jobs must be between 1 and 2**32-1")
        self.sh = sh = <Shared *>calloc(1, sizeof(Shared))
        if sh == NULL:
            raise MemoryError()
        sh.mode = modes[mode]
        sh.pipeline = pipeline
        sh.payload = payload
        sh.unique = unique
        sh.prio = priority
        sh.grab = grab
        sh.nthreads = nthreads
        sh.max_jobs = jobs
        sh.expected = expected
        sh.backlog = backlog
        sh.state = <uint16_t *>calloc(<size_t>jobs, sizeof(uint16_t))
        if sh.mode == MODE_FG:
            sh.lat = <int64_t *>calloc(<size_t>jobs, sizeof(int64_t))
        sh.thr = <Thr *>calloc(nthreads, sizeof(Thr))
        self.nthreads = nthreads
        if sh.state == NULL or sh.thr == NULL or (sh.mode == MODE_FG and sh.lat == NULL):
            raise MemoryError()
        if sh.mode == MODE_DRAIN:
            # The jobs were submitted by an earlier fill run: all of [0, expected) count.
            for i in range(expected):
                sh.state[i] = ST_ISSUED
        self.keep = [bytes(f) for f in functions]
        sh.nfunc = len(self.keep)
        sh.fname = <const char **>malloc(sh.nfunc * sizeof(char *))
        sh.fnlen = <size_t *>malloc(sh.nfunc * sizeof(size_t))
        if sh.fname == NULL or sh.fnlen == NULL:
            raise MemoryError()
        for k in range(sh.nfunc):
            sh.fname[k] = self.keep[k]
            sh.fnlen[k] = len(self.keep[k])
        for i in range(nthreads):
            t = &sh.thr[i]
            counts = sum(1 for conn in conns if conn[2] == i)
            t.conns = <Conn *>calloc(counts if counts else 1, sizeof(Conn))
            t.scratch = <char *>malloc(payload)
            if t.conns == NULL or t.scratch == NULL:
                raise MemoryError()
            memset(t.scratch, c'x', payload)
        # Clients first in each thread's array, so the loop can visit only them.
        for fd, role, ti in sorted(conns, key=lambda conn: conn[1]):
            t = &sh.thr[ti]
            c = &t.conns[t.nconns]
            t.nconns += 1
            c.fd = fd
            c.role = role
            buf_init(&c.inb)
            buf_init(&c.outb)
            if role == ROLE_CLIENT:
                sh.nclients += 1
                t.nclients += 1
        self.duration = duration

    def start_clock(self):
        """Call right before the threads start; a duration deadline counts from here."""
        self.sh.start_ns = now_ns()
        if self.duration > 0:
            self.sh.deadline_ns = self.sh.start_ns + <int64_t>(self.duration * 1e9)

    def thread_main(self, int ti):
        """Run generator thread `ti` to the end of the run, without the GIL."""
        cdef int rc
        with nogil:
            rc = run_thread(self.sh, ti)
        return rc

    def abort(self, str message):
        """Stop every thread; the first recorded error (this one, if first) is kept."""
        fail(self.sh, message.encode()[:500])

    def counters(self):
        """A consistent-enough snapshot for progress lines and stall detection."""
        cdef Shared *sh = self.sh
        return {"issued": total(sh, C_ISSUED), "created": total(sh, C_CREATED),
                "executed": total(sh, C_EXECUTED), "results": total(sh, C_RESULTS),
                "dup_exec": total(sh, C_DUP_EXEC), "dup_result": total(sh, C_DUP_RESULT),
                "clients_done": total(sh, C_CLIENTS_DONE)}

    def elapsed(self):
        """Seconds from start_clock to the moment a thread saw the run complete."""
        cdef int64_t end = fgb_load(&self.sh.end_ns)
        if end == 0:
            end = now_ns()
        return (end - self.sh.start_ns) / 1e9

    def error(self):
        return self.sh.errmsg.decode(errors="replace") if self.sh.error_set else None

    def verify(self):
        """Scan every job's state word. Returns counts of the ways a job can be wrong
        (all zero on a correct run) and the first offending id of each."""
        cdef Shared *sh = self.sh
        cdef int64_t i, upto
        cdef uint16_t s
        cdef int execs, results
        cdef int64_t issued = 0, missing = 0, dup = 0, foreign = 0
        cdef int64_t miss_res = 0, dup_res = 0, unacked = 0
        cdef int64_t first_missing = -1, first_dup = -1, first_foreign = -1
        cdef int mode = sh.mode
        cdef Thr *t
        cdef int k
        upto = fgb_load(&sh.next_id)
        if upto > sh.max_jobs or sh.mode == MODE_DRAIN:
            upto = sh.max_jobs
        with nogil:
            for i in range(upto):
                s = fgb_load16(&sh.state[i])
                execs = (s >> 1) & 0x7f
                results = s >> 8
                if s & ST_ISSUED:
                    issued += 1
                    if mode != MODE_FILL and execs == 0:
                        missing += 1
                        if first_missing < 0:
                            first_missing = i
                    if execs > 1:
                        dup += 1
                        if first_dup < 0:
                            first_dup = i
                    if mode == MODE_FG:
                        if results == 0:
                            miss_res += 1
                        elif results > 1:
                            dup_res += 1
                elif execs or results:
                    foreign += 1
                    if first_foreign < 0:
                        first_foreign = i
        for k in range(sh.nthreads):
            t = &sh.thr[k]
            for i in range(t.nconns):
                if t.conns[i].role == ROLE_CLIENT:
                    unacked += t.conns[i].submitted - t.conns[i].created
        return {"issued": issued, "not_executed": missing, "executed_twice": dup,
                "never_submitted": foreign, "no_result": miss_res, "result_twice": dup_res,
                "not_acknowledged": unacked, "first_not_executed": first_missing,
                "first_executed_twice": first_dup, "first_never_submitted": first_foreign}

    def latencies(self):
        """fg: latency percentiles in microseconds over every job that got its result."""
        cdef Shared *sh = self.sh
        cdef int64_t *v
        cdef int64_t i, n = 0, upto = fgb_load(&sh.next_id)
        cdef double total_ns = 0
        if sh.mode != MODE_FG:
            return None
        if upto > sh.max_jobs:
            upto = sh.max_jobs
        v = <int64_t *>malloc(max(upto, 1) * sizeof(int64_t))
        if v == NULL:
            raise MemoryError()
        try:
            with nogil:
                for i in range(upto):
                    if (sh.state[i] >> 8) == 1:
                        v[n] = sh.lat[i]
                        total_ns += v[n]
                        n += 1
                qsort(v, n, sizeof(int64_t), fgb_cmp64)
            if n == 0:
                return None
            out = {"count": n, "mean": total_ns / n / 1000.0, "max": v[n - 1] / 1000.0}
            for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
                out[name] = v[min(n - 1, <int64_t>(q * n))] / 1000.0
            return out
        finally:
            free(v)

    def close(self):
        """Close the sockets (after the threads have returned)."""
        cdef Thr *t
        cdef int k, i
        if self.sh == NULL or self.sh.thr == NULL:
            return
        for k in range(self.nthreads):
            t = &self.sh.thr[k]
            for i in range(t.nconns):
                if t.conns[i].fd >= 0:
                    close(t.conns[i].fd)
                    t.conns[i].fd = -1

    def __dealloc__(self):
        cdef Shared *sh = self.sh
        cdef Thr *t
        cdef int k, i
        if sh == NULL:
            return
        self.close()
        if sh.thr != NULL:
            for k in range(self.nthreads):
                t = &sh.thr[k]
                if t.conns != NULL:
                    for i in range(t.nconns):
                        buf_free(&t.conns[i].inb)
                        buf_free(&t.conns[i].outb)
                    free(t.conns)
                free(t.scratch)
            free(sh.thr)
        free(sh.state)
        free(sh.lat)
        free(sh.fname)
        free(sh.fnlen)
        free(sh)
        self.sh = NULL


cdef class EncodeBatch:
    """Micro-benchmark helper: a list of (type, fields, request) packets prepared once;
    `run(repeat)` encodes them all `repeat` times with the compiled codec, without the
    GIL and without a Python call per packet (the way the server encodes). Returns the
    number of packets encoded."""
    cdef const char **f
    cdef size_t *fl
    cdef int *meta
    cdef int npk
    cdef list keep
    cdef Buf b

    def __cinit__(self, list packets):
        cdef int i, j
        self.npk = len(packets)
        self.f = <const char **>calloc(max(self.npk, 1) * 8, sizeof(char *))
        self.fl = <size_t *>calloc(max(self.npk, 1) * 8, sizeof(size_t))
        self.meta = <int *>calloc(max(self.npk, 1) * 3, sizeof(int))
        buf_init(&self.b)
        if self.f == NULL or self.fl == NULL or self.meta == NULL:
            raise MemoryError()
        self.keep = []
        for i, (ptype, fields, request) in enumerate(packets):
            if len(fields) > 8:
                raise ValueError("at most 8 fields")
            self.meta[3 * i] = ptype
            self.meta[3 * i + 1] = len(fields)
            self.meta[3 * i + 2] = 0 if request else 1
            for j, field in enumerate(fields):
                field = bytes(field)
                self.keep.append(field)
                self.f[8 * i + j] = field
                self.fl[8 * i + j] = len(field)

    def run(self, int repeat=1):
        cdef int i, _r, bad = 0
        cdef long count = 0
        with nogil:
            for _r in range(repeat):
                self.b.start = 0
                self.b.end = 0
                for i in range(self.npk):
                    if encode_packet(&self.b, self.meta[3 * i + 2], self.meta[3 * i],
                                     self.meta[3 * i + 1], &self.f[8 * i],
                                     &self.fl[8 * i]) != 0:
                        bad = 1
                        break
                    count += 1
        if bad:
            raise MemoryError()
        return count

    def output(self):
        """The bytes of the last batch (for checking against the reference codec)."""
        return buf_head(&self.b)[:buf_len(&self.b)]

    def __dealloc__(self):
        buf_free(&self.b)
        free(self.f)
        free(self.fl)
        free(self.meta)
