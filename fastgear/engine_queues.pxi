# Included by engine.pyx. Where a runnable job waits and who is woken for it: each
# function's per-priority FIFO queues, the engine's per-priority turn order of functions
# that have work and a worker, the jobs a worker holds, the sleeper lists (per function,
# plus one engine-wide list for workers with many functions) with the NOOP and re-wake
# logic; and a job's ways out of them all (requeue, fail, free).

cdef inline void ready_add(Engine *e, Function *f, int p) noexcept nogil:
    """f has work at priority p and a worker: it joins the tail of the turn order."""
    if f.in_ready[p] or f.workers == 0:
        return
    c_assert(f.queued[p] > 0)
    f.in_ready[p] = 1
    e.next_turn += 1
    f.turn[p] = e.next_turn
    ready_push_tail(&e.ready_head[p], &e.ready_tail[p], f, p)


cdef inline void ready_remove(Engine *e, Function *f, int p) noexcept nogil:
    if not f.in_ready[p]:
        return
    f.in_ready[p] = 0
    ready_unlink(&e.ready_head[p], &e.ready_tail[p], f, p)


cdef inline void q_push_tail(Engine *e, Function *f, Job *j) noexcept nogil:
    cdef uint8_t p = j.priority
    queue_push_tail(&f.q_head[p], &f.q_tail[p], j)
    f.queued[p] += 1
    j.state = JOB_QUEUED
    if f.queued[p] == 1:
        ready_add(e, f, p)


cdef inline void q_push_head(Engine *e, Function *f, Job *j) noexcept nogil:
    cdef uint8_t p = j.priority
    queue_push_head(&f.q_head[p], &f.q_tail[p], j)
    f.queued[p] += 1
    j.state = JOB_QUEUED
    if f.queued[p] == 1:
        ready_add(e, f, p)


cdef inline void q_remove(Engine *e, Function *f, Job *j) noexcept nogil:
    cdef uint8_t p = j.priority
    c_assert(j.state == JOB_QUEUED and f.queued[p] > 0)
    queue_unlink(&f.q_head[p], &f.q_tail[p], j)
    f.queued[p] -= 1
    if f.queued[p] == 0:
        ready_remove(e, f, p)


cdef inline void held_push(Conn *w, Job *j) noexcept nogil:
    held_link(&w.held, j)


cdef inline void held_remove(Conn *w, Job *j) noexcept nogil:
    # Two asserts: an `and` would leave a temporary that release builds never read.
    c_assert(j.state == JOB_RUNNING)
    c_assert(j.o.worker == w)
    held_unlink(&w.held, j)


cdef inline void sleep_unlink(Function *f, Ability *a) noexcept nogil:
    sleepers_unlink(&f.sleep_head, &f.sleep_tail, a)
    a.in_sleep = 0


cdef inline void sleep_push(Function *f, Ability *a) noexcept nogil:
    if a.in_sleep:
        sleep_unlink(f, a)
    a.in_sleep = 1
    sleepers_push_tail(&f.sleep_head, &f.sleep_tail, a)


cdef void wide_remove(Engine *e, Conn *c) noexcept nogil:
    if not c.in_wide:
        return
    c.in_wide = 0
    wide_unlink(&e.wide_head, &e.wide_tail, c)


cdef void wide_push(Engine *e, Conn *c) noexcept nogil:
    wide_remove(e, c)
    c.in_wide = 1
    wide_push_tail(&e.wide_head, &e.wide_tail, c)


cdef void woken_remove(Engine *e, Conn *c) noexcept nogil:
    if not c.in_woken:
        return
    c.in_woken = 0
    woken_unlink(&e.woken_head, &e.woken_tail, c)
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
    woken_push_tail(&e.woken_head, &e.woken_tail, c)
    if e.wake_check.heap_idx < 0:
        # One timer in the heap stands for the whole list: all share one timeout, so
        # the oldest entry is always due first.
        e.wake_check.t.timer_ms = e.now_ms + e.wakeup_timeout_ms
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
        elif can_do(c, f):
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
    j.s.queued_us = e.now_us
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
        if j.o.worker != NULL:
            held_remove(j.o.worker, j)
            j.o.worker = NULL
        j.func.running -= 1
    j.state = JOB_UNLINKED


cdef inline size_t job_size(Job *j) noexcept nogil:
    return sizeof(Job) + j.unique_len + j.reducer_len + j.data_len


cdef void job_free(Engine *e, Job *j) noexcept nogil:
    cdef Job **pp
    cdef Ack *k
    cdef Attach *a
    cdef Attach *an
    job_unlink_state(e, j)
    c_assert(j.func.total > 0 and e.jobs > 0)
    pp = &e.htab[j.hnum & e.hmask]
    while pp[0] != j:
        pp = &pp[0].h_next
    pp[0] = j.h_next
    e.jobs -= 1
    if j.ukind:
        pp = &e.utab[j.uhash & e.umask]
        while pp[0] != j:
            pp = &pp[0].u_next
        pp[0] = j.u_next
        e.ujobs -= 1
    a = j.clients
    while a != NULL:
        an = a.j_next
        attached_unlink(&a.conn.attached, a)
        attach_put(e, a)
        a = an
    j.func.total -= 1
    e.queued_bytes -= job_size(j)
    if j.store_id > 0:
        store_delete(e, j.store_id)
    while j.acks != NULL:
        k = j.acks
        j.acks = k.next
        ack_put(e, k)
    fg_free(e, j)


cdef void store_delete(Engine *e, int64_t row_id) noexcept nogil:
    cdef int64_t *grown
    cdef uint64_t cap
    if e.store_del_len == e.store_del_cap:
        cap = e.store_del_cap * 2 if e.store_del_cap else 256
        grown = <int64_t *>fg_realloc(e, e.store_del, cap * sizeof(int64_t))
        if grown == NULL:
            return      # the row stays; replay after a restart runs the job again
        e.store_del = grown
        e.store_del_cap = cap
    e.store_del[e.store_del_len] = row_id
    e.store_del_len += 1


cdef void send_clients(Engine *e, Job *j, uint32_t t, const char *d, size_t dn,
                       int with_data) noexcept nogil:
    cdef Attach *a = j.clients
    cdef char h[MAX_HANDLE]
    cdef uint32_t hn
    if a == NULL:
        return
    hn = job_handle(e, j, h)
    while a != NULL:
        if with_data:
            out2(e, a.conn, t, h, hn, d, dn)
        else:
            out1(e, a.conn, t, h, hn)
        a = a.j_next


cdef void job_fail(Engine *e, Job *j, uint8_t reason) noexcept nogil:
    """The server gives up on j (DEAD_LOST: --job-retries used up; DEAD_TIMEOUT:
    CAN_DO_TIMEOUT, which the background retry policy may run again): WORK_FAIL."""
    send_clients(e, j, CMD_WORK_FAIL, NULL, 0, 0)
    j.func.n_failed += 1
    if e.keep_us:
        keep_result(e, j, OUT_FAIL, NULL, 0, j.o.worker if j.state == JOB_RUNNING else NULL)
    if j.background:
        if reason == DEAD_TIMEOUT and job_try_retry(e, j):
            return
        if reason == DEAD_TIMEOUT:
            dead_add(e, j, reason, b"CAN_DO_TIMEOUT expired", 22)
        else:
            dead_add(e, j, reason, b"worker lost mid-job (--job-retries)", 35)
    job_free(e, j)


cdef void job_requeue(Engine *e, Job *j) noexcept nogil:
    """A worker let go of a running job (disconnect, CANT_DO, RESET_ABILITIES)."""
    job_unlink_state(e, j)
    j.retries += 1
    j.num = 0
    j.den = 0
    j.func.n_retried += 1
    if e.job_retries and j.retries >= e.job_retries:
        job_fail(e, j, DEAD_LOST)
        return
    job_make_runnable(e, j, 1)


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
        e.wake_check.t.timer_ms = e.woken_head.woken_ms + e.wakeup_timeout_ms
        heap_push(e, &e.wake_check)
