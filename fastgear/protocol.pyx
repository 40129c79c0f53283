# The Gearman binary codec: the one command table (PROTOCOL.md §2) and a parser that is
# bounded by each packet's declared length, unlike gearmand's, which scans past it for
# NULs (PROTOCOL.md §1.4). Parsing never copies: fields point into the input buffer and
# are valid until the caller consumes those bytes. Text admin lines are recognised at
# any packet boundary by a non-zero first byte, so binary and text can be mixed on one
# connection. The Python functions at the bottom exist for tests and benchmarks only.
from libc.string cimport memchr, memcmp
from libc.stdint cimport uint32_t

from fastgear.buffer cimport Buf, buf_init, buf_free, buf_len, buf_head
from fastgear.buffer cimport get_be32


cdef void _cmd(int t, const char *name, int argc, int has_data, int request,
               int kind=KIND_OTHER) noexcept:
    COMMANDS[t].name = name
    COMMANDS[t].argc = argc
    COMMANDS[t].has_data = has_data
    COMMANDS[t].request = request
    COMMANDS[t].kind = kind


_cmd(0, b"TEXT", 0, 0, 0)
_cmd(CMD_CAN_DO, b"CAN_DO", 1, 0, 1)
_cmd(CMD_CANT_DO, b"CANT_DO", 1, 0, 1)
_cmd(CMD_RESET_ABILITIES, b"RESET_ABILITIES", 0, 0, 1)
_cmd(CMD_PRE_SLEEP, b"PRE_SLEEP", 0, 0, 1)
_cmd(CMD_UNUSED, b"UNUSED", 0, 0, 0)
_cmd(CMD_NOOP, b"NOOP", 0, 0, 0)
_cmd(CMD_SUBMIT_JOB, b"SUBMIT_JOB", 2, 1, 1, KIND_SUBMIT)
_cmd(CMD_JOB_CREATED, b"JOB_CREATED", 1, 0, 0)
_cmd(CMD_GRAB_JOB, b"GRAB_JOB", 0, 0, 1, KIND_GRAB)
_cmd(CMD_NO_JOB, b"NO_JOB", 0, 0, 0)
_cmd(CMD_JOB_ASSIGN, b"JOB_ASSIGN", 2, 1, 0)
_cmd(CMD_WORK_STATUS, b"WORK_STATUS", 3, 0, 1, KIND_WORK)
_cmd(CMD_WORK_COMPLETE, b"WORK_COMPLETE", 1, 1, 1, KIND_WORK)
_cmd(CMD_WORK_FAIL, b"WORK_FAIL", 1, 0, 1, KIND_WORK)
_cmd(CMD_GET_STATUS, b"GET_STATUS", 1, 0, 1)
_cmd(CMD_ECHO_REQ, b"ECHO_REQ", 0, 1, 1)
_cmd(CMD_ECHO_RES, b"ECHO_RES", 0, 1, 0)
_cmd(CMD_SUBMIT_JOB_BG, b"SUBMIT_JOB_BG", 2, 1, 1, KIND_SUBMIT)
_cmd(CMD_ERROR, b"ERROR", 2, 0, 0)
_cmd(CMD_STATUS_RES, b"STATUS_RES", 5, 0, 0)
_cmd(CMD_SUBMIT_JOB_HIGH, b"SUBMIT_JOB_HIGH", 2, 1, 1, KIND_SUBMIT)
_cmd(CMD_SET_CLIENT_ID, b"SET_CLIENT_ID", 1, 0, 1)
_cmd(CMD_CAN_DO_TIMEOUT, b"CAN_DO_TIMEOUT", 2, 0, 1)
_cmd(CMD_ALL_YOURS, b"ALL_YOURS", 0, 0, 1)
_cmd(CMD_WORK_EXCEPTION, b"WORK_EXCEPTION", 1, 1, 1, KIND_WORK)
_cmd(CMD_OPTION_REQ, b"OPTION_REQ", 1, 0, 1)
_cmd(CMD_OPTION_RES, b"OPTION_RES", 1, 0, 0)
_cmd(CMD_WORK_DATA, b"WORK_DATA", 1, 1, 1, KIND_WORK)
_cmd(CMD_WORK_WARNING, b"WORK_WARNING", 1, 1, 1, KIND_WORK)
_cmd(CMD_GRAB_JOB_UNIQ, b"GRAB_JOB_UNIQ", 0, 0, 1, KIND_GRAB)
_cmd(CMD_JOB_ASSIGN_UNIQ, b"JOB_ASSIGN_UNIQ", 3, 1, 0)
_cmd(CMD_SUBMIT_JOB_HIGH_BG, b"SUBMIT_JOB_HIGH_BG", 2, 1, 1, KIND_SUBMIT)
_cmd(CMD_SUBMIT_JOB_LOW, b"SUBMIT_JOB_LOW", 2, 1, 1, KIND_SUBMIT)
_cmd(CMD_SUBMIT_JOB_LOW_BG, b"SUBMIT_JOB_LOW_BG", 2, 1, 1, KIND_SUBMIT)
_cmd(CMD_SUBMIT_JOB_SCHED, b"SUBMIT_JOB_SCHED", 7, 1, 1, KIND_SUBMIT)
_cmd(CMD_SUBMIT_JOB_EPOCH, b"SUBMIT_JOB_EPOCH", 3, 1, 1, KIND_SUBMIT)
_cmd(CMD_SUBMIT_REDUCE_JOB, b"SUBMIT_REDUCE_JOB", 4, 1, 1, KIND_SUBMIT)
_cmd(CMD_SUBMIT_REDUCE_JOB_BACKGROUND, b"SUBMIT_REDUCE_JOB_BACKGROUND", 4, 1, 1, KIND_SUBMIT)
_cmd(CMD_GRAB_JOB_ALL, b"GRAB_JOB_ALL", 0, 0, 1, KIND_GRAB)
_cmd(CMD_JOB_ASSIGN_ALL, b"JOB_ASSIGN_ALL", 4, 1, 0)
_cmd(CMD_GET_STATUS_UNIQUE, b"GET_STATUS_UNIQUE", 1, 0, 1)
_cmd(CMD_STATUS_RES_UNIQUE, b"STATUS_RES_UNIQUE", 6, 0, 0)


cdef int encode_packet_api(Buf *out, uint32_t magic_res, uint32_t type, int n,
                           const char **fields, const size_t *lens) noexcept nogil:
    return encode_packet(out, magic_res, type, n, fields, lens)


cdef int parse_packet(const char *p, size_t avail, size_t max_size,
                      Packet *pkt) noexcept nogil:
    """Parse the packet or text line at p. Returns a ParseStatus; on P_PACKET/P_TEXT the
    fields point into p and pkt.size says how many bytes it used."""
    cdef const char *nl
    cdef const char *body
    cdef const char *end
    cdef const char *z
    cdef size_t scan, blen
    cdef uint32_t t
    cdef int i, terminated
    pkt.need = 0
    if avail == 0:
        return P_NEED_MORE
    if p[0] != 0:
        scan = avail if avail < MAX_TEXT_LINE else MAX_TEXT_LINE
        nl = <const char *>memchr(p, b'\n', scan)
        if nl == NULL:
            return P_LINE_TOO_LONG if avail >= MAX_TEXT_LINE else P_NEED_MORE
        pkt.type = 0
        pkt.nfields = 1
        pkt.f[0] = p
        pkt.flen[0] = <size_t>(nl - p)
        if pkt.flen[0] > 0 and p[pkt.flen[0] - 1] == b'\r':
            pkt.flen[0] -= 1
        pkt.size = <size_t>(nl - p) + 1
        return P_TEXT
    if avail < HEADER_SIZE:
        # A wrong magic is reported as soon as it is visible, not after 12 bytes.
        if memcmp(p, b"\0RE", avail if avail < 3 else 3) != 0:
            return P_BAD_MAGIC
        return P_NEED_MORE
    if memcmp(p, b"\0REQ", 4) == 0:
        pkt.res_magic = 0
    elif memcmp(p, b"\0RES", 4) == 0:
        pkt.res_magic = 1
    else:
        return P_BAD_MAGIC
    t = get_be32(p + 4)
    if t == 0 or t >= CMD_MAX:
        pkt.type = t
        return P_BAD_TYPE
    pkt.type = t
    blen = get_be32(p + 8)
    if blen > max_size:
        pkt.size = HEADER_SIZE + blen
        return P_TOO_LARGE
    if avail < HEADER_SIZE + blen:
        pkt.need = HEADER_SIZE + blen
        return P_NEED_MORE
    pkt.size = HEADER_SIZE + blen
    body = p + HEADER_SIZE
    end = body + blen
    if COMMANDS[t].argc == 0 and not COMMANDS[t].has_data:
        pkt.nfields = 0
        return P_PACKET
    pkt.nfields = COMMANDS[t].argc + COMMANDS[t].has_data
    # has-data: every argument is NUL-terminated, the blob is the rest;
    # no-data: all but the last argument are terminated, the last is the rest.
    terminated = pkt.nfields - 1
    for i in range(terminated):
        z = <const char *>memchr(body, 0, <size_t>(end - body))
        if z == NULL:
            return P_BAD_ARGS
        pkt.f[i] = body
        pkt.flen[i] = <size_t>(z - body)
        body = z + 1
    pkt.f[terminated] = body
    pkt.flen[terminated] = <size_t>(end - body)
    return P_PACKET


# The encoders are inline functions in protocol.pxd: every module that answers a peer
# gets them compiled in, instead of calling across modules through a function pointer.


# ---- Python surface for tests and benchmarks -------------------------------------

NAMES = {i: COMMANDS[i].name.decode() for i in range(1, CMD_MAX)}
NUMBERS = {v: k for k, v in NAMES.items()}
STATUS_NAMES = {P_NEED_MORE: "need_more", P_PACKET: "packet", P_TEXT: "text",
                P_BAD_MAGIC: "bad_magic", P_BAD_TYPE: "bad_type", P_BAD_ARGS: "bad_args",
                P_TOO_LARGE: "too_large", P_LINE_TOO_LONG: "line_too_long"}


def parse(bytes data, size_t max_size=0xffffffff):
    """Parse every complete packet in data -> (list of (kind, type, fields), rest bytes).
    kind is 'packet' or 'text'; a parse error ends the list with (error_name, type, [])."""
    cdef Packet pkt
    cdef const char *p = data
    cdef size_t avail = len(data)
    cdef size_t off = 0
    cdef int st, i
    out = []
    while True:
        st = parse_packet(p + off, avail - off, max_size, &pkt)
        if st == P_NEED_MORE:
            break
        if st < 0:
            out.append((STATUS_NAMES[st], pkt.type if st == P_BAD_TYPE else 0, []))
            return out, data[off:]
        out.append((STATUS_NAMES[st], pkt.type,
                    [pkt.f[i][:pkt.flen[i]] for i in range(pkt.nfields)]))
        off += pkt.size
    return out, data[off:]


def encode(uint32_t type, fields=(), bint request=False):
    """Encode one packet (\\0RES by default, \\0REQ with request=True)."""
    cdef Buf b
    cdef const char *f[MAX_FIELDS]
    cdef size_t l[MAX_FIELDS]
    cdef int i, n = len(fields)
    if n > MAX_FIELDS:
        raise ValueError("too many fields")
    keep = [bytes(x) for x in fields]
    for i in range(n):
        f[i] = keep[i]
        l[i] = len(keep[i])
    buf_init(&b)
    try:
        if encode_packet(&b, 0 if request else 1, type, n, f, l) != ENC_OK:
            raise MemoryError()
        return buf_head(&b)[:buf_len(&b)]
    finally:
        buf_free(&b)


def parse_count(bytes data, int repeat=1):
    """Benchmark helper: parse every packet in data `repeat` times without the GIL."""
    cdef Packet pkt
    cdef const char *p = data
    cdef size_t avail = len(data), off
    cdef long count = 0
    cdef int _r, st
    with nogil:
        for _r in range(repeat):
            off = 0
            while True:
                st = parse_packet(p + off, avail - off, 0xffffffff, &pkt)
                if st != P_PACKET and st != P_TEXT:
                    break
                off += pkt.size
                count += 1
    return count
