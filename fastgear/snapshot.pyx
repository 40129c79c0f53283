# Read-only views of the engine for the text admin protocol and the monitoring
# listener. Under the engine lock a view copies what it needs into C memory (strings
# included), with the GIL released; Python objects are built only after the lock is
# released, so the I/O loops wait for memcpy-sized copies and never for Python. The
# large views (every job, every connection) copy in slices of about SLICE rows and
# release the lock between slices. Counters the loops keep per thread are summed here,
# on read, so counting costs the hot path nothing. Actions that change the engine are
# in control.pyx, start-up settings in coreconfig.pyx.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, realloc, free, qsort
from libc.string cimport memcpy, memcmp, memset, strlen

from fastgear.engine cimport *
from fastgear.iothreads cimport IOLoop, Shared, lock, unlock
from fastgear.includes.sys cimport sched_yield


cdef enum:
    # Rows (jobs, connections, registrations, held jobs) copied per lock hold: a few
    # hundred microseconds (a cache miss or two per job); a million jobs take about a
    # thousand slices. Measured with 4096, a slice took up to 5 ms on a busy server.
    SLICE = 1024
    # String bytes reserved per row before a slice (more when a slice needed more).
    TEXT_PER_ROW = 128


# ---- C-side copies ---------------------------------------------------------------------

cdef struct Grow:
    # A growing byte array: rows of one struct type, or the strings they point into.
    # Room is reserved with the lock released, so the copy under the lock never waits
    # for realloc to move megabytes; rows refer to strings by offset, not by pointer.
    char *p
    size_t len
    size_t cap
    int failed


cdef int grow_reserve(Grow *g, size_t n) noexcept nogil:
    """Room for n more bytes; -1 (and g.failed) when out of memory."""
    cdef size_t cap
    cdef char *np
    if g.len + n <= g.cap:
        return 0
    cap = g.cap * 2 if g.cap else 4096
    while cap < g.len + n:
        cap *= 2
    np = <char *>realloc(g.p, cap)
    if np == NULL:
        g.failed = 1
        return -1
    g.p = np
    g.cap = cap
    return 0


cdef int grow_prepare(Grow *g, size_t n) noexcept nogil:
    """(no lock) Reserve room for n more bytes and touch it, so that the copy under the
    lock does not take page faults either."""
    if grow_reserve(g, n) != 0:
        return -1
    memset(g.p + g.len, 0, n)
    return 0


cdef inline void between_slices() noexcept nogil:
    """Before taking the lock for the next slice: let a waiting loop have the lock it
    was woken for, and start the slice at the beginning of a scheduler time slice, so
    that on a busy machine the scheduler rarely preempts this thread while it holds
    the lock and the loops wait."""
    sched_yield()


cdef inline size_t grow_room(Grow *g) noexcept nogil:
    return g.cap - g.len


cdef inline void *grow_add(Grow *g, size_t n) noexcept nogil:
    """n bytes of room reserved before (grow_reserve)."""
    cdef char *p = g.p + g.len
    g.len += n
    return p


cdef struct Str:
    size_t off
    size_t len


cdef inline void put_str(Grow *text, Str *s, const char *p, size_t n) noexcept nogil:
    s.off = text.len
    s.len = n
    if n:
        memcpy(grow_add(text, n), p, n)


cdef inline bytes take(Grow *text, Str s):
    if s.len == 0:
        return b""
    return text.p[s.off:s.off + s.len]


cdef inline void grow_init(Grow *g) noexcept nogil:
    g.p = NULL
    g.len = g.cap = 0
    g.failed = 0


cdef inline void grow_free(Grow *g) noexcept nogil:
    free(g.p)
    grow_init(g)


cdef inline int fits(Grow *g, size_t n, int first) noexcept nogil:
    """(lock) Whether n more bytes fit in the room reserved before the slice. The first
    item of a slice always goes in, growing under the lock if it must (an item larger
    than a whole reserve); later ones wait for the next slice."""
    if n <= grow_room(g):
        return 1
    return first and grow_reserve(g, n) == 0


# ---- functions ---------------------------------------------------------------------------

cdef struct FuncRow:
    Str name
    uint32_t total
    uint32_t running
    uint32_t workers
    uint32_t queued[NPRIO]
    uint32_t future


def functions(IOLoop io):
    """[(name, total, running, workers, high, normal, low, future)] in creation order.
    One lock hold: a dropped function is freed, so a cursor into the creation-order list
    could not be kept across holds. The functions are counted first, so the copy is one
    malloc and a few dozen bytes per function."""
    cdef Function *f
    cdef FuncRow *row
    cdef Grow rows
    cdef Grow text
    cdef size_t i, n = 0, name_bytes = 0
    grow_init(&rows)
    grow_init(&text)
    with nogil:
        lock(io.S)
        f = io.S.eng.f_first
        while f != NULL:
            n += 1
            name_bytes += f.name_len
            f = f.all_next
        if grow_reserve(&rows, n * sizeof(FuncRow)) == 0 and \
                grow_reserve(&text, name_bytes) == 0:
            f = io.S.eng.f_first
            while f != NULL:
                row = <FuncRow *>grow_add(&rows, sizeof(FuncRow))
                put_str(&text, &row.name, f.name, f.name_len)
                row.total = f.total
                row.running = f.running
                row.workers = f.workers
                row.queued[0] = f.queued[0]
                row.queued[1] = f.queued[1]
                row.queued[2] = f.queued[2]
                row.future = f.future
                f = f.all_next
        unlock(io.S)
    try:
        if rows.failed or text.failed:
            raise MemoryError()
        out = []
        for i in range(n):
            row = &(<FuncRow *>rows.p)[i]
            out.append((take(&text, row.name), row.total, row.running, row.workers,
                        row.queued[0], row.queued[1], row.queued[2], row.future))
        return out
    finally:
        grow_free(&rows)
        grow_free(&text)


# ---- jobs --------------------------------------------------------------------------------

cdef struct JobRow:
    uint64_t seq
    uint32_t retries
    uint8_t persisted
    Str handle
    Str unique


cdef uint64_t jobs_slice(Engine *e, uint64_t mask0, uint64_t cls, Grow *rows,
                         Grow *text, size_t *want) noexcept nogil:
    """(lock) Copy the jobs of handle classes cls, cls + 1, ... while they fit in the
    room reserved and until about SLICE rows are copied; returns the next class to copy
    (mask0 + 1: done, or out of memory). A job's class is hnum & mask0, mask0
    being the handle table's mask when the listing began: the class never changes while
    the job lives, so each job is copied at most once even if the table grows between
    slices (it only doubles: class c is then in buckets c, c + mask0 + 1, ...).
    Slices are not one atomic view: a job created or freed between two slices may be
    listed or not. Nothing is kept across slices but the class number, so nothing
    freed meanwhile is ever read. `want` gets the string bytes a class did not find."""
    cdef uint64_t n = 0, b, step = mask0 + 1
    cdef size_t nrows, nbytes
    cdef int pass_
    cdef Job *j
    cdef JobRow *row
    cdef char hbuf[MAX_HANDLE]
    while cls <= mask0 and n < SLICE:
        # Pass 0 measures the class, pass 1 copies it.
        nrows = nbytes = 0
        for pass_ in range(2):
            if pass_ == 1:
                if not (fits(rows, nrows * sizeof(JobRow), n == 0)
                        and fits(text, nbytes, n == 0)):
                    want[0] = nbytes
                    return mask0 + 1 if (rows.failed or text.failed) else cls
            # The table never shrinks; were the mask smaller, the class's jobs would
            # share bucket cls & hmask with others, which the class test leaves out.
            b = cls if e.hmask >= mask0 else cls & e.hmask
            while b <= e.hmask:
                j = e.htab[b]
                while j != NULL:
                    if (j.hnum & mask0) != cls:
                        pass
                    elif pass_ == 0:
                        nrows += 1
                        nbytes += MAX_HANDLE + j.unique_len
                    else:
                        row = <JobRow *>grow_add(rows, sizeof(JobRow))
                        row.seq = j.hnum
                        row.retries = j.retries
                        # gearmand's "persisted" column is set for every background job.
                        row.persisted = 1 if (j.background or j.persisted) else 0
                        put_str(text, &row.handle, hbuf, job_handle(e, j, hbuf))
                        put_str(text, &row.unique, job_unique(j), j.unique_len)
                    j = j.h_next
                if e.hmask < mask0:
                    break
                b += step
        n += nrows
        cls += 1
    return cls


cdef int by_seq(const void *a, const void *b) noexcept nogil:
    cdef uint64_t x = (<const JobRow *>a).seq, y = (<const JobRow *>b).seq
    return -1 if x < y else (1 if x > y else 0)


def jobs(IOLoop io):
    """[(handle, retries, ignored, persisted, unique)] for every job in memory, in
    submission order; copied in slices (see jobs_slice)."""
    cdef Grow rows
    cdef Grow text
    cdef uint64_t mask0, cls = 0
    cdef size_t i, n, want = 0
    cdef JobRow *row
    grow_init(&rows)
    grow_init(&text)
    with nogil:
        lock(io.S)
        mask0 = io.S.eng.hmask
        unlock(io.S)
        while cls <= mask0:
            if grow_prepare(&rows, (SLICE + 64) * sizeof(JobRow)) != 0 or \
                    grow_prepare(&text, SLICE * TEXT_PER_ROW + want) != 0:
                break
            want = 0
            between_slices()
            lock(io.S)
            cls = jobs_slice(&io.S.eng, mask0, cls, &rows, &text, &want)
            unlock(io.S)
        n = rows.len // sizeof(JobRow)
        if not (rows.failed or text.failed):
            qsort(rows.p, n, sizeof(JobRow), by_seq)
    try:
        if rows.failed or text.failed:
            raise MemoryError()
        out = []
        for i in range(n):
            row = &(<JobRow *>rows.p)[i]
            out.append((take(&text, row.handle), row.retries, 0, row.persisted,
                        take(&text, row.unique)))
        return out
    finally:
        grow_free(&rows)
        grow_free(&text)


# ---- connections and workers -----------------------------------------------------------

cdef struct ConnRow:
    uint64_t id
    int fd
    uint8_t sleeping
    uint64_t jobs_done
    Str ip
    Str client_id
    Str cn                   # the verified TLS client certificate's CN (empty: none)
    uint8_t tls
    size_t abil_first        # its registrations: Str rows in `names`, newest first
    size_t nabil
    size_t held_first        # its jobs: HeldRow rows in `held`
    size_t nheld


cdef struct HeldRow:
    Str handle
    Str func
    double started_at        # Unix time
    uint32_t num             # its last WORK_STATUS (0/0: none yet)
    uint32_t den


cdef struct ConnCopy:
    Grow rows
    Grow names
    Grow held
    Grow text
    size_t want_names        # what a connection did not find room for, in bytes
    size_t want_held
    size_t want_text


cdef inline int copy_failed(ConnCopy *k) noexcept nogil:
    return k.rows.failed or k.names.failed or k.held.failed or k.text.failed


cdef inline size_t ip_len(Conn *c) noexcept nogil:
    cdef size_t n = 0
    while n < sizeof(c.ip) and c.ip[n] != 0:
        n += 1
    return n


cdef size_t conns_slice(Shared *S, size_t fd, int workers_only, ConnCopy *k) noexcept nogil:
    """(lock) Copy the connections from fd up (the I/O layer's table by fd) while they
    fit in the room reserved and until about SLICE rows (connections, registrations and
    held jobs) are copied; returns the next fd to look at (conns_cap: done, or out of
    memory). Only the fd is kept across slices, and every connection is looked up
    again in the table, so one closed meanwhile is never read; one accepted meanwhile
    may be listed or not. A connection's own lists are copied in one hold."""
    cdef Engine *e = &S.eng
    cdef size_t n = 0, nabil, nheld, nbytes
    cdef Conn *c
    cdef Ability *a
    cdef Job *j
    cdef ConnRow *row
    cdef HeldRow *h
    cdef int first
    cdef char hbuf[MAX_HANDLE]
    engine_clock(e)
    while fd < S.conns_cap and n < SLICE:
        c = &S.conns[fd].c if S.conns[fd] != NULL else NULL
        # Detached connections have left the engine and wait to be closed.
        if c == NULL or c.detached or (workers_only and c.abilities == NULL
                                       and c.held == NULL):
            fd += 1
            continue
        nabil = nheld = 0
        nbytes = ip_len(c) + c.client_id_len + strlen(S.conns[fd].cn)
        a = c.abilities
        while a != NULL:
            nabil += 1
            nbytes += a.func.name_len
            a = a.c_next
        j = c.held if workers_only else NULL
        while j != NULL:
            nheld += 1
            nbytes += MAX_HANDLE + j.func.name_len
            j = j.q_next
        first = n == 0
        if not (fits(&k.rows, sizeof(ConnRow), first)
                and fits(&k.names, nabil * sizeof(Str), first)
                and fits(&k.held, nheld * sizeof(HeldRow), first)
                and fits(&k.text, nbytes, first)):
            k.want_names = nabil * sizeof(Str)
            k.want_held = nheld * sizeof(HeldRow)
            k.want_text = nbytes
            return S.conns_cap if copy_failed(k) else fd
        row = <ConnRow *>grow_add(&k.rows, sizeof(ConnRow))
        row.id = c.id
        row.fd = c.fd
        row.sleeping = c.sleeping
        row.jobs_done = c.jobs_done
        put_str(&k.text, &row.ip, c.ip, ip_len(c))
        put_str(&k.text, &row.client_id, c.client_id, c.client_id_len)
        put_str(&k.text, &row.cn, S.conns[fd].cn, strlen(S.conns[fd].cn))
        row.tls = S.conns[fd].ssl != NULL
        row.abil_first = k.names.len // sizeof(Str)
        row.nabil = nabil
        a = c.abilities
        while a != NULL:
            put_str(&k.text, <Str *>grow_add(&k.names, sizeof(Str)), a.func.name,
                    a.func.name_len)
            a = a.c_next
        row.held_first = k.held.len // sizeof(HeldRow)
        row.nheld = nheld
        j = c.held if workers_only else NULL
        while j != NULL:
            h = <HeldRow *>grow_add(&k.held, sizeof(HeldRow))
            put_str(&k.text, &h.handle, hbuf, job_handle(e, j, hbuf))
            put_str(&k.text, &h.func, j.func.name, j.func.name_len)
            h.started_at = _wall(e, j.s.started_us)
            h.num = j.num
            h.den = j.den
            j = j.q_next
        n += 1 + nabil + nheld
        fd += 1
    return fd


cdef int copy_conns(IOLoop io, int workers_only, ConnCopy *k) except -1:
    cdef size_t fd = 0, cap = 1
    grow_init(&k.rows)
    grow_init(&k.names)
    grow_init(&k.held)
    grow_init(&k.text)
    k.want_names = k.want_held = k.want_text = 0
    with nogil:
        while fd < cap:
            if grow_prepare(&k.rows, SLICE * sizeof(ConnRow)) != 0 or \
                    grow_prepare(&k.names, SLICE * sizeof(Str) + k.want_names) != 0 or \
                    grow_prepare(&k.held, SLICE * sizeof(HeldRow) + k.want_held) != 0 or \
                    grow_prepare(&k.text, SLICE * TEXT_PER_ROW + k.want_text) != 0:
                break
            k.want_names = k.want_held = k.want_text = 0
            between_slices()
            lock(io.S)
            fd = conns_slice(io.S, fd, workers_only, k)
            cap = io.S.conns_cap
            unlock(io.S)
    if copy_failed(k):
        conns_free(k)
        raise MemoryError()
    return 0


cdef void conns_free(ConnCopy *k) noexcept nogil:
    grow_free(&k.rows)
    grow_free(&k.names)
    grow_free(&k.held)
    grow_free(&k.text)


cdef list _names(ConnCopy *k, ConnRow *row):
    cdef Str *names = <Str *>k.names.p
    cdef size_t i
    out = []
    for i in range(row.abil_first, row.abil_first + row.nabil):
        out.append(take(&k.text, names[i]))
    return out


def _listed_id(bytes client_id, bytes cn):
    """The client id column of `workers`: a worker that set none ("-") but came with a
    verified TLS client certificate shows `cn=NAME`, one word (bytes a listing parser
    splits on become "_"), so gearadmin and client libraries still read four columns."""
    if client_id != b"-" or not cn:
        return client_id
    return b"cn=" + bytes(b if 0x20 < b != 0x7F else 0x5F for b in cn)


def connections(IOLoop io):
    """[(fd, ip, client_id, [functions newest first])] for every connection, by fd; the
    client id of a TLS connection that set none is its certificate's `cn=NAME`."""
    cdef ConnCopy k
    cdef ConnRow *row
    cdef size_t i
    copy_conns(io, 0, &k)
    try:
        out = []
        for i in range(k.rows.len // sizeof(ConnRow)):
            row = &(<ConnRow *>k.rows.p)[i]
            out.append((row.fd, take(&k.text, row.ip).decode("ascii", "replace"),
                        _listed_id(take(&k.text, row.client_id), take(&k.text, row.cn)),
                        _names(&k, row)))
    finally:
        conns_free(&k)
    out.sort()
    return out


def workers(IOLoop io):
    """Every connection that registered a function or holds a job."""
    cdef ConnCopy k
    cdef ConnRow *row
    cdef HeldRow *h
    cdef size_t i, m
    copy_conns(io, 1, &k)
    try:
        out = []
        for i in range(k.rows.len // sizeof(ConnRow)):
            row = &(<ConnRow *>k.rows.p)[i]
            current = []
            for m in range(row.held_first, row.held_first + row.nheld):
                h = &(<HeldRow *>k.held.p)[m]
                current.append({"handle": take(&k.text, h.handle),
                                "function": take(&k.text, h.func),
                                "started_at": h.started_at,
                                "progress": [h.num, h.den]})
            peer = take(&k.text, row.ip).decode("ascii", "replace")
            out.append({"id": row.id, "fd": row.fd, "peer": peer,
                        "client_id": take(&k.text, row.client_id),
                        "tls": bool(row.tls),
                        "tls_cn": take(&k.text, row.cn) or None,
                        "functions": _names(&k, row)[::-1],
                        "sleeping": bool(row.sleeping),
                        "jobs_done": row.jobs_done, "current": current})
    finally:
        conns_free(&k)
    out.sort(key=lambda w: w["id"])
    return out


# ---- counters ----------------------------------------------------------------------------

def stats(IOLoop io):
    """Server-wide counters for monitoring and graceful shutdown."""
    cdef int k
    cdef Engine *e = &io.S.eng
    cdef uint64_t accepted = 0, errors = 0, batches = 0
    cdef uint64_t jobs, nconns, fcount, queued_bytes, packets, next_handle
    cdef uint64_t max_queued_bytes, budget_refused, noops, rewakes
    cdef int nloops
    with nogil:
        lock(io.S)
        # Per-loop counters are summed here so counting costs the loops nothing.
        for k in range(io.S.nloops):
            accepted += io.S.loops[k].accepted
            errors += io.S.loops[k].protocol_errors
            batches += io.S.loops[k].batches
        jobs = e.jobs
        nconns = e.nconns
        fcount = e.fcount
        queued_bytes = e.queued_bytes
        packets = e.n_packets
        nloops = io.S.nloops
        next_handle = e.next_handle
        max_queued_bytes = e.max_queued_bytes
        budget_refused = e.n_budget_refused
        noops = e.n_noops
        rewakes = e.n_rewakes
        unlock(io.S)
    out = {"jobs": jobs, "connections": nconns, "functions": fcount,
           "queued_bytes": queued_bytes, "packets": packets, "accepted": accepted,
           "protocol_errors": errors, "batches": batches, "threads": nloops,
           "next_handle": next_handle, "max_queued_bytes": max_queued_bytes,
           "budget_refused": budget_refused, "noops": noops, "rewakes": rewakes}
    # The I/O layer's own counters and limits (refused, paused, hard-closed, ...).
    out.update(io.io_stats())
    return out


HIST_BOUNDS_S = tuple(hist_bound_us(i) / 1e6 for i in range(NHIST - 1))


cdef double _wall(Engine *e, int64_t mono_us) noexcept nogil:
    """A monotonic engine time as a Unix time."""
    return (e.now_wall_us - (e.now_us - mono_us)) / 1e6


def function_stats(IOLoop io):
    """Per function, in creation order: queues, counters and histograms (see the
    monitoring section of the README for what each means). The functions are copied
    as C structs under the lock and turned into Python objects after it, so the I/O
    loops wait for a memcpy, not for thousands of dicts."""
    cdef Function *f
    cdef Function *copies = NULL
    cdef int64_t *oldest = NULL
    cdef char *names = NULL
    cdef Engine *e = &io.S.eng
    cdef uint64_t n = 0, k, name_bytes = 0, off = 0
    cdef int p, i
    cdef int64_t now_us
    with nogil:
        lock(io.S)
        engine_clock(e)
        now_us = e.now_us
        f = e.f_first
        while f != NULL:
            n += 1
            name_bytes += f.name_len
            f = f.all_next
        copies = <Function *>malloc((n if n else 1) * sizeof(Function))
        oldest = <int64_t *>malloc((n if n else 1) * sizeof(int64_t))
        names = <char *>malloc(name_bytes if name_bytes else 1)
        if copies != NULL and oldest != NULL and names != NULL:
            f = e.f_first
            k = 0
            while f != NULL:
                memcpy(&copies[k], f, sizeof(Function))
                memcpy(names + off, f.name, f.name_len)
                copies[k].name = names + off
                off += f.name_len
                oldest[k] = -1
                for p in range(NPRIO):
                    if f.q_head[p] != NULL and (oldest[k] < 0
                                                or f.q_head[p].s.queued_us < oldest[k]):
                        oldest[k] = f.q_head[p].s.queued_us
                k += 1
                f = f.all_next
        unlock(io.S)
    try:
        if copies == NULL or oldest == NULL or names == NULL:
            raise MemoryError()
        out = []
        for k in range(n):
            f = &copies[k]
            out.append({
                "name": f.name[:f.name_len],
                "queued": [f.queued[0], f.queued[1], f.queued[2]],
                "future": f.future, "running": f.running, "workers": f.workers,
                "total": f.total,
                "oldest_queued_s": (now_us - oldest[k]) / 1e6 if oldest[k] >= 0 else None,
                "submitted": f.n_submitted, "completed": f.n_completed,
                "failed": f.n_failed, "exception": f.n_exception, "retried": f.n_retried,
                "bg_retried": f.n_bg_retries, "dead": f.n_dead, "requeued": f.n_requeued,
                "wait_hist": [f.wait_hist[i] for i in range(NHIST)],
                "run_hist": [f.run_hist[i] for i in range(NHIST)],
                "wait_sum_s": f.wait_sum_us / 1e6, "run_sum_s": f.run_sum_us / 1e6,
            })
        return out
    finally:
        free(copies)
        free(oldest)
        free(names)


# ---- kept results ------------------------------------------------------------------------

cdef inline char *put_at(char *to, char **field, const char *p, size_t n) noexcept nogil:
    field[0] = to
    if n:
        memcpy(to, p, n)
    to[n] = 0
    return to + n + 1


cdef Result *copy_result(Result *r, size_t preview) noexcept nogil:
    """(lock) A private copy of a kept result in one block, its data (the result or the
    exception text) cut to preview bytes; data_len stays the whole size."""
    cdef size_t dn = r.data_len if r.data_len < preview else preview
    cdef Result *c = <Result *>malloc(sizeof(Result) + r.func_len + r.unique_len
                                      + r.worker_len + r.peer_len + r.payload_len
                                      + dn + 6)
    cdef char *to
    if c == NULL:
        return NULL
    memcpy(c, r, sizeof(Result))
    to = <char *>(c + 1)
    to = put_at(to, &c.func, r.func, r.func_len)
    to = put_at(to, &c.unique, r.unique, r.unique_len)
    to = put_at(to, &c.worker, r.worker, r.worker_len)
    to = put_at(to, &c.peer, r.peer, r.peer_len)
    to = put_at(to, &c.payload, r.payload, r.payload_len)
    put_at(to, &c.data, r.data, dn)
    c.size = dn          # (in the copy: how much of the data it holds)
    c.h_next = c.h_prev = c.u_next = c.u_prev = c.newer = c.older = NULL
    return c


cdef dict _result_dict(Result *r):
    started = r.started_us / 1e6 if r.started_us else None
    return {"handle": r.handle[:r.handle_len], "function": r.func[:r.func_len],
            "unique": r.unique[:r.unique_len],
            "outcome": ("complete", "fail", "exception")[r.outcome],
            "data": r.data[:r.size], "data_size": r.data_len,
            "background": bool(r.background),
            "submitted_at": r.submitted_us / 1e6,
            "started_at": started,
            "finished_at": r.finished_us / 1e6,
            "queue_wait_s": (r.started_us - r.submitted_us) / 1e6 if started else None,
            "run_time_s": (r.finished_us - r.started_us) / 1e6 if started else None,
            "worker": r.worker[:r.worker_len].decode("utf-8", "replace"),
            "peer": r.peer[:r.peer_len].decode("utf-8", "replace"),
            "payload": r.payload[:r.payload_len], "payload_size": r.payload_size,
            "priority": ("high", "normal", "low")[r.priority] if r.priority < 3 else "normal",
            "attempt": r.attempt, "progress": [r.num, r.den],
            "data_packets": r.n_data, "warnings": r.n_warning, "id": r.id}


def result(IOLoop io, bytes handle):
    """The kept outcome of the job with this handle, or None (unknown or expired)."""
    cdef Result *r
    cdef Result *c = NULL
    cdef int failed = 0
    cdef const char *h = handle
    cdef size_t n = len(handle)
    with nogil:
        lock(io.S)
        engine_clock(&io.S.eng)
        r = result_by_handle(&io.S.eng, h, n)
        if r != NULL:
            c = copy_result(r, r.data_len)
            failed = c == NULL
        unlock(io.S)
    if failed:
        raise MemoryError()
    try:
        return _result_dict(c) if c != NULL else None
    finally:
        free(c)


def results_by_unique(IOLoop io, bytes unique):
    """Kept outcomes of jobs submitted with this unique key, newest first."""
    cdef Engine *e = &io.S.eng
    cdef Result *r
    cdef const char *u = unique
    cdef size_t n = len(unique), i
    cdef Grow found
    cdef Result **slot
    grow_init(&found)
    with nogil:
        lock(io.S)
        engine_clock(e)
        r = results_unique_chain(e, u, n)
        while r != NULL:
            if r.unique_len == n and (n == 0 or memcmp(r.unique, u, n) == 0):
                if grow_reserve(&found, sizeof(Result *)) != 0:
                    break
                slot = <Result **>grow_add(&found, sizeof(Result *))
                slot[0] = copy_result(r, r.data_len)
                if slot[0] == NULL:
                    found.failed = 1
                    found.len -= sizeof(Result *)
                    break
            r = r.u_next
        unlock(io.S)
    try:
        if found.failed:
            raise MemoryError()
        out = []
        for i in range(found.len // sizeof(Result *)):
            out.append(_result_dict((<Result **>found.p)[i]))
    finally:
        for i in range(found.len // sizeof(Result *)):
            free((<Result **>found.p)[i])
        grow_free(&found)
    out.sort(key=lambda d: d["finished_at"], reverse=True)
    return out


OUTCOMES = ("complete", "fail", "exception")


def results_page(IOLoop io, bytes function=None, int outcome=-1, double since=0,
                 size_t limit=100, uint64_t before=0, size_t preview=256):
    """Kept outcomes newest first, at most `limit`: of one function or all, of one
    outcome (OUT_*) or all (-1), finished at or after Unix time `since`, and older than
    the one with id `before` (0: from the newest); each result's data cut to `preview`
    bytes (data_size is the whole). Returns (dicts, cursor): the cursor is the id to
    pass as `before` for the next page, 0 when there is none.

    Copied in slices of SLICE results per lock hold. Between slices the walk keeps its
    place by pointer: results are only ever dropped oldest first, so the result it
    stopped at still exists while the oldest one's id is not above its own."""
    cdef Engine *e = &io.S.eng
    cdef Result *r = NULL
    cdef Result **rows = <Result **>malloc((limit if limit else 1) * sizeof(Result *))
    cdef size_t k = 0, i, visited
    cdef uint64_t pos_id = 0
    cdef int failed = 0, done = limit == 0, first = 1
    cdef int64_t since_us = <int64_t>(since * 1e6) if since > 0 else 0
    cdef bytes fname = function if function is not None else b""
    cdef const char *fp = fname
    cdef size_t fn = len(fname)
    cdef int all_functions = function is None
    if rows == NULL:
        raise MemoryError()
    with nogil:
        while not done:
            lock(io.S)
            if first:
                engine_clock(e)
                results_expire(e)
                r = e.r_newest
                first = 0
            elif e.r_oldest == NULL or e.r_oldest.id > pos_id:
                r = NULL             # it and everything older expired meanwhile
            visited = 0
            while r != NULL and k < limit and visited < SLICE:
                visited += 1
                if r.finished_us < since_us:
                    r = NULL
                    break
                if ((before == 0 or r.id < before) and
                        (outcome < 0 or r.outcome == outcome) and
                        (all_functions or (r.func_len == fn and
                                           (fn == 0 or memcmp(r.func, fp, fn) == 0)))):
                    rows[k] = copy_result(r, preview)
                    if rows[k] == NULL:
                        failed = 1
                        r = NULL
                        break
                    k += 1
                r = r.older
            if r == NULL or k == limit:
                done = 1
            else:
                pos_id = r.id
            unlock(io.S)
            if not done:
                between_slices()
    try:
        if failed:
            raise MemoryError()
        out = [_result_dict(rows[i]) for i in range(k)]
    finally:
        for i in range(k):
            free(rows[i])
        free(rows)
    return out, (out[k - 1]["id"] if k == limit and k else 0)


def results_stats(IOLoop io):
    cdef Engine *e = &io.S.eng
    cdef uint64_t count, nbytes, evicted, max_bytes
    cdef int64_t keep_us
    with nogil:
        lock(io.S)
        engine_clock(e)
        results_expire(e)
        count = e.rcount
        nbytes = e.rbytes
        evicted = e.r_evicted
        keep_us = e.keep_us
        max_bytes = e.keep_max_bytes
        unlock(io.S)
    return {"count": count, "bytes": nbytes, "evicted": evicted,
            "ttl_s": keep_us / 1e6, "max_bytes": max_bytes}


# ---- dead letters and retry settings ------------------------------------------------------

DEAD_REASONS = ("fail", "exception", "worker_lost", "timeout")


cdef Dead *copy_dead(Dead *d, size_t preview) noexcept nogil:
    """(lock) A private copy of a dead letter, its payload cut to preview bytes."""
    cdef size_t dn = d.data_len if d.data_len < preview else preview
    cdef size_t size = sizeof(Dead) + d.func_len + d.unique_len + dn + d.error_len + 4
    cdef Dead *c = <Dead *>malloc(size)
    cdef char *p
    if c == NULL:
        return NULL
    memcpy(c, d, sizeof(Dead))
    p = <char *>(c + 1)
    c.func = p
    memcpy(p, d.func, d.func_len)
    p += d.func_len + 1
    c.unique = p
    memcpy(p, d.unique, d.unique_len)
    p += d.unique_len + 1
    c.data = p
    memcpy(p, d.data, dn)
    p += dn + 1
    c.error = p
    memcpy(p, d.error, d.error_len)
    c.newer = c.older = c.p_next = NULL
    return c


cdef dict _dead_dict(Dead *c, size_t shown):
    return {"handle": c.handle[:c.handle_len], "function": c.func[:c.func_len],
            "unique": c.unique[:c.unique_len], "priority": c.priority,
            "reason": DEAD_REASONS[c.reason] if c.reason < 4 else "fail",
            "attempts": c.attempts, "error": c.error[:c.error_len],
            "data": c.data[:shown], "data_size": c.data_len,
            "submitted_at": c.submitted_us / 1e6, "failed_at": c.failed_us / 1e6,
            "id": c.id}


def dead_letters(IOLoop io, bytes function=None, size_t limit=1000, uint64_t before=0,
                 size_t preview=256):
    """Dead letters newest first, at most `limit`, of one function or all, older than
    the one with id `before` (0: from the newest): dicts of handle, function, unique,
    priority, reason, attempts, error, data (the first `preview` bytes), data_size,
    submitted_at, failed_at and id (the cursor for the next page). One lock hold that
    copies at most `limit` rows with their previews."""
    cdef Engine *e = &io.S.eng
    cdef Dead *d
    cdef Dead **rows = <Dead **>malloc((limit if limit else 1) * sizeof(Dead *))
    cdef size_t k = 0, i
    cdef int failed = 0
    cdef bytes fname = function if function is not None else b""
    cdef const char *fp = fname
    cdef size_t fn = len(fname)
    cdef int all_functions = function is None
    if rows == NULL:
        raise MemoryError()
    with nogil:
        lock(io.S)
        d = e.d_newest
        while d != NULL and k < limit:
            if ((before == 0 or d.id < before) and
                    (all_functions or (d.func_len == fn and
                                       (fn == 0 or memcmp(d.func, fp, fn) == 0)))):
                rows[k] = copy_dead(d, preview)
                if rows[k] == NULL:
                    failed = 1
                    break
                k += 1
            d = d.older
        unlock(io.S)
    try:
        if failed:
            raise MemoryError()
        return [_dead_dict(rows[i], preview if rows[i].data_len > preview
                           else rows[i].data_len) for i in range(k)]
    finally:
        for i in range(k):
            free(rows[i])
        free(rows)


def dead_letter(IOLoop io, bytes handle, size_t preview=1 << 20):
    """One dead letter by handle (payload up to `preview` bytes), or None."""
    cdef Dead *d
    cdef Dead *c = NULL
    cdef const char *h = handle
    cdef size_t n = len(handle)
    cdef int failed = 0
    with nogil:
        lock(io.S)
        d = dead_by_handle(&io.S.eng, h, n)
        if d != NULL:
            c = copy_dead(d, preview)
            failed = c == NULL
        unlock(io.S)
    if failed:
        raise MemoryError()
    try:
        if c == NULL:
            return None
        return _dead_dict(c, preview if c.data_len > preview else c.data_len)
    finally:
        free(c)


def dead_stats(IOLoop io):
    """The dead-letter list's size and bounds, and what was added and evicted."""
    cdef Engine *e = &io.S.eng
    cdef uint64_t count, nbytes, added, evicted, max_count, max_bytes
    with nogil:
        lock(io.S)
        count = e.dcount
        nbytes = e.dbytes
        added = e.d_added
        evicted = e.d_evicted
        max_count = e.dead_max
        max_bytes = e.dead_max_bytes
        unlock(io.S)
    return {"count": count, "bytes": nbytes, "added": added, "evicted": evicted,
            "max_count": max_count, "max_bytes": max_bytes}


cdef struct RetryRow:
    Str name
    uint32_t retries
    int64_t backoff_ms


def retry_settings(IOLoop io):
    """The server-wide retry policy and each function's own (`retry FUNCTION N
    BACKOFF`), as {"retries", "backoff_s", "backoff_max_s", "functions": [(name,
    retries, backoff_s)]} in creation order."""
    cdef Engine *e = &io.S.eng
    cdef Function *f
    cdef Grow rows, text
    cdef RetryRow *row
    cdef size_t i
    cdef uint32_t retries
    cdef int64_t backoff_ms, backoff_max_ms
    grow_init(&rows)
    grow_init(&text)
    with nogil:
        lock(io.S)
        retries = e.bg_retries
        backoff_ms = e.bg_backoff_ms
        backoff_max_ms = e.bg_backoff_max_ms
        f = e.f_first
        while f != NULL:
            # Few functions have their own policy: growing under the lock is rare.
            if f.retry_set and grow_reserve(&rows, sizeof(RetryRow)) == 0 \
                    and grow_reserve(&text, f.name_len) == 0:
                row = <RetryRow *>grow_add(&rows, sizeof(RetryRow))
                put_str(&text, &row.name, f.name, f.name_len)
                row.retries = f.bg_retries
                row.backoff_ms = f.bg_backoff_ms
            f = f.all_next
        unlock(io.S)
    try:
        if rows.failed or text.failed:
            raise MemoryError()
        out = []
        for i in range(rows.len // sizeof(RetryRow)):
            row = <RetryRow *>(rows.p + i * sizeof(RetryRow))
            out.append((take(&text, row.name), row.retries, row.backoff_ms / 1000.0))
        return {"retries": retries, "backoff_s": backoff_ms / 1000.0,
                "backoff_max_s": backoff_max_ms / 1000.0, "functions": out}
    finally:
        grow_free(&rows)
        grow_free(&text)
