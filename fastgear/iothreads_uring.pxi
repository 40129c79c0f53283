# The io_uring I/O loop (`--io uring`, and `--io auto` where the kernel allows it). Its
# batches are loop_run()'s: gather input without the lock, lock once, process_input /
# collect / route / stage, unlock, send. Only the kernel crossings differ. Each loop has
# one ring, and each connection one multishot receive armed on it, filling buffers from
# the loop's provided-buffer ring; a buffer is copied into the connection's input buffer
# and handed back at once, so process_input() parses as before. Staged output goes out
# as send entries from `sbuf`, swapped with `wbuf` when the kernel is done with it, so
# stage() keeps appending to `wbuf` while a send is in flight. The eventfd poke and
# listener readiness also come through the ring, so one batch costs one io_uring_enter
# (io_uring_submit_and_wait) however many connections it serves, where the epoll loop
# makes a recv and a send per connection and an epoll_wait. Accepting stays
# accept_some()'s, driven by a poll entry on the loop's epoll set of listeners re-armed
# after each wake-up, so the connection limit, the spare descriptor and refusals are the
# epoll loop's. Back-pressure cancels the receive of a paused connection and re-arms it
# when its output has drained. The kernel may still write into an IOConn (receive) or
# read its `sbuf` (send) until the operation's last completion arrives, so a closed
# connection is only freed then: it waits as a "zombie" until its operations are done.
from fastgear.includes.uring cimport *

cdef enum:
    UR_ENTRIES = 1024        # submission queue; the completion queue is 8 times that
    UR_NBUF = 256            # provided receive buffers per loop (a power of two) ...
    UR_BUFSZ = 16384         # ... of this size: 4 MiB per loop
    UR_CQE_BATCH = 256       # completions taken from the ring at a time
    UR_READY_MAX = 4096      # connections with news per batch; the rest wait a batch
    BR_BYTES = 4096          # the buffer ring: UR_NBUF entries of 16 bytes, one page

# What a completion is about: the low 3 bits of its user_data. A connection's entries
# carry its IOConn pointer (16-byte aligned) above them, a listener's its index.
cdef enum:
    UD_IGNORE = 0            # cancellations
    UD_RECV = 1
    UD_SEND = 2
    UD_WAKE = 3
    UD_LISTEN = 4
    UD_MASK = 7


cdef struct UringLoop:
    io_uring ring
    io_uring_buf_ring *br
    char *bufs
    int recycled             # buffers handed back since the last advance
    int inflight             # operations whose last completion has not arrived
    uint64_t wake_val
    uint8_t registered       # the buffer ring is registered with the kernel


cdef int ur_create(Loop *L) noexcept nogil:
    """Set up loop L's ring and its receive buffers (before the loop thread starts);
    0, or -errno when io_uring is missing, forbidden or too old (the caller falls back
    to epoll or refuses to start). The ring starts disabled so that the loop thread,
    which enables it, is its single issuer."""
    cdef UringLoop *U = <UringLoop *>calloc(1, sizeof(UringLoop))
    cdef io_uring_params p
    cdef io_uring_buf_reg reg
    cdef void *mem = NULL
    cdef int rc, i, mask
    if U == NULL:
        return -ENOMEM
    memset(&p, 0, sizeof(p))
    p.flags = (IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL
               | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN)
    p.cq_entries = UR_ENTRIES * 8
    rc = io_uring_queue_init_params(UR_ENTRIES, &U.ring, &p)
    if rc == -EINVAL:
        # Before Linux 6.1 (no deferred task running): a plain ring.
        memset(&p, 0, sizeof(p))
        p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED
        p.cq_entries = UR_ENTRIES * 8
        rc = io_uring_queue_init_params(UR_ENTRIES, &U.ring, &p)
    if rc < 0:
        free(U)
        return rc
    L.ur = U
    if not (p.features & IORING_FEAT_EXT_ARG):
        # A wait with a timeout must be the same io_uring_enter as the submission.
        return -ENOSYS
    # Shared, not private: the kernel pins these pages at registration, and after the
    # fork of --daemon a private page would be copied for the child, whose buffer
    # hand-backs the kernel would then never see.
    mem = mmap(NULL, BR_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
    if mem == MAP_FAILED:
        return -ENOMEM
    U.br = <io_uring_buf_ring *>mem
    U.bufs = <char *>malloc(<size_t>UR_NBUF * UR_BUFSZ)
    if U.bufs == NULL:
        return -ENOMEM
    memset(&reg, 0, sizeof(reg))
    reg.ring_addr = <uint64_t><size_t>U.br
    reg.ring_entries = UR_NBUF
    reg.bgid = 0
    rc = io_uring_register_buf_ring(&U.ring, &reg, 0)
    if rc < 0:
        return rc
    U.registered = 1
    io_uring_buf_ring_init(U.br)
    mask = io_uring_buf_ring_mask(UR_NBUF)
    for i in range(UR_NBUF):
        io_uring_buf_ring_add(U.br, U.bufs + <size_t>i * UR_BUFSZ, UR_BUFSZ,
                              <unsigned short>i, mask, i)
    io_uring_buf_ring_advance(U.br, UR_NBUF)
    return 0


cdef void ur_destroy(Loop *L) noexcept nogil:
    cdef UringLoop *U = <UringLoop *>L.ur
    if U == NULL:
        return
    if U.registered:
        io_uring_unregister_buf_ring(&U.ring, 0)
    io_uring_queue_exit(&U.ring)
    if U.br != NULL:
        munmap(U.br, BR_BYTES)
    free(U.bufs)
    free(U)
    L.ur = NULL


cdef inline io_uring_sqe *ur_sqe(UringLoop *U) noexcept nogil:
    cdef io_uring_sqe *sqe = io_uring_get_sqe(&U.ring)
    if sqe == NULL:
        # The submission queue is full: hand the kernel what is queued.
        io_uring_submit(&U.ring)
        sqe = io_uring_get_sqe(&U.ring)
    if sqe != NULL:
        U.inflight += 1
    return sqe


cdef void ur_cancel(UringLoop *U, uint64_t ud) noexcept nogil:
    cdef io_uring_sqe *sqe = ur_sqe(U)
    if sqe != NULL:
        io_uring_prep_cancel64(sqe, ud, 0)
        io_uring_sqe_set_data64(sqe, UD_IGNORE)


cdef void ur_arm_wake(Loop *L, UringLoop *U) noexcept nogil:
    cdef io_uring_sqe *sqe = ur_sqe(U)
    if sqe != NULL:
        io_uring_prep_read(sqe, L.wakefd, &U.wake_val, 8, 0)
        io_uring_sqe_set_data64(sqe, UD_WAKE)


cdef void ur_arm_listen(Loop *L, UringLoop *U) noexcept nogil:
    """Poll the loop's epoll set of listeners, not the listeners themselves: a poll
    entry holds its file open, and a SIGKILLed server's ring is torn down by the kernel
    some time after the process is gone. Entries on the listeners would keep them
    listening, and a restarted server's port taken (its clients queued on a dead
    backlog), for that time; an epoll set holds no reference to what it watches."""
    cdef io_uring_sqe *sqe = ur_sqe(U)
    if sqe != NULL:
        io_uring_prep_poll_add(sqe, L.epfd, POLLIN)
        io_uring_sqe_set_data64(sqe, UD_LISTEN)


cdef void ur_set_events(Loop *L, IOConn *io) noexcept nogil:
    """The receive side of set_events(): a connection is read unless it is paused,
    gone or closed; a receive that ended (EOF, no buffer left) is re-armed here."""
    cdef UringLoop *U = <UringLoop *>L.ur
    cdef io_uring_sqe *sqe
    cdef int want = not io.eof and not io.dead and not io.paused and not io.in_close
    if want and not io.ur_recv:
        sqe = ur_sqe(U)
        if sqe == NULL:
            io.dead = 1
            return
        io_uring_prep_recv_multishot(sqe, io.c.fd, NULL, 0, 0)
        io_uring_sqe_set_flags(sqe, IOSQE_BUFFER_SELECT)
        sqe.buf_group = 0
        io_uring_sqe_set_data64(sqe, <uint64_t><size_t>io | UD_RECV)
        io.ur_recv = 1
    elif not want and io.ur_recv and not io.ur_cancel:
        io.ur_cancel = 1
        ur_cancel(U, <uint64_t><size_t>io | UD_RECV)


cdef void ur_flush_conn(Loop *L, IOConn *io) noexcept nogil:
    """(no lock) flush_conn() for io_uring: queue a send of what is staged unless one
    is in flight; resume reading a paused connection once its backlog has halved."""
    cdef UringLoop *U = <UringLoop *>L.ur
    cdef io_uring_sqe *sqe
    cdef Buf t
    cdef size_t pending
    if io.dead:
        buf_consume(&io.wbuf, buf_len(&io.wbuf))
    elif not io.ur_send:
        if buf_len(&io.sbuf) == 0 and buf_len(&io.wbuf):
            # A pointer swap: wbuf gets the buffer the kernel has finished with.
            t = io.sbuf
            io.sbuf = io.wbuf
            io.wbuf = t
        if buf_len(&io.sbuf):
            sqe = ur_sqe(U)
            if sqe == NULL:
                io.dead = 1
            else:
                io_uring_prep_send(sqe, io.c.fd, buf_head(&io.sbuf), buf_len(&io.sbuf),
                                   MSG_NOSIGNAL)
                io_uring_sqe_set_data64(sqe, <uint64_t><size_t>io | UD_SEND)
                io.ur_send = 1
    if io.dead and not io.ur_send:
        buf_consume(&io.sbuf, buf_len(&io.sbuf))
    pending = buf_len(&io.wbuf) + buf_len(&io.sbuf)
    fg_store_size(&io.wlen, pending)
    if (io.paused and not io.dead and not io.in_close
            and pending <= L.S.max_output // 2):
        io.paused = 0
        # Input already buffered is parsed in the next locked section.
        if not io.in_unpause:
            io.in_unpause = 1
            io.unpause_next = L.unpause
            L.unpause = io
    if pending == 0:
        buf_shrink(&io.wbuf, KEEP_BUFFER)
        buf_shrink(&io.sbuf, KEEP_BUFFER)
        buf_shrink(&io.inbuf, KEEP_BUFFER)
    # Also arms the receive of a connection staged for the first time (attach_conn).
    ur_set_events(L, io)


cdef inline void ur_free_io(IOConn *io) noexcept nogil:
    buf_free(&io.sbuf)
    free(io)


cdef void ur_free_conns(Loop *L, IOConn *gone) noexcept nogil:
    """free_conns() for io_uring: close now, free once the kernel is done with io."""
    cdef UringLoop *U = <UringLoop *>L.ur
    cdef IOConn *io
    while gone != NULL:
        io = gone
        gone = io.close_next
        # Counted out before the peer can see the close and connect again.
        fg_add_i64(&L.S.open_conns, -1)
        if io.ur_recv and not io.ur_cancel:
            io.ur_cancel = 1
            ur_cancel(U, <uint64_t><size_t>io | UD_RECV)
        if io.ur_send:
            ur_cancel(U, <uint64_t><size_t>io | UD_SEND)
        # The socket itself goes when the kernel drops the operations' references.
        close(io.c.fd)
        buf_free(&io.inbuf)
        buf_free(&io.c.outbuf)
        buf_free(&io.wbuf)
        buf_free(&io.hr.body)
        if io.ur_recv or io.ur_send:
            io.ur_zombie = 1
        else:
            ur_free_io(io)


cdef inline void ur_recycle(UringLoop *U, uint32_t flags) noexcept nogil:
    cdef unsigned short bid
    if flags & IORING_CQE_F_BUFFER:
        bid = <unsigned short>(flags >> IORING_CQE_BUFFER_SHIFT)
        io_uring_buf_ring_add(U.br, U.bufs + <size_t>bid * UR_BUFSZ, UR_BUFSZ, bid,
                              io_uring_buf_ring_mask(UR_NBUF), U.recycled)
        U.recycled += 1


cdef int ur_complete(Loop *L, UringLoop *U, io_uring_cqe *cqe, IOConn **ready,
                     int nready, IOConn **accepted, int *naccepted, uint64_t *refused,
                     int *failed, int stopping) noexcept nogil:
    """(no lock) Act on one completion; returns the new length of `ready`."""
    cdef Shared *S = L.S
    cdef uint64_t ud = cqe.user_data
    cdef int res = cqe.res
    cdef uint32_t flags = cqe.flags
    cdef int tag = <int>(ud & UD_MASK)
    cdef int k, n
    cdef uint64_t ltag
    cdef epoll_event lev[MAX_LISTENERS]
    cdef IOConn *io
    if tag == UD_IGNORE:
        U.inflight -= 1
        return nready
    if tag == UD_WAKE:
        U.inflight -= 1
        if not stopping:
            ur_arm_wake(L, U)
        return nready
    if tag == UD_LISTEN:
        U.inflight -= 1
        if stopping:
            return nready
        # Level-triggered: a listener left with connections (the accept budget is
        # spent) is reported again by the re-armed poll, next batch.
        n = epoll_wait(L.epfd, lev, MAX_LISTENERS, 0)
        for k in range(n if n > 0 else 0):
            ltag = lev[k].data.u64
            naccepted[0] += accept_some(L, <int>(ltag >> 4), (ltag & TAG_HTTP) != 0, 0,
                                        accepted + naccepted[0],
                                        ACCEPT_BUDGET - naccepted[0], refused, failed)
        ur_arm_listen(L, U)
        return nready
    io = <IOConn *><size_t>(ud & ~(<uint64_t>UD_MASK))
    if tag == UD_RECV:
        if res > 0 and not io.ur_zombie and not io.dead and not stopping:
            if buf_append(&io.inbuf, U.bufs + <size_t>(flags >> IORING_CQE_BUFFER_SHIFT)
                          * UR_BUFSZ, <size_t>res) != 0:
                io.dead = 1
        ur_recycle(U, flags)
        if res == 0:
            io.eof = 1
        elif res < 0 and res != -ENOBUFS and res != -ECANCELED and res != -EINTR:
            io.dead = 1     # reset by the peer: nothing can be flushed to it any more
            io.eof = 1
        if not (flags & IORING_CQE_F_MORE):
            io.ur_recv = 0
            io.ur_cancel = 0
            U.inflight -= 1
    elif tag == UD_SEND:
        io.ur_send = 0
        U.inflight -= 1
        if not io.ur_zombie:
            if res > 0:
                buf_consume(&io.sbuf, <size_t>res)
            elif res != -EINTR and res != -EAGAIN:
                io.dead = 1
    else:
        return nready
    if io.ur_zombie:
        if not io.ur_recv and not io.ur_send:
            ur_free_io(io)
        return nready
    if io.in_close or stopping:
        return nready
    if tag == UD_SEND:
        if not io.in_flush:
            io.in_flush = 1
            io.flush_next = L.flush
            L.flush = io
        if not io.dead:
            return nready
    elif not io.ur_recv:
        ur_set_events(L, io)    # re-armed after running out of buffers
    if not io.ur_ready and (res > 0 or io.eof or io.dead):
        io.ur_ready = 1
        ready[nready] = io
        nready += 1
    return nready


cdef void ur_wait(UringLoop *U, int64_t timeout) noexcept nogil:
    """Submit what is queued and wait for a completion, `timeout` ms at most (-1: no
    limit): one io_uring_enter."""
    cdef __kernel_timespec ts
    cdef io_uring_cqe *cqe
    if timeout < 0:
        io_uring_submit_and_wait(&U.ring, 1)
        return
    ts.tv_sec = timeout // 1000
    ts.tv_nsec = (timeout % 1000) * 1000000
    io_uring_submit_and_wait_timeout(&U.ring, &cqe, 1, &ts, NULL)


cdef int ur_harvest(Loop *L, UringLoop *U, IOConn **ready, IOConn **accepted,
                    int *naccepted, uint64_t *refused, int *failed,
                    int stopping) noexcept nogil:
    cdef io_uring_cqe *cqes[UR_CQE_BATCH]
    cdef unsigned n, i
    cdef int nready = 0
    while nready <= UR_READY_MAX - UR_CQE_BATCH:
        n = io_uring_peek_batch_cqe(&U.ring, cqes, UR_CQE_BATCH)
        if n == 0:
            break
        for i in range(n):
            nready = ur_complete(L, U, cqes[i], ready, nready, accepted, naccepted,
                                 refused, failed, stopping)
        io_uring_cq_advance(&U.ring, n)
        if U.recycled:
            io_uring_buf_ring_advance(U.br, U.recycled)
            U.recycled = 0
    return nready


cdef void ur_loop_run(Loop *L) noexcept nogil:
    cdef Shared *S = L.S
    cdef UringLoop *U = <UringLoop *>L.ur
    cdef IOConn *ready[UR_READY_MAX]
    cdef IOConn *accepted[ACCEPT_BUDGET]
    cdef int i, k, nready, naccepted, accept_failed
    cdef uint64_t refused
    cdef int64_t timeout
    cdef IOConn *io
    cdef IOConn *gone
    cdef bint trim
    cdef sigset_t all_signals
    # Signals belong to the Python control thread.
    sigfillset(&all_signals)
    pthread_sigmask(SIG_BLOCK, &all_signals, NULL)
    # This thread becomes the ring's single issuer.
    fg_uring_enable(&U.ring)
    ur_arm_wake(L, U)
    lock(S)
    ur_arm_listen(L, U)
    while True:
        timeout = -1
        if L.idx == 0:
            engine_clock(&S.eng)
            timeout = engine_timers(&S.eng)
            S.timer_wake_ms = S.eng.now_ms + timeout if timeout >= 0 else -1
        collect(L)
        gone = reap(L)
        if S.stopping:
            unlock(S)
            flush_all(L)
            ur_free_conns(L, gone)
            break
        L.batches += 1
        trim = trim_due(S, L)
        unlock(S)
        flush_all(L)
        ur_free_conns(L, gone)
        if trim:
            malloc_trim(0)
        if L.check != NULL or L.unpause != NULL:
            timeout = 0     # connections to close, or to read again, without waiting
        ur_wait(U, timeout)
        # As in loop_run(): input and accepts are gathered without the lock, at most
        # ACCEPT_BUDGET accepts per batch.
        naccepted = 0
        refused = 0
        accept_failed = 0
        nready = ur_harvest(L, U, ready, accepted, &naccepted, &refused, &accept_failed, 0)
        for i in range(nready):
            # Once per batch, not per 16 KiB receive buffer: one call leaves the
            # kernel's request-response mode until this connection sends again.
            ack_big_input(ready[i])
        lock(S)
        engine_clock(&S.eng)
        if refused:
            L.refused += refused
            post_event(S, EV_REFUSED, NULL, NULL, refused)
        if accept_failed:
            post_event(S, EV_ACCEPT_FAILED, NULL, NULL, <uint64_t>accept_failed)
        for i in range(naccepted):
            attach_conn(L, accepted[i])
        for i in range(nready):
            io = ready[i]
            io.ur_ready = 0
            if not io.in_close:
                process_input(L, io)
        if (S.eng.store_add != NULL or S.eng.store_del_len) and not S.store_poked:
            S.store_poked = 1
            poke_fd(S.storefd)
        # A timer armed in this batch that is due before loop 0 wakes: wake it.
        if (L.idx != 0 and S.eng.heap_len and
                (S.timer_wake_ms < 0 or S.eng.heap[0].t.timer_ms < S.timer_wake_ms)):
            S.timer_wake_ms = S.eng.heap[0].t.timer_ms
            poke_fd(S.loops[0].wakefd)
    ur_quiesce(L, U)


cdef void ur_quiesce(Loop *L, UringLoop *U) noexcept nogil:
    """At stop: cancel every operation and take their completions (for up to a second),
    so that the kernel no longer touches connections the IOLoop is about to free."""
    cdef io_uring_sqe *sqe
    cdef IOConn *accepted[1]
    cdef int naccepted = 0, failed = 0, tries
    cdef uint64_t refused = 0
    sqe = ur_sqe(U)
    if sqe != NULL:
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY)
        io_uring_sqe_set_data64(sqe, UD_IGNORE)
    for tries in range(100):
        if U.inflight <= 0:
            break
        ur_wait(U, 10)
        ur_harvest(L, U, NULL, accepted, &naccepted, &refused, &failed, 1)
