# The job engine: functions, jobs, workers, per-priority FIFO queues, unique-key
# coalescing, wake-ups, retries and timers (PROTOCOL.md §3, DESIGN.md §4). It is plain
# C compiled from Cython: every entry point is nogil noexcept and returns a status, and
# no Python object is touched per packet. The engine does no I/O: replies are encoded
# into each connection's output buffer and the connection is put on the dirty list for
# the I/O loop to flush. A job is one allocation (struct + unique + reducer + payload;
# the handle is formatted from its number where it is sent).
# Deliberate differences from gearmand 1.1.20 (README, compatibility): the grab order is
# global priority across a worker's functions, the functions with work taking turns
# (FIFO within each); one sleeper is woken per job, and another if it does not grab
# within the wake-up timeout; requeued jobs go to the front;
# epoch/sched jobs run at their time; CAN_DO_TIMEOUT expiry fails the job to its
# clients; cancelled or abandoned jobs disappear at once.
#
# Layout: this file holds the shared helpers, output, lifecycle, the packet dispatch
# and the timer, disconnect and admin entry points; the parts are textually included
# from engine_*.pxi so that the engine stays one extension with direct calls: tables
# (hash tables, timer heap), queues (run queues, sleepers, wake-ups), submit (clients),
# workers (registrations, GRAB, WORK_*), results (--keep-results) and dead (background
# retries and dead letters).
from libc.stdlib cimport strtoll
from libc.string cimport memcpy, memcmp, memset, strlen
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from fastgear.protocol cimport *
from fastgear.includes.sys cimport (now_us, wall_us, time_t, tm, localtime_r, mktime,
                                    c_assert, pthread_self)

cdef enum:
    # A worker with more registrations than this gets a function -> registration table.
    SMALL_ABILITIES = 16
    JOB_QUEUED = 0
    JOB_FUTURE = 1
    JOB_RUNNING = 2
    JOB_UNLINKED = 3         # between two states, in no list
    JOB_STORING = 4          # background job waiting for its row to be committed
    # A sched spec that never matches within this many days is refused.
    SCHED_MAX_DAYS = 5 * 366

# Upper bounds of the histogram buckets, in microseconds (the last bucket is +Inf):
# 50 us to a minute, dense where a healthy queue lives.
cdef int64_t HIST_US[NHIST - 1]
HIST_US[:] = [50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000,
              500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000]


cdef int64_t hist_bound_us(int i) noexcept nogil:
    return HIST_US[i]


cdef inline void hist_add(uint64_t *hist, uint64_t *sum_us, int64_t v) noexcept nogil:
    cdef int i = 0
    if v < 0:
        v = 0
    while i < NHIST - 1 and v > HIST_US[i]:
        i += 1
    hist[i] += 1
    sum_us[0] += <uint64_t>v


cdef inline uint64_t hash_bytes(const char *p, size_t n, uint64_t seed) noexcept nogil:
    # FNV-1a: tiny, good enough for table sizes that are powers of two after mixing.
    cdef uint64_t h = 1469598103934665603ULL ^ seed
    cdef size_t i
    for i in range(n):
        h ^= <unsigned char>p[i]
        h *= 1099511628211ULL
    h ^= h >> 29
    return h


cdef inline int eq(const char *a, size_t an, const char *b, size_t bn) noexcept nogil:
    return an == bn and (an == 0 or memcmp(a, b, an) == 0)


# ---- free lists of fixed-size records ------------------------------------------------
# Attachments (one per foreground job), acks (durable submissions) and registrations
# are made and dropped at packet rate: a bounded free list each spares malloc and free.
# The debug build counts records on a list as live; engine_free frees them.

cdef inline void *fl_get(Engine *e, FreeList *fl, size_t size, bint zero) noexcept nogil:
    cdef void **r = <void **>fl.head
    if r == NULL:
        return fg_calloc(e, 1, size) if zero else fg_malloc(e, size)
    fl.head = r[0]
    fl.n -= 1
    e.n_reused += 1
    if zero:
        memset(r, 0, size)
    return r


cdef inline void fl_put(Engine *e, FreeList *fl, void *p) noexcept nogil:
    if fl.n >= FREE_MAX:
        fg_free(e, p)
        return
    (<void **>p)[0] = fl.head
    fl.head = p
    fl.n += 1


cdef void fl_clear(Engine *e, FreeList *fl) noexcept nogil:
    cdef void **r
    while fl.head != NULL:
        r = <void **>fl.head
        fl.head = r[0]
        fg_free(e, r)
    fl.n = 0


cdef inline Attach *attach_new(Engine *e) noexcept nogil:
    return <Attach *>fl_get(e, &e.free_attach, sizeof(Attach), True)


cdef inline void attach_put(Engine *e, Attach *a) noexcept nogil:
    fl_put(e, &e.free_attach, a)


cdef inline Ability *ability_new(Engine *e) noexcept nogil:
    return <Ability *>fl_get(e, &e.free_ability, sizeof(Ability), True)


cdef inline void ability_put(Engine *e, Ability *a) noexcept nogil:
    fl_put(e, &e.free_ability, a)


cdef inline Ack *ack_new(Engine *e) noexcept nogil:
    # Not zeroed: the caller sets every field.
    return <Ack *>fl_get(e, &e.free_ack, sizeof(Ack), False)


cdef void ack_put(Engine *e, Ack *k) noexcept nogil:
    """Give back an Ack (also one the I/O layer took off a job and answered)."""
    fl_put(e, &e.free_ack, k)


cdef void free_lists_clear(Engine *e) noexcept nogil:
    fl_clear(e, &e.free_attach)
    fl_clear(e, &e.free_ability)
    fl_clear(e, &e.free_ack)


# ---- output ---------------------------------------------------------------------------

cdef void conn_dirty(Engine *e, Conn *c) noexcept nogil:
    if not c.dirty:
        c.dirty = 1
        c.dirty_next = e.dirty
        e.dirty = c


cdef inline int enc_status(int enc) noexcept nogil:
    return E_OK if enc == ENC_OK else E_NOMEM


cdef inline int out2(Engine *e, Conn *c, uint32_t t, const char *a, size_t an,
                     const char *b, size_t bn) noexcept nogil:
    conn_dirty(e, c)
    return enc_status(encode2(&c.outbuf, t, a, an, b, bn))


cdef inline int out1(Engine *e, Conn *c, uint32_t t, const char *a, size_t an) noexcept nogil:
    conn_dirty(e, c)
    return enc_status(encode1(&c.outbuf, t, a, an))


cdef inline int out0(Engine *e, Conn *c, uint32_t t) noexcept nogil:
    conn_dirty(e, c)
    return enc_status(encode0(&c.outbuf, t))


cdef int engine_error(Engine *e, Conn *c, const char *code, const char *text) noexcept nogil:
    cdef size_t cn = 0, tn = 0
    while code[cn]:
        cn += 1
    while text[tn]:
        tn += 1
    return out2(e, c, CMD_ERROR, code, cn, text, tn)


# ---- lifecycle ------------------------------------------------------------------------

cdef int engine_init(Engine *e, const CoreConfig *cfg) noexcept nogil:
    cdef size_t prefix_len = cfg.prefix_len
    memset(e, 0, sizeof(Engine))
    e.fmask = 63
    e.hmask = 1023
    e.umask = 1023
    e.ftab = <Function **>fg_calloc(e, e.fmask + 1, sizeof(Function *))
    e.htab = <Job **>fg_calloc(e, e.hmask + 1, sizeof(Job *))
    e.utab = <Job **>fg_calloc(e, e.umask + 1, sizeof(Job *))
    if e.ftab == NULL or e.htab == NULL or e.utab == NULL:
        return -1
    if prefix_len > sizeof(e.prefix) - 1:
        prefix_len = sizeof(e.prefix) - 1
    memcpy(e.prefix, cfg.prefix, prefix_len)
    e.prefix_len = <uint32_t>prefix_len
    e.next_handle = 1
    e.next_conn_id = 1
    e.job_retries = cfg.job_retries
    e.worker_wakeup = cfg.worker_wakeup
    e.exceptions_default = cfg.exceptions
    e.durable = cfg.durable
    e.wake_check.heap_idx = -1
    e.wake_check.state = JOB_UNLINKED
    e.max_unique = cfg.max_unique
    e.max_function_name = cfg.max_function_name
    e.max_queued_bytes = cfg.max_queued_bytes
    e.trim_after_jobs = cfg.trim_after_jobs
    e.wakeup_timeout_ms = cfg.wakeup_timeout_ms
    engine_clock(e)
    results_configure(e, cfg.keep_results_us, cfg.keep_results_bytes)
    e.bg_retries = cfg.bg_retries
    e.bg_backoff_ms = cfg.bg_backoff_ms
    e.bg_backoff_max_ms = cfg.bg_backoff_max_ms
    e.dead_max = cfg.dead_letters
    e.dead_max_bytes = cfg.dead_letters_bytes
    e.next_dead_id = 1
    e.r_next_id = 1
    return 0


cdef void engine_clock(Engine *e) noexcept nogil:
    e.now_us = now_us()
    e.now_ms = e.now_us // 1000
    e.now_wall_us = wall_us()
    e.now_wall_s = e.now_wall_us // 1000000


cdef void engine_free(Engine *e) noexcept nogil:
    """Free everything the engine owns. A connection's registrations are its own:
    detach connections first. The debug build's allocation count survives the reset,
    so engine_live_allocs() then says what leaked."""
    cdef uint64_t i
    cdef int64_t leaked
    cdef Job *j
    cdef Job *nx
    cdef Attach *a
    cdef Attach *an
    cdef Ack *k
    cdef Function *f
    cdef Function *fn
    for i in range(e.hmask + 1):
        j = e.htab[i]
        while j != NULL:
            nx = j.h_next
            a = j.clients
            while a != NULL:
                an = a.j_next
                attach_put(e, a)
                a = an
            while j.acks != NULL:
                k = j.acks
                j.acks = k.next
                ack_put(e, k)
            fg_free(e, j)
            j = nx
    f = e.f_first
    while f != NULL:
        fn = f.all_next
        fg_free(e, f)
        f = fn
    fg_free(e, e.ftab)
    fg_free(e, e.fid_free)
    fg_free(e, e.htab)
    fg_free(e, e.utab)
    fg_free(e, e.heap)
    fg_free(e, e.store_del)
    e.keep_us = 0
    results_expire(e)
    fg_free(e, e.rtab)
    fg_free(e, e.rutab)
    dead_free_all(e)
    free_lists_clear(e)
    leaked = e.live_allocs
    memset(e, 0, sizeof(Engine))
    e.live_allocs = leaked


cdef void engine_release(Engine *e, void *p) noexcept nogil:
    """Free memory the engine handed over (an Ack taken off a job, the store's array of
    row ids), so that the debug build's allocation count stays exact."""
    fg_free(e, p)


cdef int64_t engine_live_allocs(Engine *e) noexcept nogil:
    """The engine's allocations not freed yet (after engine_free: leaked ones). Counted
    in the debug build only; release builds always answer 0."""
    return e.live_allocs


cdef void conn_attach(Engine *e, Conn *c) noexcept nogil:
    """Register a new connection (its fd, ip and buffers set by the caller)."""
    c_assert(e.owner == pthread_self())
    c.id = e.next_conn_id
    e.next_conn_id += 1
    c.exceptions = e.exceptions_default
    c.client_id[0] = b'-'
    c.client_id_len = 1
    conns_link(&e.conns, c)
    e.nconns += 1


# ---- the parts (see the layout note at the top) ------------------------------------

include "engine_tables.pxi"
include "engine_queues.pxi"
include "engine_submit.pxi"
include "engine_workers.pxi"
include "engine_results.pxi"
include "engine_dead.pxi"


# ---- packet dispatch ---------------------------------------------------------------------

cdef int ieq(const char *a, size_t an, const char *lower) noexcept nogil:
    cdef size_t i = 0
    cdef char ch
    while i < an and lower[i]:
        ch = a[i]
        if b'A' <= ch <= b'Z':
            ch = ch + 32
        if ch != lower[i]:
            return 0
        i += 1
    return i == an and lower[i] == 0


cdef int engine_packet(Engine *e, Conn *c, Packet *pkt) noexcept nogil:
    """Apply one parsed binary packet from c. E_OK, or E_NOMEM (close c)."""
    cdef uint32_t t = pkt.type
    c_assert(e.owner == pthread_self())
    cdef int64_t tmo
    cdef uint8_t kind
    cdef Function *f
    cdef Job *j
    e.n_packets += 1
    if not COMMANDS[t].request:
        return engine_error(e, c, b"INVALID_COMMAND", b"Command not expected")
    if pkt.res_magic:
        return engine_error(e, c, b"INVALID_MAGIC", b"Request magic expected")
    kind = cmd_kind(t)
    if kind == KIND_SUBMIT:
        return handle_submit(e, c, pkt)
    if kind == KIND_GRAB:
        return handle_grab(e, c, t)
    if kind == KIND_WORK:
        return handle_work(e, c, pkt)
    if t == CMD_PRE_SLEEP:
        return handle_pre_sleep(e, c)
    if t == CMD_CAN_DO:
        return add_ability(e, c, pkt.f[0], pkt.flen[0], 0)
    if t == CMD_CAN_DO_TIMEOUT:
        if parse_timeout(pkt.f[1], pkt.flen[1], &tmo) != 0:
            return E_OK     # gearmand ignores the registration
        return add_ability(e, c, pkt.f[0], pkt.flen[0], tmo)
    if t == CMD_CANT_DO:
        f = func_get(e, pkt.f[0], pkt.flen[0], 0)
        if f != NULL:
            drop_abilities(e, c, f)
        return E_OK
    if t == CMD_RESET_ABILITIES:
        drop_abilities(e, c, NULL)
        return E_OK
    if t == CMD_ECHO_REQ:
        return out1(e, c, CMD_ECHO_RES, pkt.f[0], pkt.flen[0])
    if t == CMD_GET_STATUS:
        if pkt.flen[0] >= MAX_HANDLE:
            return engine_error(e, c, b"ARGUMENT_TOO_LARGE", b"Job handle too long")
        j = job_by_handle(e, pkt.f[0], pkt.flen[0])
        return status_reply(e, c, CMD_STATUS_RES, pkt.f[0], pkt.flen[0], j)
    if t == CMD_GET_STATUS_UNIQUE:
        return handle_status_unique(e, c, pkt)
    if t == CMD_OPTION_REQ:
        if ieq(pkt.f[0], pkt.flen[0], b"exceptions"):
            c.exceptions = 1
            return out1(e, c, CMD_OPTION_RES, pkt.f[0], pkt.flen[0])
        return engine_error(e, c, b"UNKNOWN_OPTION", b"Server does not recognize given option")
    if t == CMD_SET_CLIENT_ID:
        c.client_id_len = <uint32_t>(pkt.flen[0] if pkt.flen[0] < MAX_CLIENT_ID
                                     else MAX_CLIENT_ID - 1)
        memcpy(c.client_id, pkt.f[0], c.client_id_len)
        return E_OK
    if t == CMD_ALL_YOURS:
        return E_OK
    return engine_error(e, c, b"INVALID_COMMAND", b"Command not expected")


# ---- timers, disconnects, admin operations -----------------------------------------------

cdef int64_t engine_timers(Engine *e) noexcept nogil:
    """Run due timers; return ms until the next one, or -1 when none is pending."""
    cdef Job *j
    c_assert(e.owner == pthread_self())
    while e.heap_len and e.heap[0].t.timer_ms <= e.now_ms:
        j = e.heap[0]
        heap_remove(e, j)
        if j == &e.wake_check:
            rewake_due(e)
        elif j.state == JOB_FUTURE:
            j.func.future -= 1
            job_make_runnable(e, j, 0)
        elif j.state == JOB_RUNNING:
            # CAN_DO_TIMEOUT expired: fail it to its clients (gearmand silently requeues).
            job_fail(e, j, DEAD_TIMEOUT)
    if e.heap_len == 0:
        return -1
    return e.heap[0].t.timer_ms - e.now_ms


cdef void conn_detach(Engine *e, Conn *c) noexcept nogil:
    """The connection is gone: requeue what it held, stop listening to its jobs. Its
    output buffer stays with the I/O layer, which closes the socket once it is flushed."""
    cdef Attach *a
    cdef Attach *an
    cdef Job *j
    c_assert(e.owner == pthread_self())
    if c.detached:
        return
    c.detached = 1
    drop_abilities(e, c, NULL)
    woken_remove(e, c)
    wide_remove(e, c)
    a = c.attached
    while a != NULL:
        an = a.c_next
        j = a.job
        clients_unlink(&j.clients, a)
        attach_put(e, a)
        # A foreground job nobody waits for any more is not worth running (gearmand
        # drops it when it reaches the head of the queue; we drop it now).
        if j.clients == NULL and not j.background and j.state != JOB_RUNNING:
            job_free(e, j)
        a = an
    c.attached = NULL
    conns_unlink(&e.conns, c)
    e.nconns -= 1


cdef int engine_cancel(Engine *e, Job *j) noexcept nogil:
    """0 cancelled; -1 not cancellable (its row is still being written)."""
    cdef Attach *a
    cdef Attach *an
    if j.state == JOB_STORING:
        return -1
    send_clients(e, j, CMD_WORK_FAIL, NULL, 0, 0)
    if j.state == JOB_RUNNING:
        # The worker keeps it; its clients have been told and stop listening.
        a = j.clients
        while a != NULL:
            an = a.j_next
            attached_unlink(&a.conn.attached, a)
            attach_put(e, a)
            a = an
        j.clients = NULL
        return 0
    j.func.n_failed += 1
    job_free(e, j)
    return 0


cdef int engine_drop_function(Engine *e, Function *f) noexcept nogil:
    """0 dropped; 1 workers registered or jobs running; 2 jobs queued."""
    if f.workers or f.running:
        return 1
    if f.total:
        return 2
    func_remove(e, f)
    return 0
