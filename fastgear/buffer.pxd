# A growable byte buffer with a read offset, plus big-endian helpers. Every connection
# has one for input and one for output; all functions are inline and nogil so the
# per-packet path never leaves C. Consumed bytes are reclaimed lazily (compaction on
# the next reserve) so a pipelined burst costs one memmove, not one per packet.
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memmove
from libc.stdint cimport uint32_t


cdef struct Buf:
    char *data
    size_t start    # first unread byte
    size_t end      # one past the last written byte
    size_t cap


cdef inline void buf_init(Buf *b) noexcept nogil:
    b.data = NULL
    b.start = 0
    b.end = 0
    b.cap = 0


cdef inline void buf_free(Buf *b) noexcept nogil:
    free(b.data)
    buf_init(b)


cdef inline size_t buf_len(const Buf *b) noexcept nogil:
    return b.end - b.start


cdef inline char *buf_head(const Buf *b) noexcept nogil:
    return b.data + b.start


cdef inline int buf_reserve(Buf *b, size_t n) noexcept nogil:
    """Make room for n more bytes at the end; 0 on success, -1 when out of memory."""
    cdef size_t used, newcap
    cdef char *p
    if b.cap - b.end >= n:
        return 0
    used = b.end - b.start
    if b.start > 0 and b.cap - used >= n and b.start >= used:
        # Cheap compaction: the unread part is small compared with what is free.
        memmove(b.data, b.data + b.start, used)
        b.start = 0
        b.end = used
        return 0
    newcap = b.cap if b.cap else 4096
    while newcap - used < n:
        newcap *= 2
    if b.start > 0:
        memmove(b.data, b.data + b.start, used)
        b.start = 0
        b.end = used
    p = <char *>realloc(b.data, newcap)
    if p == NULL:
        return -1
    b.data = p
    b.cap = newcap
    return 0


cdef inline int buf_append(Buf *b, const char *p, size_t n) noexcept nogil:
    if n == 0:
        return 0
    if buf_reserve(b, n) != 0:
        return -1
    memcpy(b.data + b.end, p, n)
    b.end += n
    return 0


cdef inline void buf_consume(Buf *b, size_t n) noexcept nogil:
    b.start += n
    if b.start >= b.end:
        b.start = 0
        b.end = 0


cdef inline void buf_shrink(Buf *b, size_t keep) noexcept nogil:
    """Give memory back after a large packet once the buffer is empty."""
    if b.start == b.end and b.cap > keep:
        free(b.data)
        buf_init(b)


cdef inline uint32_t get_be32(const char *p) noexcept nogil:
    cdef const unsigned char *u = <const unsigned char *>p
    return (<uint32_t>u[0] << 24) | (<uint32_t>u[1] << 16) | (<uint32_t>u[2] << 8) | u[3]


cdef inline void put_be32(char *p, uint32_t v) noexcept nogil:
    p[0] = <char>((v >> 24) & 0xff)
    p[1] = <char>((v >> 16) & 0xff)
    p[2] = <char>((v >> 8) & 0xff)
    p[3] = <char>(v & 0xff)
