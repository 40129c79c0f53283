# Included by engine.pyx. The worker side: CAN_DO registrations (indexed by function
# once a worker has many), which job a GRAB gets (the highest priority with work, the
# functions with work taking turns), the WORK_* packets relayed to the job's clients,
# and PRE_SLEEP.

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
    a = ability_new(e)
    if a == NULL:
        return E_NOMEM
    a.conn = c
    a.func = f
    a.timeout_ms = timeout_ms
    if atab_insert(e, c, a) != 0:
        ability_put(e, a)
        return E_NOMEM
    abilities_link(&c.abilities, a)
    if timeout_ms > 0:
        c.ntimeouts += 1
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


cdef inline int can_do(Conn *c, Function *f) noexcept nogil:
    """Whether c (with a function index) has a registration of f: one bit, so that GRAB
    and wake-ups do not read registration records, whatever their number."""
    return (f.fid < <uint64_t>c.fbits_words * 64
            and (c.fbits[f.fid >> 6] >> (f.fid & 63)) & 1)


cdef int fbits_set(Engine *e, Conn *c, Function *f) noexcept nogil:
    cdef uint32_t words = f.fid // 64 + 1, n
    cdef uint64_t *grown
    if words > c.fbits_words:
        n = c.fbits_words * 2 if c.fbits_words else 4
        if n < words:
            n = words
        grown = <uint64_t *>fg_realloc(e, c.fbits, n * sizeof(uint64_t))
        if grown == NULL:
            return -1
        memset(grown + c.fbits_words, 0, (n - c.fbits_words) * sizeof(uint64_t))
        c.fbits = grown
        c.fbits_words = n
    c.fbits[f.fid >> 6] |= (<uint64_t>1) << (f.fid & 63)
    return 0


cdef int atab_insert(Engine *e, Conn *c, Ability *a) noexcept nogil:
    """Index a registration by function once a worker has many, so that "can this worker
    do f" costs O(1) (GRAB through the engine's ready lists, wake-ups, CANT_DO): a bit
    per function id, and a table function -> registration."""
    cdef Ability **t
    cdef Ability *x
    cdef uint32_t n, i
    cdef int created = c.atab == NULL
    c.nabil += 1
    if c.atab == NULL and c.nabil <= SMALL_ABILITIES:
        return 0
    if created:
        x = c.abilities
        while x != NULL:
            if fbits_set(e, c, x.func) != 0:
                fg_free(e, c.fbits)
                c.fbits = NULL
                c.fbits_words = 0
                c.nabil -= 1
                return -1
            x = x.c_next
    if fbits_set(e, c, a.func) != 0:
        if created:
            fg_free(e, c.fbits)
            c.fbits = NULL
            c.fbits_words = 0
        c.nabil -= 1
        return -1
    if c.atab == NULL or c.nabil > c.amask + 1:
        n = (c.amask + 1) * 2 if c.atab != NULL else 4 * SMALL_ABILITIES
        t = <Ability **>fg_calloc(e, n, sizeof(Ability *))
        if t == NULL:
            if created:
                fg_free(e, c.fbits)
                c.fbits = NULL
                c.fbits_words = 0
            elif ability_of(c, a.func) == NULL:
                c.fbits[a.func.fid >> 6] &= ~((<uint64_t>1) << (a.func.fid & 63))
            c.nabil -= 1
            return -1
        fg_free(e, c.atab)
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
    abilities_unlink(&c.abilities, a)
    if c.atab != NULL:
        pp = &c.atab[ptr_hash(f) & c.amask]
        while pp[0] != a:
            pp = &pp[0].h_next
        pp[0] = a.h_next
        c_assert(f.wide_workers > 0)
        f.wide_workers -= 1
    c.nabil -= 1
    if a.timeout_ms > 0:
        c.ntimeouts -= 1
    if c.nabil == 0:
        fg_free(e, c.atab)
        c.atab = NULL
        c.amask = 0
        fg_free(e, c.fbits)
        c.fbits = NULL
        c.fbits_words = 0
    elif c.atab != NULL and ability_of(c, f) == NULL:
        c.fbits[f.fid >> 6] &= ~((<uint64_t>1) << (f.fid & 63))
    if a.in_sleep:
        sleep_unlink(f, a)
    if c.woke_for == f:
        c.woke_for = NULL
    f.workers -= 1
    if f.workers == 0:
        for p in range(NPRIO):
            ready_remove(e, f, p)
    ability_put(e, a)


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


cdef Function *find_work(Engine *e, Conn *c, int *prio) noexcept nogil:
    """Which function of c a GRAB serves: the highest priority with work, then the
    function whose turn it is. A worker with few registrations scans them; one with many
    walks the engine's list of functions that have work and a worker, testing one bit
    each (can_do), so a GRAB costs the same with 1 or thousands of registrations. The
    walk stops after as many functions as the worker has registrations (then its own
    list is the shorter one to scan)."""
    cdef Ability *a
    cdef Function *f
    cdef uint32_t walked
    cdef int p
    for p in range(NPRIO):
        if e.ready_head[p] == NULL:
            continue
        if c.atab == NULL:
            a = scan_abilities(c, p)
            f = a.func if a != NULL else NULL
        else:
            walked = 0
            f = e.ready_head[p]
            while f != NULL and walked < c.nabil:
                c_assert(f.in_ready[p] and f.queued[p] > 0 and f.workers > 0)
                if can_do(c, f):
                    break
                f = f.r_next[p]
                walked += 1
            if f != NULL and walked >= c.nabil:
                a = scan_abilities(c, p)
                f = a.func if a != NULL else NULL
        if f != NULL:
            prio[0] = p
            return f
    return NULL


cdef inline int64_t grab_timeout(Conn *c, Function *f) noexcept nogil:
    """The CAN_DO_TIMEOUT of c's registration of f (its newest), 0 for none; workers
    without timeouts (the usual case) read no registration at all."""
    cdef Ability *a
    if c.ntimeouts == 0:
        return 0
    a = ability_of(c, f)
    return a.timeout_ms if a != NULL else 0


cdef int handle_grab(Engine *e, Conn *c, uint32_t t) noexcept nogil:
    cdef Function *f
    cdef Job *j
    cdef int p = 0
    cdef int64_t timeout_ms
    cdef const char *fs[5]
    cdef size_t ls[5]
    cdef char h[MAX_HANDLE]
    c.sleeping = 0
    c.noop_sent = 0
    woken_remove(e, c)
    f = find_work(e, c, &p)
    if f == NULL:
        return out0(e, c, CMD_NO_JOB)
    j = f.q_head[p]
    q_remove(e, f, j)
    if f.queued[p]:
        # Functions with work take turns: f goes behind the others at this priority.
        ready_remove(e, f, p)
        ready_add(e, f, p)
    j.state = JOB_RUNNING
    j.o.worker = c
    hist_add(j.func.wait_hist, &j.func.wait_sum_us, e.now_us - j.s.queued_us)
    j.s.started_us = e.now_us
    j.func.running += 1
    held_push(c, j)
    timeout_ms = grab_timeout(c, f)
    if timeout_ms > 0:
        j.t.timer_ms = e.now_ms + timeout_ms
        heap_push(e, j)
    fs[0] = h
    ls[0] = job_handle(e, j, h)
    fs[1] = j.func.name
    ls[1] = j.func.name_len
    if t == CMD_GRAB_JOB:
        fs[2] = job_data(j)
        ls[2] = j.data_len
        conn_dirty(e, c)
        return enc_status(encode_packet(&c.outbuf, 1, CMD_JOB_ASSIGN, 3, fs, ls))
    fs[2] = job_unique(j)
    ls[2] = j.unique_len
    if t == CMD_GRAB_JOB_ALL and j.reducer_len:
        fs[3] = job_reducer(j)
        ls[3] = j.reducer_len
        fs[4] = job_data(j)
        ls[4] = j.data_len
        conn_dirty(e, c)
        return enc_status(encode_packet(&c.outbuf, 1, CMD_JOB_ASSIGN_ALL, 5, fs, ls))
    fs[3] = job_data(j)
    ls[3] = j.data_len
    conn_dirty(e, c)
    return enc_status(encode_packet(&c.outbuf, 1, CMD_JOB_ASSIGN_UNIQ, 4, fs, ls))


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
    cdef char h[MAX_HANDLE]
    cdef uint32_t hn
    if t == CMD_WORK_FAIL and pkt.flen[0] >= MAX_HANDLE:
        return engine_error(e, c, b"ARGUMENT_TOO_LARGE",
                            b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small "
                            b"from snprintf")
    j = job_by_handle(e, pkt.f[0], pkt.flen[0])
    if j == NULL or j.state != JOB_RUNNING or j.o.worker != c:
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
        if t == CMD_WORK_DATA:
            j.n_data += 1
        else:
            j.n_warning += 1
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
    hist_add(j.func.run_hist, &j.func.run_sum_us, e.now_us - j.s.started_us)
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
        if j.background:
            if job_try_retry(e, j):
                return E_OK
            dead_add(e, j, DEAD_FAIL, NULL, 0)
    else:
        if e.keep_us:
            keep_result(e, j, OUT_EXCEPTION, pkt.f[1], pkt.flen[1], c)
        hn = job_handle(e, j, h)
        a = j.clients
        while a != NULL:
            if a.conn.exceptions:
                out2(e, a.conn, CMD_WORK_EXCEPTION, h, hn, pkt.f[1], pkt.flen[1])
            else:
                # gearmand appends a stray NUL here; a plain WORK_FAIL is what clients
                # without the exceptions option expect.
                out1(e, a.conn, CMD_WORK_FAIL, h, hn)
            a = a.j_next
        j.func.n_exception += 1
        memcpy(c.last_exception, h, hn)
        c.last_exception_len = hn
        if j.background:
            if job_try_retry(e, j):
                return E_OK
            dead_add(e, j, DEAD_EXCEPTION, pkt.f[1], pkt.flen[1])
    job_free(e, j)
    return E_OK


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


cdef int handle_pre_sleep(Engine *e, Conn *c) noexcept nogil:
    cdef Ability *a
    cdef Function *f
    cdef int p = 0
    c.sleeping = 1
    woken_remove(e, c)
    # As gearmand: work already waiting is answered with a NOOP at once, even if this
    # worker was woken before and has not grabbed since.
    f = find_work(e, c, &p)
    if f != NULL:
        c.noop_sent = 1
        e.n_noops += 1
        woken_add(e, c, f)
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
