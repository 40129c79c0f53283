# The job engine: functions, jobs, workers, per-priority FIFO queues, unique-key
# coalescing, wake-ups, retries and timers (PROTOCOL.md §3, DESIGN.md §4). It is plain
# C compiled from Cython: every entry point is nogil noexcept and returns a status, and
# no Python object is touched per packet. The engine does no I/O: replies are encoded
# into each connection's output buffer and the connection is put on the dirty list for
# the I/O loop to flush. A job is one allocation (struct + unique + reducer + payload).
# Deliberate differences from gearmand 1.1.20 (README, compatibility): the grab order is
# global priority across a worker's functions, the functions with work taking turns
# (FIFO within each); one sleeper is woken per job, and another if it does not grab
# within the wake-up timeout; requeued jobs go to the front;
# epoch/sched jobs run at their time; CAN_DO_TIMEOUT expiry fails the job to its
# clients; cancelled or abandoned jobs disappear at once.
from libc.stdlib cimport malloc, calloc, realloc, free, strtoll
from libc.string cimport memcpy, memcmp, memset, strlen
from libc.stdio cimport snprintf
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from fastgear.buffer cimport Buf, buf_init, buf_free
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


cdef size_t fmt_u64(char *out, uint64_t v) noexcept nogil:
    return <size_t>snprintf(out, 24, "%llu", <unsigned long long>v)


# ---- tables -------------------------------------------------------------------------

cdef int grow_ftab(Engine *e) noexcept nogil:
    cdef uint64_t n = (e.fmask + 1) * 2, i
    cdef Function **t = <Function **>calloc(n, sizeof(Function *))
    cdef Function *f
    cdef Function *nx
    if t == NULL:
        return -1
    for i in range(e.fmask + 1):
        f = e.ftab[i]
        while f != NULL:
            nx = f.h_next
            f.h_next = t[f.hash & (n - 1)]
            t[f.hash & (n - 1)] = f
            f = nx
    free(e.ftab)
    e.ftab = t
    e.fmask = n - 1
    return 0


cdef int grow_jtab(Job ***tab, uint64_t *mask, int by_unique) noexcept nogil:
    cdef uint64_t n = (mask[0] + 1) * 2, i, h
    cdef Job **t = <Job **>calloc(n, sizeof(Job *))
    cdef Job *j
    cdef Job *nx
    if t == NULL:
        return -1
    for i in range(mask[0] + 1):
        j = tab[0][i]
        while j != NULL:
            if by_unique:
                nx = j.u_next
                h = j.unique_hash & (n - 1)
                j.u_next = t[h]
            else:
                nx = j.h_next
                h = j.handle_hash & (n - 1)
                j.h_next = t[h]
            t[h] = j
            j = nx
    free(tab[0])
    tab[0] = t
    mask[0] = n - 1
    return 0


cdef Function *func_get(Engine *e, const char *name, size_t n, int create) noexcept nogil:
    cdef uint64_t h = hash_bytes(name, n, 0)
    cdef Function *f = e.ftab[h & e.fmask]
    while f != NULL:
        if f.hash == h and eq(f.name, f.name_len, name, n):
            return f
        f = f.h_next
    if not create:
        return NULL
    if e.fcount >= e.fmask + 1 and grow_ftab(e) != 0:
        return NULL
    f = <Function *>calloc(1, sizeof(Function) + n + 1)
    if f == NULL:
        return NULL
    f.name = <char *>(f + 1)
    if n:
        memcpy(f.name, name, n)
    f.name_len = <uint32_t>n
    f.hash = h
    f.h_next = e.ftab[h & e.fmask]
    e.ftab[h & e.fmask] = f
    f.all_prev = e.f_last
    if e.f_last != NULL:
        e.f_last.all_next = f
    else:
        e.f_first = f
    e.f_last = f
    e.fcount += 1
    return f


cdef void func_remove(Engine *e, Function *f) noexcept nogil:
    cdef Function **pp = &e.ftab[f.hash & e.fmask]
    while pp[0] != f:
        pp = &pp[0].h_next
    pp[0] = f.h_next
    if f.all_prev != NULL:
        f.all_prev.all_next = f.all_next
    else:
        e.f_first = f.all_next
    if f.all_next != NULL:
        f.all_next.all_prev = f.all_prev
    else:
        e.f_last = f.all_prev
    e.fcount -= 1
    free(f)


cdef Job *job_by_handle(Engine *e, const char *h, size_t n) noexcept nogil:
    cdef uint64_t hv = hash_bytes(h, n, 0)
    cdef Job *j = e.htab[hv & e.hmask]
    while j != NULL:
        if j.handle_hash == hv and eq(j.handle, j.handle_len, h, n):
            return j
        j = j.h_next
    return NULL


cdef inline uint64_t unique_key(const char *u, size_t un, const char *d, size_t dn,
                                uint8_t ukind) noexcept nogil:
    if ukind == 2:
        return hash_bytes(d, dn, 0x2d)
    return hash_bytes(u, un, 0)


cdef Job *job_by_unique(Engine *e, Function *f, uint8_t ukind, const char *u, size_t un,
                        const char *d, size_t dn) noexcept nogil:
    cdef uint64_t hv = unique_key(u, un, d, dn, ukind)
    cdef Job *j = e.utab[hv & e.umask]
    while j != NULL:
        if j.unique_hash == hv and j.func == f and j.ukind == ukind:
            if ukind == 1 and eq(j.unique, j.unique_len, u, un):
                return j
            if ukind == 2 and eq(j.data, j.data_len, d, dn):
                return j
        j = j.u_next
    return NULL


# ---- timer heap (epoch jobs waiting for their time; CAN_DO_TIMEOUT deadlines) ----------

cdef inline void heap_set(Engine *e, uint64_t i, Job *j) noexcept nogil:
    e.heap[i] = j
    j.heap_idx = <int64_t>i


cdef void heap_up(Engine *e, uint64_t i) noexcept nogil:
    cdef Job *j = e.heap[i]
    cdef uint64_t p
    while i > 0:
        p = (i - 1) // 2
        if e.heap[p].timer_ms <= j.timer_ms:
            break
        heap_set(e, i, e.heap[p])
        i = p
    heap_set(e, i, j)


cdef void heap_down(Engine *e, uint64_t i) noexcept nogil:
    cdef Job *j = e.heap[i]
    cdef uint64_t c
    while True:
        c = 2 * i + 1
        if c >= e.heap_len:
            break
        if c + 1 < e.heap_len and e.heap[c + 1].timer_ms < e.heap[c].timer_ms:
            c += 1
        if e.heap[c].timer_ms >= j.timer_ms:
            break
        heap_set(e, i, e.heap[c])
        i = c
    heap_set(e, i, j)


cdef int heap_push(Engine *e, Job *j) noexcept nogil:
    cdef Job **nh
    if e.heap_len == e.heap_cap:
        nh = <Job **>malloc(sizeof(Job *) * (e.heap_cap * 2 if e.heap_cap else 64))
        if nh == NULL:
            return -1
        if e.heap_len:
            memcpy(nh, e.heap, sizeof(Job *) * e.heap_len)
        free(e.heap)
        e.heap = nh
        e.heap_cap = e.heap_cap * 2 if e.heap_cap else 64
    e.heap[e.heap_len] = j
    j.heap_idx = <int64_t>e.heap_len
    e.heap_len += 1
    heap_up(e, e.heap_len - 1)
    return 0


cdef void heap_remove(Engine *e, Job *j) noexcept nogil:
    cdef uint64_t i
    if j.heap_idx < 0:
        return
    i = <uint64_t>j.heap_idx
    c_assert(i < e.heap_len and e.heap[i] == j)
    j.heap_idx = -1
    e.heap_len -= 1
    if i == e.heap_len:
        return
    heap_set(e, i, e.heap[e.heap_len])
    heap_up(e, i)
    heap_down(e, <uint64_t>e.heap[i].heap_idx)


# ---- output ---------------------------------------------------------------------------

cdef void conn_dirty(Engine *e, Conn *c) noexcept nogil:
    if not c.dirty:
        c.dirty = 1
        c.dirty_next = e.dirty
        e.dirty = c


cdef inline int out2(Engine *e, Conn *c, uint32_t t, const char *a, size_t an,
                     const char *b, size_t bn) noexcept nogil:
    conn_dirty(e, c)
    return encode2(&c.outbuf, t, a, an, b, bn)


cdef inline int out1(Engine *e, Conn *c, uint32_t t, const char *a, size_t an) noexcept nogil:
    conn_dirty(e, c)
    return encode1(&c.outbuf, t, a, an)


cdef inline int out0(Engine *e, Conn *c, uint32_t t) noexcept nogil:
    conn_dirty(e, c)
    return encode0(&c.outbuf, t)


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
    e.ftab = <Function **>calloc(e.fmask + 1, sizeof(Function *))
    e.htab = <Job **>calloc(e.hmask + 1, sizeof(Job *))
    e.utab = <Job **>calloc(e.umask + 1, sizeof(Job *))
    if e.ftab == NULL or e.htab == NULL or e.utab == NULL:
        return -1
    if prefix_len > sizeof(e.prefix) - 1:
        prefix_len = sizeof(e.prefix) - 1
    memcpy(e.prefix, cfg.prefix, prefix_len)
    e.prefix_len = <uint32_t>prefix_len
    e.next_handle = 1
    e.next_seq = 1
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
    e.wakeup_timeout_ms = cfg.wakeup_timeout_ms
    engine_clock(e)
    results_configure(e, cfg.keep_results_us, cfg.keep_results_bytes)
    return 0


cdef void engine_clock(Engine *e) noexcept nogil:
    e.now_us = now_us()
    e.now_ms = e.now_us // 1000
    e.now_wall_us = wall_us()
    e.now_wall_s = e.now_wall_us // 1000000


cdef void engine_free(Engine *e) noexcept nogil:
    cdef uint64_t i
    cdef Job *j
    cdef Job *nx
    cdef Attach *a
    cdef Attach *an
    cdef Function *f
    cdef Function *fn
    for i in range(e.hmask + 1):
        j = e.htab[i]
        while j != NULL:
            nx = j.h_next
            a = j.clients
            while a != NULL:
                an = a.j_next
                free(a)
                a = an
            free(j)
            j = nx
    f = e.f_first
    while f != NULL:
        fn = f.all_next
        free(f)
        f = fn
    free(e.ftab)
    free(e.htab)
    free(e.utab)
    free(e.heap)
    free(e.store_del)
    e.keep_us = 0
    results_expire(e)
    free(e.rtab)
    free(e.rutab)
    memset(e, 0, sizeof(Engine))


cdef void conn_attach(Engine *e, Conn *c) noexcept nogil:
    """Register a new connection (its fd, ip and buffers set by the caller)."""
    c_assert(e.owner == pthread_self())
    c.id = e.next_conn_id
    e.next_conn_id += 1
    c.exceptions = e.exceptions_default
    c.client_id[0] = b'-'
    c.client_id_len = 1
    c.all_prev = NULL
    c.all_next = e.conns
    if e.conns != NULL:
        e.conns.all_prev = c
    e.conns = c
    e.nconns += 1


# ---- queues ---------------------------------------------------------------------------

cdef inline void ready_add(Engine *e, Function *f, int p) noexcept nogil:
    """f has work at priority p and a worker: it joins the tail of the turn order."""
    if f.in_ready[p] or f.workers == 0:
        return
    c_assert(f.queued[p] > 0)
    f.in_ready[p] = 1
    e.next_turn += 1
    f.turn[p] = e.next_turn
    f.r_next[p] = NULL
    f.r_prev[p] = e.ready_tail[p]
    if e.ready_tail[p] != NULL:
        e.ready_tail[p].r_next[p] = f
    else:
        e.ready_head[p] = f
    e.ready_tail[p] = f


cdef inline void ready_remove(Engine *e, Function *f, int p) noexcept nogil:
    if not f.in_ready[p]:
        return
    f.in_ready[p] = 0
    if f.r_prev[p] != NULL:
        f.r_prev[p].r_next[p] = f.r_next[p]
    else:
        e.ready_head[p] = f.r_next[p]
    if f.r_next[p] != NULL:
        f.r_next[p].r_prev[p] = f.r_prev[p]
    else:
        e.ready_tail[p] = f.r_prev[p]
    f.r_next[p] = NULL
    f.r_prev[p] = NULL


cdef inline void q_push_tail(Engine *e, Function *f, Job *j) noexcept nogil:
    cdef uint8_t p = j.priority
    j.q_next = NULL
    j.q_prev = f.q_tail[p]
    if f.q_tail[p] != NULL:
        f.q_tail[p].q_next = j
    else:
        f.q_head[p] = j
    f.q_tail[p] = j
    f.queued[p] += 1
    j.state = JOB_QUEUED
    if f.queued[p] == 1:
        ready_add(e, f, p)


cdef inline void q_push_head(Engine *e, Function *f, Job *j) noexcept nogil:
    cdef uint8_t p = j.priority
    j.q_prev = NULL
    j.q_next = f.q_head[p]
    if f.q_head[p] != NULL:
        f.q_head[p].q_prev = j
    else:
        f.q_tail[p] = j
    f.q_head[p] = j
    f.queued[p] += 1
    j.state = JOB_QUEUED
    if f.queued[p] == 1:
        ready_add(e, f, p)


cdef inline void q_remove(Engine *e, Function *f, Job *j) noexcept nogil:
    cdef uint8_t p = j.priority
    c_assert(j.state == JOB_QUEUED and f.queued[p] > 0)
    if j.q_prev != NULL:
        j.q_prev.q_next = j.q_next
    else:
        f.q_head[p] = j.q_next
    if j.q_next != NULL:
        j.q_next.q_prev = j.q_prev
    else:
        f.q_tail[p] = j.q_prev
    f.queued[p] -= 1
    if f.queued[p] == 0:
        ready_remove(e, f, p)
    j.q_prev = NULL
    j.q_next = NULL


cdef inline void held_push(Conn *w, Job *j) noexcept nogil:
    j.q_prev = NULL
    j.q_next = w.held
    if w.held != NULL:
        w.held.q_prev = j
    w.held = j


cdef inline void held_remove(Conn *w, Job *j) noexcept nogil:
    c_assert(j.state == JOB_RUNNING and j.worker == w)
    if j.q_prev != NULL:
        j.q_prev.q_next = j.q_next
    else:
        w.held = j.q_next
    if j.q_next != NULL:
        j.q_next.q_prev = j.q_prev
    j.q_prev = NULL
    j.q_next = NULL


cdef inline void sleep_unlink(Function *f, Ability *a) noexcept nogil:
    if a.s_prev != NULL:
        a.s_prev.s_next = a.s_next
    else:
        f.sleep_head = a.s_next
    if a.s_next != NULL:
        a.s_next.s_prev = a.s_prev
    else:
        f.sleep_tail = a.s_prev
    a.s_next = NULL
    a.s_prev = NULL
    a.in_sleep = 0


cdef inline void sleep_push(Function *f, Ability *a) noexcept nogil:
    if a.in_sleep:
        sleep_unlink(f, a)
    a.in_sleep = 1
    a.s_next = NULL
    a.s_prev = f.sleep_tail
    if f.sleep_tail != NULL:
        f.sleep_tail.s_next = a
    else:
        f.sleep_head = a
    f.sleep_tail = a


cdef void wide_remove(Engine *e, Conn *c) noexcept nogil:
    if not c.in_wide:
        return
    c.in_wide = 0
    if c.ws_prev != NULL:
        c.ws_prev.ws_next = c.ws_next
    else:
        e.wide_head = c.ws_next
    if c.ws_next != NULL:
        c.ws_next.ws_prev = c.ws_prev
    else:
        e.wide_tail = c.ws_prev
    c.ws_next = NULL
    c.ws_prev = NULL


cdef void wide_push(Engine *e, Conn *c) noexcept nogil:
    wide_remove(e, c)
    c.in_wide = 1
    c.ws_next = NULL
    c.ws_prev = e.wide_tail
    if e.wide_tail != NULL:
        e.wide_tail.ws_next = c
    else:
        e.wide_head = c
    e.wide_tail = c


cdef void woken_remove(Engine *e, Conn *c) noexcept nogil:
    if not c.in_woken:
        return
    c.in_woken = 0
    if c.wk_prev != NULL:
        c.wk_prev.wk_next = c.wk_next
    else:
        e.woken_head = c.wk_next
    if c.wk_next != NULL:
        c.wk_next.wk_prev = c.wk_prev
    else:
        e.woken_tail = c.wk_prev
    c.wk_next = NULL
    c.wk_prev = NULL
    c.woke_for = NULL


cdef void woken_add(Engine *e, Conn *c, Function *f) noexcept nogil:
    """c was sent a NOOP for work of f: if it has not grabbed within the wake-up
    timeout, another sleeper is woken (gearmand #343: a dead link strands the job)."""
    if e.wakeup_timeout_ms <= 0:
        return
    woken_remove(e, c)
    c.in_woken = 1
    c.woken_ms = e.now_ms
    c.woke_for = f
    c.wk_next = NULL
    c.wk_prev = e.woken_tail
    if e.woken_tail != NULL:
        e.woken_tail.wk_next = c
    else:
        e.woken_head = c
    e.woken_tail = c
    if e.wake_check.heap_idx < 0:
        # One timer in the heap stands for the whole list: all share one timeout, so
        # the oldest entry is always due first.
        e.wake_check.timer_ms = e.now_ms + e.wakeup_timeout_ms
        heap_push(e, &e.wake_check)


cdef void wake(Engine *e, Function *f) noexcept nogil:
    """A job of f became runnable: NOOP the sleeper of f that has slept longest, once per
    sleep (`-w N`: up to N, gearmand's meaning). gearmand wakes every sleeper and all but
    one GRAB for nothing. The sleepers list is FIFO, so work rotates over the pool;
    entries of workers that woke since are dropped as they are met, so this costs O(1)
    amortised whatever the number of workers."""
    cdef uint32_t woken = 0
    cdef uint32_t limit = e.worker_wakeup if e.worker_wakeup else 1
    cdef Ability *a
    cdef Conn *c
    cdef Conn *cn
    while f.sleep_head != NULL and woken < limit:
        a = f.sleep_head
        c_assert(a.in_sleep and a.func == f)
        sleep_unlink(f, a)
        c = a.conn
        if c.sleeping and not c.noop_sent:
            noop(e, c, f)
            woken += 1
    # Workers with many functions sleep on one engine-wide list (a PRE_SLEEP must not
    # cost one insertion per registration): take the longest asleep that can do f.
    c = e.wide_head if f.wide_workers else NULL
    while c != NULL and woken < limit:
        cn = c.ws_next
        if not c.sleeping or c.noop_sent:
            wide_remove(e, c)
        elif ability_of(c, f) != NULL:
            wide_remove(e, c)
            noop(e, c, f)
            woken += 1
        c = cn


cdef inline void noop(Engine *e, Conn *c, Function *f) noexcept nogil:
    c.noop_sent = 1
    out0(e, c, CMD_NOOP)
    e.n_noops += 1
    woken_add(e, c, f)


cdef void job_make_runnable(Engine *e, Job *j, int front) noexcept nogil:
    j.queued_us = e.now_us
    if front:
        q_push_head(e, j.func, j)
    else:
        q_push_tail(e, j.func, j)
    wake(e, j.func)


cdef void job_unlink_state(Engine *e, Job *j) noexcept nogil:
    """Take j out of whichever queue, held list or heap it is in."""
    heap_remove(e, j)
    if j.state == JOB_QUEUED:
        q_remove(e, j.func, j)
    elif j.state == JOB_FUTURE:
        j.func.future -= 1
    elif j.state == JOB_RUNNING:
        if j.worker != NULL:
            held_remove(j.worker, j)
            j.worker = NULL
        j.func.running -= 1
    j.state = JOB_UNLINKED


cdef inline size_t job_size(Job *j) noexcept nogil:
    return sizeof(Job) + j.unique_len + 1 + j.reducer_len + 1 + j.data_len + 1


cdef void job_free(Engine *e, Job *j) noexcept nogil:
    cdef Job **pp
    cdef Ack *k
    cdef Attach *a
    cdef Attach *an
    job_unlink_state(e, j)
    c_assert(j.func.total > 0 and e.jobs > 0)
    pp = &e.htab[j.handle_hash & e.hmask]
    while pp[0] != j:
        pp = &pp[0].h_next
    pp[0] = j.h_next
    e.jobs -= 1
    if j.ukind:
        pp = &e.utab[j.unique_hash & e.umask]
        while pp[0] != j:
            pp = &pp[0].u_next
        pp[0] = j.u_next
        e.ujobs -= 1
    a = j.clients
    while a != NULL:
        an = a.j_next
        if a.c_prev != NULL:
            a.c_prev.c_next = a.c_next
        else:
            a.conn.attached = a.c_next
        if a.c_next != NULL:
            a.c_next.c_prev = a.c_prev
        free(a)
        a = an
    j.func.total -= 1
    e.queued_bytes -= job_size(j)
    if j.store_id > 0:
        store_delete(e, j.store_id)
    while j.acks != NULL:
        k = j.acks
        j.acks = k.next
        free(k)
    free(j)


cdef void store_delete(Engine *e, int64_t row_id) noexcept nogil:
    cdef int64_t *grown
    cdef uint64_t cap
    if e.store_del_len == e.store_del_cap:
        cap = e.store_del_cap * 2 if e.store_del_cap else 256
        grown = <int64_t *>realloc(e.store_del, cap * sizeof(int64_t))
        if grown == NULL:
            return      # the row stays; replay after a restart runs the job again
        e.store_del = grown
        e.store_del_cap = cap
    e.store_del[e.store_del_len] = row_id
    e.store_del_len += 1


cdef void send_clients(Engine *e, Job *j, uint32_t t, const char *d, size_t dn,
                       int with_data) noexcept nogil:
    cdef Attach *a = j.clients
    while a != NULL:
        if with_data:
            out2(e, a.conn, t, j.handle, j.handle_len, d, dn)
        else:
            out1(e, a.conn, t, j.handle, j.handle_len)
        a = a.j_next


cdef void job_fail(Engine *e, Job *j) noexcept nogil:
    """The server gives up on j (retries used up, CAN_DO_TIMEOUT): WORK_FAIL."""
    send_clients(e, j, CMD_WORK_FAIL, NULL, 0, 0)
    j.func.n_failed += 1
    if e.keep_us:
        keep_result(e, j, OUT_FAIL, NULL, 0, j.worker)
    job_free(e, j)


cdef void job_requeue(Engine *e, Job *j) noexcept nogil:
    """A worker let go of a running job (disconnect, CANT_DO, RESET_ABILITIES)."""
    job_unlink_state(e, j)
    j.retries += 1
    j.num = 0
    j.den = 0
    j.func.n_retried += 1
    if e.job_retries and j.retries >= e.job_retries:
        job_fail(e, j)
        return
    job_make_runnable(e, j, 1)


# ---- submission -----------------------------------------------------------------------

cdef int sched_next(Engine *e, Packet *pkt, int64_t *when) noexcept nogil:
    """Next wall-clock second matching MIN HOUR MDAY MON WDAY (empty = any)."""
    cdef int spec[5]
    cdef int lo[5]
    cdef int hi[5]
    cdef int i, days = 0
    cdef long long v
    cdef int64_t steps = 0
    cdef time_t t = <time_t>e.now_wall_s
    cdef tm lt
    # MIN HOUR MDAY MON WDAY as cron reads them; a value outside its range never
    # matches, so it is refused up front instead of searched for.
    lo[:] = [0, 0, 1, 1, 0]
    hi[:] = [59, 23, 31, 12, 6]
    for i in range(5):
        if pkt.flen[2 + i] == 0:
            spec[i] = -1
        else:
            v = strtoll(pkt.f[2 + i], NULL, 10)
            if v < lo[i] or v > hi[i]:
                return -1
            spec[i] = <int>v
    t -= t % 60
    # Each step moves at least a minute and days are bounded; the step bound also
    # covers clocks whose local time repeats or skips hours (DST).
    while days <= SCHED_MAX_DAYS and steps < SCHED_MAX_DAYS * (24 + 60):
        steps += 1
        localtime_r(&t, &lt)
        if ((spec[3] >= 0 and lt.tm_mon + 1 != spec[3]) or
                (spec[2] >= 0 and lt.tm_mday != spec[2]) or
                (spec[4] >= 0 and lt.tm_wday != spec[4])):
            lt.tm_mday += 1
            lt.tm_hour = 0
            lt.tm_min = 0
            lt.tm_sec = 0
            lt.tm_isdst = -1
            t = mktime(&lt)
            days += 1
            continue
        if spec[1] >= 0 and lt.tm_hour != spec[1]:
            lt.tm_hour += 1
            lt.tm_min = 0
            lt.tm_sec = 0
            lt.tm_isdst = -1
            t = mktime(&lt)
            continue
        if spec[0] >= 0 and lt.tm_min != spec[0]:
            t += 60
            continue
        when[0] = <int64_t>t if t > e.now_wall_s else 0
        return 0
    return -1


cdef int handle_submit(Engine *e, Conn *c, Packet *pkt) noexcept nogil:
    cdef uint32_t t = pkt.type
    cdef uint8_t prio = PRIO_NORMAL
    cdef uint8_t bg = 0
    cdef const char *reducer = NULL
    cdef size_t reducer_len = 0
    cdef int data_field = 2
    cdef int64_t when = 0
    cdef long long ep
    cdef char *endp
    cdef Function *f
    cdef Job *j
    cdef Attach *a
    cdef uint8_t ukind
    cdef size_t n
    cdef char *w
    if t == CMD_SUBMIT_JOB_HIGH or t == CMD_SUBMIT_JOB_HIGH_BG:
        prio = PRIO_HIGH
    elif t == CMD_SUBMIT_JOB_LOW or t == CMD_SUBMIT_JOB_LOW_BG:
        prio = PRIO_LOW
    if (t == CMD_SUBMIT_JOB_BG or t == CMD_SUBMIT_JOB_HIGH_BG or t == CMD_SUBMIT_JOB_LOW_BG
            or t == CMD_SUBMIT_JOB_EPOCH or t == CMD_SUBMIT_JOB_SCHED
            or t == CMD_SUBMIT_REDUCE_JOB_BACKGROUND):
        bg = 1
    if t == CMD_SUBMIT_JOB_EPOCH:
        data_field = 3
        ep = strtoll(pkt.f[2], &endp, 10)
        # gearmand: garbage means 0 (run now).
        when = ep if ep > e.now_wall_s else 0
    elif t == CMD_SUBMIT_JOB_SCHED:
        data_field = 7
        if sched_next(e, pkt, &when) != 0:
            return engine_error(e, c, b"INVALID_ARGUMENT",
                                b"Schedule never matches a time in the next five years")
    elif t == CMD_SUBMIT_REDUCE_JOB or t == CMD_SUBMIT_REDUCE_JOB_BACKGROUND:
        data_field = 4
        reducer = pkt.f[2]
        reducer_len = pkt.flen[2]
    e.last_job = NULL
    if c == NULL:
        when = e.replay_when       # replaying a stored row: no submitter
    if pkt.flen[1] > e.max_unique or reducer_len > e.max_unique:
        return engine_error(e, c, b"ARGUMENT_TOO_LARGE", b"Unique value too large")
    if pkt.flen[0] > e.max_function_name:
        return engine_error(e, c, b"ARGUMENT_TOO_LARGE", b"Function name too large")
    f = func_get(e, pkt.f[0], pkt.flen[0], 1)
    if f == NULL:
        return E_NOMEM
    if pkt.flen[1] == 0:
        ukind = 0
    elif pkt.flen[1] == 1 and pkt.f[1][0] == b'-':
        ukind = 2 if pkt.flen[data_field] else 0
    else:
        ukind = 1
    if ukind:
        j = job_by_unique(e, f, ukind, pkt.f[1], pkt.flen[1],
                          pkt.f[data_field], pkt.flen[data_field])
        if j != NULL:
            if c == NULL:
                return E_OK
            if not bg:
                a = <Attach *>calloc(1, sizeof(Attach))
                if a == NULL:
                    return E_NOMEM
                attach_client(j, c, a)
            if j.state == JOB_STORING:
                return add_ack(j, c)
            return out1(e, c, CMD_JOB_CREATED, j.handle, j.handle_len)
    if f.max_queue[prio] and f.total >= f.max_queue[prio]:
        return engine_error(e, c, b"QUEUE_ERROR", b"Job queue is full")
    n = sizeof(Job) + pkt.flen[1] + 1 + reducer_len + 1 + pkt.flen[data_field] + 1
    if c != NULL and e.max_queued_bytes and e.queued_bytes + n > e.max_queued_bytes:
        # Refuse rather than grow into swap; stored jobs replayed at start-up (c NULL)
        # are always taken back.
        e.n_budget_refused += 1
        return engine_error(e, c, b"QUEUE_ERROR", b"Job memory budget exhausted")
    if e.jobs >= e.hmask + 1 and grow_jtab(&e.htab, &e.hmask, 0) != 0:
        return E_NOMEM
    if ukind and e.ujobs >= e.umask + 1 and grow_jtab(&e.utab, &e.umask, 1) != 0:
        return E_NOMEM
    j = <Job *>malloc(n)
    if j == NULL:
        return E_NOMEM
    memset(j, 0, sizeof(Job))
    w = <char *>(j + 1)
    j.unique = w
    memcpy(w, pkt.f[1], pkt.flen[1])
    w[pkt.flen[1]] = 0
    j.unique_len = <uint32_t>pkt.flen[1]
    w += pkt.flen[1] + 1
    j.reducer = w
    if reducer_len:
        memcpy(w, reducer, reducer_len)
    w[reducer_len] = 0
    j.reducer_len = <uint32_t>reducer_len
    w += reducer_len + 1
    j.data = w
    if pkt.flen[data_field]:
        memcpy(w, pkt.f[data_field], pkt.flen[data_field])
    w[pkt.flen[data_field]] = 0
    j.data_len = pkt.flen[data_field]
    j.func = f
    j.priority = prio
    j.background = bg
    j.ukind = ukind
    j.heap_idx = -1
    j.when_s = when
    j.created_us = e.now_us
    j.seq = e.next_seq
    e.next_seq += 1
    j.handle_len = <uint32_t>snprintf(j.handle, MAX_HANDLE, "%.*s:%llu", <int>e.prefix_len,
                                      e.prefix, <unsigned long long>e.next_handle)
    if j.handle_len >= MAX_HANDLE:
        j.handle_len = MAX_HANDLE - 1
    e.next_handle += 1
    j.handle_hash = hash_bytes(j.handle, j.handle_len, 0)
    j.h_next = e.htab[j.handle_hash & e.hmask]
    e.htab[j.handle_hash & e.hmask] = j
    e.jobs += 1
    if ukind:
        j.unique_hash = unique_key(j.unique, j.unique_len, j.data, j.data_len, ukind)
        j.u_next = e.utab[j.unique_hash & e.umask]
        e.utab[j.unique_hash & e.umask] = j
        e.ujobs += 1
    f.total += 1
    f.n_submitted += 1
    e.queued_bytes += n
    if not bg:
        a = <Attach *>calloc(1, sizeof(Attach))
        if a == NULL:
            job_free(e, j)
            return E_NOMEM
        attach_client(j, c, a)
    j.when_s = when
    e.last_job = j
    if c == NULL:
        job_schedule(e, j)
        return E_OK
    if bg and e.durable:
        # Acknowledged only once the store thread has committed its row.
        j.state = JOB_STORING
        j.store_next = NULL
        if e.store_add_tail != NULL:
            e.store_add_tail.store_next = j
        else:
            e.store_add = j
        e.store_add_tail = j
        return add_ack(j, c)
    if out1(e, c, CMD_JOB_CREATED, j.handle, j.handle_len) != 0:
        return E_NOMEM
    job_schedule(e, j)
    return E_OK


cdef int add_ack(Job *j, Conn *c) noexcept nogil:
    cdef Ack *k = <Ack *>malloc(sizeof(Ack))
    if k == NULL:
        return E_NOMEM
    k.fd = c.fd
    k.conn_id = c.id
    k.next = j.acks
    j.acks = k
    return E_OK


cdef void job_schedule(Engine *e, Job *j) noexcept nogil:
    """Queue a new job now, or put it in the timer heap until its epoch time."""
    cdef Function *f = j.func
    cdef int64_t when = j.when_s
    if when > e.now_wall_s:
        j.state = JOB_FUTURE
        f.future += 1
        j.timer_ms = e.now_ms + (when - e.now_wall_s) * 1000
        if heap_push(e, j) != 0:
            f.future -= 1
            j.state = JOB_QUEUED
            q_push_tail(e, f, j)
    else:
        job_make_runnable(e, j, 0)


cdef void engine_job_stored(Engine *e, Job *j, int64_t row_id) noexcept nogil:
    """The store committed j's row: it may run now. (Acks are sent by the caller.)"""
    c_assert(j.state == JOB_STORING)
    j.store_id = row_id
    j.persisted = 1
    job_schedule(e, j)


cdef void engine_job_store_failed(Engine *e, Job *j) noexcept nogil:
    """The row could not be written: the job is dropped (the caller sends the errors)."""
    c_assert(j.state == JOB_STORING)
    j.state = JOB_UNLINKED
    job_free(e, j)


cdef Job *engine_replay(Engine *e, const char *func, size_t fn, const char *uniq, size_t un,
                        const char *data, size_t dn, int prio, int64_t when_s,
                        int64_t row_id) noexcept nogil:
    """Recreate a stored background job at start-up (no submitter to answer)."""
    cdef Packet pkt
    cdef Job *j
    cdef uint8_t durable = e.durable
    pkt.type = CMD_SUBMIT_JOB_BG if prio == PRIO_NORMAL else (
        CMD_SUBMIT_JOB_HIGH_BG if prio == PRIO_HIGH else CMD_SUBMIT_JOB_LOW_BG)
    pkt.nfields = 3
    pkt.f[0] = func
    pkt.flen[0] = fn
    pkt.f[1] = uniq
    pkt.flen[1] = un
    pkt.f[2] = data
    pkt.flen[2] = dn
    e.durable = 0
    e.replay_when = when_s
    handle_submit(e, NULL, &pkt)
    e.replay_when = 0
    e.durable = durable
    j = e.last_job
    if j != NULL:
        j.store_id = row_id
        j.persisted = 1
    return j


cdef inline void attach_client(Job *j, Conn *c, Attach *a) noexcept nogil:
    a.job = j
    a.conn = c
    a.j_prev = NULL
    a.j_next = j.clients
    if j.clients != NULL:
        j.clients.j_prev = a
    j.clients = a
    a.c_prev = NULL
    a.c_next = c.attached
    if c.attached != NULL:
        c.attached.c_prev = a
    c.attached = a


# ---- workers --------------------------------------------------------------------------

cdef int add_ability(Engine *e, Conn *c, const char *name, size_t n,
                     int64_t timeout_ms) noexcept nogil:
    cdef Function *f
    cdef Ability *a
    cdef int p
    if n > e.max_function_name:
        return engine_error(e, c, b"ARGUMENT_TOO_LARGE", b"Function name too large")
    f = func_get(e, name, n, 1)
    if f == NULL:
        return E_NOMEM
    a = <Ability *>calloc(1, sizeof(Ability))
    if a == NULL:
        return E_NOMEM
    a.conn = c
    a.func = f
    a.timeout_ms = timeout_ms
    if atab_insert(c, a) != 0:
        free(a)
        return E_NOMEM
    a.c_prev = NULL
    a.c_next = c.abilities
    if c.abilities != NULL:
        c.abilities.c_prev = a
    c.abilities = a
    f.workers += 1
    if f.workers == 1:
        for p in range(NPRIO):
            if f.queued[p]:
                ready_add(e, f, p)
    if c.sleeping and not c.noop_sent:
        # Registered while asleep: the next job of f must be able to wake it.
        if c.atab != NULL:
            if not c.in_wide:
                wide_push(e, c)
        else:
            sleep_push(f, a)
    return E_OK


cdef inline uint64_t ptr_hash(Function *f) noexcept nogil:
    return (<uint64_t><size_t>f * 11400714819323198485ULL) >> 24


cdef int atab_insert(Conn *c, Ability *a) noexcept nogil:
    """Index a registration by function once a worker has many, so that "can this worker
    do f" costs O(1) (GRAB through the engine's ready lists, CANT_DO)."""
    cdef Ability **t
    cdef Ability *x
    cdef uint32_t n, i
    cdef int created = c.atab == NULL
    c.nabil += 1
    if c.atab == NULL and c.nabil <= SMALL_ABILITIES:
        return 0
    if c.atab == NULL or c.nabil > c.amask + 1:
        n = (c.amask + 1) * 2 if c.atab != NULL else 4 * SMALL_ABILITIES
        t = <Ability **>calloc(n, sizeof(Ability *))
        if t == NULL:
            c.nabil -= 1
            return -1
        free(c.atab)
        c.atab = t
        c.amask = n - 1
        x = c.abilities
        while x != NULL:
            i = ptr_hash(x.func) & c.amask
            x.h_next = t[i]
            t[i] = x
            if created:
                x.func.wide_workers += 1
            x = x.c_next
    i = ptr_hash(a.func) & c.amask
    a.h_next = c.atab[i]
    c.atab[i] = a
    a.func.wide_workers += 1
    return 0


cdef Ability *ability_of(Conn *c, Function *f) noexcept nogil:
    cdef Ability *a
    if c.atab == NULL:
        a = c.abilities
        while a != NULL and a.func != f:
            a = a.c_next
        return a
    a = c.atab[ptr_hash(f) & c.amask]
    while a != NULL and a.func != f:
        a = a.h_next
    return a


cdef void remove_ability(Engine *e, Conn *c, Ability *a) noexcept nogil:
    cdef Function *f = a.func
    cdef Ability **pp
    cdef int p
    c_assert(a.conn == c and f.workers > 0)
    if a.c_prev != NULL:
        a.c_prev.c_next = a.c_next
    else:
        c.abilities = a.c_next
    if a.c_next != NULL:
        a.c_next.c_prev = a.c_prev
    if c.atab != NULL:
        pp = &c.atab[ptr_hash(f) & c.amask]
        while pp[0] != a:
            pp = &pp[0].h_next
        pp[0] = a.h_next
        c_assert(f.wide_workers > 0)
        f.wide_workers -= 1
    c.nabil -= 1
    if c.nabil == 0:
        free(c.atab)
        c.atab = NULL
        c.amask = 0
    if a.in_sleep:
        sleep_unlink(f, a)
    if c.woke_for == f:
        c.woke_for = NULL
    f.workers -= 1
    if f.workers == 0:
        for p in range(NPRIO):
            ready_remove(e, f, p)
    free(a)


cdef void drop_abilities(Engine *e, Conn *c, Function *only) noexcept nogil:
    """CANT_DO (only = the function) or RESET_ABILITIES/disconnect (only = NULL): drop
    the registrations and give back the jobs held for them."""
    cdef Ability *a = c.abilities
    cdef Ability *an
    cdef Job *j
    cdef Job *jn
    if only != NULL:
        # Through the function index: a CANT_DO costs the same with 10,000 registrations.
        a = ability_of(c, only)
        while a != NULL:
            remove_ability(e, c, a)
            a = ability_of(c, only)
    while only == NULL and a != NULL:
        an = a.c_next
        remove_ability(e, c, a)
        a = an
    j = c.held
    while j != NULL:
        jn = j.q_next
        if only == NULL or j.func == only:
            job_requeue(e, j)
        j = jn


cdef Ability *scan_abilities(Conn *c, int p) noexcept nogil:
    """The registration of c whose function has work at p and has waited longest for
    its turn (the same order as the engine's ready list)."""
    cdef Ability *a = c.abilities
    cdef Ability *best = NULL
    while a != NULL:
        if a.func.queued[p] and (best == NULL or a.func.turn[p] < best.func.turn[p]):
            best = a
        a = a.c_next
    return best


cdef Ability *find_work(Engine *e, Conn *c, int *prio) noexcept nogil:
    """Which registration of c a GRAB serves: the highest priority with work, then the
    function whose turn it is. A worker with few registrations scans them; one with many
    walks the engine's list of functions that have work and a worker, so a GRAB does not
    cost more with thousands of registrations. The walk stops after as many functions
    as the worker has registrations (then its own list is the shorter one to scan)."""
    cdef Ability *a
    cdef Function *f
    cdef uint32_t walked
    cdef int p
    for p in range(NPRIO):
        if e.ready_head[p] == NULL:
            continue
        if c.atab == NULL:
            a = scan_abilities(c, p)
        else:
            a = NULL
            walked = 0
            f = e.ready_head[p]
            while f != NULL and walked < c.nabil:
                c_assert(f.in_ready[p] and f.queued[p] > 0 and f.workers > 0)
                a = ability_of(c, f)
                if a != NULL:
                    break
                f = f.r_next[p]
                walked += 1
            if a == NULL and f != NULL:
                a = scan_abilities(c, p)
        if a != NULL:
            prio[0] = p
            return a
    return NULL


cdef int handle_grab(Engine *e, Conn *c, uint32_t t) noexcept nogil:
    cdef Ability *besta
    cdef Function *f
    cdef Job *j
    cdef int p = 0
    cdef const char *fs[5]
    cdef size_t ls[5]
    c.sleeping = 0
    c.noop_sent = 0
    woken_remove(e, c)
    besta = find_work(e, c, &p)
    if besta == NULL:
        return out0(e, c, CMD_NO_JOB)
    f = besta.func
    j = f.q_head[p]
    q_remove(e, f, j)
    if f.queued[p]:
        # Functions with work take turns: f goes behind the others at this priority.
        ready_remove(e, f, p)
        ready_add(e, f, p)
    j.state = JOB_RUNNING
    j.worker = c
    j.started_us = e.now_us
    hist_add(j.func.wait_hist, &j.func.wait_sum_us, e.now_us - j.queued_us)
    j.func.running += 1
    held_push(c, j)
    if besta.timeout_ms > 0:
        j.timer_ms = e.now_ms + besta.timeout_ms
        heap_push(e, j)
    fs[0] = j.handle
    ls[0] = j.handle_len
    fs[1] = j.func.name
    ls[1] = j.func.name_len
    if t == CMD_GRAB_JOB:
        fs[2] = j.data
        ls[2] = j.data_len
        conn_dirty(e, c)
        return encode_packet(&c.outbuf, 1, CMD_JOB_ASSIGN, 3, fs, ls)
    fs[2] = j.unique
    ls[2] = j.unique_len
    if t == CMD_GRAB_JOB_ALL and j.reducer_len:
        fs[3] = j.reducer
        ls[3] = j.reducer_len
        fs[4] = j.data
        ls[4] = j.data_len
        conn_dirty(e, c)
        return encode_packet(&c.outbuf, 1, CMD_JOB_ASSIGN_ALL, 5, fs, ls)
    fs[3] = j.data
    ls[3] = j.data_len
    conn_dirty(e, c)
    return encode_packet(&c.outbuf, 1, CMD_JOB_ASSIGN_UNIQ, 4, fs, ls)


cdef uint32_t atou32(const char *p, size_t n) noexcept nogil:
    # gearmand stores WORK_STATUS numbers with atoi() into uint32: '-5' wraps.
    cdef char tmp[24]
    if n > 23:
        n = 23
    memcpy(tmp, p, n)
    tmp[n] = 0
    return <uint32_t>strtoll(tmp, NULL, 10)


cdef int handle_work(Engine *e, Conn *c, Packet *pkt) noexcept nogil:
    cdef uint32_t t = pkt.type
    cdef Job *j
    cdef Attach *a
    if t == CMD_WORK_FAIL and pkt.flen[0] >= MAX_HANDLE:
        return engine_error(e, c, b"ARGUMENT_TOO_LARGE",
                            b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small "
                            b"from snprintf")
    j = job_by_handle(e, pkt.f[0], pkt.flen[0])
    if j == NULL or j.state != JOB_RUNNING or j.worker != c:
        if (t == CMD_WORK_FAIL and c.last_exception_len
                and eq(c.last_exception, c.last_exception_len, pkt.f[0], pkt.flen[0])):
            # Perl's Gearman::Worker follows WORK_EXCEPTION with WORK_FAIL for the same
            # job; gearmand's JOB_NOT_FOUND to that makes the worker exit.
            c.last_exception_len = 0
            return E_OK
        if t == CMD_WORK_DATA or t == CMD_WORK_WARNING:
            return engine_error(e, c, b"JOB_NOT_FOUND", b"Job does not exist on server")
        if t == CMD_WORK_EXCEPTION:
            return engine_error(e, c, b"JOB_NOT_FOUND",
                                b"An exception was received for a job that does not exist")
        return engine_error(e, c, b"JOB_NOT_FOUND", b"Job given in work result not found")
    if t == CMD_WORK_DATA or t == CMD_WORK_WARNING:
        send_clients(e, j, t, pkt.f[1], pkt.flen[1], 1)
        return E_OK
    if t == CMD_WORK_STATUS:
        j.num = atou32(pkt.f[1], pkt.flen[1])
        j.den = atou32(pkt.f[2], pkt.flen[2])
        a = j.clients
        while a != NULL:
            conn_dirty(e, a.conn)
            encode_packet(&a.conn.outbuf, 1, CMD_WORK_STATUS, 3, pkt.f, pkt.flen)
            a = a.j_next
        return E_OK
    c.jobs_done += 1
    hist_add(j.func.run_hist, &j.func.run_sum_us, e.now_us - j.started_us)
    if t == CMD_WORK_COMPLETE:
        send_clients(e, j, t, pkt.f[1], pkt.flen[1], 1)
        j.func.n_completed += 1
        if e.keep_us:
            keep_result(e, j, OUT_COMPLETE, pkt.f[1], pkt.flen[1], c)
    elif t == CMD_WORK_FAIL:
        send_clients(e, j, t, NULL, 0, 0)
        j.func.n_failed += 1
        if e.keep_us:
            keep_result(e, j, OUT_FAIL, NULL, 0, c)
    else:
        if e.keep_us:
            keep_result(e, j, OUT_EXCEPTION, pkt.f[1], pkt.flen[1], c)
        a = j.clients
        while a != NULL:
            if a.conn.exceptions:
                out2(e, a.conn, CMD_WORK_EXCEPTION, j.handle, j.handle_len,
                     pkt.f[1], pkt.flen[1])
            else:
                # gearmand appends a stray NUL here; a plain WORK_FAIL is what clients
                # without the exceptions option expect.
                out1(e, a.conn, CMD_WORK_FAIL, j.handle, j.handle_len)
            a = a.j_next
        j.func.n_exception += 1
        memcpy(c.last_exception, j.handle, j.handle_len)
        c.last_exception_len = j.handle_len
    job_free(e, j)
    return E_OK


cdef int status_reply(Engine *e, Conn *c, uint32_t t, const char *key, size_t kn,
                      Job *j) noexcept nogil:
    cdef char nums[5][24]
    cdef const char *fs[6]
    cdef size_t ls[6]
    cdef int i, n = 5
    cdef uint64_t clients = 0
    cdef Attach *a
    fs[0] = key
    ls[0] = kn
    ls[1] = fmt_u64(nums[0], 1 if j != NULL else 0)
    ls[2] = fmt_u64(nums[1], 1 if j != NULL and j.state == JOB_RUNNING else 0)
    ls[3] = fmt_u64(nums[2], j.num if j != NULL else 0)
    ls[4] = fmt_u64(nums[3], j.den if j != NULL else 0)
    for i in range(4):
        fs[i + 1] = nums[i]
    if t == CMD_STATUS_RES_UNIQUE:
        if j != NULL:
            a = j.clients
            while a != NULL:
                clients += 1
                a = a.j_next
        ls[5] = fmt_u64(nums[4], clients)
        fs[5] = nums[4]
        n = 6
    conn_dirty(e, c)
    return encode_packet(&c.outbuf, 1, t, n, fs, ls)


cdef int handle_status_unique(Engine *e, Conn *c, Packet *pkt) noexcept nogil:
    cdef uint64_t hv
    cdef Job *j
    if pkt.flen[0] > MAX_UNIQUE:
        return engine_error(e, c, b"ARGUMENT_TOO_LARGE", b"Unique value too large")
    hv = hash_bytes(pkt.f[0], pkt.flen[0], 0)
    j = e.utab[hv & e.umask]
    while j != NULL:
        if (j.ukind == 1 and j.unique_hash == hv
                and eq(j.unique, j.unique_len, pkt.f[0], pkt.flen[0])):
            break
        j = j.u_next
    return status_reply(e, c, CMD_STATUS_RES_UNIQUE, pkt.f[0], pkt.flen[0], j)


cdef int parse_timeout(const char *p, size_t n, int64_t *out) noexcept nogil:
    cdef char tmp[24]
    cdef char *endp
    cdef long long v
    if n == 0 or n > 20:
        return -1
    memcpy(tmp, p, n)
    tmp[n] = 0
    v = strtoll(tmp, &endp, 10)
    if endp == tmp:
        return -1
    if v <= 0:
        out[0] = 0
    elif v < MIN_CAN_DO_TIMEOUT_MS:
        out[0] = MIN_CAN_DO_TIMEOUT_MS
    else:
        out[0] = v
    return 0


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
    """Apply one parsed binary packet from c. E_OK, or E_CLOSE/E_NOMEM (close c)."""
    cdef uint32_t t = pkt.type
    c_assert(e.owner == pthread_self())
    cdef int64_t tmo
    cdef Function *f
    cdef Job *j
    e.n_packets += 1
    if not COMMANDS[t].request:
        return engine_error(e, c, b"INVALID_COMMAND", b"Command not expected")
    if pkt.res_magic:
        return engine_error(e, c, b"INVALID_MAGIC", b"Request magic expected")
    if (t == CMD_SUBMIT_JOB or t == CMD_SUBMIT_JOB_BG or t == CMD_SUBMIT_JOB_HIGH
            or t == CMD_SUBMIT_JOB_HIGH_BG or t == CMD_SUBMIT_JOB_LOW
            or t == CMD_SUBMIT_JOB_LOW_BG or t == CMD_SUBMIT_JOB_EPOCH
            or t == CMD_SUBMIT_JOB_SCHED or t == CMD_SUBMIT_REDUCE_JOB
            or t == CMD_SUBMIT_REDUCE_JOB_BACKGROUND):
        return handle_submit(e, c, pkt)
    if t == CMD_GRAB_JOB or t == CMD_GRAB_JOB_UNIQ or t == CMD_GRAB_JOB_ALL:
        return handle_grab(e, c, t)
    if (t == CMD_WORK_COMPLETE or t == CMD_WORK_FAIL or t == CMD_WORK_EXCEPTION
            or t == CMD_WORK_DATA or t == CMD_WORK_WARNING or t == CMD_WORK_STATUS):
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


# ---- kept results (--keep-results) -------------------------------------------------------

cdef void results_configure(Engine *e, int64_t keep_us, uint64_t max_bytes) noexcept nogil:
    e.keep_max_bytes = max_bytes
    if keep_us > 0 and e.rtab == NULL:
        e.rmask = 1023
        e.rtab = <Result **>calloc(e.rmask + 1, sizeof(Result *))
        e.rutab = <Result **>calloc(e.rmask + 1, sizeof(Result *))
        if e.rtab == NULL or e.rutab == NULL:
            free(e.rtab)
            free(e.rutab)
            e.rtab = NULL
            e.rutab = NULL
            keep_us = 0
    e.keep_us = keep_us if keep_us > 0 else 0
    results_expire(e)


cdef int grow_rtab(Engine *e) noexcept nogil:
    cdef uint64_t n = (e.rmask + 1) * 2
    cdef Result **t = <Result **>calloc(n, sizeof(Result *))
    cdef Result **u = <Result **>calloc(n, sizeof(Result *))
    cdef Result *r
    if t == NULL or u == NULL:
        free(t)
        free(u)
        return -1
    free(e.rtab)
    free(e.rutab)
    e.rtab = t
    e.rutab = u
    e.rmask = n - 1
    # Rebuilt from the age list, which holds every result exactly once.
    r = e.r_oldest
    while r != NULL:
        result_link(e, r)
        r = r.newer
    return 0


cdef inline void result_link(Engine *e, Result *r) noexcept nogil:
    cdef Result **head = &e.rtab[r.handle_hash & e.rmask]
    r.h_prev = NULL
    r.h_next = head[0]
    if head[0] != NULL:
        head[0].h_prev = r
    head[0] = r
    r.u_prev = NULL
    r.u_next = NULL
    if r.unique_len:
        # Jobs without a unique key are never looked up by it; chaining them would make
        # one chain of every such result.
        head = &e.rutab[r.unique_hash & e.rmask]
        r.u_next = head[0]
        if head[0] != NULL:
            head[0].u_prev = r
        head[0] = r


cdef void result_drop_oldest(Engine *e) noexcept nogil:
    cdef Result *r = e.r_oldest
    if r.h_prev != NULL:
        r.h_prev.h_next = r.h_next
    else:
        e.rtab[r.handle_hash & e.rmask] = r.h_next
    if r.h_next != NULL:
        r.h_next.h_prev = r.h_prev
    if r.unique_len:
        if r.u_prev != NULL:
            r.u_prev.u_next = r.u_next
        else:
            e.rutab[r.unique_hash & e.rmask] = r.u_next
        if r.u_next != NULL:
            r.u_next.u_prev = r.u_prev
    e.r_oldest = r.newer
    if e.r_oldest == NULL:
        e.r_newest = NULL
    e.rcount -= 1
    e.rbytes -= r.size
    free(r)


cdef void results_expire(Engine *e) noexcept nogil:
    """Drop results past their time, and the oldest while over the memory bound (all
    results share one TTL, so the oldest expires first)."""
    while e.r_oldest != NULL and (e.r_oldest.expires_us <= e.now_us or e.keep_us == 0
                                  or e.rbytes > e.keep_max_bytes):
        if e.r_oldest.expires_us > e.now_us and e.keep_us:
            e.r_evicted += 1
        result_drop_oldest(e)


cdef void keep_result(Engine *e, Job *j, uint8_t outcome, const char *d, size_t dn,
                      Conn *w) noexcept nogil:
    """Copy j's outcome into a Result before j is freed (costs nothing when off)."""
    cdef Function *f = j.func
    cdef size_t wn = 0, wn_ip = 0, size
    cdef Result *r
    cdef char *p
    if w != NULL:
        wn = w.client_id_len
        if wn == 0 or (wn == 1 and w.client_id[0] == b'-'):
            wn = 0
            wn_ip = strlen(w.ip)
    size = sizeof(Result) + f.name_len + j.unique_len + wn + wn_ip + dn + 4
    if size > e.keep_max_bytes:
        e.r_evicted += 1
        return
    if e.rcount >= e.rmask + 1 and grow_rtab(e) != 0:
        return
    r = <Result *>malloc(size)
    if r == NULL:
        return
    p = <char *>(r + 1)
    memcpy(r.handle, j.handle, j.handle_len)
    r.handle_len = j.handle_len
    r.handle_hash = j.handle_hash
    r.func = p
    memcpy(p, f.name, f.name_len)
    r.func_len = f.name_len
    p += f.name_len + 1
    r.unique = p
    memcpy(p, j.unique, j.unique_len)
    r.unique_len = j.unique_len
    r.unique_hash = hash_bytes(j.unique, j.unique_len, 0)
    p += j.unique_len + 1
    r.worker = p
    if wn:
        memcpy(p, w.client_id, wn)
    elif wn_ip:
        memcpy(p, w.ip, wn_ip)
        wn = wn_ip
    r.worker_len = <uint32_t>wn
    p += wn + 1
    r.data = p
    if dn:
        memcpy(p, d, dn)
    r.data_len = dn
    r.outcome = outcome
    r.background = j.background
    r.submitted_us = e.now_wall_us - (e.now_us - j.created_us)
    r.started_us = (e.now_wall_us - (e.now_us - j.started_us)) if j.started_us else 0
    r.finished_us = e.now_wall_us
    r.expires_us = e.now_us + e.keep_us
    r.size = size
    r.newer = NULL
    if e.r_newest != NULL:
        e.r_newest.newer = r
    else:
        e.r_oldest = r
    e.r_newest = r
    result_link(e, r)
    e.rcount += 1
    e.rbytes += size
    results_expire(e)


cdef Result *results_unique_chain(Engine *e, const char *u, size_t n) noexcept nogil:
    """The hash chain that holds every result kept under unique key u (and others)."""
    if e.rutab == NULL:
        return NULL
    results_expire(e)
    return e.rutab[hash_bytes(u, n, 0) & e.rmask]


cdef Result *result_by_handle(Engine *e, const char *h, size_t n) noexcept nogil:
    cdef uint64_t hv
    cdef Result *r
    if e.rtab == NULL:
        return NULL
    results_expire(e)
    hv = hash_bytes(h, n, 0)
    r = e.rtab[hv & e.rmask]
    while r != NULL:
        if r.handle_hash == hv and eq(r.handle, r.handle_len, h, n):
            return r
        r = r.h_next
    return NULL


cdef int handle_pre_sleep(Engine *e, Conn *c) noexcept nogil:
    cdef Ability *a
    cdef int p = 0
    c.sleeping = 1
    woken_remove(e, c)
    # As gearmand: work already waiting is answered with a NOOP at once, even if this
    # worker was woken before and has not grabbed since.
    a = find_work(e, c, &p)
    if a != NULL:
        c.noop_sent = 1
        e.n_noops += 1
        woken_add(e, c, a.func)
        return out0(e, c, CMD_NOOP)
    # Nothing to do: it really sleeps, so the next job of any of its functions must wake
    # it. gearmand keeps "NOOP sent" until a GRAB, so a worker whose job was taken by
    # another one before it grabbed is never woken again (gearmand issue #343).
    c.noop_sent = 0
    if c.atab != NULL:
        wide_push(e, c)
        return E_OK
    a = c.abilities
    while a != NULL:
        sleep_push(a.func, a)
        a = a.c_next
    return E_OK


# ---- timers, disconnects, admin operations -----------------------------------------------

cdef int64_t engine_timers(Engine *e) noexcept nogil:
    """Run due timers; return ms until the next one, or -1 when none is pending."""
    cdef Job *j
    c_assert(e.owner == pthread_self())
    while e.heap_len and e.heap[0].timer_ms <= e.now_ms:
        j = e.heap[0]
        heap_remove(e, j)
        if j == &e.wake_check:
            rewake_due(e)
        elif j.state == JOB_FUTURE:
            j.func.future -= 1
            job_make_runnable(e, j, 0)
        elif j.state == JOB_RUNNING:
            # CAN_DO_TIMEOUT expired: fail it to its clients (gearmand silently requeues).
            job_fail(e, j)
    if e.heap_len == 0:
        return -1
    return e.heap[0].timer_ms - e.now_ms


cdef void rewake_due(Engine *e) noexcept nogil:
    """The wake-up check timer fired: a worker NOOPed longer ago than the wake-up timeout
    that has not grabbed is assumed lost or slow, and another sleeper is woken for its
    job (which stays runnable, so whichever worker grabs first gets it)."""
    cdef Conn *c
    cdef Function *f
    while (e.woken_head != NULL
           and e.woken_head.woken_ms + e.wakeup_timeout_ms <= e.now_ms):
        c = e.woken_head
        f = c.woke_for
        woken_remove(e, c)
        if f != NULL and (f.queued[0] or f.queued[1] or f.queued[2]):
            e.n_rewakes += 1
            wake(e, f)
    if e.woken_head != NULL:
        e.wake_check.timer_ms = e.woken_head.woken_ms + e.wakeup_timeout_ms
        heap_push(e, &e.wake_check)


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
        if a.j_prev != NULL:
            a.j_prev.j_next = a.j_next
        else:
            j.clients = a.j_next
        if a.j_next != NULL:
            a.j_next.j_prev = a.j_prev
        free(a)
        # A foreground job nobody waits for any more is not worth running (gearmand
        # drops it when it reaches the head of the queue; we drop it now).
        if j.clients == NULL and not j.background and j.state != JOB_RUNNING:
            job_free(e, j)
        a = an
    c.attached = NULL
    if c.all_prev != NULL:
        c.all_prev.all_next = c.all_next
    else:
        e.conns = c.all_next
    if c.all_next != NULL:
        c.all_next.all_prev = c.all_prev
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
            if a.c_prev != NULL:
                a.c_prev.c_next = a.c_next
            else:
                a.conn.attached = a.c_next
            if a.c_next != NULL:
                a.c_next.c_prev = a.c_prev
            free(a)
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


# ---- Python surface for unit tests and micro benchmarks (not used by the server) -----

from fastgear.buffer cimport buf_len, buf_head, buf_consume, buf_append
from fastgear.coreconfig cimport core_config_defaults


cdef class EngineHarness:
    """Drives the engine without sockets: connections are numbered, `feed` parses and
    applies request bytes, `output` returns (and clears) what the engine queued."""
    cdef Engine e
    cdef list conns_
    cdef object alive

    def __cinit__(self, bytes prefix=b"H:test", int job_retries=0, int worker_wakeup=0,
                  bint exceptions=False):
        cdef CoreConfig cfg
        core_config_defaults(&cfg, prefix, len(prefix))
        cfg.job_retries = job_retries
        cfg.worker_wakeup = worker_wakeup
        cfg.exceptions = exceptions
        if engine_init(&self.e, &cfg) != 0:
            raise MemoryError()
        # The harness is single-threaded: it stands in for the engine lock's holder.
        self.e.owner = pthread_self()
        self.conns_ = []

    def __dealloc__(self):
        cdef Conn *c
        for addr in self.conns_:
            c = <Conn *><size_t>addr
            conn_detach(&self.e, c)
            buf_free(&c.inbuf)
            buf_free(&c.outbuf)
            free(c)
        engine_free(&self.e)

    def connect(self):
        cdef Conn *c = <Conn *>calloc(1, sizeof(Conn))
        if c == NULL:
            raise MemoryError()
        c.fd = len(self.conns_)
        conn_attach(&self.e, c)
        self.conns_.append(<size_t>c)
        return c.fd

    def disconnect(self, int n):
        cdef Conn *c = <Conn *><size_t>self.conns_[n]
        conn_detach(&self.e, c)

    def advance(self, int64_t ms=0, int64_t wall=0):
        """Move the engine's clocks forward and run due timers."""
        self.e.now_ms += ms
        self.e.now_wall_s += wall if wall else ms // 1000
        return engine_timers(&self.e)

    def feed(self, int n, bytes data):
        cdef Conn *c = <Conn *><size_t>self.conns_[n]
        cdef Packet pkt
        cdef int st, r = 0
        buf_append(&c.inbuf, data, len(data))
        while True:
            st = parse_packet(buf_head(&c.inbuf), buf_len(&c.inbuf), 0xffffffff, &pkt)
            if st != P_PACKET:
                break
            r = engine_packet(&self.e, c, &pkt)
            buf_consume(&c.inbuf, pkt.size)
            if r != E_OK:
                break
        if st < 0:
            return st
        return r

    def output(self, int n):
        cdef Conn *c = <Conn *><size_t>self.conns_[n]
        out = buf_head(&c.outbuf)[:buf_len(&c.outbuf)]
        buf_consume(&c.outbuf, buf_len(&c.outbuf))
        self.e.dirty = NULL
        c.dirty = 0
        return out

    def function(self, bytes name):
        """(total, running, workers, queued high/normal/low, future) of one function."""
        cdef Function *f = func_get(&self.e, name, len(name), 0)
        if f == NULL:
            return None
        return (f.total, f.running, f.workers, f.queued[0], f.queued[1], f.queued[2],
                f.future)

    def counts(self):
        return {"jobs": self.e.jobs, "functions": self.e.fcount, "connections": self.e.nconns,
                "queued_bytes": self.e.queued_bytes}

    def run_cycle(self, bytes func, int jobs, int payload=16):
        """Benchmark: `jobs` background submit + grab + complete cycles, no GIL, no
        sockets. Returns the number completed."""
        cdef Conn *cl
        cdef Conn *wk
        cdef Packet pkt
        cdef int _i, done = 0
        cdef bytes sub = _req(CMD_SUBMIT_JOB_BG, [func, b"", b"x" * payload])
        cdef bytes cando = _req(CMD_CAN_DO, [func])
        cdef bytes grab = _req(CMD_GRAB_JOB_UNIQ, [])
        cdef const char *ps = sub
        cdef const char *pg = grab
        cdef size_t ls = len(sub), lg = len(grab)
        cdef const char *fs[2]
        cdef size_t fl[2]
        cdef Buf done_pkt
        ci = self.connect()
        wi = self.connect()
        cl = <Conn *><size_t>self.conns_[ci]
        wk = <Conn *><size_t>self.conns_[wi]
        self.feed(wi, cando)
        buf_init(&done_pkt)
        with nogil:
            for _i in range(jobs):
                parse_packet(ps, ls, 0xffffffff, &pkt)
                engine_packet(&self.e, cl, &pkt)
                parse_packet(pg, lg, 0xffffffff, &pkt)
                engine_packet(&self.e, wk, &pkt)
                # JOB_ASSIGN_UNIQ: the handle is the first field of the reply.
                parse_packet(buf_head(&wk.outbuf), buf_len(&wk.outbuf), 0xffffffff, &pkt)
                fs[0] = pkt.f[0]
                fl[0] = pkt.flen[0]
                fs[1] = b""
                fl[1] = 0
                done_pkt.start = 0
                done_pkt.end = 0
                encode_packet(&done_pkt, 0, CMD_WORK_COMPLETE, 2, fs, fl)
                buf_consume(&wk.outbuf, buf_len(&wk.outbuf))
                buf_consume(&cl.outbuf, buf_len(&cl.outbuf))
                parse_packet(buf_head(&done_pkt), buf_len(&done_pkt), 0xffffffff, &pkt)
                if engine_packet(&self.e, wk, &pkt) == E_OK:
                    done += 1
            self.e.dirty = NULL
            cl.dirty = 0
            wk.dirty = 0
        buf_free(&done_pkt)
        return done


def _req(uint32_t t, fields):
    from fastgear.protocol import encode
    return encode(t, fields, request=True)
