# TLS in the epoll loops (included by iothreads.pyx). A connection accepted on a TLS
# listener (--ssl on -p, or --ssl-port) gets an OpenSSL SSL object over its non-blocking
# socket, and the loop's hooks send its bytes through here instead of recv()/send():
#   - the handshake is stepped by SSL_accept() whenever the socket is ready for what it
#     asked (WANT_READ keeps EPOLLIN, WANT_WRITE adds EPOLLOUT), so a slow or stalled
#     peer costs no other connection anything; the owner loop keeps its handshakes in a
#     list ordered by deadline (the timeout is the same for all, so appending keeps the
#     order) and drops the expired ones at --ssl-handshake-timeout;
#   - application data is read with SSL_read() into the same input buffer and parsed by
#     the same code, so --max-packet, --max-output and back-pressure hold unchanged;
#     OpenSSL reads ahead (one recv() for all the records there are), and a read stops
#     as soon as OpenSSL holds nothing more (SSL_has_pending): bytes it buffered would
#     not wake level-triggered epoll again, bytes still in the socket will;
#   - output goes out with SSL_write() from the same send buffer; after WANT_WRITE the
#     write is retried with the same bytes at the head of the buffer (partial writes and
#     a moving buffer are enabled, more may have been appended behind them).
# The server's SSL_CTX is built once by tls_configure() before the loops start; key and
# certificate files are read then and never again. Client certificates are checked by
# OpenSSL in the handshake (--ssl-verify-clients); the verified subject CN is copied to
# IOConn.cn (under the engine lock, before the connection's first packet is parsed), the
# connection's identity for the admin views and access rules.
from fastgear.includes.ssl cimport *

cdef extern from *:
    """
    #include <errno.h>
    static inline void fg_set_errno(int e) { errno = e; }
    """
    void fg_set_errno(int e) noexcept nogil
    enum:
        EPIPE

cdef uint64_t TAG_TLS = 8       # a listener whose connections speak TLS

VERIFY_NONE, VERIFY_OPTIONAL, VERIFY_REQUIRE = 0, 1, 2

cdef enum:
    # One SSL_write/SSL_read is given at most this much (their length is an int).
    TLS_IO_MAX = 1 << 30


cdef int tls_no_password(char *buf, int size, int rwflag, void *userdata) noexcept nogil:
    # An encrypted key must fail at start-up, not prompt on a terminal nobody watches.
    return 0


cdef const char *tls_reason(const char *fallback) noexcept nogil:
    """The first queued OpenSSL error's reason (a static string); empties the thread's
    error queue, which must be empty before the next SSL call on this thread."""
    cdef unsigned long e = ERR_get_error()
    cdef const char *r = ERR_reason_error_string(e) if e != 0 else NULL
    ERR_clear_error()
    return r if r != NULL else fallback


cdef int tls_accepted(Loop *L, IOConn **conns, int n) noexcept nogil:
    """(no lock) Give each connection just accepted on a TLS listener its SSL; one that
    cannot get one is closed. Returns how many are left in `conns`."""
    cdef int i, k = 0
    cdef SSL *ssl
    cdef IOConn *io
    for i in range(n):
        io = conns[i]
        ssl = SSL_new(<SSL_CTX *>L.S.ssl_ctx)
        if ssl == NULL or SSL_set_fd(ssl, io.c.fd) != 1:
            if ssl != NULL:
                SSL_free(ssl)
            ERR_clear_error()
            fg_add_i64(&L.S.open_conns, -1)
            close(io.c.fd)
            free(io)
            continue
        fg_add_i64(&L.S.tls_live, 1)
        io.ssl = ssl
        conns[k] = io
        k += 1
    return k


cdef void tls_attach(Shared *S, IOConn *io) noexcept nogil:
    """(lock) Start the handshake clock of a connection now owned by loop io.thread."""
    cdef Loop *o = &S.loops[io.thread]
    io.tls_deadline_ms = S.eng.now_ms + S.tls_timeout_ms
    io.in_hs = 1
    io.hs_next = NULL
    io.hs_prev = o.hs_tail
    if o.hs_tail != NULL:
        o.hs_tail.hs_next = io
    else:
        o.hs_head = io
    o.hs_tail = io


cdef void tls_unlink(Shared *S, IOConn *io) noexcept nogil:
    """(lock) Take io off its owner's list of handshakes in progress."""
    cdef Loop *o = &S.loops[io.thread]
    if not io.in_hs:
        return
    if io.hs_prev != NULL:
        io.hs_prev.hs_next = io.hs_next
    else:
        o.hs_head = io.hs_next
    if io.hs_next != NULL:
        io.hs_next.hs_prev = io.hs_prev
    else:
        o.hs_tail = io.hs_prev
    io.hs_prev = io.hs_next = NULL
    io.in_hs = 0


cdef int64_t tls_expire(Loop *L, int64_t timeout) noexcept nogil:
    """(lock) Drop this loop's handshakes past --ssl-handshake-timeout; returns the
    epoll timeout shortened to wake for the next deadline."""
    cdef Shared *S = L.S
    cdef IOConn *io
    cdef int64_t left
    if L.hs_head == NULL:
        return timeout
    engine_clock(&S.eng)
    while L.hs_head != NULL and L.hs_head.tls_deadline_ms <= S.eng.now_ms:
        io = L.hs_head
        tls_unlink(S, io)
        L.tls_timeouts += 1
        post_event(S, EV_TLS_FAILED, io, b"handshake not finished within "
                   b"--ssl-handshake-timeout", 0)
        io.dead = 1
        io.eof = 1
        mark_close(L, io)
    if L.hs_head == NULL:
        return timeout
    left = L.hs_head.tls_deadline_ms - S.eng.now_ms
    return left if timeout < 0 or left < timeout else timeout


cdef void tls_locked(Loop *L, IOConn *io) noexcept nogil:
    """(lock, from process_input) Book what the unlocked TLS steps found: a finished
    handshake leaves the timeout list, a failed one is counted and logged."""
    if io.tls_error != NULL:
        L.tls_failed += 1
        post_event(L.S, EV_TLS_FAILED, io, io.tls_error, 0)
        io.tls_error = NULL
        tls_unlink(L.S, io)
    elif io.tls_open and io.in_hs:
        # Copied under the lock, before the first packet: the admin views and access
        # rules read it from other threads.
        tls_peer_cn(io)
        L.tls_handshakes += 1
        tls_unlink(L.S, io)


cdef void tls_peer_cn(IOConn *io) noexcept nogil:
    """Copy the subject CN of the peer's certificate, when OpenSSL verified it."""
    cdef SSL *ssl = <SSL *>io.ssl
    cdef X509 *cert = SSL_get_peer_certificate(ssl)
    io.cn[0] = 0
    if cert == NULL:
        return
    if SSL_get_verify_result(ssl) == X509_V_OK:
        if X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName,
                                     io.cn, sizeof(io.cn)) < 0:
            io.cn[0] = 0
    io.cn[sizeof(io.cn) - 1] = 0
    X509_free(cert)
    ERR_clear_error()


cdef int tls_handshake(Loop *L, IOConn *io) noexcept nogil:
    """(no lock) One step of the server handshake: 1 done, 0 waiting for the socket,
    -1 failed (io is dead; tls_error says why)."""
    cdef SSL *ssl = <SSL *>io.ssl
    cdef int r = SSL_accept(ssl)
    cdef int err
    if r == 1:
        io.tls_open = 1
        io.tls_out_for_in = 0
        return 1
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
        io.tls_out_for_in = err == SSL_ERROR_WANT_WRITE
        return 0
    if err == SSL_ERROR_SSL:
        # e.g. "wrong version number" (plain text), "peer did not return a
        # certificate", "certificate verify failed", "unsupported protocol"
        io.tls_error = tls_reason(b"handshake failed")
    else:
        ERR_clear_error()
        io.tls_error = b"connection closed during the handshake"
    io.dead = 1
    io.eof = 1
    return -1


cdef int tls_read(Loop *L, IOConn *io) noexcept nogil:
    """(no lock; read_conn for a TLS connection) Step the handshake, then SSL_read what
    is there; 1 if there is input or news to process, as read_conn."""
    cdef SSL *ssl = <SSL *>io.ssl
    cdef int n, err, news = 0
    cdef uint8_t out_for_in = io.tls_out_for_in
    cdef size_t total = 0, space
    if not io.tls_open:
        n = tls_handshake(L, io)
        if n < 0:
            set_events(L, io)
            return 1
        if n == 0:
            if io.tls_out_for_in != out_for_in:
                set_events(L, io)
            return 0
        news = 1        # leaves the handshake list in the locked section
    io.tls_out_for_in = 0
    while total < READ_BUDGET or SSL_has_pending(ssl):
        if buf_reserve(&io.inbuf, READ_CHUNK) != 0:
            io.dead = 1
            break
        space = io.inbuf.cap - io.inbuf.end
        if space > TLS_IO_MAX:
            space = TLS_IO_MAX
        n = SSL_read(ssl, io.inbuf.data + io.inbuf.end, <int>space)
        if n > 0:
            io.inbuf.end += <size_t>n
            total += <size_t>n
            if not SSL_has_pending(ssl):
                # All OpenSSL read ahead is decrypted and taken; what is still in the
                # socket wakes level-triggered epoll again, so no recv() just to see
                # EAGAIN (the plain path's short-read rule).
                break
            continue
        err = SSL_get_error(ssl, n)
        if err == SSL_ERROR_WANT_READ:
            break
        if err == SSL_ERROR_WANT_WRITE:
            io.tls_out_for_in = 1
            break
        ERR_clear_error()
        io.eof = 1
        if err != SSL_ERROR_ZERO_RETURN:
            # Reset, or closed without close_notify (truncation): nothing more can be
            # sent over this SSL.
            io.dead = 1
        break
    if io.eof or io.dead or io.tls_out_for_in != out_for_in:
        set_events(L, io)
    return total > 0 or io.eof or io.dead or news


cdef inline int tls_read_on_out(IOConn *io, uint32_t events) noexcept nogil:
    """The handshake or SSL_read is waiting for writability, which came."""
    return io.tls_out_for_in and (events & EPOLLOUT) != 0


cdef ssize_t tls_send(IOConn *io, const char *p, size_t n) noexcept nogil:
    """(no lock; flush_conn for a TLS connection) send() over SSL_write, with send()'s
    results: bytes written, or -1 and errno (EAGAIN: retry with the same bytes)."""
    cdef SSL *ssl = <SSL *>io.ssl
    cdef int r, err
    if not io.tls_open:
        fg_set_errno(EAGAIN)
        return -1
    r = SSL_write(ssl, p, <int>(n if n < TLS_IO_MAX else TLS_IO_MAX))
    if r > 0:
        return r
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_WRITE or err == SSL_ERROR_WANT_READ:
        fg_set_errno(EAGAIN)
        return -1
    ERR_clear_error()
    fg_set_errno(EPIPE)
    return -1


cdef void tls_free(Shared *S, IOConn *io) noexcept nogil:
    """(no lock) Before the socket is closed: a close_notify where the session is sound
    (one try, never waiting), then the SSL object is freed."""
    cdef SSL *ssl = <SSL *>io.ssl
    if ssl == NULL:
        return
    if io.tls_open and not io.dead:
        SSL_shutdown(ssl)
    SSL_free(ssl)
    ERR_clear_error()
    io.ssl = NULL
    fg_add_i64(&S.tls_live, -1)


cdef int64_t tls_close_ctx(Shared *S) noexcept nogil:
    """At IOLoop._free, after every connection: free the SSL_CTX; returns the SSL
    objects never freed (counted in the debug build only, as the engine's)."""
    if S.ssl_ctx != NULL:
        SSL_CTX_free(<SSL_CTX *>S.ssl_ctx)
        S.ssl_ctx = NULL
    return fg_load_i64(&S.tls_live) if FASTGEAR_DEBUG else 0


class TLSConfigError(ValueError):
    """A key, certificate or CA file cannot be used; the message names the flag."""


cdef _tls_fail(SSL_CTX *ctx, what):
    cdef const char *reason = tls_reason(b"unknown error")
    SSL_CTX_free(ctx)
    raise TLSConfigError(f"{what}: {reason.decode('ascii', 'replace')}")


def tls_configure(IOLoop io, str certificate, str key, str ca_file, int verify,
                  double handshake_timeout):
    """Build the server's SSL_CTX once, before the loops start: TLS 1.2 and newer with
    OpenSSL's default ciphers, the certificate chain and its key (read now, never
    again), and, with `ca_file`, the CAs client certificates must be signed by. `verify`
    is VERIFY_NONE, VERIFY_OPTIONAL (a certificate is asked for and checked if given) or
    VERIFY_REQUIRE (no valid certificate, no connection). Raises TLSConfigError."""
    cdef SSL_CTX *ctx
    cdef int mode
    cdef X509_NAME_STACK *names
    for flag, path in (("--ssl-certificate", certificate), ("--ssl-key", key),
                       ("--ssl-ca-file", ca_file)):
        if path is None:
            continue
        # The reason OpenSSL gives for a missing file is "system lib"; say it plainly.
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TLSConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    if io.S.ssl_ctx != NULL:
        raise TLSConfigError("TLS is already configured")
    ERR_clear_error()
    ctx = SSL_CTX_new(TLS_server_method())
    if ctx == NULL:
        raise TLSConfigError(f"OpenSSL: {tls_reason(b'cannot create a context').decode()}")
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION)
    # Partial writes and a moving buffer: flush_conn retries from its send buffer, which
    # may have been reallocated and grown since. Released buffers: an idle connection
    # keeps no 16 KiB read and write buffers.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                     | SSL_MODE_RELEASE_BUFFERS)
    # Read-ahead: one recv() takes every record there is instead of two per record
    # (header, then body); tls_read already drains what OpenSSL buffered.
    SSL_CTX_set_read_ahead(ctx, 1)
    SSL_CTX_set_default_passwd_cb(ctx, tls_no_password)
    if SSL_CTX_use_certificate_chain_file(ctx, certificate.encode()) != 1:
        _tls_fail(ctx, f"--ssl-certificate {certificate}: not a usable PEM certificate")
    if SSL_CTX_use_PrivateKey_file(ctx, key.encode(), SSL_FILETYPE_PEM) != 1:
        # OpenSSL 3 compares the key with the certificate already loaded here, so a
        # well-formed key of another certificate fails now, not at the check below.
        if ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH:
            _tls_fail(ctx, f"--ssl-key {key}: does not match --ssl-certificate {certificate}")
        _tls_fail(ctx, f"--ssl-key {key}: not a usable PEM private key (an encrypted key "
                       "is not supported)")
    if SSL_CTX_check_private_key(ctx) != 1:
        _tls_fail(ctx, f"--ssl-key {key}: does not match --ssl-certificate {certificate}")
    if ca_file is not None:
        if SSL_CTX_load_verify_locations(ctx, ca_file.encode(), NULL) != 1:
            _tls_fail(ctx, f"--ssl-ca-file {ca_file}: no usable PEM CA certificate")
        names = SSL_load_client_CA_file(ca_file.encode())
        if names != NULL:
            SSL_CTX_set_client_CA_list(ctx, names)
    mode = SSL_VERIFY_NONE
    if verify == VERIFY_OPTIONAL:
        mode = SSL_VERIFY_PEER
    elif verify == VERIFY_REQUIRE:
        mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
    SSL_CTX_set_verify(ctx, mode, NULL)
    # Needed for session resumption once client certificates are verified.
    SSL_CTX_set_session_id_context(ctx, b"fastgear", 8)
    ERR_clear_error()
    io.S.ssl_ctx = ctx
    io.S.tls_timeout_ms = <int64_t>(handshake_timeout * 1000)


def tls_stats(IOLoop io):
    """The TLS counters, summed over the loops."""
    cdef int k
    cdef uint64_t done = 0, failed = 0, timeouts = 0, pending = 0
    cdef IOConn *c
    with nogil:
        lock(io.S)
        for k in range(io.S.nloops):
            done += io.S.loops[k].tls_handshakes
            failed += io.S.loops[k].tls_failed
            timeouts += io.S.loops[k].tls_timeouts
            c = io.S.loops[k].hs_head
            while c != NULL:
                pending += 1
                c = c.hs_next
        unlock(io.S)
    return {"enabled": io.S.ssl_ctx != NULL, "handshakes": done, "handshakes_failed": failed,
            "handshake_timeouts": timeouts, "handshakes_in_progress": pending}
