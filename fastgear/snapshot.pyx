# Read-only views of the engine for the text admin protocol and the monitoring
# listener, plus the few admin actions (cancel, create/drop function, max queue).
# Each call takes the engine lock once, with the GIL released while waiting for it, and
# copies what it needs into Python objects before unlocking, so the I/O loops are held
# up for the length of one copy and never wait on Python. Counters the loops keep per
# thread are summed here, on read, so counting costs the hot path nothing.
from libc.stdint cimport uint32_t, uint64_t

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
        return {"jobs": io.S.eng.jobs, "connections": io.S.eng.nconns,
                "functions": io.S.eng.fcount, "queued_bytes": io.S.eng.queued_bytes,
                "packets": io.S.eng.n_packets, "accepted": accepted,
                "protocol_errors": errors, "batches": batches,
                "threads": io.S.nloops, "next_handle": io.S.eng.next_handle}
    finally:
        unlock(io.S)


def configure(IOLoop io, cfg):
    """Hand the engine its limits and policies from a Config (server start-up)."""
    pass
