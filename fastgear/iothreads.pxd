# The I/O loop's state: one epoll loop that owns the sockets, the shared engine and its
# lock, and the hand-over queue of text admin lines to the Python control thread.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from fastgear.engine cimport Engine, Conn
from fastgear.includes.sys cimport pthread_mutex_t

cdef enum:
    MAX_LISTENERS = 16

cdef struct AdminReq:
    int fd
    uint64_t conn_id
    uint8_t loopback
    char *line
    size_t len
    AdminReq *next

cdef struct Loop:
    Engine eng
    pthread_mutex_t lock
    int epfd
    int wakefd               # pokes the I/O loop (admin replies, stop)
    int adminfd              # pokes the control thread (admin lines waiting)
    int listen_fds[MAX_LISTENERS]
    int nlisten
    Conn **conns             # indexed by fd
    size_t conns_cap
    Conn *closing            # connections to close after this batch's flush
    Conn *resume             # connections whose admin reply arrived
    AdminReq *admin_head
    AdminReq *admin_tail
    size_t max_packet
    int stopping
    int running
    uint64_t accepted
    uint64_t protocol_errors
