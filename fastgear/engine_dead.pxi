# Included by engine.pyx. What happens to a background job that fails: the retry
# policy (--bg-retries, --bg-retry-backoff[-max], or `retry FUNCTION N BACKOFF`) runs
# it again after an exponential, jittered back-off through the timer heap; once its
# retries are used up, or its workers went away --job-retries times, it becomes a dead
# letter instead of vanishing. Dead letters are one allocation each, in a list by age
# bounded by count and bytes (the oldest go first); with a store their rows are handed
# to the store thread (d_pending, d_del) so that they survive a restart. An operator
# re-queues one as a new job (same unique key, new handle) or discards it.

cdef inline uint64_t rng_next(Engine *e) noexcept nogil:
    # xorshift64*: jitter only, never security.
    cdef uint64_t x = e.rng
    if x == 0:
        x = <uint64_t>e.now_us | 1
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    e.rng = x
    return x * 2685821657736338717ULL


cdef int64_t retry_delay_ms(Engine *e, Function *f, uint32_t k) noexcept nogil:
    """The back-off before retry k (1 = the first): base * 2^(k-1), capped by
    --bg-retry-backoff-max, less a random part of up to a quarter, so that jobs that
    failed together (a database down) do not all come back in the same millisecond."""
    cdef int64_t d = f.bg_backoff_ms if f.retry_set else e.bg_backoff_ms
    cdef int64_t cap = e.bg_backoff_max_ms
    cdef uint32_t i = 1
    if d <= 0:
        return 0
    while i < k and (cap <= 0 or d < cap) and d < (<int64_t>1 << 40):
        d *= 2
        i += 1
    if cap > 0 and d > cap:
        d = cap
    return d - <int64_t>(rng_next(e) % <uint64_t>(d // 4 + 1))


cdef int job_try_retry(Engine *e, Job *j) noexcept nogil:
    """After a failed run of background job j (its clients told): run it again after its
    back-off and return 1, or return 0 when its retries are used up."""
    cdef Function *f = j.func
    cdef uint32_t limit = f.bg_retries if f.retry_set else e.bg_retries
    cdef int64_t delay
    cdef Attach *a
    cdef Attach *an
    if not j.background or j.fails >= limit:
        return 0
    j.fails += 1
    delay = retry_delay_ms(e, f, j.fails)
    # Foreground clients that joined it through its unique key got their WORK_FAIL.
    a = j.clients
    while a != NULL:
        an = a.j_next
        attached_unlink(&a.conn.attached, a)
        attach_put(e, a)
        a = an
    j.clients = NULL
    job_unlink_state(e, j)
    j.num = 0
    j.den = 0
    f.n_bg_retries += 1
    if delay > 0:
        j.state = JOB_FUTURE
        f.future += 1
        j.t.timer_ms = e.now_ms + delay
        if heap_push(e, j) == 0:
            return 1
        f.future -= 1
    job_make_runnable(e, j, 0)
    return 1


cdef void dead_add(Engine *e, Job *j, uint8_t reason, const char *err,
                   size_t en) noexcept nogil:
    """Keep background job j (about to be freed) as a dead letter."""
    cdef Function *f = j.func
    cdef Dead *d
    cdef size_t size
    cdef char h[MAX_HANDLE]
    cdef uint32_t hn
    if not j.background:
        return
    f.n_dead += 1
    if e.dead_max == 0:
        return
    if en > DEAD_ERROR_MAX:
        en = DEAD_ERROR_MAX
    size = sizeof(Dead) + f.name_len + j.unique_len + j.data_len + en + 4
    d = NULL
    if size <= e.dead_max_bytes:
        d = <Dead *>fg_malloc(e, size)
    if d == NULL:
        e.d_added += 1
        e.d_evicted += 1
        return
    hn = job_handle(e, j, h)
    dead_fill(e, d, e.next_dead_id, h, hn, f.name, f.name_len, job_unique(j),
              j.unique_len, job_data(j), j.data_len, err, en)
    e.next_dead_id += 1
    d.priority = j.priority
    d.reason = reason
    # The run that just failed counts too; a worker loss is counted in j.retries.
    d.attempts = j.fails + j.retries + (0 if reason == DEAD_LOST else 1)
    d.submitted_us = e.now_wall_us - (e.now_us - j.created_us)
    d.failed_us = e.now_wall_us
    d.size = size
    dead_link(e, d)
    if e.durable:
        d.pending = 1
        if e.d_pending_tail != NULL:
            e.d_pending_tail.p_next = d
        else:
            e.d_pending = d
        e.d_pending_tail = d
    dead_trim(e)


cdef void dead_fill(Engine *e, Dead *d, uint64_t id, const char *h, size_t hn,
                    const char *fname, size_t fn, const char *u, size_t un,
                    const char *data, size_t dn, const char *err, size_t en) noexcept nogil:
    cdef char *p = <char *>(d + 1)
    memset(d, 0, sizeof(Dead))
    d.id = id
    if hn >= MAX_HANDLE:
        hn = MAX_HANDLE - 1
    memcpy(d.handle, h, hn)
    d.handle_len = <uint32_t>hn
    d.func = p
    memcpy(p, fname, fn)
    d.func_len = <uint32_t>fn
    p += fn + 1
    d.unique = p
    if un:
        memcpy(p, u, un)
    d.unique_len = <uint32_t>un
    p += un + 1
    d.data = p
    if dn:
        memcpy(p, data, dn)
    d.data_len = dn
    p += dn + 1
    d.error = p
    if en:
        memcpy(p, err, en)
    d.error_len = <uint32_t>en


cdef inline void dead_link(Engine *e, Dead *d) noexcept nogil:
    d.newer = NULL
    d.older = e.d_newest
    if e.d_newest != NULL:
        e.d_newest.newer = d
    else:
        e.d_oldest = d
    e.d_newest = d
    e.dcount += 1
    e.dbytes += d.size
    e.d_added += 1


cdef void dead_trim(Engine *e) noexcept nogil:
    while e.d_oldest != NULL and (e.dcount > e.dead_max or e.dbytes > e.dead_max_bytes):
        e.d_evicted += 1
        dead_drop(e, e.d_oldest)


cdef void dead_drop(Engine *e, Dead *d) noexcept nogil:
    """Forget dead letter d (discarded, re-queued or evicted) and its stored row."""
    cdef int64_t *grown
    cdef uint64_t cap
    if d.newer != NULL:
        d.newer.older = d.older
    else:
        e.d_newest = d.older
    if d.older != NULL:
        d.older.newer = d.newer
    else:
        e.d_oldest = d.newer
    e.dcount -= 1
    e.dbytes -= d.size
    if d.pending:
        # Its row is not written yet: the store hand-over skips and frees it.
        d.gone = 1
        return
    if e.durable:
        if e.d_del_len == e.d_del_cap:
            cap = e.d_del_cap * 2 if e.d_del_cap else 64
            grown = <int64_t *>fg_realloc(e, e.d_del, cap * sizeof(int64_t))
            if grown != NULL:
                e.d_del = grown
                e.d_del_cap = cap
        if e.d_del_len < e.d_del_cap:
            e.d_del[e.d_del_len] = <int64_t>d.id
            e.d_del_len += 1
    fg_free(e, d)


cdef Dead *dead_by_handle(Engine *e, const char *h, size_t n) noexcept nogil:
    cdef Dead *d = e.d_newest
    while d != NULL:
        if eq(d.handle, d.handle_len, h, n):
            return d
        d = d.older
    return NULL


cdef int engine_dead_requeue(Engine *e, Dead *d, char *handle_out,
                             uint32_t *handle_len) noexcept nogil:
    """Queue dead letter d again as a new background job (its unique key, priority and
    payload; a new handle, written to handle_out) and forget it. 0 queued; 1 it
    coalesced with a job of the same unique key already in memory (d is forgotten too);
    -1 the function's queue is full; E_REFUSED its function name or unique key is over
    this server's limits (d is kept); E_NOMEM. With a store the job is written first,
    as a submitted one (the store thread's next commit)."""
    cdef Packet pkt
    cdef Job *j
    cdef Function *f
    cdef uint8_t durable = e.durable
    cdef int prio = d.priority if d.priority < NPRIO else PRIO_NORMAL
    cdef int rc
    handle_len[0] = 0
    f = func_get(e, d.func, d.func_len, 1)
    if f == NULL:
        return E_NOMEM
    if f.max_queue[prio] and f.total >= f.max_queue[prio]:
        return -1
    memset(&pkt, 0, sizeof(Packet))
    pkt.type = CMD_SUBMIT_JOB_BG if prio == PRIO_NORMAL else (
        CMD_SUBMIT_JOB_HIGH_BG if prio == PRIO_HIGH else CMD_SUBMIT_JOB_LOW_BG)
    pkt.nfields = 3
    pkt.f[0] = d.func
    pkt.flen[0] = d.func_len
    pkt.f[1] = d.unique
    pkt.flen[1] = d.unique_len
    pkt.f[2] = d.data
    pkt.flen[2] = d.data_len
    e.durable = 0
    e.replay_when = 0
    rc = handle_submit(e, NULL, &pkt)
    e.durable = durable
    j = e.last_job
    if rc == E_REFUSED:
        return E_REFUSED
    if rc != E_OK:
        return E_NOMEM
    f.n_requeued += 1
    if j == NULL:
        dead_drop(e, d)
        return 1
    handle_len[0] = job_handle(e, j, handle_out)
    if durable:
        # Acknowledged to nobody, but stored before it runs, like a submitted job.
        job_unlink_state(e, j)
        j.state = JOB_STORING
        j.o.store_next = NULL
        if e.store_add_tail != NULL:
            e.store_add_tail.o.store_next = j
        else:
            e.store_add = j
        e.store_add_tail = j
    dead_drop(e, d)
    return 0


cdef Dead *engine_dead_restore(Engine *e, uint64_t id, const char *handle, size_t hn,
                               const char *func, size_t fn, const char *uniq, size_t un,
                               const char *data, size_t dn, const char *err, size_t en,
                               int prio, int reason, uint32_t attempts,
                               int64_t submitted_us, int64_t failed_us) noexcept nogil:
    """A dead letter read back from the store at start-up (its row exists already).
    Handles continue after the highest one restored, so a new job never takes the
    handle of a dead letter."""
    cdef Dead *d
    cdef size_t size
    cdef size_t i = hn
    cdef uint64_t num = 0, mul = 1
    if en > DEAD_ERROR_MAX:
        en = DEAD_ERROR_MAX
    size = sizeof(Dead) + fn + un + dn + en + 4
    d = <Dead *>fg_malloc(e, size)
    if d == NULL:
        return NULL
    dead_fill(e, d, id, handle, hn, func, fn, uniq, un, data, dn, err, en)
    d.priority = <uint8_t>(prio if 0 <= prio < NPRIO else PRIO_NORMAL)
    d.reason = <uint8_t>reason
    d.attempts = attempts
    d.submitted_us = submitted_us
    d.failed_us = failed_us
    d.size = size
    dead_link(e, d)
    e.d_added -= 1       # not a new dead letter
    if id >= e.next_dead_id:
        e.next_dead_id = id + 1
    while i > 0 and 48 <= handle[i - 1] <= 57 and mul < 10000000000000000000ULL:
        num += <uint64_t>(handle[i - 1] - 48) * mul
        mul *= 10
        i -= 1
    if i < hn and i > 0 and handle[i - 1] == 58 and num >= e.next_handle:   # b':'
        e.next_handle = num + 1
    dead_trim(e)
    return d


cdef void dead_free_all(Engine *e) noexcept nogil:
    """(engine_free) Every dead letter; pending ones are on the store's list only once."""
    cdef Dead *d = e.d_oldest
    cdef Dead *dn
    while d != NULL:
        dn = d.newer
        if not d.pending:
            fg_free(e, d)
        d = dn
    d = e.d_pending
    while d != NULL:
        dn = d.p_next
        fg_free(e, d)
        d = dn
    fg_free(e, e.d_del)
