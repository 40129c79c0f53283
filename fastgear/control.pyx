# The admin actions that change the engine: cancel a job, create or drop a function,
# set a function's queue limits or retry policy, re-queue or discard dead letters (and
# hand dead-letter rows to the store thread). Each takes the engine lock once with the GIL released
# and does its work in C, so the I/O loops wait for one short engine call, never for
# Python. The read-only views are in snapshot.pyx; start-up settings in coreconfig.pyx.
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memcmp

from fastgear.engine cimport *
from fastgear.iothreads cimport IOLoop, lock, unlock, route


def cancel_job(IOLoop io, bytes handle):
    """Fail the job to its clients and forget it; False when the handle is unknown."""
    cdef Job *j
    cdef int found = 0
    cdef const char *h = handle
    cdef size_t n = len(handle)
    with nogil:
        lock(io.S)
        j = job_by_handle(&io.S.eng, h, n)
        if j != NULL and engine_cancel(&io.S.eng, j) == 0:
            found = 1
            # The WORK_FAIL packets go to their connections' loops.
            route(io.S, NULL)
        unlock(io.S)
    return bool(found)


def create_function(IOLoop io, bytes name):
    cdef const char *p = name
    cdef size_t n = len(name)
    with nogil:
        lock(io.S)
        func_get(&io.S.eng, p, n, 1)
        unlock(io.S)


cdef inline unsigned char _lower(unsigned char ch) noexcept nogil:
    # ASCII only, as bytes.lower() and gearmand's strcasecmp in the C locale.
    return ch + 32 if 65 <= ch <= 90 else ch


cdef int _same_name(const char *a, size_t an, const char *b, size_t bn) noexcept nogil:
    cdef size_t i
    if an != bn:
        return 0
    for i in range(an):
        if _lower(<unsigned char>a[i]) != _lower(<unsigned char>b[i]):
            return 0
    return 1


def drop_function(IOLoop io, bytes name):
    """'ok', 'busy' (workers or running jobs), 'queued', or 'notfound'. Names are
    compared case-insensitively, as gearmand does: the first match in creation order."""
    cdef Function *f
    cdef int r = 3
    cdef const char *p = name
    cdef size_t n = len(name)
    with nogil:
        lock(io.S)
        f = io.S.eng.f_first
        while f != NULL:
            if _same_name(f.name, f.name_len, p, n):
                r = engine_drop_function(&io.S.eng, f)
                break
            f = f.all_next
        unlock(io.S)
    return ("ok", "busy", "queued", "notfound")[r]


def set_maxqueue(IOLoop io, bytes name, long high, long normal, long low):
    """Queue limits per priority (0: none) of an existing function, matched exactly."""
    cdef Function *f
    cdef const char *p = name
    cdef size_t n = len(name)
    with nogil:
        lock(io.S)
        f = func_get(&io.S.eng, p, n, 0)
        if f != NULL:
            f.max_queue[0] = <uint32_t>(high if high > 0 else 0)
            f.max_queue[1] = <uint32_t>(normal if normal > 0 else 0)
            f.max_queue[2] = <uint32_t>(low if low > 0 else 0)
        unlock(io.S)


# ---- retry policy and dead letters (engine_dead.pxi) ------------------------------------

def set_retry(IOLoop io, bytes name, long retries, double backoff_s):
    """`retry FUNCTION N BACKOFF`: the function's own retry policy for background jobs
    (created if absent, so it holds before the first job); retries < 0 goes back to
    --bg-retries and --bg-retry-backoff."""
    cdef Function *f
    cdef const char *p = name
    cdef size_t n = len(name)
    cdef int ok = 0
    with nogil:
        lock(io.S)
        f = func_get(&io.S.eng, p, n, 1)
        if f != NULL:
            ok = 1
            f.retry_set = retries >= 0
            f.bg_retries = <uint32_t>(retries if retries > 0 else 0)
            f.bg_backoff_ms = <int64_t>(backoff_s * 1000) if backoff_s > 0 else 0
        unlock(io.S)
    return bool(ok)


def requeue_dead(IOLoop io, bytes handle):
    """Queue a dead letter again: ('ok', new handle), ('coalesced', None) when a job with
    its unique key is in memory already, ('full', None) when its function's queue is at
    its maxqueue limit, ('refused', None) when its function name or unique key is over
    this server's limits (it stays a dead letter), or ('notfound', None)."""
    cdef Dead *d
    cdef const char *h = handle
    cdef size_t n = len(handle)
    cdef char out[MAX_HANDLE]
    cdef uint32_t out_len = 0
    cdef int r = 3
    with nogil:
        lock(io.S)
        engine_clock(&io.S.eng)
        d = dead_by_handle(&io.S.eng, h, n)
        if d != NULL:
            r = engine_dead_requeue(&io.S.eng, d, out, &out_len)
            route(io.S, NULL)
        unlock(io.S)
    if r == 0:
        return "ok", out[:out_len]
    if r == 1:
        return "coalesced", None
    if r == -1:
        return "full", None
    if r == E_REFUSED:
        return "refused", None
    if r == 3:
        return "notfound", None
    raise MemoryError()


def requeue_dead_function(IOLoop io, bytes name):
    """Queue again every dead letter of a function, oldest first; returns how many were
    queued (or coalesced). Stops early when the function's queue is full; one over this
    server's name or unique key limits is skipped (it stays a dead letter)."""
    cdef Dead *d
    cdef Dead *dn
    cdef const char *p = name
    cdef size_t n = len(name)
    cdef char out[MAX_HANDLE]
    cdef uint32_t out_len = 0
    cdef uint64_t done = 0
    cdef int r
    with nogil:
        lock(io.S)
        engine_clock(&io.S.eng)
        d = io.S.eng.d_oldest
        while d != NULL:
            dn = d.newer
            if d.func_len == n and (n == 0 or memcmp(d.func, p, n) == 0):
                r = engine_dead_requeue(&io.S.eng, d, out, &out_len)
                if r == E_REFUSED:
                    d = dn
                    continue
                if r != 0 and r != 1:
                    break
                done += 1
            d = dn
        route(io.S, NULL)
        unlock(io.S)
    return done


def discard_dead(IOLoop io, bytes handle):
    """Forget a dead letter (and its stored row); False when the handle is unknown."""
    cdef Dead *d
    cdef const char *h = handle
    cdef size_t n = len(handle)
    cdef int found = 0
    with nogil:
        lock(io.S)
        d = dead_by_handle(&io.S.eng, h, n)
        if d != NULL:
            dead_drop(&io.S.eng, d)
            found = 1
        unlock(io.S)
    return bool(found)


cdef dict _dead_row(Dead *d):
    return {"id": d.id, "handle": d.handle[:d.handle_len], "function": d.func[:d.func_len],
            "unique": d.unique[:d.unique_len], "priority": d.priority,
            "data": d.data[:d.data_len], "error": d.error[:d.error_len],
            "reason": d.reason, "attempts": d.attempts,
            "submitted_us": d.submitted_us, "failed_us": d.failed_us}


def dead_take(IOLoop io):
    """(store thread) (rows to write, ids to delete) of dead letters: rows are dicts of
    id, handle, function, unique, priority, data, error, reason, attempts, submitted_us,
    failed_us. The rows are copied under the lock, the dicts built after it."""
    cdef Engine *e = &io.S.eng
    cdef Dead *head
    cdef Dead *d
    cdef Dead *dn
    cdef Dead *copies = NULL
    cdef Dead *c
    cdef Dead *last = NULL
    cdef int64_t *dels
    cdef uint64_t ndel, i
    cdef char *base
    cdef int failed = 0
    with nogil:
        lock(io.S)
        head = e.d_pending
        e.d_pending = NULL
        e.d_pending_tail = NULL
        dels = e.d_del
        ndel = e.d_del_len
        e.d_del = NULL
        e.d_del_len = 0
        e.d_del_cap = 0
        d = head
        while d != NULL:
            dn = d.p_next
            if d.gone:
                fg_free(e, d)
            else:
                d.pending = 0
                d.p_next = NULL
                # A private copy: the engine may drop d as soon as the lock is released.
                c = <Dead *>malloc(d.size)
                if c == NULL:
                    failed = 1
                else:
                    memcpy(c, d, d.size)
                    base = <char *>d
                    c.func = <char *>c + (d.func - base)
                    c.unique = <char *>c + (d.unique - base)
                    c.data = <char *>c + (d.data - base)
                    c.error = <char *>c + (d.error - base)
                    c.p_next = NULL
                    if last == NULL:
                        copies = c
                    else:
                        last.p_next = c
                    last = c
            d = dn
        unlock(io.S)
    adds = []
    try:
        c = copies
        while c != NULL:
            adds.append(_dead_row(c))
            c = c.p_next
        deletes = [dels[i] for i in range(ndel)]
    finally:
        while copies != NULL:
            c = copies.p_next
            free(copies)
            copies = c
        engine_release(e, dels)
    if failed:
        raise MemoryError("dead letters not written: out of memory")
    return adds, deletes


def dead_restore(IOLoop io, rows):
    """Dead letters read back from the store at start-up: dicts as dead_take() gives."""
    cdef Dead *d
    cdef int64_t sub, fail
    cdef uint64_t did
    cdef uint32_t att
    cdef int prio, reason
    for r in rows:
        h, fn, u, data, err = r["handle"], r["function"], r["unique"], r["data"], r["error"]
        did = r["id"]
        prio = r["priority"]
        reason = r["reason"]
        att = r["attempts"]
        sub = r["submitted_us"]
        fail = r["failed_us"]
        with nogil:
            lock(io.S)
        try:
            d = engine_dead_restore(&io.S.eng, did, h, len(h), fn, len(fn), u, len(u),
                                    data, len(data), err, len(err), prio, reason, att,
                                    sub, fail)
        finally:
            unlock(io.S)
        if d == NULL:
            raise MemoryError()


def dead_id_floor(IOLoop io, uint64_t floor):
    """New dead letters take ids from `floor` up (an id never goes down): a store shared
    by several servers gives each server its own range, so their rows never collide."""
    with nogil:
        lock(io.S)
        if io.S.eng.next_dead_id < floor:
            io.S.eng.next_dead_id = floor
        unlock(io.S)
