# Included by engine.pyx. The client side: SUBMIT_JOB in all its forms (priority,
# background, epoch, sched, reduce), unique-key coalescing, the queue and memory bounds,
# the hand-off of durable background jobs to the store and their replay at start-up,
# and the GET_STATUS replies.

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


cdef int submit_refuse(Engine *e, Conn *c, const char *code, const char *text) noexcept nogil:
    # Submissions without a connection (replay, takeover, requeue) have nobody to
    # answer: engine_error would write to a NULL connection.
    if c == NULL:
        return E_REFUSED
    return engine_error(e, c, code, text)


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
    cdef char hbuf[MAX_HANDLE]
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
            return submit_refuse(e, c, b"INVALID_ARGUMENT",
                                 b"Schedule never matches a time in the next five years")
    elif t == CMD_SUBMIT_REDUCE_JOB or t == CMD_SUBMIT_REDUCE_JOB_BACKGROUND:
        data_field = 4
        reducer = pkt.f[2]
        reducer_len = pkt.flen[2]
    e.last_job = NULL
    if c == NULL:
        when = e.replay_when       # replaying a stored row: no submitter
    if pkt.flen[1] > e.max_unique or reducer_len > e.max_unique:
        return submit_refuse(e, c, b"ARGUMENT_TOO_LARGE", b"Unique value too large")
    if pkt.flen[0] > e.max_function_name:
        return submit_refuse(e, c, b"ARGUMENT_TOO_LARGE", b"Function name too large")
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
                a = attach_new(e)
                if a == NULL:
                    return E_NOMEM
                attach_client(j, c, a)
            if j.state == JOB_STORING:
                return add_ack(e, j, c)
            return out1(e, c, CMD_JOB_CREATED, hbuf, job_handle(e, j, hbuf))
    # Stored jobs replayed or taken over (c NULL) were acknowledged once already: they
    # are taken back over the limit, as over the memory budget below. A dead-letter
    # requeue checks the limit itself first.
    if c != NULL and f.max_queue[prio] and f.total >= f.max_queue[prio]:
        return submit_refuse(e, c, b"QUEUE_ERROR", b"Job queue is full")
    n = sizeof(Job) + pkt.flen[1] + reducer_len + pkt.flen[data_field]
    if c != NULL and e.max_queued_bytes and e.queued_bytes + n > e.max_queued_bytes:
        # Refuse rather than grow into swap; stored jobs replayed at start-up (c NULL)
        # are always taken back.
        e.n_budget_refused += 1
        return submit_refuse(e, c, b"QUEUE_ERROR", b"Job memory budget exhausted")
    if e.jobs >= e.hmask + 1 and grow_jtab(e, &e.htab, &e.hmask, 0) != 0:
        return E_NOMEM
    if ukind and e.ujobs >= e.umask + 1 and grow_jtab(e, &e.utab, &e.umask, 1) != 0:
        return E_NOMEM
    j = <Job *>fg_malloc(e, n)
    if j == NULL:
        return E_NOMEM
    memset(j, 0, sizeof(Job))
    j.unique_len = <uint16_t>pkt.flen[1]
    j.reducer_len = <uint16_t>reducer_len
    j.data_len = <uint32_t>pkt.flen[data_field]
    if pkt.flen[1]:
        memcpy(job_unique(j), pkt.f[1], pkt.flen[1])
    if reducer_len:
        memcpy(job_reducer(j), reducer, reducer_len)
    if pkt.flen[data_field]:
        memcpy(job_data(j), pkt.f[data_field], pkt.flen[data_field])
    j.func = f
    j.priority = prio
    j.background = bg
    j.ukind = ukind
    j.heap_idx = -1
    j.created_us = e.now_us
    j.hnum = e.next_handle
    e.next_handle += 1
    j.h_next = e.htab[j.hnum & e.hmask]
    e.htab[j.hnum & e.hmask] = j
    e.jobs += 1
    if e.jobs > e.jobs_peak:
        e.jobs_peak = e.jobs
    if ukind:
        j.uhash = <uint32_t>unique_key(job_unique(j), j.unique_len, job_data(j),
                                       j.data_len, ukind)
        j.u_next = e.utab[j.uhash & e.umask]
        e.utab[j.uhash & e.umask] = j
        e.ujobs += 1
    f.total += 1
    f.n_submitted += 1
    e.queued_bytes += n
    if not bg:
        a = attach_new(e)
        if a == NULL:
            job_free(e, j)
            return E_NOMEM
        attach_client(j, c, a)
    j.t.when_s = when
    e.last_job = j
    if c == NULL:
        job_schedule(e, j)
        return E_OK
    if bg and e.durable:
        # Acknowledged only once the store thread has committed its row.
        j.state = JOB_STORING
        j.o.store_next = NULL
        if e.store_add_tail != NULL:
            e.store_add_tail.o.store_next = j
        else:
            e.store_add = j
        e.store_add_tail = j
        return add_ack(e, j, c)
    if out1(e, c, CMD_JOB_CREATED, hbuf, job_handle(e, j, hbuf)) != 0:
        return E_NOMEM
    job_schedule(e, j)
    return E_OK


cdef int add_ack(Engine *e, Job *j, Conn *c) noexcept nogil:
    cdef Ack *k = ack_new(e)
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
    cdef int64_t when = j.t.when_s
    if when > e.now_wall_s:
        j.state = JOB_FUTURE
        f.future += 1
        j.t.timer_ms = e.now_ms + (when - e.now_wall_s) * 1000
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
                        int64_t row_id, int *rc) noexcept nogil:
    """Recreate a stored background job at start-up (no submitter to answer). NULL
    with rc E_OK: it coalesced with a job in memory; rc E_REFUSED: its function name
    or unique key is over this server's limits; E_NOMEM."""
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
    rc[0] = handle_submit(e, NULL, &pkt)
    e.replay_when = 0
    e.durable = durable
    j = e.last_job if rc[0] == E_OK else NULL
    if j != NULL:
        j.store_id = row_id
        j.persisted = 1
    return j


cdef inline void attach_client(Job *j, Conn *c, Attach *a) noexcept nogil:
    a.job = j
    a.conn = c
    clients_link(&j.clients, a)
    attached_link(&c.attached, a)


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
    return enc_status(encode_packet(&c.outbuf, 1, t, n, fs, ls))


cdef int handle_status_unique(Engine *e, Conn *c, Packet *pkt) noexcept nogil:
    cdef uint64_t hv
    cdef Job *j
    if pkt.flen[0] > MAX_UNIQUE:
        return engine_error(e, c, b"ARGUMENT_TOO_LARGE", b"Unique value too large")
    hv = hash_bytes(pkt.f[0], pkt.flen[0], 0)
    j = e.utab[hv & e.umask]
    while j != NULL:
        if (j.ukind == 1 and j.uhash == <uint32_t>hv
                and eq(job_unique(j), j.unique_len, pkt.f[0], pkt.flen[0])):
            break
        j = j.u_next
    return status_reply(e, c, CMD_STATUS_RES_UNIQUE, pkt.f[0], pkt.flen[0], j)
