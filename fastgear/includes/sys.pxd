# Extern declarations of the Linux system calls the I/O loop uses (epoll, eventfd,
# accept4, sockets, pthreads, clocks), and the relaxed atomics its threads share
# counters with. Kept apart so compiled modules cimport one contract instead of
# scattering `cdef extern` blocks.
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int64_t


cdef extern from "<sys/epoll.h>" nogil:
    cdef union epoll_data_t "epoll_data":
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64

    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP
        EPOLLEXCLUSIVE
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)


cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)


cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct sockaddr:
        unsigned short sa_family
    cdef struct sockaddr_storage:
        unsigned short ss_family
    enum:
        AF_INET
        AF_INET6
        AF_UNIX
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_KEEPALIVE
        MSG_NOSIGNAL
        MSG_DONTWAIT
        SHUT_WR
        SHUT_RDWR
    int accept4(int sockfd, sockaddr *addr, socklen_t *addrlen, int flags)
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    ssize_t send(int sockfd, const void *buf, size_t len, int flags)
    int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)
    int shutdown(int sockfd, int how)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    cdef struct in6_addr:
        unsigned char s6_addr[16]
    cdef struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY
        TCP_QUICKACK
        TCP_KEEPIDLE
        TCP_KEEPINTVL
        TCP_KEEPCNT


cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)
    uint16_t ntohs(uint16_t v)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    cdef struct tm:
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
        int tm_wday
        int tm_yday
        int tm_isdst
    enum:
        CLOCK_MONOTONIC
        CLOCK_REALTIME
    int clock_gettime(int clk, timespec *ts)
    tm *localtime_r(const time_t *timep, tm *result)
    time_t mktime(tm *t)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    ctypedef unsigned long pthread_t
    pthread_t pthread_self()


cdef extern from "<sched.h>" nogil:
    int sched_yield()


cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    enum:
        SIG_BLOCK
    int sigfillset(sigset_t *s)
    int pthread_sigmask(int how, const sigset_t *s, sigset_t *old)


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)


cdef extern from "<fcntl.h>" nogil:
    enum:
        O_RDONLY
        O_CLOEXEC
    int c_open "open"(const char *path, int flags)


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        EMFILE
        ENFILE
        ECONNABORTED
        EBADF
        ENOTSOCK
        EINVAL


# Relaxed atomics for the few values one thread writes and others read without the lock.
cdef extern from *:
    """
    #define fg_load_size(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    #define fg_store_size(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #define fg_add_i64(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
    #define fg_load_i64(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    """
    size_t fg_load_size(size_t *p) noexcept nogil
    void fg_store_size(size_t *p, size_t v) noexcept nogil
    int64_t fg_add_i64(int64_t *p, int64_t v) noexcept nogil
    int64_t fg_load_i64(int64_t *p) noexcept nogil


cdef inline int64_t now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline int64_t now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef inline int64_t wall_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef inline int64_t wall_s() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec


cdef extern from "<assert.h>" nogil:
    # C assert(): active only in the FASTGEAR_DEBUG=1 build (release builds define NDEBUG).
    void c_assert "assert"(bint condition)
