# Read-only views of the engine for the text admin protocol and the monitoring
# listener, plus the few admin actions (cancel, create/drop function, max queue).
# Start-up settings reach the engine through coreconfig.pyx.
# Each call takes the engine lock once, with the GIL released while waiting for it, and
# copies what it needs into Python objects before unlocking, so the I/O loops are held
# up for the length of one copy and never wait on Python. Counters the loops keep per
# thread are summed here, on read, so counting costs the hot path nothing.
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from fastgear.engine cimport *
from fastgear.iothreads cimport IOLoop, lock, unlock, route


def functions(IOLoop io):
    """[(name, total, running, workers, high, normal, low, future)] in creation order."""
    cdef Function *f
    out = []
    with nogil:
        lock(io.S)
    try:
        f = io.S.eng.f_first
        while f != NULL:
            out.append((f.name[:f.name_len], f.total, f.running, f.workers,
                        f.queued[0], f.queued[1], f.queued[2], f.future))
            f = f.all_next
    finally:
        unlock(io.S)
    return out


def connections(IOLoop io):
    """[(fd, ip, client_id, [functions newest first])] for every connection."""
    cdef Conn *c
    cdef Ability *a
    out = []
    with nogil:
        lock(io.S)
    try:
        c = io.S.eng.conns
        while c != NULL:
            funcs = []
            a = c.abilities
            while a != NULL:
                funcs.append(a.func.name[:a.func.name_len])
                a = a.c_next
            out.append((c.fd, c.ip.decode("ascii", "replace"),
                        c.client_id[:c.client_id_len], funcs))
            c = c.all_next
    finally:
        unlock(io.S)
    out.sort()
    return out


def jobs(IOLoop io):
    """[(handle, retries, ignored, persisted, unique)] for every job in memory."""
    cdef uint64_t i
    cdef Job *j
    out = []
    with nogil:
        lock(io.S)
    try:
        for i in range(io.S.eng.hmask + 1):
            j = io.S.eng.htab[i]
            while j != NULL:
                # gearmand's "persisted" column is set for every background job.
                out.append((j.seq, j.handle[:j.handle_len], j.retries, 0,
                            1 if (j.background or j.persisted) else 0,
                            j.unique[:j.unique_len]))
                j = j.h_next
    finally:
        unlock(io.S)
    out.sort()
    return [row[1:] for row in out]


def cancel_job(IOLoop io, bytes handle):
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


def drop_function(IOLoop io, bytes name):
    """'ok', 'busy' (workers or running jobs), 'queued', or 'notfound'. Names are
    compared case-insensitively, as gearmand does."""
    cdef Function *f
    cdef int r = 3
    lname = name.lower()
    with nogil:
        lock(io.S)
    try:
        f = io.S.eng.f_first
        while f != NULL:
            if f.name[:f.name_len].lower() == lname:
                r = engine_drop_function(&io.S.eng, f)
                break
            f = f.all_next
    finally:
        unlock(io.S)
    return ("ok", "busy", "queued", "notfound")[r]


def set_maxqueue(IOLoop io, bytes name, long high, long normal, long low):
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


def stats(IOLoop io):
    """Server-wide counters for monitoring and graceful shutdown."""
    cdef int k
    cdef uint64_t accepted = 0, errors = 0, batches = 0
    with nogil:
        lock(io.S)
        # Per-loop counters are summed here so counting costs the loops nothing.
        for k in range(io.S.nloops):
            accepted += io.S.loops[k].accepted
            errors += io.S.loops[k].protocol_errors
            batches += io.S.loops[k].batches
    try:
        out = {"jobs": io.S.eng.jobs, "connections": io.S.eng.nconns,
               "functions": io.S.eng.fcount, "queued_bytes": io.S.eng.queued_bytes,
               "packets": io.S.eng.n_packets, "accepted": accepted,
               "protocol_errors": errors, "batches": batches,
               "threads": io.S.nloops, "next_handle": io.S.eng.next_handle,
               "max_queued_bytes": io.S.eng.max_queued_bytes,
               "budget_refused": io.S.eng.n_budget_refused,
               "noops": io.S.eng.n_noops, "rewakes": io.S.eng.n_rewakes}
    finally:
        unlock(io.S)
    # The I/O layer's own counters and limits (refused, paused, hard-closed, ...).
    out.update(io.io_stats())
    return out


HIST_BOUNDS_S = tuple(hist_bound_us(i) / 1e6 for i in range(NHIST - 1))


cdef double _wall(Engine *e, int64_t mono_us) noexcept:
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
                                                or f.q_head[p].queued_us < oldest[k]):
                        oldest[k] = f.q_head[p].queued_us
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
                "wait_hist": [f.wait_hist[i] for i in range(NHIST)],
                "run_hist": [f.run_hist[i] for i in range(NHIST)],
                "wait_sum_s": f.wait_sum_us / 1e6, "run_sum_s": f.run_sum_us / 1e6,
            })
        return out
    finally:
        free(copies)
        free(oldest)
        free(names)


def workers(IOLoop io):
    """Every connection that registered a function or holds a job."""
    cdef Engine *e = &io.S.eng
    cdef Conn *c
    cdef Ability *a
    cdef Job *j
    out = []
    with nogil:
        lock(io.S)
        engine_clock(e)
    try:
        c = e.conns
        while c != NULL:
            if c.abilities != NULL or c.held != NULL:
                funcs = []
                a = c.abilities
                while a != NULL:
                    funcs.append(a.func.name[:a.func.name_len])
                    a = a.c_next
                current = []
                j = c.held
                while j != NULL:
                    current.append({"handle": j.handle[:j.handle_len],
                                    "function": j.func.name[:j.func.name_len],
                                    "started_at": _wall(e, j.started_us)})
                    j = j.q_next
                out.append({"id": c.id, "fd": c.fd, "peer": c.ip.decode("ascii", "replace"),
                            "client_id": c.client_id[:c.client_id_len],
                            "functions": funcs[::-1], "sleeping": bool(c.sleeping),
                            "jobs_done": c.jobs_done, "current": current})
            c = c.all_next
    finally:
        unlock(io.S)
    out.sort(key=lambda w: w["id"])
    return out


cdef dict _result_dict(Result *r):
    return {"handle": r.handle[:r.handle_len], "function": r.func[:r.func_len],
            "unique": r.unique[:r.unique_len],
            "outcome": ("complete", "fail", "exception")[r.outcome],
            "data": r.data[:r.data_len], "background": bool(r.background),
            "submitted_at": r.submitted_us / 1e6,
            "started_at": r.started_us / 1e6 if r.started_us else None,
            "finished_at": r.finished_us / 1e6,
            "worker": r.worker[:r.worker_len].decode("utf-8", "replace")}


def result(IOLoop io, bytes handle):
    """The kept outcome of the job with this handle, or None (unknown or expired)."""
    cdef Result *r
    cdef const char *h = handle
    cdef size_t n = len(handle)
    with nogil:
        lock(io.S)
        engine_clock(&io.S.eng)
        r = result_by_handle(&io.S.eng, h, n)
    try:
        return _result_dict(r) if r != NULL else None
    finally:
        unlock(io.S)


def results_by_unique(IOLoop io, bytes unique):
    """Kept outcomes of jobs submitted with this unique key, newest first."""
    cdef Engine *e = &io.S.eng
    cdef Result *r
    cdef const char *u = unique
    cdef size_t n = len(unique)
    out = []
    with nogil:
        lock(io.S)
        engine_clock(e)
        r = results_unique_chain(e, u, n)
    try:
        if r != NULL:
            while r != NULL:
                if r.unique_len == n and r.unique[:r.unique_len] == unique:
                    out.append(_result_dict(r))
                r = r.u_next
    finally:
        unlock(io.S)
    out.sort(key=lambda d: d["finished_at"], reverse=True)
    return out


def results_stats(IOLoop io):
    cdef Engine *e = &io.S.eng
    with nogil:
        lock(io.S)
        engine_clock(e)
        results_expire(e)
    try:
        return {"count": e.rcount, "bytes": e.rbytes, "evicted": e.r_evicted,
                "ttl_s": e.keep_us / 1e6, "max_bytes": e.keep_max_bytes}
    finally:
        unlock(io.S)
