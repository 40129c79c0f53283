# The epoll I/O loop: non-blocking accept/read/write, per-connection buffers, and the
# batch step that feeds every complete packet to the engine. One iteration reads every
# ready socket, parses and applies all complete packets while holding the engine lock
# once, then flushes every connection that got output with one send() each before
# sleeping again. The loop runs in a native thread with the GIL released for its whole
# life; it never touches a Python object. Text admin lines are handed to the Python
# control thread through a C-level queue and an eventfd; the connection's input is held
# until the reply comes back, so binary and text replies stay in order. Nothing else
# on the connection or the server waits for Python.
#
# Thread model (DESIGN.md §3): this issue runs one loop; the Loop struct holds every
# piece of per-loop state apart from the shared Engine so N loops can be started later.
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from fastgear.buffer cimport (buf_init, buf_free, buf_len, buf_head, buf_reserve,
                              buf_append, buf_consume, buf_shrink)
from fastgear.protocol cimport *
from fastgear.engine cimport *
from fastgear.includes.sys cimport *

cdef uint64_t TAG_WAKE = 1ULL << 40
cdef uint64_t TAG_LISTEN = 1ULL << 41

cdef enum:
    MAX_EVENTS = 256
    READ_CHUNK = 65536
    # Read at most this much from one socket per wake-up so one busy peer cannot
    # starve the others; level-triggered epoll brings us back for the rest.
    READ_BUDGET = 1 << 20
    ACCEPT_BUDGET = 256
    # After a large payload has gone through, keep at most this much buffer.
    KEEP_BUFFER = 1 << 20


cdef inline void loop_poke(int fd) noexcept nogil:
    cdef uint64_t one = 1
    write(fd, &one, 8)


cdef inline void drain_fd(int fd) noexcept nogil:
    cdef uint64_t v
    read(fd, &v, 8)


cdef void set_events(Loop *L, Conn *c) noexcept nogil:
    cdef epoll_event ev
    ev.data.u64 = <uint64_t>c.fd
    ev.events = EPOLLOUT if c.want_out else 0
    if not c.eof and not c.closing:
        ev.events |= EPOLLIN
    epoll_ctl(L.epfd, EPOLL_CTL_MOD, c.fd, &ev)


cdef void mark_close(Loop *L, Conn *c) noexcept nogil:
    if not c.in_close:
        c.in_close = 1
        c.close_next = L.closing
        L.closing = c


cdef void protocol_error(Loop *L, Conn *c, const char *code, const char *text) noexcept nogil:
    """Replies already due stay queued; the ERROR goes after them; then we close."""
    L.protocol_errors += 1
    engine_error(&L.eng, c, code, text)
    c.closing = 1


cdef int queue_admin(Loop *L, Conn *c, const char *line, size_t n) noexcept nogil:
    cdef AdminReq *r = <AdminReq *>malloc(sizeof(AdminReq) + n + 1)
    if r == NULL:
        return -1
    r.fd = c.fd
    r.conn_id = c.id
    r.loopback = c.loopback
    r.line = <char *>(r + 1)
    memcpy(r.line, line, n)
    r.line[n] = 0
    r.len = n
    r.next = NULL
    if L.admin_tail != NULL:
        L.admin_tail.next = r
    else:
        L.admin_head = r
    L.admin_tail = r
    c.admin_pending = 1
    loop_poke(L.adminfd)
    return 0


cdef void process_input(Loop *L, Conn *c) noexcept nogil:
    """Parse and apply every complete packet in c's input buffer."""
    cdef Packet pkt
    cdef int st, r
    while not c.closing and not c.admin_pending and not c.dead:
        st = parse_packet(buf_head(&c.inbuf), buf_len(&c.inbuf), L.max_packet, &pkt)
        if st == P_PACKET:
            r = engine_packet(&L.eng, c, &pkt)
            buf_consume(&c.inbuf, pkt.size)
            if r != E_OK:
                protocol_error(L, c, b"MEMORY_ALLOCATION_FAILURE", b"Out of memory")
        elif st == P_TEXT:
            if queue_admin(L, c, pkt.f[0], pkt.flen[0]) != 0:
                c.closing = 1
            buf_consume(&c.inbuf, pkt.size)
        elif st == P_NEED_MORE:
            if pkt.need and buf_reserve(&c.inbuf, pkt.need - buf_len(&c.inbuf)) != 0:
                protocol_error(L, c, b"MEMORY_ALLOCATION_FAILURE", b"Out of memory")
            break
        elif st == P_BAD_MAGIC:
            protocol_error(L, c, b"INVALID_MAGIC", b"Request magic expected")
        elif st == P_BAD_TYPE:
            protocol_error(L, c, b"INVALID_COMMAND", b"Unknown packet type")
        elif st == P_BAD_ARGS:
            protocol_error(L, c, b"INVALID_PACKET",
                           b"Packet arguments missing within the declared length")
        elif st == P_TOO_LARGE:
            protocol_error(L, c, b"ARGUMENT_TOO_LARGE", b"Packet larger than the server allows")
        else:
            L.protocol_errors += 1
            buf_append(&c.outbuf, b"ERR LINE_TOO_LONG Text+line+longer+than+8192+bytes\r\n", 51)
            conn_dirty(&L.eng, c)
            c.closing = 1
    if c.eof and not c.admin_pending:
        c.closing = 1
    if c.closing:
        buf_consume(&c.inbuf, buf_len(&c.inbuf))
        # Let the peer's jobs go now; what is queued for it is still flushed.
        conn_detach(&L.eng, c)
        conn_dirty(&L.eng, c)


cdef void read_conn(Loop *L, Conn *c) noexcept nogil:
    cdef ssize_t n
    cdef size_t total = 0, space
    while total < READ_BUDGET:
        if buf_reserve(&c.inbuf, READ_CHUNK) != 0:
            protocol_error(L, c, b"MEMORY_ALLOCATION_FAILURE", b"Out of memory")
            break
        space = c.inbuf.cap - c.inbuf.end
        n = recv(c.fd, c.inbuf.data + c.inbuf.end, space, 0)
        if n > 0:
            c.inbuf.end += <size_t>n
            total += <size_t>n
            if <size_t>n < space:
                break       # short read: the socket is drained
            continue
        if n == 0:
            c.eof = 1
            break
        if errno == EINTR:
            continue
        if errno != EAGAIN:
            c.dead = 1
            c.eof = 1
        break
    process_input(L, c)
    if c.dead:
        # Reset by the peer: nothing can be flushed to it any more.
        mark_close(L, c)
    elif c.eof or c.closing:
        set_events(L, c)


cdef void flush_conn(Loop *L, Conn *c) noexcept nogil:
    cdef ssize_t n
    while buf_len(&c.outbuf) and not c.dead:
        n = send(c.fd, buf_head(&c.outbuf), buf_len(&c.outbuf), MSG_NOSIGNAL)
        if n > 0:
            buf_consume(&c.outbuf, <size_t>n)
            continue
        if n < 0 and errno == EINTR:
            continue
        if n < 0 and errno == EAGAIN:
            break
        c.dead = 1
    if c.dead:
        buf_consume(&c.outbuf, buf_len(&c.outbuf))
    if buf_len(&c.outbuf):
        if not c.want_out:
            c.want_out = 1
            set_events(L, c)
    else:
        buf_shrink(&c.outbuf, KEEP_BUFFER)
        buf_shrink(&c.inbuf, KEEP_BUFFER)
        if c.want_out:
            c.want_out = 0
            set_events(L, c)
        if c.closing and not c.admin_pending:
            mark_close(L, c)
    if c.dead:
        mark_close(L, c)


cdef void flush_dirty(Loop *L) noexcept nogil:
    cdef Conn *c
    while L.eng.dirty != NULL:
        c = L.eng.dirty
        L.eng.dirty = c.dirty_next
        c.dirty = 0
        c.dirty_next = NULL
        flush_conn(L, c)


cdef void reap(Loop *L) noexcept nogil:
    cdef Conn *c
    while L.closing != NULL:
        c = L.closing
        L.closing = c.close_next
        conn_detach(&L.eng, c)
        epoll_ctl(L.epfd, EPOLL_CTL_DEL, c.fd, NULL)
        close(c.fd)
        if <size_t>c.fd < L.conns_cap:
            L.conns[c.fd] = NULL
        buf_free(&c.inbuf)
        buf_free(&c.outbuf)
        free(c)


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


cdef void accept_all(Loop *L, int lfd) noexcept nogil:
    cdef sockaddr_storage ss
    cdef socklen_t sl
    cdef int fd, one = 1, _k
    cdef Conn *c
    cdef Conn **nt
    cdef size_t ncap
    cdef epoll_event ev
    for _k in range(ACCEPT_BUDGET):
        sl = sizeof(ss)
        fd = accept4(lfd, <sockaddr *>&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno == EINTR:
                continue
            return
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one))
        if <size_t>fd >= L.conns_cap:
            ncap = L.conns_cap * 2 if L.conns_cap else 1024
            while ncap <= <size_t>fd:
                ncap *= 2
            nt = <Conn **>realloc(L.conns, ncap * sizeof(Conn *))
            if nt == NULL:
                close(fd)
                continue
            memset(nt + L.conns_cap, 0, (ncap - L.conns_cap) * sizeof(Conn *))
            L.conns = nt
            L.conns_cap = ncap
        c = <Conn *>calloc(1, sizeof(Conn))
        if c == NULL:
            close(fd)
            continue
        c.fd = fd
        buf_init(&c.inbuf)
        buf_init(&c.outbuf)
        if ss.ss_family == AF_INET:
            inet_ntop(AF_INET, &(<sockaddr_in *>&ss).sin_addr, c.ip, sizeof(c.ip))
        elif ss.ss_family == AF_INET6:
            inet_ntop(AF_INET6, &(<sockaddr_in6 *>&ss).sin6_addr, c.ip, sizeof(c.ip))
        c.loopback = <uint8_t>is_loopback(&ss)
        conn_attach(&L.eng, c)
        L.conns[fd] = c
        L.accepted += 1
        ev.events = EPOLLIN
        ev.data.u64 = <uint64_t>fd
        epoll_ctl(L.epfd, EPOLL_CTL_ADD, fd, &ev)


cdef void resume_all(Loop *L) noexcept nogil:
    cdef Conn *c
    while L.resume != NULL:
        c = L.resume
        L.resume = c.resume_next
        c.in_resume = 0
        if not c.dead:
            process_input(L, c)


cdef void loop_run(Loop *L) noexcept nogil:
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, i
    cdef int64_t timeout
    cdef uint64_t tag
    cdef Conn *c
    cdef sigset_t all_signals
    # Signals belong to the Python control thread.
    sigfillset(&all_signals)
    pthread_sigmask(SIG_BLOCK, &all_signals, NULL)
    pthread_mutex_lock(&L.lock)
    L.running = 1
    while not L.stopping:
        engine_clock(&L.eng)
        timeout = engine_timers(&L.eng)
        flush_dirty(L)
        reap(L)
        pthread_mutex_unlock(&L.lock)
        n = epoll_wait(L.epfd, events, MAX_EVENTS, <int>timeout if timeout < 0x7fffffff else -1)
        pthread_mutex_lock(&L.lock)
        engine_clock(&L.eng)
        for i in range(n if n > 0 else 0):
            tag = events[i].data.u64
            if tag == TAG_WAKE:
                drain_fd(L.wakefd)
                resume_all(L)
            elif tag & TAG_LISTEN:
                accept_all(L, <int>(tag & 0xffffffffULL))
            else:
                c = L.conns[tag] if tag < L.conns_cap else NULL
                if c == NULL or c.in_close:
                    continue
                if events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP):
                    read_conn(L, c)
                if events[i].events & EPOLLOUT:
                    conn_dirty(&L.eng, c)
    # Replies queued in the last batch (an admin answer, a final WORK_FAIL) still go
    # out, as far as the sockets take them without blocking.
    flush_dirty(L)
    L.running = 0
    pthread_mutex_unlock(&L.lock)


def _check(int rc, what):
    if rc < 0:
        raise OSError(f"{what} failed")
    return rc


cdef class IOLoop:
    """Python handle on one Loop. The composition root (server.py) creates it, gives it
    listening sockets, runs `run()` in a thread, and serves admin lines from the control
    thread with `admin_take()` / `admin_reply()`. Every method that reads engine state
    takes the engine lock with the GIL released."""
    cdef Loop *L

    def __cinit__(self, bytes prefix, int job_retries=0, int worker_wakeup=0,
                  bint round_robin=False, bint exceptions=False,
                  size_t max_packet=0xffffffff):
        self.L = <Loop *>calloc(1, sizeof(Loop))
        if self.L == NULL:
            raise MemoryError()
        if engine_init(&self.L.eng, prefix, len(prefix), <uint32_t>job_retries,
                       <uint32_t>worker_wakeup, round_robin, exceptions) != 0:
            raise MemoryError()
        pthread_mutex_init(&self.L.lock, NULL)
        self.L.max_packet = max_packet
        self.L.epfd = _check(epoll_create1(EPOLL_CLOEXEC), "epoll_create1")
        self.L.wakefd = _check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
        self.L.adminfd = _check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = TAG_WAKE
        epoll_ctl(self.L.epfd, EPOLL_CTL_ADD, self.L.wakefd, &ev)

    def __dealloc__(self):
        cdef Conn *c
        cdef AdminReq *r
        cdef size_t i
        if self.L == NULL:
            return
        for i in range(self.L.conns_cap):
            c = self.L.conns[i]
            if c != NULL:
                close(c.fd)
                buf_free(&c.inbuf)
                buf_free(&c.outbuf)
                free(c)
        free(self.L.conns)
        while self.L.admin_head != NULL:
            r = self.L.admin_head
            self.L.admin_head = r.next
            free(r)
        engine_free(&self.L.eng)
        close(self.L.epfd)
        close(self.L.wakefd)
        close(self.L.adminfd)
        pthread_mutex_destroy(&self.L.lock)
        free(self.L)
        self.L = NULL

    def add_listener(self, int fd):
        cdef epoll_event ev
        if self.L.nlisten >= MAX_LISTENERS:
            raise ValueError("too many listening sockets")
        self.L.listen_fds[self.L.nlisten] = fd
        self.L.nlisten += 1
        ev.events = EPOLLIN
        ev.data.u64 = TAG_LISTEN | <uint64_t>fd
        _check(epoll_ctl(self.L.epfd, EPOLL_CTL_ADD, fd, &ev), "epoll_ctl")

    def stop_accepting(self):
        """Stop watching the listeners (the caller closes them): new connects fail."""
        cdef int i
        with nogil:
            pthread_mutex_lock(&self.L.lock)
            for i in range(self.L.nlisten):
                epoll_ctl(self.L.epfd, EPOLL_CTL_DEL, self.L.listen_fds[i], NULL)
            self.L.nlisten = 0
            pthread_mutex_unlock(&self.L.lock)

    def run(self):
        """Run the loop until stop(); call from a dedicated thread."""
        with nogil:
            loop_run(self.L)

    def stop(self):
        with nogil:
            pthread_mutex_lock(&self.L.lock)
            self.L.stopping = 1
            pthread_mutex_unlock(&self.L.lock)
            loop_poke(self.L.wakefd)

    @property
    def admin_fd(self):
        """Readable when admin lines are waiting (for the control thread's poll)."""
        return self.L.adminfd

    def admin_take(self):
        """[(fd, conn_id, line, loopback)] waiting for an answer; clears the queue."""
        cdef AdminReq *head
        cdef AdminReq *r
        with nogil:
            drain_fd(self.L.adminfd)
            pthread_mutex_lock(&self.L.lock)
            head = self.L.admin_head
            self.L.admin_head = NULL
            self.L.admin_tail = NULL
            pthread_mutex_unlock(&self.L.lock)
        out = []
        while head != NULL:
            r = head
            head = r.next
            out.append((r.fd, r.conn_id, r.line[:r.len], bool(r.loopback)))
            free(r)
        return out

    def admin_reply(self, int fd, uint64_t conn_id, bytes reply, bint close_after=False):
        """Queue reply on the connection that sent the line and let its input go on."""
        cdef Conn *c
        cdef const char *p = reply
        cdef size_t n = len(reply)
        with nogil:
            pthread_mutex_lock(&self.L.lock)
            c = self.L.conns[fd] if <size_t>fd < self.L.conns_cap else NULL
            if c != NULL and c.id == conn_id and not c.in_close:
                buf_append(&c.outbuf, p, n)
                c.admin_pending = 0
                if close_after:
                    c.closing = 1
                conn_dirty(&self.L.eng, c)
                if not c.in_resume:
                    c.in_resume = 1
                    c.resume_next = self.L.resume
                    self.L.resume = c
            pthread_mutex_unlock(&self.L.lock)
            loop_poke(self.L.wakefd)

    # ---- engine snapshots for admin and monitoring (short critical sections) ----------

    def functions(self):
        """[(name, total, running, workers, high, normal, low, future)] in creation order."""
        cdef Function *f
        out = []
        with nogil:
            pthread_mutex_lock(&self.L.lock)
        try:
            f = self.L.eng.f_first
            while f != NULL:
                out.append((f.name[:f.name_len], f.total, f.running, f.workers,
                            f.queued[0], f.queued[1], f.queued[2], f.future))
                f = f.all_next
        finally:
            pthread_mutex_unlock(&self.L.lock)
        return out

    def connections(self):
        """[(fd, ip, client_id, [functions newest first])] for every connection."""
        cdef Conn *c
        cdef Ability *a
        out = []
        with nogil:
            pthread_mutex_lock(&self.L.lock)
        try:
            c = self.L.eng.conns
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
            pthread_mutex_unlock(&self.L.lock)
        out.sort()
        return out

    def jobs(self):
        """[(handle, retries, ignored, persisted, unique)] for every job in memory."""
        cdef uint64_t i
        cdef Job *j
        out = []
        with nogil:
            pthread_mutex_lock(&self.L.lock)
        try:
            for i in range(self.L.eng.hmask + 1):
                j = self.L.eng.htab[i]
                while j != NULL:
                    # gearmand's "persisted" column is set for every background job.
                    out.append((j.seq, j.handle[:j.handle_len], j.retries, 0,
                                1 if (j.background or j.persisted) else 0,
                                j.unique[:j.unique_len]))
                    j = j.h_next
        finally:
            pthread_mutex_unlock(&self.L.lock)
        out.sort()
        return [row[1:] for row in out]

    def cancel_job(self, bytes handle):
        cdef Job *j
        cdef int found = 0
        cdef const char *h = handle
        cdef size_t n = len(handle)
        with nogil:
            pthread_mutex_lock(&self.L.lock)
            j = job_by_handle(&self.L.eng, h, n)
            if j != NULL:
                engine_cancel(&self.L.eng, j)
                found = 1
            pthread_mutex_unlock(&self.L.lock)
            if found:
                loop_poke(self.L.wakefd)
        return bool(found)

    def create_function(self, bytes name):
        cdef const char *p = name
        cdef size_t n = len(name)
        with nogil:
            pthread_mutex_lock(&self.L.lock)
            func_get(&self.L.eng, p, n, 1)
            pthread_mutex_unlock(&self.L.lock)

    def drop_function(self, bytes name):
        """'ok', 'busy' (workers or running jobs), 'queued', or 'notfound'. Names are
        compared case-insensitively, as gearmand does."""
        cdef Function *f
        cdef int r = 3
        lname = name.lower()
        with nogil:
            pthread_mutex_lock(&self.L.lock)
        try:
            f = self.L.eng.f_first
            while f != NULL:
                if f.name[:f.name_len].lower() == lname:
                    r = engine_drop_function(&self.L.eng, f)
                    break
                f = f.all_next
        finally:
            pthread_mutex_unlock(&self.L.lock)
        return ("ok", "busy", "queued", "notfound")[r]

    def set_maxqueue(self, bytes name, long high, long normal, long low):
        cdef Function *f
        cdef const char *p = name
        cdef size_t n = len(name)
        with nogil:
            pthread_mutex_lock(&self.L.lock)
            f = func_get(&self.L.eng, p, n, 0)
            if f != NULL:
                f.max_queue[0] = <uint32_t>(high if high > 0 else 0)
                f.max_queue[1] = <uint32_t>(normal if normal > 0 else 0)
                f.max_queue[2] = <uint32_t>(low if low > 0 else 0)
            pthread_mutex_unlock(&self.L.lock)

    def stats(self):
        """Server-wide counters for monitoring and graceful shutdown."""
        with nogil:
            pthread_mutex_lock(&self.L.lock)
        try:
            return {"jobs": self.L.eng.jobs, "connections": self.L.eng.nconns,
                    "functions": self.L.eng.fcount, "queued_bytes": self.L.eng.queued_bytes,
                    "packets": self.L.eng.n_packets, "accepted": self.L.accepted,
                    "protocol_errors": self.L.protocol_errors,
                    "next_handle": self.L.eng.next_handle}
        finally:
            pthread_mutex_unlock(&self.L.lock)
