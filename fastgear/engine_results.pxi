# Included by engine.pyx. Kept results (--keep-results): a finished job's outcome is
# copied into one allocation, found by handle or by unique key through two hash chains,
# and dropped oldest first when its time is up or the byte bound is passed.

cdef void results_configure(Engine *e, int64_t keep_us, uint64_t max_bytes) noexcept nogil:
    e.keep_max_bytes = max_bytes
    if keep_us > 0 and e.rtab == NULL:
        e.rmask = 1023
        e.rtab = <Result **>fg_calloc(e, e.rmask + 1, sizeof(Result *))
        e.rutab = <Result **>fg_calloc(e, e.rmask + 1, sizeof(Result *))
        if e.rtab == NULL or e.rutab == NULL:
            fg_free(e, e.rtab)
            fg_free(e, e.rutab)
            e.rtab = NULL
            e.rutab = NULL
            keep_us = 0
    e.keep_us = keep_us if keep_us > 0 else 0
    results_expire(e)


cdef int grow_rtab(Engine *e) noexcept nogil:
    cdef uint64_t n = (e.rmask + 1) * 2
    cdef Result **t = <Result **>fg_calloc(e, n, sizeof(Result *))
    cdef Result **u = <Result **>fg_calloc(e, n, sizeof(Result *))
    cdef Result *r
    if t == NULL or u == NULL:
        fg_free(e, t)
        fg_free(e, u)
        return -1
    fg_free(e, e.rtab)
    fg_free(e, e.rutab)
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
    rbyhandle_link(&e.rtab[r.handle_hash & e.rmask], r)
    r.u_prev = NULL
    r.u_next = NULL
    if r.unique_len:
        # Jobs without a unique key are never looked up by it; chaining them would make
        # one chain of every such result.
        rbyunique_link(&e.rutab[r.unique_hash & e.rmask], r)


cdef void result_drop_oldest(Engine *e) noexcept nogil:
    cdef Result *r = e.r_oldest
    rbyhandle_unlink(&e.rtab[r.handle_hash & e.rmask], r)
    if r.unique_len:
        rbyunique_unlink(&e.rutab[r.unique_hash & e.rmask], r)
    e.r_oldest = r.newer
    if e.r_oldest == NULL:
        e.r_newest = NULL
    else:
        e.r_oldest.older = NULL
    e.rcount -= 1
    e.rbytes -= r.size
    fg_free(e, r)


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
    cdef size_t wn = 0, ip_n = 0, size
    cdef size_t pn = j.data_len if j.data_len < RESULT_PAYLOAD_MAX else RESULT_PAYLOAD_MAX
    cdef Result *r
    cdef char *p
    if w != NULL:
        ip_n = strlen(w.ip)
        wn = w.client_id_len
        if wn == 1 and w.client_id[0] == b'-':
            wn = 0
    # The worker is named by its client id, or by its address when it set none.
    size = (sizeof(Result) + f.name_len + j.unique_len + (wn if wn else ip_n) + ip_n
            + pn + dn + 6)
    if size > e.keep_max_bytes:
        e.r_evicted += 1
        return
    if e.rcount >= e.rmask + 1 and grow_rtab(e) != 0:
        return
    r = <Result *>fg_malloc(e, size)
    if r == NULL:
        return
    p = <char *>(r + 1)
    r.handle_len = job_handle(e, j, r.handle)
    r.handle_hash = hash_bytes(r.handle, r.handle_len, 0)
    r.func = p
    memcpy(p, f.name, f.name_len)
    r.func_len = f.name_len
    p += f.name_len + 1
    r.unique = p
    memcpy(p, job_unique(j), j.unique_len)
    r.unique_len = j.unique_len
    r.unique_hash = hash_bytes(job_unique(j), j.unique_len, 0)
    p += j.unique_len + 1
    r.worker = p
    if wn:
        memcpy(p, w.client_id, wn)
    elif ip_n:
        memcpy(p, w.ip, ip_n)
        wn = ip_n
    r.worker_len = <uint32_t>wn
    p += wn + 1
    r.peer = p
    if ip_n:
        memcpy(p, w.ip, ip_n)
    r.peer_len = <uint32_t>ip_n
    p += ip_n + 1
    r.payload = p
    if pn:
        memcpy(p, job_data(j), pn)
    r.payload_len = <uint32_t>pn
    r.payload_size = j.data_len
    p += pn + 1
    r.data = p
    if dn:
        memcpy(p, d, dn)
    r.data_len = dn
    r.outcome = outcome
    r.background = j.background
    r.priority = j.priority
    r.attempt = j.fails + j.retries + 1
    r.num = j.num
    r.den = j.den
    r.n_data = j.n_data
    r.n_warning = j.n_warning
    r.submitted_us = e.now_wall_us - (e.now_us - j.created_us)
    r.started_us = (e.now_wall_us - (e.now_us - j.s.started_us)) if j.s.started_us else 0
    r.finished_us = e.now_wall_us
    r.expires_us = e.now_us + e.keep_us
    r.size = size
    r.newer = NULL
    r.older = e.r_newest
    r.id = e.r_next_id
    e.r_next_id += 1
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
