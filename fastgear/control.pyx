# The admin actions that change the engine: cancel a job, create or drop a function,
# set a function's queue limits. Each takes the engine lock once with the GIL released
# and does its work in C, so the I/O loops wait for one short engine call, never for
# Python. The read-only views are in snapshot.pyx; start-up settings in coreconfig.pyx.
from libc.stdint cimport uint32_t

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
