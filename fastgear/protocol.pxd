# The wire contract: the one command table and the nogil packet parser/encoder.
# Every other compiled module cimports these declarations; nothing here allocates.
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from fastgear.buffer cimport Buf, buf_reserve, put_be32

cdef enum:
    CMD_CAN_DO = 1
    CMD_CANT_DO = 2
    CMD_RESET_ABILITIES = 3
    CMD_PRE_SLEEP = 4
    CMD_UNUSED = 5
    CMD_NOOP = 6
    CMD_SUBMIT_JOB = 7
    CMD_JOB_CREATED = 8
    CMD_GRAB_JOB = 9
    CMD_NO_JOB = 10
    CMD_JOB_ASSIGN = 11
    CMD_WORK_STATUS = 12
    CMD_WORK_COMPLETE = 13
    CMD_WORK_FAIL = 14
    CMD_GET_STATUS = 15
    CMD_ECHO_REQ = 16
    CMD_ECHO_RES = 17
    CMD_SUBMIT_JOB_BG = 18
    CMD_ERROR = 19
    CMD_STATUS_RES = 20
    CMD_SUBMIT_JOB_HIGH = 21
    CMD_SET_CLIENT_ID = 22
    CMD_CAN_DO_TIMEOUT = 23
    CMD_ALL_YOURS = 24
    CMD_WORK_EXCEPTION = 25
    CMD_OPTION_REQ = 26
    CMD_OPTION_RES = 27
    CMD_WORK_DATA = 28
    CMD_WORK_WARNING = 29
    CMD_GRAB_JOB_UNIQ = 30
    CMD_JOB_ASSIGN_UNIQ = 31
    CMD_SUBMIT_JOB_HIGH_BG = 32
    CMD_SUBMIT_JOB_LOW = 33
    CMD_SUBMIT_JOB_LOW_BG = 34
    CMD_SUBMIT_JOB_SCHED = 35
    CMD_SUBMIT_JOB_EPOCH = 36
    CMD_SUBMIT_REDUCE_JOB = 37
    CMD_SUBMIT_REDUCE_JOB_BACKGROUND = 38
    CMD_GRAB_JOB_ALL = 39
    CMD_JOB_ASSIGN_ALL = 40
    CMD_GET_STATUS_UNIQUE = 41
    CMD_STATUS_RES_UNIQUE = 42
    CMD_MAX = 43
    MAX_FIELDS = 8
    HEADER_SIZE = 12
    # gearmand's receive buffer: a text line longer than this closes the connection.
    MAX_TEXT_LINE = 8192

cdef enum ParseStatus:
    P_NEED_MORE = 0
    P_PACKET = 1
    P_TEXT = 2
    P_BAD_MAGIC = -1
    P_BAD_TYPE = -2
    P_BAD_ARGS = -3
    P_TOO_LARGE = -4
    P_LINE_TOO_LONG = -5

# Encoder results. Callers map ENC_NOMEM to their own status codes (the engine to
# E_NOMEM) instead of passing it on, so no code relies on two enums sharing a number.
cdef enum:
    ENC_OK = 0
    ENC_NOMEM = -1        # out of memory, or a body longer than the 32-bit length field

# What a request does, for code that treats a family of commands alike (the engine's
# dispatch, the shutdown gate): one column instead of lists of types in each place.
cdef enum CmdKind:
    KIND_OTHER = 0
    KIND_SUBMIT = 1       # SUBMIT_JOB and its priority, background, epoch, sched, reduce forms
    KIND_GRAB = 2         # GRAB_JOB, GRAB_JOB_UNIQ, GRAB_JOB_ALL
    KIND_WORK = 3         # a worker's WORK_* packet about a job it holds

cdef struct CmdInfo:
    const char *name
    uint8_t argc          # arguments as libgearman's command table counts them
    uint8_t has_data      # a trailing opaque blob follows the arguments
    uint8_t request       # a client or worker may send it to a server
    uint8_t kind          # CmdKind

cdef struct Packet:
    uint32_t type
    uint8_t res_magic     # sent with \0RES instead of \0REQ
    uint8_t nfields
    const char *f[MAX_FIELDS]
    size_t flen[MAX_FIELDS]
    size_t size           # bytes consumed from the input, header or newline included
    size_t need           # for P_NEED_MORE: total bytes the packet needs, when known

cdef CmdInfo COMMANDS[CMD_MAX]


cdef inline uint8_t cmd_kind(uint32_t t) noexcept nogil:
    # t < CMD_MAX: the parser refuses other types before anyone dispatches on them.
    return COMMANDS[t].kind

cdef int parse_packet(const char *p, size_t avail, size_t max_size,
                      Packet *pkt) noexcept nogil
# encode_packet below, exported by this module (an inline function has no C-API
# entry): the codec fuzzer (tests/fuzz/native.py) calls the encoder through it.
cdef int encode_packet_api(Buf *out, uint32_t magic_res, uint32_t type, int n,
                           const char **fields, const size_t *lens) noexcept nogil


# ---- encoders: inline, so each module compiles its own copy -------------------------

cdef inline int encode_packet(Buf *out, uint32_t magic_res, uint32_t type, int n,
                              const char **fields, const size_t *lens) noexcept nogil:
    """Append one packet; fields are joined by NULs. ENC_OK, or ENC_NOMEM."""
    cdef size_t total = 0
    cdef int i
    cdef char *w
    for i in range(n):
        total += lens[i]
    if n > 1:
        total += <size_t>(n - 1)
    if total > 0xffffffffu:
        return ENC_NOMEM
    if buf_reserve(out, HEADER_SIZE + total) != 0:
        return ENC_NOMEM
    w = out.data + out.end
    memcpy(w, b"\0RES" if magic_res else b"\0REQ", 4)
    put_be32(w + 4, type)
    put_be32(w + 8, <uint32_t>total)
    w += HEADER_SIZE
    for i in range(n):
        if i > 0:
            w[0] = 0
            w += 1
        if lens[i]:
            memcpy(w, fields[i], lens[i])
            w += lens[i]
    out.end += HEADER_SIZE + total
    return ENC_OK


cdef inline int encode2(Buf *out, uint32_t type, const char *a, size_t alen,
                        const char *b, size_t blen) noexcept nogil:
    cdef const char *f[2]
    cdef size_t l[2]
    f[0] = a
    f[1] = b
    l[0] = alen
    l[1] = blen
    return encode_packet(out, 1, type, 2, f, l)


cdef inline int encode1(Buf *out, uint32_t type, const char *a, size_t alen) noexcept nogil:
    return encode_packet(out, 1, type, 1, &a, &alen)


cdef inline int encode0(Buf *out, uint32_t type) noexcept nogil:
    return encode_packet(out, 1, type, 0, NULL, NULL)
