# liburing (Debian's liburing-dev, 2.3 or later): the declarations the io_uring I/O
# loop (iothreads_uring.pxi) uses, and nothing else. Only the fields fastgear reads or
# writes are named; the structs are liburing's own. liburing 2.3 has no
# io_uring_setup_buf_ring(), so the provided-buffer ring is registered by hand with
# io_uring_register_buf_ring(), which is what that helper does in later versions.
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int32_t


cdef extern from "<poll.h>" nogil:
    enum:
        POLLIN


cdef extern from "<liburing.h>" nogil:
    cdef struct io_uring:
        int ring_fd

    cdef struct io_uring_sqe:
        uint16_t buf_group

    cdef struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    cdef struct io_uring_params:
        uint32_t flags
        uint32_t cq_entries
        uint32_t features

    cdef struct io_uring_buf_ring:
        pass

    cdef struct io_uring_buf_reg:
        uint64_t ring_addr
        uint32_t ring_entries
        uint16_t bgid

    cdef struct __kernel_timespec:
        long long tv_sec
        long long tv_nsec

    enum:
        IORING_SETUP_CQSIZE
        IORING_SETUP_R_DISABLED
        IORING_SETUP_SUBMIT_ALL
        IORING_SETUP_COOP_TASKRUN
        IORING_SETUP_SINGLE_ISSUER
        IORING_SETUP_DEFER_TASKRUN
        IORING_FEAT_EXT_ARG
        IOSQE_BUFFER_SELECT
        IORING_CQE_F_BUFFER
        IORING_CQE_F_MORE
        IORING_CQE_BUFFER_SHIFT
        IORING_ASYNC_CANCEL_ANY

    int io_uring_queue_init_params(unsigned entries, io_uring *ring, io_uring_params *p)
    void io_uring_queue_exit(io_uring *ring)
    io_uring_sqe *io_uring_get_sqe(io_uring *ring)
    int io_uring_submit(io_uring *ring)
    int io_uring_submit_and_wait(io_uring *ring, unsigned wait_nr)
    int io_uring_submit_and_wait_timeout(io_uring *ring, io_uring_cqe **cqe_ptr,
                                         unsigned wait_nr, __kernel_timespec *ts,
                                         void *sigmask)
    unsigned io_uring_peek_batch_cqe(io_uring *ring, io_uring_cqe **cqes, unsigned count)
    void io_uring_cq_advance(io_uring *ring, unsigned nr)

    void io_uring_sqe_set_data64(io_uring_sqe *sqe, uint64_t data)
    void io_uring_sqe_set_flags(io_uring_sqe *sqe, unsigned flags)
    void io_uring_prep_recv_multishot(io_uring_sqe *sqe, int sockfd, void *buf, size_t len,
                                      int flags)
    void io_uring_prep_send(io_uring_sqe *sqe, int sockfd, const void *buf, size_t len,
                            int flags)
    void io_uring_prep_read(io_uring_sqe *sqe, int fd, void *buf, unsigned nbytes,
                            uint64_t offset)
    void io_uring_prep_poll_add(io_uring_sqe *sqe, int fd, unsigned poll_mask)
    void io_uring_prep_cancel64(io_uring_sqe *sqe, uint64_t user_data, int flags)

    int io_uring_register_buf_ring(io_uring *ring, io_uring_buf_reg *reg, unsigned flags)
    int io_uring_unregister_buf_ring(io_uring *ring, int bgid)
    void io_uring_buf_ring_init(io_uring_buf_ring *br)
    int io_uring_buf_ring_mask(uint32_t ring_entries)
    void io_uring_buf_ring_add(io_uring_buf_ring *br, void *addr, unsigned len,
                               unsigned short bid, int mask, int buf_offset)
    void io_uring_buf_ring_advance(io_uring_buf_ring *br, int count)


cdef extern from "<sys/mman.h>" nogil:
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
        MAP_ANONYMOUS
    void *MAP_FAILED
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)


cdef extern from "<errno.h>" nogil:
    enum:
        ENOMEM
        ENOSYS
        ENOBUFS
        ECANCELED
        EPERM


# io_uring_enable_rings() is declared by liburing 2.3 but not exported by its shared
# library (fixed in 2.4): the register call it makes, done here.
cdef extern from *:
    """
    #include <unistd.h>
    #include <sys/syscall.h>
    static int fg_uring_enable(struct io_uring *ring) {
        int rc = (int)syscall(__NR_io_uring_register, ring->ring_fd,
                              IORING_REGISTER_ENABLE_RINGS, NULL, 0);
        return rc < 0 ? -errno : rc;
    }
    """
    int fg_uring_enable(io_uring *ring) noexcept nogil
