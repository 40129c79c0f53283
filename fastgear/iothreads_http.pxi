# gearmand's HTTP protocol (-r http, --http-port), served by the I/O loops like the
# binary protocol (included by iothreads.pyx). A request is parsed in place, in C and
# under the same bounds (--max-packet for the body, MAX_HTTP_HEAD for the head), into
# the SUBMIT_JOB* or GET_STATUS packet it stands for, and handed to engine_packet(); the
# engine answers in binary as to any client, and stage() turns those replies into the
# HTTP response before they are sent. The engine never learns that a client spoke HTTP.
#
# What gearmand 1.1.20 does is kept where a client can see it: the function is the path
# without its leading slashes, X-Gearman-Unique (default "-"), X-Gearman-Background:
# true and X-Gearman-Priority: high|low, GET submits an empty payload, the response
# line is HTTP/1.0 with X-Gearman-Job-Handle, X-Gearman-Command, Content-Length and
# Server headers, and the result as the body; an empty path is 404 NOT_FOUND. Its bugs
# are not kept (README, compatibility): every request is answered (gearmand hangs on
# TRACE and closes silently on a bad method or version), WORK_FAIL names the whole
# handle, WORK_DATA is sent as the start of the body instead of overwriting the status
# line, WORK_STATUS and WORK_WARNING do not end the response, HEAD gets no body, and a
# client that asks for it (HTTP/1.1, or Connection: keep-alive) keeps its connection
# and may pipeline. GET /status/<handle> answers what GET_STATUS does, as JSON.

cdef enum:
    # The request line and headers together, as for a text admin line.
    MAX_HTTP_HEAD = MAX_TEXT_LINE
    HK_JOB = 1
    HK_STATUS = 2
    M_GET = 1
    M_POST = 2
    M_PUT = 3
    M_HEAD = 4

cdef enum HttpParse:
    HP_NEED_MORE = 0
    HP_REQUEST = 1

cdef struct HttpRequest:
    int method
    const char *path          # without the leading slashes
    size_t path_len
    const char *unique
    size_t unique_len
    size_t body_at            # offset of the body in the input
    size_t body_len           # Content-Length
    size_t size               # head and body
    size_t need               # for HP_NEED_MORE: bytes the request needs, when known
    int status                # an HTTP error status to answer with, then close
    uint8_t bg
    uint8_t prio              # PRIO_HIGH / PRIO_NORMAL / PRIO_LOW
    uint8_t keep
    uint8_t json
    uint8_t expect_continue
    uint8_t status_req        # GET /status/<handle>

cdef const char *HTTP_SERVER = b"Server: fastgear\r\n"
cdef const char *HTTP_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef const char *HEX = b"0123456789abcdef"
cdef const char *B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


cdef inline int lower_eq(const char *p, size_t n, const char *word) noexcept nogil:
    """p[:n] equals the lower-case ASCII word, ignoring case."""
    cdef size_t i
    cdef char ch
    for i in range(n):
        ch = p[i]
        if ch >= b'A' and ch <= b'Z':
            ch = ch + 32
        if word[i] == 0 or ch != word[i]:
            return 0
    return word[n] == 0


cdef int has_token(const char *p, size_t n, const char *word) noexcept nogil:
    """A comma-separated header value holds word (case-insensitive), as a whole token."""
    cdef size_t i = 0, s, e
    while i < n:
        while i < n and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
            i += 1
        s = i
        while i < n and p[i] != b',' and p[i] != b';':
            i += 1
        e = i
        while e > s and (p[e - 1] == b' ' or p[e - 1] == b'\t'):
            e -= 1
        if lower_eq(p + s, e - s, word):
            return 1
        while i < n and p[i] != b',':
            i += 1
    return 0


cdef int has_json(const char *p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n + 1 if n >= 16 else 0):
        if i + 16 <= n and lower_eq(p + i, 16, b"application/json"):
            return 1
    return 0


cdef int http_parse(const char *p, size_t avail, size_t max_body,
                    HttpRequest *r) noexcept nogil:
    """Parse the request at p; HP_REQUEST with r filled (r.status != 0: answer that
    error and close), or HP_NEED_MORE. Never reads past avail nor MAX_HTTP_HEAD."""
    cdef size_t off = 0, n, scan, k, vs, ve
    cdef const char *line
    cdef const char *nl
    cdef const char *sp
    cdef const char *v
    cdef size_t vlen, nlen, i
    cdef int first = 1, chunked = 0
    cdef uint64_t clen = 0
    memset(r, 0, sizeof(HttpRequest))
    r.unique = b"-"
    r.unique_len = 1
    r.prio = PRIO_NORMAL
    while True:
        scan = avail - off
        if off + scan > MAX_HTTP_HEAD:
            scan = MAX_HTTP_HEAD - off if off < MAX_HTTP_HEAD else 0
        nl = <const char *>memchr(p + off, b'\n', scan) if scan else NULL
        if nl == NULL:
            if avail >= MAX_HTTP_HEAD:
                r.status = 431
                return HP_REQUEST
            return HP_NEED_MORE
        line = p + off
        n = <size_t>(nl - line)
        off += n + 1
        if n and line[n - 1] == b'\r':
            n -= 1
        if memchr(line, 0, n) != NULL:
            r.status = 400
            return HP_REQUEST
        if first:
            if n == 0:
                continue        # blank lines before a request are allowed (RFC 9112)
            first = 0
            sp = <const char *>memchr(line, b' ', n)
            if sp == NULL:
                r.status = 400
                return HP_REQUEST
            k = <size_t>(sp - line)
            if k == 3 and memcmp(line, b"GET", 3) == 0:
                r.method = M_GET
            elif k == 4 and memcmp(line, b"POST", 4) == 0:
                r.method = M_POST
            elif k == 3 and memcmp(line, b"PUT", 3) == 0:
                r.method = M_PUT
            elif k == 4 and memcmp(line, b"HEAD", 4) == 0:
                r.method = M_HEAD
            else:
                r.status = 405
                return HP_REQUEST
            k += 1
            while k < n and line[k] == b' ':
                k += 1
            while k < n and line[k] == b'/':
                k += 1
            r.path = line + k
            sp = <const char *>memchr(r.path, b' ', n - k)
            if sp == NULL:
                r.status = 400
                return HP_REQUEST
            r.path_len = <size_t>(sp - r.path)
            for i in range(r.path_len):
                if <unsigned char>r.path[i] < 0x21 or r.path[i] == 0x7f:
                    r.status = 400
                    return HP_REQUEST
            k = <size_t>(sp - line)
            while k < n and line[k] == b' ':
                k += 1
            v = line + k
            vlen = n - k
            if vlen == 8 and memcmp(v, b"HTTP/1.1", 8) == 0:
                r.keep = 1
            elif vlen == 8 and memcmp(v, b"HTTP/1.0", 8) == 0:
                r.keep = 0
            elif vlen == 8 and memcmp(v, b"HTTP/", 5) == 0 and v[6] == b'.':
                r.status = 505
                return HP_REQUEST
            else:
                r.status = 400
                return HP_REQUEST
            if r.method == M_GET and r.path_len > 7 and memcmp(r.path, b"status/", 7) == 0:
                r.status_req = 1
            continue
        if n == 0:
            break               # end of the head
        sp = <const char *>memchr(line, b':', n)
        if sp == NULL or sp == line:
            r.status = 400
            return HP_REQUEST
        nlen = <size_t>(sp - line)
        vs = nlen + 1
        while vs < n and (line[vs] == b' ' or line[vs] == b'\t'):
            vs += 1
        ve = n
        while ve > vs and (line[ve - 1] == b' ' or line[ve - 1] == b'\t'):
            ve -= 1
        v = line + vs
        vlen = ve - vs
        if lower_eq(line, nlen, b"content-length"):
            if vlen == 0 or vlen > 19:
                r.status = 400 if vlen == 0 else 413
                return HP_REQUEST
            clen = 0
            for i in range(vlen):
                if v[i] < b'0' or v[i] > b'9':
                    r.status = 400
                    return HP_REQUEST
                clen = clen * 10 + <uint64_t>(v[i] - 48)
        elif lower_eq(line, nlen, b"transfer-encoding"):
            chunked = 1
        elif lower_eq(line, nlen, b"connection"):
            if has_token(v, vlen, b"close"):
                r.keep = 0
            elif has_token(v, vlen, b"keep-alive"):
                r.keep = 1
        elif lower_eq(line, nlen, b"x-gearman-unique"):
            if vlen:
                r.unique = v
                r.unique_len = vlen
        elif lower_eq(line, nlen, b"x-gearman-background"):
            r.bg = lower_eq(v, vlen, b"true")
        elif lower_eq(line, nlen, b"x-gearman-priority"):
            if lower_eq(v, vlen, b"high"):
                r.prio = PRIO_HIGH
            elif lower_eq(v, vlen, b"low"):
                r.prio = PRIO_LOW
        elif lower_eq(line, nlen, b"accept"):
            r.json = has_json(v, vlen)
        elif lower_eq(line, nlen, b"expect"):
            r.expect_continue = lower_eq(v, vlen, b"100-continue")
    if chunked:
        # Bodies come with Content-Length (gearmand reads nothing else).
        r.status = 411
        return HP_REQUEST
    if clen > max_body:
        r.status = 413
        return HP_REQUEST
    r.body_at = off
    r.body_len = <size_t>clen
    r.size = off + r.body_len
    if avail < r.size:
        r.need = r.size
        return HP_NEED_MORE
    if r.path_len == 0 and r.method != M_HEAD:
        r.status = 404
    return HP_REQUEST


cdef inline int put(Buf *b, const char *s) noexcept nogil:
    return buf_append(b, s, strlen(s))


cdef int put_uint(Buf *b, uint64_t v) noexcept nogil:
    cdef char tmp[24]
    cdef int i = 24
    while True:
        i -= 1
        tmp[i] = <char>(48 + v % 10)
        v //= 10
        if v == 0:
            break
    return buf_append(b, tmp + i, <size_t>(24 - i))


cdef int utf8_valid(const char *p, size_t n) noexcept nogil:
    cdef const unsigned char *u = <const unsigned char *>p
    cdef size_t i = 0, k, extra
    cdef uint32_t cp
    while i < n:
        if u[i] < 0x80:
            i += 1
            continue
        if u[i] >= 0xc2 and u[i] <= 0xdf:
            extra = 1
            cp = u[i] & 0x1f
        elif u[i] >= 0xe0 and u[i] <= 0xef:
            extra = 2
            cp = u[i] & 0x0f
        elif u[i] >= 0xf0 and u[i] <= 0xf4:
            extra = 3
            cp = u[i] & 0x07
        else:
            return 0
        if i + extra >= n:
            return 0
        for k in range(1, extra + 1):
            if u[i + k] & 0xc0 != 0x80:
                return 0
            cp = (cp << 6) | (u[i + k] & 0x3f)
        if ((extra == 2 and (cp < 0x800 or (cp >= 0xd800 and cp <= 0xdfff)))
                or (extra == 3 and (cp < 0x10000 or cp > 0x10ffff))):
            return 0
        i += extra + 1
    return 1


cdef int put_json_str(Buf *b, const char *p, size_t n) noexcept nogil:
    """A JSON string; bytes of text that is not UTF-8 are read as Latin-1."""
    cdef const unsigned char *u = <const unsigned char *>p
    cdef size_t i, run = 0
    cdef char esc[6]
    cdef int raw_high = utf8_valid(p, n)
    cdef int rc = buf_append(b, b"\"", 1)
    esc[0] = b'\\'
    esc[1] = b'u'
    esc[2] = b'0'
    esc[3] = b'0'
    for i in range(n):
        if u[i] >= 0x20 and u[i] != b'"' and u[i] != b'\\' and (u[i] < 0x80 or raw_high):
            run += 1
            continue
        rc |= buf_append(b, p + i - run, run)
        run = 0
        if u[i] == b'"':
            rc |= buf_append(b, b"\\\"", 2)
        elif u[i] == b'\\':
            rc |= buf_append(b, b"\\\\", 2)
        else:
            esc[4] = HEX[u[i] >> 4]
            esc[5] = HEX[u[i] & 15]
            rc |= buf_append(b, esc, 6)
    rc |= buf_append(b, p + n - run, run)
    return rc | buf_append(b, b"\"", 1)


cdef int put_base64(Buf *b, const char *p, size_t n) noexcept nogil:
    cdef const unsigned char *u = <const unsigned char *>p
    cdef size_t i = 0
    cdef uint32_t v
    cdef char q[4]
    cdef int rc = buf_append(b, b"\"", 1)
    while i < n:
        v = <uint32_t>u[i] << 16
        if i + 1 < n:
            v |= <uint32_t>u[i + 1] << 8
        if i + 2 < n:
            v |= u[i + 2]
        q[0] = B64[(v >> 18) & 63]
        q[1] = B64[(v >> 12) & 63]
        q[2] = B64[(v >> 6) & 63] if i + 1 < n else 61     # '='
        q[3] = B64[v & 63] if i + 2 < n else 61
        rc |= buf_append(b, q, 4)
        i += 3
    return rc | buf_append(b, b"\"", 1)


cdef const char *reason(int status) noexcept nogil:
    # gearmand's spelling of the reason phrases (response_codes.cc).
    if status == 200:
        return b"OK"
    if status == 400:
        return b"BAD_REQUEST"
    if status == 404:
        return b"NOT_FOUND"
    if status == 405:
        return b"METHOD_NOT_ALLOWED"
    if status == 411:
        return b"LENGTH_REQUIRED"
    if status == 413:
        return b"REQUEST_ENTITY_TOO_LARGE"
    if status == 431:
        return b"REQUEST_HEADER_FIELDS_TOO_LARGE"
    if status == 503:
        return b"SERVICE_UNAVAILABLE"
    if status == 505:
        return b"VERSION_NOT_SUPPORTED"
    return b"INTERNAL_SERVER_ERROR"


cdef int http_status_line(Buf *b, int status) noexcept nogil:
    # HTTP/1.0 as gearmand answers, whatever the request's version: with
    # "Connection: keep-alive" a 1.0 response keeps the connection for 1.1 clients too.
    cdef int rc = put(b, b"HTTP/1.0 ")
    rc |= put_uint(b, <uint64_t>status)
    rc |= buf_append(b, b" ", 1)
    rc |= put(b, reason(status))
    return rc | buf_append(b, b"\r\n", 2)


cdef int http_error(Buf *b, int status, uint8_t keep) noexcept nogil:
    """gearmand's error response: status line, Server, an empty body."""
    cdef int rc = http_status_line(b, status)
    rc |= put(b, HTTP_SERVER)
    if status == 405:
        rc |= put(b, b"Allow: GET, POST, PUT, HEAD\r\n")
    if keep:
        rc |= put(b, b"Connection: keep-alive\r\n")
    return rc | put(b, b"Content-Length: 0\r\n\r\n")


cdef int http_head(Buf *b, HttpReq *hr, int status, const char *command,
                   const char *handle, size_t hlen, size_t blen, int json) noexcept nogil:
    """A response's head, in gearmand's header order (HEAD: no X-Gearman-Command)."""
    cdef int rc = http_status_line(b, status)
    if handle != NULL:
        rc |= put(b, b"X-Gearman-Job-Handle: ")
        rc |= buf_append(b, handle, hlen)
        rc |= buf_append(b, b"\r\n", 2)
    if not hr.head and command != NULL:
        rc |= put(b, b"X-Gearman-Command: ")
        rc |= put(b, command)
        rc |= buf_append(b, b"\r\n", 2)
    rc |= put(b, b"Content-Length: ")
    rc |= put_uint(b, blen)
    rc |= buf_append(b, b"\r\n", 2)
    rc |= put(b, HTTP_SERVER)
    if json:
        rc |= put(b, b"Content-Type: application/json\r\n")
    if hr.keep:
        rc |= put(b, b"Connection: keep-alive\r\n")
    return rc | buf_append(b, b"\r\n", 2)


cdef int http_answer(Buf *b, HttpReq *hr, int status, const char *command,
                     const char *handle, size_t hlen, const char *d1, size_t n1,
                     const char *d2, size_t n2) noexcept nogil:
    """A job's response: the body is d1 + d2 (WORK_DATA so far, then the result), or
    with Accept: application/json an object naming handle, command and data."""
    cdef Buf js, whole
    cdef const char *dp = d2
    cdef size_t dn = n2
    cdef size_t blen = n1 + n2
    cdef int rc = 0
    buf_init(&js)
    buf_init(&whole)
    if hr.json:
        if n1:
            rc |= buf_append(&whole, d1, n1)
            rc |= buf_append(&whole, d2, n2)
            dp = buf_head(&whole)
            dn = buf_len(&whole)
        rc |= put(&js, b"{\"handle\":")
        rc |= put_json_str(&js, handle, hlen)
        rc |= put(&js, b",\"command\":")
        rc |= put_json_str(&js, command, strlen(command))
        if dn and utf8_valid(dp, dn):
            rc |= put(&js, b",\"data\":")
            rc |= put_json_str(&js, dp, dn)
        elif dn:
            rc |= put(&js, b",\"data_base64\":")
            rc |= put_base64(&js, dp, dn)
        rc |= put(&js, b"}")
        blen = buf_len(&js)
    rc |= http_head(b, hr, status, command, handle, hlen, blen, hr.json)
    if not hr.head:
        if hr.json:
            rc |= buf_append(b, buf_head(&js), blen)
        else:
            rc |= buf_append(b, d1, n1)
            rc |= buf_append(b, d2, n2)
    buf_free(&js)
    buf_free(&whole)
    return rc


cdef int put_json_field(Buf *b, const char *name, const char *p, size_t n) noexcept nogil:
    ""","name":value with a number when the field is one, else a string."""
    cdef size_t i
    cdef int rc
    cdef int num = 0 < n < 20
    for i in range(n):
        if p[i] < b'0' or p[i] > b'9':
            num = 0
    rc = put(b, b",\"")
    rc |= put(b, name)
    rc |= put(b, b"\":")
    if num:
        return rc | buf_append(b, p, n)
    return rc | put_json_str(b, p, n)


cdef int http_status_json(Buf *b, HttpReq *hr, const char *p, size_t n) noexcept nogil:
    """STATUS_RES (handle, known, running, numerator, denominator) as a JSON object."""
    cdef const char *f[5]
    cdef size_t fl[5]
    cdef const char *z
    cdef int i, rc
    cdef Buf js
    for i in range(5):
        z = <const char *>memchr(p, 0, n) if i < 4 else NULL
        f[i] = p
        fl[i] = <size_t>(z - p) if z != NULL else n
        if z != NULL:
            n -= fl[i] + 1
            p = z + 1
        else:
            p += n
            n = 0
    buf_init(&js)
    rc = put(&js, b"{\"handle\":")
    rc |= put_json_str(&js, f[0], fl[0])
    rc |= put(&js, b",\"known\":")
    rc |= put(&js, b"true" if fl[1] == 1 and f[1][0] == b'1' else b"false")
    rc |= put(&js, b",\"running\":")
    rc |= put(&js, b"true" if fl[2] == 1 and f[2][0] == b'1' else b"false")
    rc |= put_json_field(&js, b"numerator", f[3], fl[3])
    rc |= put_json_field(&js, b"denominator", f[4], fl[4])
    rc |= put(&js, b"}")
    rc |= http_head(b, hr, 200, b"STATUS_RES", f[0], fl[0], buf_len(&js), 1)
    if not hr.head:
        rc |= buf_append(b, buf_head(&js), buf_len(&js))
    buf_free(&js)
    return rc


cdef int http_engine_error(Buf *b, HttpReq *hr, const char *p, size_t n) noexcept nogil:
    """An ERROR packet (code, text): 503 when the server cannot take the job now, 500
    when it ran out of memory, 400 for a request it refused; the text is the body."""
    cdef const char *z = <const char *>memchr(p, 0, n)
    cdef size_t clen = <size_t>(z - p) if z != NULL else n
    cdef const char *text = z + 1 if z != NULL else p + n
    cdef size_t tlen = n - clen - 1 if z != NULL else 0
    cdef int status = 400, rc
    cdef Buf js
    if (lower_eq(p, clen, b"queue_error") or lower_eq(p, clen, b"shutting_down")
            or lower_eq(p, clen, b"server_busy")):
        status = 503
    elif lower_eq(p, clen, b"memory_allocation_failure"):
        status = 500
    buf_init(&js)
    if hr.json:
        rc = put(&js, b"{\"error\":")
        rc |= put_json_str(&js, p, clen)
        rc |= put(&js, b",\"message\":")
        rc |= put_json_str(&js, text, tlen)
        rc |= put(&js, b"}")
        text = buf_head(&js)
        tlen = buf_len(&js)
    else:
        rc = 0
    rc |= http_head(b, hr, status, b"ERROR", NULL, 0, tlen, hr.json)
    if not hr.head:
        rc |= buf_append(b, text, tlen)
    buf_free(&js)
    return rc


cdef void http_input(Loop *L, IOConn *io) noexcept nogil:
    """(lock, owner) Parse and submit the requests in io's input, one at a time."""
    cdef HttpRequest r
    cdef Packet pkt
    cdef int st, rc
    cdef size_t have, grow
    cdef Shared *S = L.S
    cdef Conn *c = &io.c
    cdef HttpReq *hr = &io.hr
    while not io.closing and not io.dead and not io.over and not hr.active:
        if output_over(S, io):
            pause_input(L, io)
            break
        st = http_parse(buf_head(&io.inbuf), buf_len(&io.inbuf), S.max_packet, &r)
        if st == HP_NEED_MORE:
            if r.need and r.expect_continue and r.keep and not hr.continued:
                # curl waits a second for this before it sends a body over 1 KiB.
                hr.continued = 1
                if put(&io.wbuf, HTTP_CONTINUE) != 0:
                    io.dead = 1
                stage(L, io)
            have = buf_len(&io.inbuf)
            if r.need > have:
                grow = r.need - have
                if grow > have and grow > READ_CHUNK:
                    grow = have if have > READ_CHUNK else READ_CHUNK
                if buf_reserve(&io.inbuf, grow) != 0:
                    io.closing = 1
            break
        hr.continued = 0
        hr.head = r.method == M_HEAD
        hr.keep = r.keep
        hr.json = r.json
        if r.status == 404 or (r.status == 0 and r.path_len == 0):
            # A well-formed request for no function: 404 as gearmand, or (HEAD /) a
            # liveness check; the connection stays when the client wants it to.
            if r.status:
                rc = http_error(&io.wbuf, 404, hr.keep)
            else:
                rc = http_head(&io.wbuf, hr, 200, NULL, NULL, 0, 0, 0)
            if rc != 0:
                io.dead = 1
            buf_consume(&io.inbuf, r.size)
            if not hr.keep:
                io.closing = 1
            stage(L, io)
            continue
        if r.status:
            L.protocol_errors += 1
            post_event(S, EV_PROTOCOL_ERROR, io, reason(r.status), 0)
            if http_error(&io.wbuf, r.status, 0) != 0:
                io.dead = 1
            io.closing = 1
            stage(L, io)
            break
        memset(&pkt, 0, sizeof(Packet))
        if r.status_req:
            hr.kind = HK_STATUS
            hr.bg = 0
            pkt.type = CMD_GET_STATUS
            pkt.nfields = 1
            pkt.f[0] = r.path + 7
            pkt.flen[0] = r.path_len - 7
        else:
            hr.kind = HK_JOB
            hr.bg = r.bg
            if r.prio == PRIO_HIGH:
                pkt.type = CMD_SUBMIT_JOB_HIGH_BG if r.bg else CMD_SUBMIT_JOB_HIGH
            elif r.prio == PRIO_LOW:
                pkt.type = CMD_SUBMIT_JOB_LOW_BG if r.bg else CMD_SUBMIT_JOB_LOW
            else:
                pkt.type = CMD_SUBMIT_JOB_BG if r.bg else CMD_SUBMIT_JOB
            pkt.nfields = 3
            pkt.f[0] = r.path
            pkt.flen[0] = r.path_len
            pkt.f[1] = r.unique
            pkt.flen[1] = r.unique_len
            # GET and HEAD submit an empty payload, as in gearmand; a body is skipped.
            pkt.f[2] = buf_head(&io.inbuf) + r.body_at
            pkt.flen[2] = r.body_len if r.method == M_POST or r.method == M_PUT else 0
        pkt.size = r.size
        hr.active = 1
        if S.draining and drain_gate(S, c, pkt.type):
            rc = E_OK
        elif S.fenced and fence_gate(S, io, pkt.type):
            rc = E_OK
        else:
            rc = engine_packet(&S.eng, c, &pkt)
        buf_consume(&io.inbuf, r.size)
        if rc != E_OK:
            protocol_error(L, io, b"MEMORY_ALLOCATION_FAILURE", b"Out of memory")


cdef void http_translate(Loop *L, IOConn *io) noexcept nogil:
    """(lock, owner) Turn the engine's binary replies in io's outbuf into the HTTP
    response they complete, written to io's send buffer; the rest is dropped (JOB_CREATED
    of a foreground job, WORK_STATUS, WORK_WARNING)."""
    cdef Conn *c = &io.c
    cdef HttpReq *hr = &io.hr
    cdef Shared *S = L.S
    cdef const char *p = buf_head(&c.outbuf)
    cdef size_t n = buf_len(&c.outbuf)
    cdef const char *body
    cdef const char *z
    cdef const char *rest
    cdef size_t blen, hlen, rlen
    cdef uint32_t t
    cdef int done, rc
    while n >= HEADER_SIZE:
        t = get_be32(p + 4)
        blen = get_be32(p + 8)
        if n < HEADER_SIZE + blen:
            break
        body = p + HEADER_SIZE
        z = <const char *>memchr(body, 0, blen)
        hlen = <size_t>(z - body) if z != NULL else blen
        rest = z + 1 if z != NULL else body + blen
        rlen = blen - hlen - 1 if z != NULL else 0
        p += HEADER_SIZE + blen
        n -= HEADER_SIZE + blen
        done = 1
        rc = 0
        if t == CMD_ERROR:
            rc = http_engine_error(&io.wbuf, hr, body, blen)
        elif not hr.active:
            done = 0
        elif hr.kind == HK_STATUS:
            if t == CMD_STATUS_RES:
                rc = http_status_json(&io.wbuf, hr, body, blen)
            else:
                done = 0
        elif t == CMD_JOB_CREATED and hr.bg:
            rc = http_answer(&io.wbuf, hr, 200, b"JOB_CREATED", body, blen, NULL, 0, NULL, 0)
        elif t == CMD_WORK_COMPLETE:
            rc = http_answer(&io.wbuf, hr, 200, b"WORK_COMPLETE", body, hlen,
                             buf_head(&hr.body), buf_len(&hr.body), rest, rlen)
        elif t == CMD_WORK_FAIL:
            rc = http_answer(&io.wbuf, hr, 200, b"WORK_FAIL", body, blen, NULL, 0, NULL, 0)
        elif t == CMD_WORK_EXCEPTION:
            rc = http_answer(&io.wbuf, hr, 200, b"WORK_EXCEPTION", body, hlen,
                             NULL, 0, rest, rlen)
        elif t == CMD_WORK_DATA and not hr.bg:
            done = 0
            rc = buf_append(&hr.body, rest, rlen)
            if (S.max_output_hard and not io.over
                    and buf_len(&hr.body) > S.max_output_hard):
                overflow(S, io, buf_len(&hr.body))
        else:
            done = 0
        if rc != 0:
            io.dead = 1
        if done:
            hr.active = 0
            buf_free(&hr.body)
            if not hr.keep:
                io.closing = 1
            elif buf_len(&io.inbuf) and not io.in_unpause:
                # A pipelined request is waiting: parse it in the next batch.
                io.in_unpause = 1
                io.unpause_next = L.unpause
                L.unpause = io
    buf_consume(&c.outbuf, buf_len(&c.outbuf))
