# The epoll I/O loops: non-blocking accept/read/write, per-connection buffers, and the
# batch step that feeds every complete packet to the shared engine. They run in native
# threads with the GIL released for their whole life and never touch a Python object.
#
# Thread model (DESIGN.md §3). `--threads N` starts N loops (0 or 1: one loop). Each
# loop owns the connections it was given: their sockets, input buffers and send
# buffers, which only it touches, without a lock. The engine (functions, jobs, queues)
# is one set of structures behind one mutex, taken once per batch, not per packet:
#   1. epoll_wait, then recv() every ready socket into its input buffer and accept
#      pending connections (no lock);
#   2. lock; parse and apply every complete packet; the engine appends replies to the
#      target connections' `outbuf` and puts them on the engine's dirty list;
#   3. still locked, route the dirty list: own connections have `outbuf` moved to their
#      send buffer `wbuf` (a pointer swap when it is empty), connections of other loops
#      go on that loop's `remote` list and the loop is poked through its eventfd;
#   4. unlock; send() every staged buffer, one syscall per connection.
# Loop 0 also runs the engine's timers (epoch jobs, CAN_DO_TIMEOUT); a loop that arms
# an earlier timer pokes it. Accepted connections are handed to loops round robin.
# Text admin lines go to the Python control thread through a C queue and an eventfd;
# only the connection that sent the line waits (its input is held), so binary and text
# replies stay in order. Events worth a log line (protocol errors, refused and dropped
# peers) go to the same thread through a second, bounded queue. Counters are per loop
# and summed when read.
#
# Limits. A peer's memory is bounded where it is produced: packets larger than
# --max-packet are refused from their header (and input buffers grow with the bytes
# that really arrived, never with what a header announces); output is checked where
# the engine's replies are staged or routed, because a connection's output is also made
# by other connections' packets (WORK_* to a foreground client). Past --max-output its
# input is no longer read or parsed until the backlog halves, so it cannot submit more;
# past --max-output-hard it is disconnected like any lost peer. --max-connections is
# checked at accept with an atomic count, so refusing costs no lock.
from libc.stdlib cimport malloc, calloc, realloc, free

cdef extern from "<malloc.h>" nogil:
    int malloc_trim(size_t pad)
from libc.string cimport memcpy, memset, memchr, memcmp, strlen
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from fastgear.buffer cimport (buf_init, buf_free, buf_len, buf_head, buf_reserve,
                              buf_append, buf_consume, buf_shrink, get_be32)
from fastgear.protocol cimport *
from fastgear.engine cimport *
from fastgear.coreconfig cimport CoreConfig, CoreSettings, IO_EPOLL, IO_URING
from fastgear.includes.sys cimport *

import logging
import os
import re

# epoll tags: a connection's tag is its IOConn pointer (16-byte aligned, low bits 0);
# the eventfd and listening sockets are told apart by their low bits.
cdef uint64_t TAG_WAKE = 1
cdef uint64_t TAG_LISTEN = 2
cdef uint64_t TAG_HTTP = 4      # a listener whose connections speak HTTP (-r http)

cdef const char *LINE_TOO_LONG = b"ERR LINE_TOO_LONG Text+line+longer+than+8192+bytes\r\n"

cdef enum:
    MAX_EVENTS = 256
    READ_CHUNK = 65536
    # Read at most this much from one socket per wake-up so one busy peer cannot
    # starve the others; level-triggered epoll brings us back for the rest.
    READ_BUDGET = 1 << 20
    ACCEPT_BUDGET = 256
    # After a large payload has gone through, keep at most this much buffer.
    KEEP_BUFFER = 1 << 20
    # A packet this large is ACKed as it arrives (ack_big_input).
    BIG_INPUT = 16384


cdef inline void poke_fd(int fd) noexcept nogil:
    cdef uint64_t one = 1
    write(fd, &one, 8)


cdef inline void drain_fd(int fd) noexcept nogil:
    cdef uint64_t v
    read(fd, &v, 8)


cdef void set_events(Loop *L, IOConn *io) noexcept nogil:
    cdef epoll_event ev
    if L.ur != NULL:
        ur_set_events(L, io)
        return
    ev.data.ptr = io
    ev.events = EPOLLOUT if io.want_out or io.tls_out_for_in else 0
    if not io.eof and not io.closing and not io.dead and not io.paused:
        ev.events |= EPOLLIN
    epoll_ctl(L.epfd, EPOLL_CTL_MOD, io.c.fd, &ev)


cdef void mark_close(Loop *L, IOConn *io) noexcept nogil:
    if not io.in_close:
        io.in_close = 1
        io.close_next = L.closing
        L.closing = io


cdef void post_event(Shared *S, int kind, IOConn *io, const char *code,
                     uint64_t value) noexcept nogil:
    """(lock) Queue a line for the control thread's log; bounded, then only counted."""
    cdef LogEvent *ev
    if S.ev_len >= MAX_LOG_EVENTS:
        S.ev_dropped += 1
        return
    ev = <LogEvent *>calloc(1, sizeof(LogEvent))
    if ev == NULL:
        S.ev_dropped += 1
        return
    ev.kind = kind
    if io != NULL:
        memcpy(ev.ip, io.c.ip, sizeof(ev.ip))
        ev.ip[sizeof(ev.ip) - 1] = 0
        ev.port = io.port
        ev.conn_id = io.c.id
    ev.code = code
    ev.value = value
    if S.ev_tail != NULL:
        S.ev_tail.next = ev
    else:
        S.ev_head = ev
    S.ev_tail = ev
    S.ev_len += 1
    poke_fd(S.adminfd)


cdef void protocol_error(Loop *L, IOConn *io, const char *code, const char *text) noexcept nogil:
    """Replies already due stay queued; the ERROR goes after them; then we close."""
    L.protocol_errors += 1
    post_event(L.S, EV_PROTOCOL_ERROR, io, code, 0)
    engine_error(&L.S.eng, &io.c, code, text)
    io.closing = 1


cdef void overflow(Shared *S, IOConn *io, size_t pending) noexcept nogil:
    """(lock, any thread) io's unsent output passed --max-output-hard: it is treated as
    lost now (its jobs requeued or detached), so nothing more is produced for it; the
    owner closes the socket the next time it stages io."""
    io.over = 1
    post_event(S, EV_OUTPUT_HARD, io, NULL, pending)
    conn_detach(&S.eng, &io.c)
    buf_free(&io.c.outbuf)


cdef inline int output_over(Shared *S, IOConn *io) noexcept nogil:
    """(owner) More is waiting to be sent to io than --max-output allows."""
    return S.max_output != 0 and (buf_len(&io.c.outbuf) + buf_len(&io.wbuf)
                                  + buf_len(&io.sbuf) > S.max_output)


cdef void pause_input(Loop *L, IOConn *io) noexcept nogil:
    """(owner) Stop reading and parsing io's input until its output drains."""
    if not io.paused:
        io.paused = 1
        L.paused += 1
        set_events(L, io)


cdef int queue_admin(Shared *S, IOConn *io, const char *line, size_t n) noexcept nogil:
    cdef AdminReq *r = <AdminReq *>malloc(sizeof(AdminReq) + n + 1)
    if r == NULL:
        return -1
    r.fd = io.c.fd
    r.conn_id = io.c.id
    r.loopback = io.loopback
    r.port = io.port
    memcpy(r.ip, io.c.ip, sizeof(r.ip))
    memcpy(r.cn, io.cn, sizeof(r.cn))
    r.ip[sizeof(r.ip) - 1] = 0
    r.cn[sizeof(r.cn) - 1] = 0
    r.line = <char *>(r + 1)
    memcpy(r.line, line, n)
    r.line[n] = 0
    r.len = n
    r.next = NULL
    if S.admin_tail != NULL:
        S.admin_tail.next = r
    else:
        S.admin_head = r
    S.admin_tail = r
    io.admin_pending = 1
    poke_fd(S.adminfd)
    return 0


cdef int drain_gate(Shared *S, Conn *c, uint32_t t) noexcept nogil:
    """(lock) During the SIGTERM grace period running jobs may finish but none start:
    GRAB gets NO_JOB, PRE_SLEEP is not recorded (so the worker is not woken into a
    NOOP/GRAB/NO_JOB cycle), and submissions are refused so a client can go to another
    server. Returns 1 when the packet was answered here."""
    if cmd_kind(t) == KIND_GRAB:
        conn_dirty(&S.eng, c)
        encode0(&c.outbuf, CMD_NO_JOB)
        return 1
    if t == CMD_PRE_SLEEP:
        return 1
    if cmd_kind(t) == KIND_SUBMIT:
        engine_error(&S.eng, c, b"SHUTTING_DOWN",
                     b"Server is shutting down; submit the job to another server")
        return 1
    return 0


cdef int fence_gate(Shared *S, IOConn *io, uint32_t t) noexcept nogil:
    """(lock) The store's lease on the shared database lapsed (another server may be
    claiming this one's jobs): no job starts and no submission is acknowledged until the
    store has re-registered. A PRE_SLEEP is kept aside rather than recorded, because the
    engine would answer it with a NOOP at once while work is queued; it is handed to the
    engine when the fence lifts. Returns 1 when the packet was answered here."""
    if cmd_kind(t) == KIND_GRAB:
        io.fence_sleep = 0
        conn_dirty(&S.eng, &io.c)
        encode0(&io.c.outbuf, CMD_NO_JOB)
        return 1
    if t == CMD_PRE_SLEEP:
        io.fence_sleep = 1
        return 1
    if cmd_kind(t) == KIND_SUBMIT:
        engine_error(&S.eng, &io.c, b"QUEUE_ERROR",
                     b"Store lease lost (database unreachable); submit the job to another server")
        return 1
    return 0


include "iothreads_http.pxi"
include "iothreads_tls.pxi"


cdef void process_input(Loop *L, IOConn *io) noexcept nogil:
    """(lock) Parse and apply every complete packet in io's input buffer, until its
    output backlog passes --max-output."""
    cdef Packet pkt
    cdef int st, r
    cdef size_t have, grow
    cdef Shared *S = L.S
    cdef Conn *c = &io.c
    if io.ssl != NULL:
        tls_locked(L, io)
    if io.http:
        http_input(L, io)
    while (not io.http and not io.closing and not io.admin_pending and not io.dead
           and not io.over):
        if output_over(S, io):
            pause_input(L, io)
            break
        st = parse_packet(buf_head(&io.inbuf), buf_len(&io.inbuf), S.max_packet, &pkt)
        if st == P_PACKET:
            if S.draining and drain_gate(S, c, pkt.type):
                r = E_OK
            elif S.fenced and fence_gate(S, io, pkt.type):
                r = E_OK
            else:
                r = engine_packet(&S.eng, c, &pkt)
            buf_consume(&io.inbuf, pkt.size)
            if r != E_OK:
                protocol_error(L, io, b"MEMORY_ALLOCATION_FAILURE", b"Out of memory")
        elif st == P_TEXT:
            if queue_admin(S, io, pkt.f[0], pkt.flen[0]) != 0:
                io.closing = 1
            buf_consume(&io.inbuf, pkt.size)
        elif st == P_NEED_MORE:
            # Room for the rest of the packet, but never more than doubling what has
            # arrived: a header announcing a large body costs nothing until the body
            # comes (10,000 peers announcing --max-packet each must not reserve it).
            have = buf_len(&io.inbuf)
            if pkt.need > have:
                grow = pkt.need - have
                if grow > have and grow > READ_CHUNK:
                    grow = have if have > READ_CHUNK else READ_CHUNK
                if buf_reserve(&io.inbuf, grow) != 0:
                    protocol_error(L, io, b"MEMORY_ALLOCATION_FAILURE", b"Out of memory")
            break
        elif st == P_BAD_MAGIC:
            protocol_error(L, io, b"INVALID_MAGIC", b"Request magic expected")
        elif st == P_BAD_TYPE:
            protocol_error(L, io, b"INVALID_COMMAND", b"Unknown packet type")
        elif st == P_BAD_ARGS:
            protocol_error(L, io, b"INVALID_PACKET",
                           b"Packet arguments missing within the declared length")
        elif st == P_TOO_LARGE:
            protocol_error(L, io, b"ARGUMENT_TOO_LARGE",
                           b"Packet larger than the server allows (--max-packet)")
        else:
            L.protocol_errors += 1
            post_event(S, EV_PROTOCOL_ERROR, io, b"LINE_TOO_LONG", 0)
            buf_append(&c.outbuf, LINE_TOO_LONG, strlen(LINE_TOO_LONG))
            conn_dirty(&S.eng, c)
            io.closing = 1
    # A paused connection's unread input waits, even after its peer's EOF.
    if io.eof and not io.admin_pending and not io.paused:
        io.closing = 1
    if io.closing or io.dead or io.over:
        buf_consume(&io.inbuf, buf_len(&io.inbuf))
        if not c.detached:
            # Let the peer's jobs go now; what is queued for it is still flushed. Only
            # once: re-staging it on every later event would keep it "being flushed"
            # and so never closed (a peer gone while we answered reports HUP forever).
            conn_detach(&S.eng, c)
            conn_dirty(&S.eng, c)
        if io.dead:
            mark_close(L, io)


cdef void ack_big_input(IOConn *io) noexcept nogil:
    """(no lock) ACK now, not after the delayed-ACK timer, while a large packet is
    still arriving. A peer with a small send buffer (libgearman sets 32 KiB) can only
    send its next part once this one is ACKed, and a request-response connection is in
    the kernel's "pingpong" mode, whose ACKs wait for data to ride on: none comes until
    the packet is whole, so each part waited out the timer (a 10 MiB doBackground from
    PHP took 5.2 s on loopback, 5.4 s on gearmand). TCP_QUICKACK leaves that mode and
    ACKs what was read: one call per read (per batch on io_uring), and only while a
    binary packet of BIG_INPUT bytes or more is incomplete; the header is read as
    parse_packet() reads it (either magic)."""
    cdef const char *h = buf_head(&io.inbuf)
    cdef size_t have = buf_len(&io.inbuf)
    cdef size_t size
    cdef int one = 1
    if io.dead or io.eof or have < HEADER_SIZE or memcmp(h, b"\0RE", 3) != 0:
        return
    size = HEADER_SIZE + <size_t>get_be32(h + 8)
    if size >= BIG_INPUT and have < size:
        setsockopt(io.c.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one))


cdef int read_conn(Loop *L, IOConn *io) noexcept nogil:
    """(no lock) recv() what the socket has; 1 if there is input or news to process."""
    cdef ssize_t n
    cdef size_t total = 0, space
    cdef Conn *c = &io.c
    if io.ssl != NULL:
        n = tls_read(L, io)
        ack_big_input(io)
        return <int>n
    while total < READ_BUDGET:
        if buf_reserve(&io.inbuf, READ_CHUNK) != 0:
            io.dead = 1
            break
        space = io.inbuf.cap - io.inbuf.end
        n = recv(c.fd, io.inbuf.data + io.inbuf.end, space, 0)
        if n > 0:
            io.inbuf.end += <size_t>n
            total += <size_t>n
            if <size_t>n < space:
                break       # short read: the socket is drained
            continue
        if n == 0:
            io.eof = 1
            break
        if errno == EINTR:
            continue
        if errno != EAGAIN:
            io.dead = 1     # reset by the peer: nothing can be flushed to it any more
            io.eof = 1
        break
    if io.eof or io.dead:
        set_events(L, io)
    elif total:
        ack_big_input(io)
    return total > 0 or io.eof or io.dead


cdef bint trim_due(Shared *S, Loop *L) noexcept nogil:
    """(lock) Whether the queue has just emptied after a burst of --trim-after-jobs or
    more: the caller then gives the freed job memory back to the system with
    malloc_trim, outside the lock. Once per burst: the peak is reset here."""
    if (S.eng.jobs == 0 and S.eng.trim_after_jobs != 0
            and S.eng.jobs_peak >= S.eng.trim_after_jobs):
        S.eng.jobs_peak = 0
        L.trims += 1
        return True
    return False


cdef void stage(Loop *L, IOConn *io) noexcept nogil:
    """(lock) Move what the engine queued for io into its send buffer, and enforce the
    output bounds: past --max-output stop reading io, past --max-output-hard drop it."""
    cdef Shared *S = L.S
    cdef Conn *c = &io.c
    cdef size_t pending
    cdef Buf spare
    if io.http and buf_len(&c.outbuf):
        http_translate(L, io)
    if buf_len(&c.outbuf):
        if buf_len(&io.wbuf) == 0:
            # Swap, not free-and-allocate: the engine writes the next batch into the
            # memory this one's send emptied.
            spare = io.wbuf
            io.wbuf = c.outbuf
            c.outbuf = spare
            c.outbuf.start = 0
            c.outbuf.end = 0
        elif buf_append(&io.wbuf, buf_head(&c.outbuf), buf_len(&c.outbuf)) == 0:
            buf_consume(&c.outbuf, buf_len(&c.outbuf))
        else:
            io.dead = 1
    pending = buf_len(&io.wbuf) + buf_len(&io.sbuf)     # sbuf: io_uring's send in flight
    if not io.over and S.max_output_hard and pending > S.max_output_hard and not io.dead:
        overflow(S, io, pending)
    if io.over:
        if not io.in_close:
            L.hard_closed += 1
            io.dead = 1
            buf_free(&io.wbuf)
            fg_store_size(&io.wlen, 0)
            mark_close(L, io)
        return
    fg_store_size(&io.wlen, pending)
    if S.max_output and pending > S.max_output and not io.dead:
        pause_input(L, io)
    if not io.in_flush:
        io.in_flush = 1
        io.flush_next = L.flush
        L.flush = io


cdef void route(Shared *S, Loop *me) noexcept nogil:
    """(lock) Hand every dirty connection to its owner: staged here if it is ours,
    otherwise queued on its loop's remote list and that loop poked once. Output to
    another loop's connection is bounded here, as it is made: the owner may be slow to
    come round, and a foreground client's results are produced by its workers' loops."""
    cdef Conn *c
    cdef IOConn *io
    cdef Loop *o
    cdef size_t pending
    while S.eng.dirty != NULL:
        c = S.eng.dirty
        S.eng.dirty = c.dirty_next
        c.dirty = 0
        c.dirty_next = NULL
        io = io_of(c)
        if io.in_close:
            continue
        if me != NULL and io.thread == me.idx:
            stage(me, io)
            continue
        if S.max_output_hard and not io.over:
            pending = buf_len(&c.outbuf) + fg_load_size(&io.wlen)
            if pending > S.max_output_hard:
                overflow(S, io, pending)
        o = &S.loops[io.thread]
        if not io.in_remote:
            io.in_remote = 1
            io.remote_next = o.remote
            o.remote = io
        if not o.poke_pending:
            o.poke_pending = 1
            poke_fd(o.wakefd)


cdef void collect(Loop *L) noexcept nogil:
    """(lock) Everything this loop must act on after a batch."""
    cdef Shared *S = L.S
    cdef IOConn *io
    L.poke_pending = 0
    while L.resume != NULL:
        io = L.resume
        L.resume = io.resume_next
        io.in_resume = 0
        if io.admin_close:
            io.closing = 1
        if not io.dead and not io.in_close:
            process_input(L, io)
    while L.unpause != NULL:
        io = L.unpause
        L.unpause = io.unpause_next
        io.in_unpause = 0
        if not io.dead and not io.in_close and not io.paused:
            process_input(L, io)
    while L.remote != NULL:
        io = L.remote
        L.remote = io.remote_next
        io.in_remote = 0
        if not io.in_close:
            stage(L, io)
    route(S, L)
    # Closing connections whose last bytes went out (or that died) are closed now.
    while L.check != NULL:
        io = L.check
        L.check = io.check_next
        io.check_next = NULL
        io.in_check = 0
        if io.dead or (io.closing and not io.admin_pending and buf_len(&io.c.outbuf) == 0
                       and buf_len(&io.wbuf) == 0 and buf_len(&io.sbuf) == 0
                       and not io.in_flush):
            mark_close(L, io)


cdef void flush_conn(Loop *L, IOConn *io) noexcept nogil:
    """(no lock) send() io's staged bytes; register for EPOLLOUT if the socket is full;
    resume reading a paused connection once its backlog has halved."""
    cdef ssize_t n
    cdef int resume = 0
    while buf_len(&io.wbuf) and not io.dead:
        if io.ssl != NULL:
            n = tls_send(io, buf_head(&io.wbuf), buf_len(&io.wbuf))
        else:
            n = send(io.c.fd, buf_head(&io.wbuf), buf_len(&io.wbuf), MSG_NOSIGNAL)
        if n > 0:
            buf_consume(&io.wbuf, <size_t>n)
            continue
        if n < 0 and errno == EINTR:
            continue
        if n < 0 and errno == EAGAIN:
            break
        io.dead = 1
    if io.dead:
        buf_consume(&io.wbuf, buf_len(&io.wbuf))
    fg_store_size(&io.wlen, buf_len(&io.wbuf))
    if (io.paused and not io.dead and not io.in_close
            and buf_len(&io.wbuf) <= L.S.max_output // 2):
        io.paused = 0
        resume = 1
        # Input already buffered is parsed in the next locked section.
        if not io.in_unpause:
            io.in_unpause = 1
            io.unpause_next = L.unpause
            L.unpause = io
    if buf_len(&io.wbuf):
        if not io.want_out:
            io.want_out = 1
            resume = 1
        if resume:
            set_events(L, io)
        return
    buf_shrink(&io.wbuf, KEEP_BUFFER)
    buf_shrink(&io.inbuf, KEEP_BUFFER)
    if io.want_out:
        io.want_out = 0
        resume = 1
    if resume:
        set_events(L, io)


cdef void flush_all(Loop *L) noexcept nogil:
    cdef IOConn *io
    while L.flush != NULL:
        io = L.flush
        L.flush = io.flush_next
        io.in_flush = 0
        io.flush_next = NULL
        if L.ur != NULL:
            ur_flush_conn(L, io)
        else:
            flush_conn(L, io)
        # Its own link: a connection on this list may be staged for flushing again
        # before the list is processed.
        if (io.dead or io.closing) and not io.in_check and not io.in_close:
            io.in_check = 1
            io.check_next = L.check
            L.check = io


cdef IOConn *reap(Loop *L) noexcept nogil:
    """(lock) Take closing connections out of the engine and the fd table; returns
    them for the caller to close and free once the lock is released."""
    cdef IOConn *io
    cdef IOConn *gone = NULL
    cdef Shared *S = L.S
    while L.closing != NULL:
        io = L.closing
        L.closing = io.close_next
        conn_detach(&S.eng, &io.c)
        tls_unlink(S, io)
        if <size_t>io.c.fd < S.conns_cap and S.conns[io.c.fd] == io:
            S.conns[io.c.fd] = NULL
        io.close_next = gone
        gone = io
    return gone


cdef void free_conns(Loop *L, IOConn *gone) noexcept nogil:
    cdef IOConn *io
    if L.ur != NULL:
        ur_free_conns(L, gone)
        return
    while gone != NULL:
        io = gone
        gone = io.close_next
        epoll_ctl(L.epfd, EPOLL_CTL_DEL, io.c.fd, NULL)
        # Counted out before the peer can see the close and connect again.
        fg_add_i64(&L.S.open_conns, -1)
        tls_free(L.S, io)
        close(io.c.fd)
        buf_free(&io.inbuf)
        buf_free(&io.c.outbuf)
        buf_free(&io.wbuf)
        buf_free(&io.hr.body)
        free(io)


cdef int is_loopback(sockaddr_storage *ss) noexcept nogil:
    cdef sockaddr_in *s4
    cdef sockaddr_in6 *s6
    cdef int i
    if ss.ss_family == AF_INET:
        s4 = <sockaddr_in *>ss
        return (<unsigned char *>&s4.sin_addr.s_addr)[0] == 127
    if ss.ss_family == AF_INET6:
        s6 = <sockaddr_in6 *>ss
        for i in range(10):
            if s6.sin6_addr.s6_addr[i] != 0:
                return 0
        if s6.sin6_addr.s6_addr[10] == 0xff and s6.sin6_addr.s6_addr[11] == 0xff:
            return s6.sin6_addr.s6_addr[12] == 127
        for i in range(10, 15):
            if s6.sin6_addr.s6_addr[i] != 0:
                return 0
        return s6.sin6_addr.s6_addr[15] == 1
    return 1    # unix sockets are local


cdef const char *BUSY_PACKET = (b"\0RES\0\0\0\x13\0\0\0\x38SERVER_BUSY\0"
                                b"Connection limit reached (--max-connections)")
cdef enum:
    BUSY_PACKET_LEN = 12 + 0x38


cdef void refuse(int fd, uint8_t tls) noexcept nogil:
    """(no lock) One ERROR packet, then close. The FIN goes out before close(), and
    what the peer already sent is read first, so the close is not a reset that could
    discard the ERROR on the peer's side. A TLS listener's peer expects a handshake, not
    a clear-text packet: it only gets the close."""
    cdef char scratch[512]
    if not tls:
        send(fd, BUSY_PACKET, BUSY_PACKET_LEN, MSG_NOSIGNAL | MSG_DONTWAIT)
    shutdown(fd, SHUT_WR)
    recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT)
    close(fd)


cdef void tune_socket(Shared *S, int fd) noexcept nogil:
    cdef int one = 1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    # Every accepted socket gets SO_KEEPALIVE, as in gearmand; --keepalive-* tune it.
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one))
    if S.keepalive:
        if S.keep_idle > 0:
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &S.keep_idle, sizeof(int))
        if S.keep_intvl > 0:
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &S.keep_intvl, sizeof(int))
        if S.keep_cnt > 0:
            setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &S.keep_cnt, sizeof(int))


cdef int accept_some(Loop *L, int lfd, uint8_t http, uint8_t tls, IOConn **out, int room,
                     uint64_t *refused, int *failed) noexcept nogil:
    """(no lock) Accept up to `room` pending connections from one listener into new,
    not yet attached IOConns; over --max-connections (or out of descriptors) a peer is
    refused at once. Returns how many were accepted."""
    cdef Shared *S = L.S
    cdef sockaddr_storage ss
    cdef socklen_t sl
    cdef int fd, n = 0, _try
    cdef IOConn *io
    for _try in range(room):
        sl = sizeof(ss)
        fd = accept4(lfd, <sockaddr *>&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno == EINTR or errno == ECONNABORTED:
                continue
            if (errno == EMFILE or errno == ENFILE) and L.spare_fd >= 0:
                # Level-triggered: a peer left in the backlog would wake us forever.
                # Give up the spare descriptor to take it off the queue and refuse it.
                failed[0] = errno
                close(L.spare_fd)
                fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
                if fd >= 0:
                    refuse(fd, tls)
                    refused[0] += 1
                L.spare_fd = c_open(b"/dev/null", O_RDONLY | O_CLOEXEC)
                if fd >= 0:
                    continue
            elif (errno != EAGAIN and errno != EBADF and errno != ENOTSOCK
                  and errno != EINVAL):
                # (Those three: the listener was closed by stop_accepting() after
                # epoll_wait reported it; nothing to report.)
                failed[0] = errno
            break
        if (S.max_connections and
                fg_add_i64(&S.open_conns, 1) > S.max_connections):
            fg_add_i64(&S.open_conns, -1)
            refuse(fd, tls)
            refused[0] += 1
            continue
        if not S.max_connections:
            fg_add_i64(&S.open_conns, 1)
        io = <IOConn *>calloc(1, sizeof(IOConn))
        if io == NULL:
            fg_add_i64(&S.open_conns, -1)
            close(fd)
            continue
        tune_socket(S, fd)
        io.c.fd = fd
        io.http = http
        buf_init(&io.inbuf)
        buf_init(&io.c.outbuf)
        buf_init(&io.wbuf)
        if ss.ss_family == AF_INET:
            inet_ntop(AF_INET, &(<sockaddr_in *>&ss).sin_addr, io.c.ip, sizeof(io.c.ip))
            io.port = ntohs((<sockaddr_in *>&ss).sin_port)
        elif ss.ss_family == AF_INET6:
            inet_ntop(AF_INET6, &(<sockaddr_in6 *>&ss).sin6_addr, io.c.ip, sizeof(io.c.ip))
            io.port = ntohs((<sockaddr_in6 *>&ss).sin6_port)
        io.loopback = <uint8_t>is_loopback(&ss)
        out[n] = io
        n += 1
    return n


cdef void attach_conn(Loop *L, IOConn *io) noexcept nogil:
    """(lock) Register an accepted connection and hand it to a loop in turn."""
    cdef Shared *S = L.S
    cdef IOConn **nt
    cdef size_t ncap
    cdef epoll_event ev
    cdef Loop *o
    cdef int fd = io.c.fd
    if <size_t>fd >= S.conns_cap:
        ncap = S.conns_cap * 2 if S.conns_cap else 1024
        while ncap <= <size_t>fd:
            ncap *= 2
        nt = <IOConn **>realloc(S.conns, ncap * sizeof(IOConn *))
        if nt == NULL:
            tls_free(S, io)
            close(fd)
            fg_add_i64(&S.open_conns, -1)
            free(io)
            return
        memset(nt + S.conns_cap, 0, (ncap - S.conns_cap) * sizeof(IOConn *))
        S.conns = nt
        S.conns_cap = ncap
    io.thread = S.next_loop
    S.next_loop = (S.next_loop + 1) % S.nloops
    conn_attach(&S.eng, &io.c)
    S.conns[fd] = io
    L.accepted += 1
    if L.ur != NULL:
        # Only its owner may queue entries on its ring: the owner arms the receive
        # when it stages the connection (ur_flush_conn), as for any remote output.
        o = &S.loops[io.thread]
        if not io.in_remote:
            io.in_remote = 1
            io.remote_next = o.remote
            o.remote = io
        if o != L and not o.poke_pending:
            o.poke_pending = 1
            poke_fd(o.wakefd)
        return
    ev.events = EPOLLIN
    ev.data.ptr = io
    epoll_ctl(S.loops[io.thread].epfd, EPOLL_CTL_ADD, fd, &ev)
    if io.ssl != NULL:
        tls_attach(S, io)
        o = &S.loops[io.thread]
        if o != L and o.hs_head == io and not o.poke_pending:
            # The owner may sleep without a deadline (its list was empty when it last
            # set its epoll timeout): wake it to time this handshake out. With older
            # entries its timeout already ends no later than theirs.
            o.poke_pending = 1
            poke_fd(o.wakefd)


cdef void loop_run(Loop *L) noexcept nogil:
    cdef Shared *S = L.S
    cdef epoll_event events[MAX_EVENTS]
    cdef IOConn *ready[MAX_EVENTS]
    cdef IOConn *accepted[ACCEPT_BUDGET]
    cdef int n, i, k, nready, naccepted, accept_failed
    cdef uint64_t refused
    cdef int64_t timeout
    cdef uint64_t tag
    cdef IOConn *io
    cdef IOConn *gone
    cdef bint trim
    cdef sigset_t all_signals
    # Signals belong to the Python control thread.
    sigfillset(&all_signals)
    pthread_sigmask(SIG_BLOCK, &all_signals, NULL)
    lock(S)
    while True:
        timeout = -1
        if L.idx == 0:
            engine_clock(&S.eng)
            timeout = engine_timers(&S.eng)
            S.timer_wake_ms = S.eng.now_ms + timeout if timeout >= 0 else -1
        collect(L)
        timeout = tls_expire(L, timeout)
        gone = reap(L)
        if S.stopping:
            unlock(S)
            flush_all(L)
            free_conns(L, gone)
            break
        L.batches += 1
        trim = trim_due(S, L)
        unlock(S)
        flush_all(L)
        free_conns(L, gone)
        if trim:
            malloc_trim(0)
        if L.check != NULL or L.unpause != NULL:
            timeout = 0     # connections to close, or to read again, without waiting
        n = epoll_wait(L.epfd, events, MAX_EVENTS,
                       <int>timeout if timeout < 0x7fffffff else 0x7fffffff)
        # Reads and accepts need no lock: sockets and input buffers belong to this
        # loop, and the connection count is atomic. At most ACCEPT_BUDGET accepts per
        # wake-up, so a reconnect storm is absorbed over several batches while the
        # connections already here keep being served in between.
        nready = 0
        naccepted = 0
        refused = 0
        accept_failed = 0
        for i in range(n if n > 0 else 0):
            tag = events[i].data.u64
            if tag == TAG_WAKE:
                drain_fd(L.wakefd)
            elif tag & TAG_LISTEN:
                k = accept_some(L, <int>(tag >> 4), (tag & TAG_HTTP) != 0,
                                (tag & TAG_TLS) != 0, accepted + naccepted,
                                ACCEPT_BUDGET - naccepted, &refused, &accept_failed)
                if tag & TAG_TLS:
                    k = tls_accepted(L, accepted + naccepted, k)
                naccepted += k
            else:
                # Only this loop frees its connections, after the batch: the pointer
                # is valid, and in_close is only written by this thread.
                io = <IOConn *>events[i].data.ptr
                if io.in_close:
                    continue
                if events[i].events & EPOLLOUT:
                    if not io.in_flush:
                        io.in_flush = 1
                        io.flush_next = L.flush
                        L.flush = io
                if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)
                        or tls_read_on_out(io, events[i].events)):
                    if io.eof and events[i].events & (EPOLLERR | EPOLLHUP):
                        # Both directions are gone: nothing left can be delivered.
                        io.dead = 1
                    if io.paused:
                        # Not reading it, but a reset peer can no longer take output.
                        if events[i].events & (EPOLLERR | EPOLLHUP):
                            io.dead = 1
                            io.eof = 1
                            ready[nready] = io
                            nready += 1
                    elif read_conn(L, io):
                        ready[nready] = io
                        nready += 1
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


include "iothreads_uring.pxi"


# LogEvent kinds, for the control thread that formats them.
EVENT_PROTOCOL_ERROR = EV_PROTOCOL_ERROR
EVENT_OUTPUT_HARD = EV_OUTPUT_HARD
EVENT_REFUSED = EV_REFUSED
EVENT_ACCEPT_FAILED = EV_ACCEPT_FAILED
EVENT_TLS_FAILED = EV_TLS_FAILED


def _log_refused(refused):
    # Stored rows the engine would not take back (over this server's name or unique
    # key limits, or out of memory) stay in the store: nothing is deleted or lost.
    if refused:
        logging.getLogger("fastgear.store").error(
            "%d stored jobs not taken back (left in the store), e.g. row %d of %r: %s",
            len(refused), refused[0][0], refused[0][1],
            "over the function name or unique key limit" if refused[0][2] == E_REFUSED
            else "out of memory")


def _check(int rc, what):
    if rc < 0:
        raise OSError(f"{what} failed")
    return rc


cdef class IOLoop:
    """Python handle on the loops and the shared engine. The composition root
    (server.py) creates it, gives it listening sockets, runs `run(i)` for each loop in
    its own thread, and serves admin lines from the control thread with `admin_take()`
    / `admin_reply()`. Every method that reads engine state takes the engine lock with
    the GIL released; the read-only views for admin and monitoring are in snapshot.pyx."""

    def __cinit__(self, CoreSettings settings not None):
        """Everything configured at start-up comes in `settings` (coreconfig.pyx)."""
        cdef const CoreConfig *cfg = &settings.c
        cdef int i, threads = cfg.threads
        cdef epoll_event ev
        cdef Loop *L
        if threads < 1:
            threads = 1
        if threads > MAX_LOOPS:
            raise ValueError(f"at most {MAX_LOOPS} I/O threads")
        if cfg.max_output_hard and cfg.max_output and cfg.max_output_hard < cfg.max_output:
            raise ValueError("max_output_hard must not be less than max_output")
        self.S = <Shared *>calloc(1, sizeof(Shared))
        if self.S == NULL:
            raise MemoryError()
        self.S.loops = <Loop *>calloc(threads, sizeof(Loop))
        if self.S.loops == NULL:
            raise MemoryError()
        if engine_init(&self.S.eng, cfg) != 0:
            raise MemoryError()
        pthread_mutex_init(&self.S.lock, NULL)
        self.S.max_packet = cfg.max_packet
        # Per-connection I/O limits (0: none) and the keepalive tuning of accepted sockets.
        self.S.max_output = cfg.max_output
        self.S.max_output_hard = cfg.max_output_hard
        self.S.max_connections = cfg.max_connections if cfg.max_connections > 0 else 0
        self.S.keepalive = cfg.keepalive
        self.S.keep_idle = cfg.keep_idle
        self.S.keep_intvl = cfg.keep_intvl
        self.S.keep_cnt = cfg.keep_cnt
        self.S.timer_wake_ms = -1
        self.S.adminfd = _check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
        self.S.storefd = _check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
        for i in range(threads):
            L = &self.S.loops[i]
            L.S = self.S
            L.idx = i
            L.epfd = -1
            L.wakefd = -1
            L.spare_fd = c_open(b"/dev/null", O_RDONLY | O_CLOEXEC)
            self.S.nloops += 1
        self.io_backend = "epoll"
        self.io_fallback = None
        if cfg.io != IO_EPOLL:
            why = self._start_uring()
            if why is not None and cfg.io == IO_URING:
                raise OSError(f"--io uring: io_uring is not available here ({why})")
            self.io_fallback = why
        for i in range(threads):
            L = &self.S.loops[i]
            # io_uring loops too: their listeners are watched through it (ur_arm_listen).
            L.epfd = _check(epoll_create1(EPOLL_CLOEXEC), "epoll_create1")
            if L.ur != NULL:
                # Read through the ring, which waits for it: a blocking eventfd.
                L.wakefd = _check(eventfd(0, EFD_CLOEXEC), "eventfd")
                continue
            L.wakefd = _check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
            ev.events = EPOLLIN
            ev.data.u64 = TAG_WAKE
            epoll_ctl(L.epfd, EPOLL_CTL_ADD, L.wakefd, &ev)

    def _start_uring(self):
        """Give every loop an io_uring; None, or why io_uring cannot be used here (then
        no loop has one). FASTGEAR_IO_URING_DISABLE=1 acts as if the kernel forbade it
        (the tests' way to reach the fallback)."""
        cdef int i, rc = 0
        if os.environ.get("FASTGEAR_IO_URING_DISABLE", "") not in ("", "0"):
            return ("io_uring_queue_init: Operation not permitted "
                    "(FASTGEAR_IO_URING_DISABLE is set)")
        release = os.uname().release
        m = re.match(r"(\d+)\.(\d+)", release)
        if m is None or (int(m.group(1)), int(m.group(2))) < (6, 0):
            return f"Linux {release} has no multishot receive; it needs 6.0 or later"
        for i in range(self.S.nloops):
            rc = ur_create(&self.S.loops[i])
            if rc < 0:
                break
        if rc >= 0:
            self.S.uring = 1
            self.io_backend = "io_uring"
            return None
        for i in range(self.S.nloops):
            ur_destroy(&self.S.loops[i])
        return f"io_uring set-up: {os.strerror(-rc)}"

    def __dealloc__(self):
        self._free()

    def close(self):
        """Free everything once the loops and the store thread have stopped. Returns the
        engine's allocations that were never given back: counted in the debug build
        (FASTGEAR_DEBUG=1), where the server logs them as an error; 0 otherwise."""
        self._free()
        return self.leaked

    cdef void _free(self) noexcept:
        cdef IOConn *io
        cdef AdminReq *r
        cdef LogEvent *ev
        cdef size_t i
        cdef int k
        if self.S == NULL:
            return
        # Connections leave the engine first, so that what they registered and held is
        # freed by the engine like on any disconnect (the lock: engine entry points
        # check it in the debug build).
        lock(self.S)
        for i in range(self.S.conns_cap):
            io = self.S.conns[i]
            if io != NULL and not io.c.detached:
                conn_detach(&self.S.eng, &io.c)
        self.S.eng.dirty = NULL
        unlock(self.S)
        for i in range(self.S.conns_cap):
            io = self.S.conns[i]
            if io != NULL:
                tls_free(self.S, io)
                close(io.c.fd)
                buf_free(&io.inbuf)
                buf_free(&io.c.outbuf)
                buf_free(&io.wbuf)
                buf_free(&io.sbuf)
                buf_free(&io.hr.body)
                free(io)
        free(self.S.conns)
        while self.S.admin_head != NULL:
            r = self.S.admin_head
            self.S.admin_head = r.next
            free(r)
        while self.S.ev_head != NULL:
            ev = self.S.ev_head
            self.S.ev_head = ev.next
            free(ev)
        engine_free(&self.S.eng)
        self.leaked = engine_live_allocs(&self.S.eng) + tls_close_ctx(self.S)
        for k in range(self.S.nloops):
            ur_destroy(&self.S.loops[k])
            if self.S.loops[k].epfd >= 0:
                close(self.S.loops[k].epfd)
            if self.S.loops[k].wakefd >= 0:
                close(self.S.loops[k].wakefd)
            if self.S.loops[k].spare_fd >= 0:
                close(self.S.loops[k].spare_fd)
        free(self.S.loops)
        close(self.S.adminfd)
        close(self.S.storefd)
        pthread_mutex_destroy(&self.S.lock)
        free(self.S)
        self.S = NULL

    @property
    def threads(self):
        return self.S.nloops

    def set_draining(self, bint draining):
        """SIGTERM grace period: running jobs finish, no job starts, submissions get
        ERROR SHUTTING_DOWN."""
        with nogil:
            lock(self.S)
            self.S.draining = draining
            unlock(self.S)

    def events_take(self):
        """([(kind, ip, port, conn_id, code, value)], dropped): events the loops want
        logged, oldest first, and how many were only counted since the last call."""
        cdef LogEvent *head
        cdef LogEvent *ev
        cdef uint64_t dropped
        with nogil:
            lock(self.S)
            head = self.S.ev_head
            self.S.ev_head = NULL
            self.S.ev_tail = NULL
            self.S.ev_len = 0
            dropped = self.S.ev_dropped
            self.S.ev_dropped = 0
            unlock(self.S)
        out = []
        while head != NULL:
            ev = head
            head = ev.next
            out.append((ev.kind, ev.ip.decode("ascii", "replace"), ev.port, ev.conn_id,
                        ev.code.decode("ascii", "replace") if ev.code != NULL else "",
                        ev.value))
            free(ev)
        return out, dropped

    def io_stats(self):
        """The I/O layer's counters, summed over the loops."""
        cdef int k
        cdef uint64_t refused = 0, paused = 0, hard = 0, accepted = 0, errors = 0
        cdef uint64_t trims = 0
        with nogil:
            lock(self.S)
            for k in range(self.S.nloops):
                refused += self.S.loops[k].refused
                paused += self.S.loops[k].paused
                hard += self.S.loops[k].hard_closed
                accepted += self.S.loops[k].accepted
                errors += self.S.loops[k].protocol_errors
                trims += self.S.loops[k].trims
            unlock(self.S)
        return {"open_connections": fg_load_i64(&self.S.open_conns), "accepted": accepted,
                "refused": refused, "paused": paused,
                "output_hard_closed": hard, "protocol_errors": errors,
                "memory_trims": trims, "lock_held_ns": self.S.lock_ns,
                "lock_holds": self.S.lock_holds, "max_connections": self.S.max_connections,
                "max_output": self.S.max_output, "max_output_hard": self.S.max_output_hard,
                "max_packet": self.S.max_packet}

    def add_listener(self, int fd, bint http=False, bint tls=False):
        """Every loop watches the listener (EPOLLEXCLUSIVE: one wakes per connection);
        whoever accepts hands the connection to the next loop in turn. `http`: its
        connections speak gearmand's HTTP protocol (-r http). `tls`: they speak TLS
        (tls_configure() first)."""
        cdef epoll_event ev
        cdef int k
        if self.S.nlisten >= MAX_LISTENERS:
            raise ValueError("too many listening sockets")
        if tls and self.S.ssl_ctx == NULL:
            raise ValueError("a TLS listener needs tls_configure() first")
        self.S.listen_fds[self.S.nlisten] = fd
        self.S.listen_http[self.S.nlisten] = http
        self.S.nlisten += 1
        for k in range(self.S.nloops):
            # An io_uring loop polls its epoll set through the ring; EPOLLEXCLUSIVE is
            # for epoll_wait sleepers, so there every loop is woken, as with a poll entry.
            ev.events = EPOLLIN | (0 if self.S.loops[k].ur != NULL else EPOLLEXCLUSIVE)
            ev.data.u64 = ((<uint64_t>fd << 4) | TAG_LISTEN | (TAG_HTTP if http else 0)
                           | (TAG_TLS if tls else 0))
            _check(epoll_ctl(self.S.loops[k].epfd, EPOLL_CTL_ADD, fd, &ev), "epoll_ctl")

    def stop_accepting(self):
        """Stop watching the listeners (the caller closes them): new connects fail."""
        cdef int i, k
        with nogil:
            lock(self.S)
            for i in range(self.S.nlisten):
                for k in range(self.S.nloops):
                    epoll_ctl(self.S.loops[k].epfd, EPOLL_CTL_DEL, self.S.listen_fds[i], NULL)
            self.S.nlisten = 0
            unlock(self.S)

    def run(self, int i):
        """Run loop i until stop(); call from a dedicated thread per loop."""
        if i < 0 or i >= self.S.nloops:
            raise IndexError(i)
        with nogil:
            if self.S.loops[i].ur != NULL:
                ur_loop_run(&self.S.loops[i])
            else:
                loop_run(&self.S.loops[i])

    def stop(self):
        cdef int k
        with nogil:
            lock(self.S)
            self.S.stopping = 1
            unlock(self.S)
            for k in range(self.S.nloops):
                poke_fd(self.S.loops[k].wakefd)

    @property
    def admin_fd(self):
        """Readable when admin lines are waiting (for the control thread's poll)."""
        return self.S.adminfd

    def admin_take(self):
        """[(fd, conn_id, line, loopback, ip, port, cn)] waiting for an answer; clears
        the queue. cn is the peer's client certificate CN, "" without one."""
        cdef AdminReq *head
        cdef AdminReq *r
        with nogil:
            drain_fd(self.S.adminfd)
            lock(self.S)
            head = self.S.admin_head
            self.S.admin_head = NULL
            self.S.admin_tail = NULL
            unlock(self.S)
        out = []
        while head != NULL:
            r = head
            head = r.next
            out.append((r.fd, r.conn_id, r.line[:r.len], bool(r.loopback),
                        r.ip.decode("ascii", "replace"), r.port,
                        r.cn.decode("utf-8", "replace")))
            free(r)
        return out

    def admin_reply(self, int fd, uint64_t conn_id, bytes reply, bint close_after=False):
        """Queue reply on the connection that sent the line and let its input go on."""
        cdef IOConn *io
        cdef Loop *o
        cdef int owner = -1
        cdef const char *p = reply
        cdef size_t n = len(reply)
        cdef Buf staged
        buf_init(&staged)
        with nogil:
            # A long listing is copied with the lock released; under the lock it is
            # only handed over, a pointer swap when no other output is waiting.
            buf_append(&staged, p, n)
            lock(self.S)
            io = self.S.conns[fd] if <size_t>fd < self.S.conns_cap else NULL
            if io != NULL and io.c.id == conn_id and not io.in_close:
                if buf_len(&io.c.outbuf) == 0 and buf_len(&staged) == n:
                    buf_free(&io.c.outbuf)
                    io.c.outbuf = staged
                    buf_init(&staged)
                else:
                    buf_append(&io.c.outbuf, p, n)
                io.admin_pending = 0
                if close_after:
                    io.admin_close = 1
                conn_dirty(&self.S.eng, &io.c)
                o = &self.S.loops[io.thread]
                if not io.in_resume:
                    io.in_resume = 1
                    io.resume_next = o.resume
                    o.resume = io
                owner = io.thread
            route(self.S, NULL)
            unlock(self.S)
            buf_free(&staged)
            if owner >= 0:
                poke_fd(self.S.loops[owner].wakefd)

    # ---- persistent store hand-over (called from the store thread) -------------------

    @property
    def store_fd(self):
        """Readable when rows are waiting to be written or deleted."""
        return self.S.storefd

    def replay(self, rows):
        """Recreate stored jobs before serving: rows of (row_id, function, unique,
        priority, data, when_to_run) in FIFO order. Returns the row ids that coalesced
        with an earlier row (duplicates to delete)."""
        cdef Job *j
        cdef int64_t rid, when
        cdef int prio
        cdef int rc = E_OK
        dup = []
        refused = []
        for rid, func, unique, prio, data, when in rows:
            with nogil:
                lock(self.S)
            try:
                j = engine_replay(&self.S.eng, func, len(func), unique, len(unique), data,
                                  len(data), prio if 0 <= prio <= 2 else PRIO_NORMAL,
                                  when, rid, &rc)
            finally:
                unlock(self.S)
            if j == NULL:
                (dup if rc == E_OK else refused).append((rid, func, rc))
        _log_refused(refused)
        return [r[0] for r in dup]

    def adopt(self, rows):
        """Take over stored jobs while serving (rows claimed from a server that died),
        as replay() does, then hand the wake-ups to the loops and wake loop 0 when a
        job's run time comes before its next timer. Returns the coalesced row ids."""
        cdef Job *j
        cdef int64_t rid, when
        cdef int prio
        cdef int rc = E_OK
        dup = []
        refused = []
        with nogil:
            lock(self.S)
        try:
            engine_clock(&self.S.eng)
            for rid, func, unique, prio, data, when in rows:
                j = engine_replay(&self.S.eng, func, len(func), unique, len(unique), data,
                                  len(data), prio if 0 <= prio <= 2 else PRIO_NORMAL,
                                  when, rid, &rc)
                if j == NULL:
                    if rc == E_OK:
                        dup.append(rid)
                    else:
                        refused.append((rid, func, rc))
            route(self.S, NULL)
            if (self.S.eng.heap_len and (self.S.timer_wake_ms < 0 or
                                         self.S.eng.heap[0].t.timer_ms < self.S.timer_wake_ms)):
                self.S.timer_wake_ms = self.S.eng.heap[0].t.timer_ms
                poke_fd(self.S.loops[0].wakefd)
        finally:
            unlock(self.S)
        _log_refused(refused)
        return dup

    def forget_stored(self):
        """This server lost its store identity: every stored job it holds now belongs
        to whoever claimed its rows. Queued and future ones are dropped; a running one
        finishes, but its row is no longer ours to delete. Returns how many were let go."""
        cdef Job *j
        cdef Job *jn
        cdef uint64_t b
        cdef uint64_t dropped = 0
        with nogil:
            lock(self.S)
            for b in range(self.S.eng.hmask + 1):
                j = self.S.eng.htab[b]
                while j != NULL:
                    jn = j.h_next
                    # A job still being stored has no row yet (store_id 0).
                    if j.store_id > 0:
                        j.store_id = 0
                        engine_cancel(&self.S.eng, j)
                        dropped += 1
                    j = jn
            route(self.S, NULL)
            unlock(self.S)
        return dropped

    def set_fenced(self, bint fenced):
        """The store's lease lapsed (True) or was regained (False); see fence_gate().
        Lifting it hands the PRE_SLEEPs kept aside to the engine, which NOOPs the
        workers whose functions have work."""
        cdef Packet pkt
        cdef IOConn *io
        cdef size_t i
        memset(&pkt, 0, sizeof(Packet))
        pkt.type = CMD_PRE_SLEEP
        with nogil:
            lock(self.S)
            self.S.fenced = fenced
            if not fenced:
                for i in range(self.S.conns_cap):
                    io = self.S.conns[i]
                    if io != NULL and io.fence_sleep:
                        io.fence_sleep = 0
                        if not io.in_close and not io.c.detached:
                            engine_packet(&self.S.eng, &io.c, &pkt)
                route(self.S, NULL)
            unlock(self.S)

    def store_take(self):
        """(adds, deletes) waiting for the store: adds are (token, function, unique,
        priority, data, when_to_run) in submission order; deletes are row ids."""
        cdef Job *head
        cdef Job *j
        cdef int64_t *dels
        cdef uint64_t ndel, i
        with nogil:
            drain_fd(self.S.storefd)
            lock(self.S)
            head = self.S.eng.store_add
            self.S.eng.store_add = NULL
            self.S.eng.store_add_tail = NULL
            dels = self.S.eng.store_del
            ndel = self.S.eng.store_del_len
            self.S.eng.store_del = NULL
            self.S.eng.store_del_len = 0
            self.S.eng.store_del_cap = 0
            self.S.store_poked = 0
        # Jobs waiting for their row cannot be freed by anyone else, so they can be
        # read after the lock is released; only the store thread touches them now.
        unlock(self.S)
        adds = []
        j = head
        while j != NULL:
            adds.append((<size_t>j, j.func.name[:j.func.name_len],
                         job_unique(j)[:j.unique_len], j.priority,
                         job_data(j)[:j.data_len], j.t.when_s))
            j = j.o.store_next
        deletes = [dels[i] for i in range(ndel)]
        engine_release(&self.S.eng, dels)
        return adds, deletes

    def store_done(self, committed, failed, bytes error=b"QUEUE_ERROR"):
        """Answer the submitters: JOB_CREATED for committed (token, row_id) pairs, then
        the jobs may run; ERROR QUEUE_ERROR for failed tokens, whose jobs are dropped."""
        cdef size_t nc = len(committed), nf = len(failed), i = 0
        cdef const char *etext = error
        # Unpacked before the lock, so the loops never wait on Python objects.
        cdef Job **jobs = <Job **>malloc((nc + nf + 1) * sizeof(Job *))
        cdef int64_t *rows = <int64_t *>malloc((nc + 1) * sizeof(int64_t))
        try:
            if jobs == NULL or rows == NULL:
                raise MemoryError()
            for token, rid in committed:
                jobs[i] = <Job *><size_t>token
                rows[i] = rid
                i += 1
            for token in failed:
                jobs[i] = <Job *><size_t>token
                i += 1
            with nogil:
                lock(self.S)
                for i in range(nc):
                    self._ack(jobs[i], 0, NULL)
                    engine_job_stored(&self.S.eng, jobs[i], rows[i])
                for i in range(nc, nc + nf):
                    self._ack(jobs[i], 1, etext)
                    engine_job_store_failed(&self.S.eng, jobs[i])
                route(self.S, NULL)
                unlock(self.S)
        finally:
            free(jobs)
            free(rows)

    cdef void _ack(self, Job *j, int failed, const char *etext) noexcept nogil:
        cdef Ack *k = j.acks
        cdef IOConn *io
        cdef char h[MAX_HANDLE]
        while k != NULL:
            io = self.S.conns[k.fd] if <size_t>k.fd < self.S.conns_cap else NULL
            if io != NULL and io.c.id == k.conn_id and not io.in_close:
                if failed:
                    engine_error(&self.S.eng, &io.c, b"QUEUE_ERROR", etext)
                else:
                    conn_dirty(&self.S.eng, &io.c)
                    encode1(&io.c.outbuf, CMD_JOB_CREATED, h,
                            job_handle(&self.S.eng, j, h))
            j.acks = k.next
            ack_put(&self.S.eng, k)
            k = j.acks
