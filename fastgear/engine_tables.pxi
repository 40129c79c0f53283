# Included by engine.pyx, so that these stay direct C calls within one extension. The
# engine's lookup structures: the function table by name and the job tables by handle
# number and by (function, unique key), each a chained hash table with a power-of-two
# size that doubles when full (handle numbers are consecutive, so the number itself
# spreads them over the buckets); and the timer heap, which holds epoch jobs until
# their time, CAN_DO_TIMEOUT deadlines and the wake-up check.

cdef int grow_ftab(Engine *e) noexcept nogil:
    cdef uint64_t n = (e.fmask + 1) * 2, i
    cdef Function **t = <Function **>fg_calloc(e, n, sizeof(Function *))
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
    fg_free(e, e.ftab)
    e.ftab = t
    e.fmask = n - 1
    return 0


cdef int grow_jtab(Engine *e, Job ***tab, uint64_t *mask, int by_unique) noexcept nogil:
    cdef uint64_t n = (mask[0] + 1) * 2, i, h
    cdef Job **t = <Job **>fg_calloc(e, n, sizeof(Job *))
    cdef Job *j
    cdef Job *nx
    if t == NULL:
        return -1
    for i in range(mask[0] + 1):
        j = tab[0][i]
        while j != NULL:
            if by_unique:
                nx = j.u_next
                h = j.uhash & (n - 1)
                j.u_next = t[h]
            else:
                nx = j.h_next
                h = j.hnum & (n - 1)
                j.h_next = t[h]
            t[h] = j
            j = nx
    fg_free(e, tab[0])
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
    f = <Function *>fg_calloc(e, 1, sizeof(Function) + n + 1)
    if f == NULL:
        return NULL
    f.name = <char *>(f + 1)
    if n:
        memcpy(f.name, name, n)
    f.name_len = <uint32_t>n
    f.hash = h
    if e.fid_free_len:
        e.fid_free_len -= 1
        f.fid = e.fid_free[e.fid_free_len]
    else:
        f.fid = e.fid_next
        e.fid_next += 1
    f.h_next = e.ftab[h & e.fmask]
    e.ftab[h & e.fmask] = f
    funcs_push_tail(&e.f_first, &e.f_last, f)
    e.fcount += 1
    return f


cdef void func_remove(Engine *e, Function *f) noexcept nogil:
    cdef uint32_t *grown
    cdef Function **pp = &e.ftab[f.hash & e.fmask]
    while pp[0] != f:
        pp = &pp[0].h_next
    pp[0] = f.h_next
    funcs_unlink(&e.f_first, &e.f_last, f)
    e.fcount -= 1
    # No worker can do f (it has none), so no bitmap holds its id: it can be given to
    # the next new function. Without room the id is not reused (harmless).
    if e.fid_free_len == e.fid_free_cap:
        grown = <uint32_t *>fg_realloc(e, e.fid_free, sizeof(uint32_t) *
                                       (e.fid_free_cap * 2 if e.fid_free_cap else 64))
        if grown != NULL:
            e.fid_free = grown
            e.fid_free_cap = e.fid_free_cap * 2 if e.fid_free_cap else 64
    if e.fid_free_len < e.fid_free_cap:
        e.fid_free[e.fid_free_len] = f.fid
        e.fid_free_len += 1
    fg_free(e, f)


cdef Job *job_by_handle(Engine *e, const char *h, size_t n) noexcept nogil:
    """The job whose handle is h: this engine's prefix, ':' and a number written as
    job_handle writes it (no sign, no leading zero), which is the job's hnum."""
    cdef size_t i, p = e.prefix_len
    cdef uint64_t v = 0
    cdef Job *j
    if (n <= p + 1 or n > p + 1 + 19 or h[p] != 58 or memcmp(h, e.prefix, p) != 0
            or (h[p + 1] == 48 and n > p + 2)):
        return NULL
    for i in range(p + 1, n):
        if h[i] < 48 or h[i] > 57:
            return NULL
        v = v * 10 + <uint64_t>(h[i] - 48)
    j = e.htab[v & e.hmask]
    while j != NULL:
        if j.hnum == v:
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
        if j.uhash == <uint32_t>hv and j.func == f and j.ukind == ukind:
            if ukind == 1 and eq(job_unique(j), j.unique_len, u, un):
                return j
            if ukind == 2 and eq(job_data(j), j.data_len, d, dn):
                return j
        j = j.u_next
    return NULL


# ---- timer heap (epoch jobs waiting for their time; CAN_DO_TIMEOUT deadlines) ----------

cdef inline void heap_set(Engine *e, uint64_t i, Job *j) noexcept nogil:
    e.heap[i] = j
    j.heap_idx = <int32_t>i


cdef void heap_up(Engine *e, uint64_t i) noexcept nogil:
    cdef Job *j = e.heap[i]
    cdef uint64_t p
    while i > 0:
        p = (i - 1) // 2
        if e.heap[p].t.timer_ms <= j.t.timer_ms:
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
        if c + 1 < e.heap_len and e.heap[c + 1].t.timer_ms < e.heap[c].t.timer_ms:
            c += 1
        if e.heap[c].t.timer_ms >= j.t.timer_ms:
            break
        heap_set(e, i, e.heap[c])
        i = c
    heap_set(e, i, j)


cdef int heap_push(Engine *e, Job *j) noexcept nogil:
    cdef Job **nh
    if e.heap_len == e.heap_cap:
        nh = <Job **>fg_malloc(e, sizeof(Job *) * (e.heap_cap * 2 if e.heap_cap else 64))
        if nh == NULL:
            return -1
        if e.heap_len:
            memcpy(nh, e.heap, sizeof(Job *) * e.heap_len)
        fg_free(e, e.heap)
        e.heap = nh
        e.heap_cap = e.heap_cap * 2 if e.heap_cap else 64
    e.heap[e.heap_len] = j
    j.heap_idx = <int32_t>e.heap_len
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
