# The job engine's data model and its nogil entry points (DESIGN.md §4). The engine
# owns functions, jobs, workers and their queues, and writes replies into connection
# output buffers; it never touches a socket. Callers hold the engine lock around every
# call (one acquisition per I/O batch, not per packet).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, uint64_t, int64_t
from libc.string cimport memcpy
from fastgear.buffer cimport Buf
from fastgear.protocol cimport Packet
from fastgear.coreconfig cimport CoreConfig

cdef enum:
    PRIO_HIGH = 0
    PRIO_NORMAL = 1
    PRIO_LOW = 2
    NPRIO = 3
    MAX_UNIQUE = 64          # gearmand's GEARMAN_MAX_UNIQUE_SIZE
    MAX_HANDLE = 64          # handles are at most 63 bytes, as gearmand's
    MAX_CLIENT_ID = 128
    MIN_CAN_DO_TIMEOUT_MS = 1000   # gearmand raises smaller timeouts to one second
    NHIST = 20               # queue-wait and run-time histogram buckets (last: +Inf)
    FREE_MAX = 4096          # records kept on each free list

# kept results' outcomes
cdef enum:
    OUT_COMPLETE = 0
    OUT_FAIL = 1
    OUT_EXCEPTION = 2
    RESULT_PAYLOAD_MAX = 256     # bytes of the job's payload kept with its outcome

# why a background job became a dead letter
cdef enum:
    DEAD_FAIL = 0            # WORK_FAIL, retries used up
    DEAD_EXCEPTION = 1       # WORK_EXCEPTION, retries used up
    DEAD_LOST = 2            # its workers went away --job-retries times
    DEAD_TIMEOUT = 3         # CAN_DO_TIMEOUT expired, retries used up
    DEAD_ERROR_MAX = 4096    # bytes of a WORK_EXCEPTION's text kept with a dead letter

# Results of engine_packet and the other entry points that answer a peer. Anything but
# E_OK makes the I/O loop answer MEMORY_ALLOCATION_FAILURE and close the connection.
# Encoder failures (ENC_NOMEM) are mapped to E_NOMEM where the engine encodes.
# E_REFUSED: a submission without a connection (replay, takeover, dead-letter requeue)
# broke a limit; there is nobody to send the ERROR to, so the caller decides.
cdef enum:
    E_OK = 0
    E_NOMEM = -2
    E_REFUSED = -3

cdef struct Function
cdef struct Job
cdef struct Conn

cdef struct Ability:
    Conn *conn
    Function *func
    int64_t timeout_ms
    Ability *c_next          # the connection's registrations, newest first
    Ability *c_prev
    Ability *s_next          # the function's sleepers, longest asleep first (entries of
    Ability *s_prev          # ... workers that woke since are dropped when met)
    Ability *h_next          # the connection's function -> ability table chain
    uint8_t in_sleep

cdef struct Attach:
    # One foreground client listening to one job: in two lists at once.
    Job *job
    Conn *conn
    Attach *j_next
    Attach *j_prev
    Attach *c_next
    Attach *c_prev

cdef struct Function:
    char *name
    uint32_t name_len
    uint32_t fid             # dense id, reused after the function is dropped (Conn.fbits)
    uint64_t hash
    Function *h_next
    Function *all_next       # creation order, for admin listings
    Function *all_prev
    Job *q_head[NPRIO]
    Job *q_tail[NPRIO]
    uint32_t queued[NPRIO]   # runnable now
    uint32_t future          # epoch/sched jobs waiting for their time
    uint32_t running
    uint32_t total           # every job of the function in memory
    uint32_t max_queue[NPRIO]
    uint32_t workers         # registrations (duplicates count, as gearmand)
    uint32_t wide_workers    # ... of them by workers with a function index
    Ability *sleep_head      # registrations whose worker sent PRE_SLEEP (see Ability)
    Ability *sleep_tail
    Function *r_next[NPRIO]  # the engine's per-priority list of functions with work
    Function *r_prev[NPRIO]  # ... and at least one worker, in turn order
    uint64_t turn[NPRIO]     # when it last joined the tail of that list
    uint8_t in_ready[NPRIO]
    uint64_t n_submitted
    uint64_t n_completed
    uint64_t n_failed
    uint64_t n_exception
    uint64_t n_retried
    uint64_t wait_hist[NHIST]    # time from runnable to grabbed (per attempt)
    uint64_t run_hist[NHIST]     # time from grabbed to its final WORK_* packet
    uint64_t wait_sum_us
    uint64_t run_sum_us
    uint8_t retry_set        # `retry FUNCTION N BACKOFF` overrides --bg-retries
    uint32_t bg_retries
    int64_t bg_backoff_ms
    uint64_t n_bg_retries    # background jobs run again after WORK_FAIL/EXCEPTION
    uint64_t n_dead          # ... that became dead letters
    uint64_t n_requeued      # dead letters queued again by an operator

cdef struct Ack:
    # A submitter waiting for JOB_CREATED until the job's row is committed. Kept by
    # (fd, connection id), not by pointer: the connection may be gone by then.
    int fd
    uint64_t conn_id
    Ack *next

cdef union JobOwner:
    Conn *worker             # JOB_RUNNING: the worker that holds it
    Job *store_next          # JOB_STORING: the engine's list of jobs waiting for the store

cdef union JobClock:
    int64_t when_s           # until job_schedule: wall-clock epoch of an EPOCH/SCHED job
    #                          (0 = now), which the store thread writes with its row
    int64_t timer_ms         # from then on: monotonic deadline while in the timer heap

cdef union JobSince:
    int64_t queued_us        # runnable: monotonic microseconds it became so (this attempt)
    int64_t started_us       # running, and after: when it was grabbed

cdef struct Job:
    # One allocation: this struct, then the unique key, reducer and payload, back to
    # back without NULs (job_unique, job_reducer, job_data; always used with their
    # lengths). The handle is not stored: it is the engine's prefix, ':' and hnum,
    # formatted where it is sent (job_handle). Fields never needed at the same time share
    # a union, and the order leaves no holes: 152 bytes, so a job with a 16-byte payload
    # is one 176-byte malloc chunk (glibc: request + 8, rounded up to 16).
    Function *func
    uint64_t hnum            # handle number; ascending with submission (FIFO across functions)
    Job *q_prev              # function queue, or the worker's held list
    Job *q_next
    Job *h_next              # handle hash chain (bucket hnum & hmask)
    Job *u_next              # unique hash chain
    JobOwner o
    Attach *clients
    Ack *acks                # submitters to answer once the row is committed
    int64_t store_id         # row id in the persistent store, 0 when not stored
    int64_t created_us       # monotonic microseconds: submitted
    JobClock t
    JobSince s
    uint32_t data_len        # --max-packet is at most 4 GiB
    int32_t heap_idx         # -1 when not in the timer heap
    uint32_t uhash           # unique-key hash (low bits), when ukind
    uint32_t retries
    uint32_t fails           # WORK_FAIL/EXCEPTION/timeouts so far (--bg-retries)
    uint32_t num
    uint32_t den
    uint32_t n_data          # WORK_DATA and WORK_WARNING packets, for the kept result
    uint32_t n_warning
    uint16_t unique_len      # --max-unique is at most 4096
    uint16_t reducer_len
    uint8_t ukind            # 0 none (never coalesces), 1 unique key, 2 '-' (by payload)
    uint8_t priority
    uint8_t background
    uint8_t persisted
    uint8_t state            # JOB_QUEUED, JOB_FUTURE, JOB_RUNNING, JOB_STORING

cdef struct Conn:
    # The engine's part of a connection. The I/O layer allocates a larger struct that
    # begins with this one (IOConn in iothreads.pxd) for its sockets and lists; the
    # engine never sees those fields, so the test harness can allocate a bare Conn.
    int fd
    uint64_t id
    Buf outbuf               # written by the engine, under the engine lock
    char ip[48]
    char client_id[MAX_CLIENT_ID]
    uint32_t client_id_len
    uint8_t sleeping
    uint8_t noop_sent
    uint8_t exceptions
    uint8_t dirty
    uint8_t detached         # engine state released
    Conn *dirty_next
    Conn *all_prev
    Conn *all_next
    Ability *abilities
    Job *held                # jobs assigned to this worker
    Attach *attached         # jobs this client listens to
    uint64_t jobs_done
    uint32_t nabil           # registrations
    uint32_t amask
    Ability **atab           # function -> registration, once there are many
    uint64_t *fbits          # ... and a bit per function id it can do (with atab): the
    uint32_t fbits_words     # ... "can it do f" of GRAB and wake-ups reads no records
    uint32_t ntimeouts       # registrations with a CAN_DO_TIMEOUT
    int64_t woken_ms         # when the NOOP was sent, while on the woken list
    Function *woke_for
    Conn *wk_next
    Conn *wk_prev
    uint8_t in_woken
    Conn *ws_next            # the engine's FIFO of sleeping workers with many functions
    Conn *ws_prev
    uint8_t in_wide
    char last_exception[MAX_HANDLE]   # handle this worker last ended with WORK_EXCEPTION
    uint32_t last_exception_len

cdef struct Result:
    # The kept outcome of a finished job (--keep-results): one allocation holding the
    # strings after the struct; in two hash chains (handle, unique) and a FIFO by age.
    Result *h_next
    Result *h_prev
    Result *u_next           # not in the unique chain when the unique key is empty
    Result *u_prev
    Result *newer
    Result *older            # for browsing newest first
    uint64_t id              # ascending with age: the browsing cursor
    uint64_t handle_hash
    uint64_t unique_hash
    char handle[MAX_HANDLE]
    uint32_t handle_len
    char *func
    uint32_t func_len
    char *unique
    uint32_t unique_len
    char *worker
    uint32_t worker_len
    char *peer               # the worker's address
    uint32_t peer_len
    char *payload            # the job's payload, its first RESULT_PAYLOAD_MAX bytes
    uint32_t payload_len
    size_t payload_size      # ... and its whole size
    char *data               # WORK_COMPLETE's result or WORK_EXCEPTION's text
    size_t data_len
    uint8_t outcome          # OUT_COMPLETE, OUT_FAIL or OUT_EXCEPTION
    uint8_t background
    uint8_t priority
    uint32_t attempt         # 1 for the first run; retries and lost workers add one
    uint32_t num             # the last WORK_STATUS
    uint32_t den
    uint32_t n_data
    uint32_t n_warning
    int64_t submitted_us     # wall clock
    int64_t started_us       # wall clock; 0 when it never ran
    int64_t finished_us      # wall clock
    int64_t expires_us       # monotonic
    size_t size


cdef struct Dead:
    # A background job that used up its retries: everything needed to run it again,
    # in one allocation (strings after the struct); in a list by age, oldest first.
    Dead *newer
    Dead *older
    Dead *p_next             # the store's list of rows to write
    uint64_t id              # the store's key; ascending with age
    char handle[MAX_HANDLE]
    uint32_t handle_len
    char *func
    uint32_t func_len
    char *unique
    uint32_t unique_len
    char *data
    size_t data_len
    char *error
    uint32_t error_len
    uint8_t priority
    uint8_t reason           # DEAD_*
    uint8_t pending          # on the store's list, row not written yet
    uint8_t gone             # dropped while pending: the store hand-over frees it
    uint32_t attempts        # runs that ended in failure, worker loss or timeout
    int64_t submitted_us     # wall clock
    int64_t failed_us        # wall clock
    size_t size


cdef struct FreeList:
    # Dead records of one size, linked through their first word (engine.pyx fl_get).
    void *head
    uint32_t n


cdef struct Engine:
    Function **ftab
    uint64_t fmask
    uint64_t fcount
    Function *f_first
    Function *f_last
    uint32_t fid_next        # function ids: never used yet from here up
    uint32_t *fid_free       # ... and ids of dropped functions, to use again
    uint32_t fid_free_len
    uint32_t fid_free_cap
    Job **htab
    uint64_t hmask
    Job **utab
    uint64_t umask
    uint64_t jobs
    uint64_t ujobs
    Job **heap
    uint64_t heap_len
    uint64_t heap_cap
    uint64_t next_handle
    char prefix[48]
    uint32_t prefix_len
    uint32_t job_retries     # 0 = unlimited
    uint32_t worker_wakeup   # 0 = one sleeper per job (fastgear); N = N per job
    uint8_t exceptions_default
    Conn *dirty
    Conn *conns
    uint64_t nconns
    uint64_t next_conn_id
    uint64_t queued_bytes
    int64_t now_ms
    int64_t now_us
    int64_t now_wall_s
    int64_t now_wall_us
    uint64_t n_packets
    unsigned long owner      # thread holding the engine lock (checked in debug builds)
    uint8_t durable          # background jobs are acknowledged after their commit
    Job *store_add           # jobs whose rows the store thread must write
    Job *store_add_tail
    int64_t *store_del       # row ids to delete
    uint64_t store_del_len
    uint64_t store_del_cap
    int64_t replay_when      # epoch time of the row being replayed
    Job *last_job            # the job the last submission created
    Function *ready_head[NPRIO]
    Function *ready_tail[NPRIO]
    uint64_t next_turn
    Conn *wide_head          # sleepers with a function index (many registrations):
    Conn *wide_tail          # ... one entry per worker instead of one per function
    Conn *woken_head         # NOOPed workers that have not grabbed yet, oldest first
    Conn *woken_tail
    int64_t wakeup_timeout_ms  # 0: never wake another sleeper for a silent one
    Job wake_check           # not a job: the timer-heap entry of the woken list
    uint64_t n_noops
    uint64_t n_rewakes
    # limits (--max-unique, --max-function-name, --max-queued-bytes)
    uint32_t max_unique
    uint32_t max_function_name
    uint64_t max_queued_bytes  # 0: unlimited
    uint64_t n_budget_refused
    # giving memory back after a drain (--trim-after-jobs): the I/O layer trims when
    # jobs is 0 and jobs_peak reached trim_after_jobs, then resets jobs_peak
    uint64_t trim_after_jobs     # 0: never
    uint64_t jobs_peak
    # kept results (--keep-results, --keep-results-bytes)
    int64_t keep_us          # 0: off
    uint64_t keep_max_bytes
    Result **rtab            # by handle
    Result **rutab           # by unique key
    uint64_t rmask
    uint64_t rcount
    uint64_t rbytes
    uint64_t r_evicted
    Result *r_oldest
    Result *r_newest
    uint64_t r_next_id
    # background retries and dead letters (--bg-retries, --dead-letters)
    uint32_t bg_retries
    int64_t bg_backoff_ms
    int64_t bg_backoff_max_ms
    uint64_t rng
    uint64_t dead_max        # 0: no dead letters (failed jobs vanish, as gearmand)
    uint64_t dead_max_bytes
    Dead *d_oldest
    Dead *d_newest
    uint64_t dcount
    uint64_t dbytes
    uint64_t d_added
    uint64_t d_evicted
    uint64_t next_dead_id
    Dead *d_pending          # rows for the store thread, oldest first
    Dead *d_pending_tail
    int64_t *d_del           # dead-letter ids whose rows to delete
    uint64_t d_del_len
    uint64_t d_del_cap
    # Free lists of the fixed-size records made and dropped per job or per registration
    # (at most FREE_MAX each, so a burst's records go back to malloc); freed at teardown.
    FreeList free_attach
    FreeList free_ability
    FreeList free_ack
    uint64_t n_reused       # records taken from a free list instead of malloc
    int64_t live_allocs      # debug build: engine allocations not freed yet (fgalloc.h)

# The engine's intrusive lists: each binds the macros of includes/dlist.h to one list's
# link fields, so every link and unlink is the same inlined code (and checked in debug
# builds). head and tail are the addresses of the list's end pointers.
cdef extern from * nogil:
    """
    #include "includes/dlist.h"
    #define FG_FUNCS_PUSH_TAIL(h, t, n) DLQ_PUSH_TAIL(h, t, n, all_prev, all_next)
    #define FG_FUNCS_REMOVE(h, t, n) DLQ_REMOVE(h, t, n, all_prev, all_next)
    #define FG_READY_PUSH_TAIL(h, t, n, p) DLQ_PUSH_TAIL(h, t, n, r_prev[p], r_next[p])
    #define FG_READY_REMOVE(h, t, n, p) DLQ_REMOVE(h, t, n, r_prev[p], r_next[p])
    #define FG_QUEUE_PUSH_TAIL(h, t, n) DLQ_PUSH_TAIL(h, t, n, q_prev, q_next)
    #define FG_QUEUE_PUSH_HEAD(h, t, n) DLQ_PUSH_HEAD(h, t, n, q_prev, q_next)
    #define FG_QUEUE_REMOVE(h, t, n) DLQ_REMOVE(h, t, n, q_prev, q_next)
    #define FG_HELD_PUSH(h, n) DL_PUSH(h, n, q_prev, q_next)
    #define FG_HELD_REMOVE(h, n) DL_REMOVE(h, n, q_prev, q_next)
    #define FG_SLEEPERS_PUSH_TAIL(h, t, n) DLQ_PUSH_TAIL(h, t, n, s_prev, s_next)
    #define FG_SLEEPERS_REMOVE(h, t, n) DLQ_REMOVE(h, t, n, s_prev, s_next)
    #define FG_ABILITIES_PUSH(h, n) DL_PUSH(h, n, c_prev, c_next)
    #define FG_ABILITIES_REMOVE(h, n) DL_REMOVE(h, n, c_prev, c_next)
    #define FG_CLIENTS_PUSH(h, n) DL_PUSH(h, n, j_prev, j_next)
    #define FG_CLIENTS_REMOVE(h, n) DL_REMOVE(h, n, j_prev, j_next)
    #define FG_ATTACHED_PUSH(h, n) DL_PUSH(h, n, c_prev, c_next)
    #define FG_ATTACHED_REMOVE(h, n) DL_REMOVE(h, n, c_prev, c_next)
    #define FG_CONNS_PUSH(h, n) DL_PUSH(h, n, all_prev, all_next)
    #define FG_CONNS_REMOVE(h, n) DL_REMOVE(h, n, all_prev, all_next)
    #define FG_WIDE_PUSH_TAIL(h, t, n) DLQ_PUSH_TAIL(h, t, n, ws_prev, ws_next)
    #define FG_WIDE_REMOVE(h, t, n) DLQ_REMOVE(h, t, n, ws_prev, ws_next)
    #define FG_WOKEN_PUSH_TAIL(h, t, n) DLQ_PUSH_TAIL(h, t, n, wk_prev, wk_next)
    #define FG_WOKEN_REMOVE(h, t, n) DLQ_REMOVE(h, t, n, wk_prev, wk_next)
    #define FG_RBYHANDLE_PUSH(h, n) DL_PUSH(h, n, h_prev, h_next)
    #define FG_RBYHANDLE_REMOVE(h, n) DL_REMOVE(h, n, h_prev, h_next)
    #define FG_RBYUNIQUE_PUSH(h, n) DL_PUSH(h, n, u_prev, u_next)
    #define FG_RBYUNIQUE_REMOVE(h, n) DL_REMOVE(h, n, u_prev, u_next)
    """
    # Every function, in creation order (Engine.f_first/f_last).
    void funcs_push_tail "FG_FUNCS_PUSH_TAIL"(Function **h, Function **t, Function *n)
    void funcs_unlink "FG_FUNCS_REMOVE"(Function **h, Function **t, Function *n)
    # Functions with work at priority p and a worker (Engine.ready_head/tail[p]).
    void ready_push_tail "FG_READY_PUSH_TAIL"(Function **h, Function **t, Function *n,
                                              int p)
    void ready_unlink "FG_READY_REMOVE"(Function **h, Function **t, Function *n, int p)
    # A function's runnable jobs at one priority (Function.q_head/q_tail[p]).
    void queue_push_tail "FG_QUEUE_PUSH_TAIL"(Job **h, Job **t, Job *n)
    void queue_push_head "FG_QUEUE_PUSH_HEAD"(Job **h, Job **t, Job *n)
    void queue_unlink "FG_QUEUE_REMOVE"(Job **h, Job **t, Job *n)
    # The jobs a worker holds (Conn.held), through the same links as the queues.
    void held_link "FG_HELD_PUSH"(Job **h, Job *n)
    void held_unlink "FG_HELD_REMOVE"(Job **h, Job *n)
    # A function's sleeping registrations (Function.sleep_head/tail).
    void sleepers_push_tail "FG_SLEEPERS_PUSH_TAIL"(Ability **h, Ability **t, Ability *n)
    void sleepers_unlink "FG_SLEEPERS_REMOVE"(Ability **h, Ability **t, Ability *n)
    # A connection's registrations (Conn.abilities).
    void abilities_link "FG_ABILITIES_PUSH"(Ability **h, Ability *n)
    void abilities_unlink "FG_ABILITIES_REMOVE"(Ability **h, Ability *n)
    # A job's listening clients (Job.clients) and a client's jobs (Conn.attached).
    void clients_link "FG_CLIENTS_PUSH"(Attach **h, Attach *n)
    void clients_unlink "FG_CLIENTS_REMOVE"(Attach **h, Attach *n)
    void attached_link "FG_ATTACHED_PUSH"(Attach **h, Attach *n)
    void attached_unlink "FG_ATTACHED_REMOVE"(Attach **h, Attach *n)
    # Every connection (Engine.conns).
    void conns_link "FG_CONNS_PUSH"(Conn **h, Conn *n)
    void conns_unlink "FG_CONNS_REMOVE"(Conn **h, Conn *n)
    # Sleepers with a function index, and NOOPed workers that have not grabbed yet.
    void wide_push_tail "FG_WIDE_PUSH_TAIL"(Conn **h, Conn **t, Conn *n)
    void wide_unlink "FG_WIDE_REMOVE"(Conn **h, Conn **t, Conn *n)
    void woken_push_tail "FG_WOKEN_PUSH_TAIL"(Conn **h, Conn **t, Conn *n)
    void woken_unlink "FG_WOKEN_REMOVE"(Conn **h, Conn **t, Conn *n)
    # Kept results' hash chains, by handle and by unique key.
    void rbyhandle_link "FG_RBYHANDLE_PUSH"(Result **h, Result *n)
    void rbyhandle_unlink "FG_RBYHANDLE_REMOVE"(Result **h, Result *n)
    void rbyunique_link "FG_RBYUNIQUE_PUSH"(Result **h, Result *n)
    void rbyunique_unlink "FG_RBYUNIQUE_REMOVE"(Result **h, Result *n)

# The engine allocates through these (includes/fgalloc.h): malloc and friends in release
# builds, counted in Engine.live_allocs in the debug build.
cdef extern from "includes/fgalloc.h" nogil:
    enum:
        FASTGEAR_DEBUG
    void *fg_malloc "FG_MALLOC"(Engine *e, size_t n)
    void *fg_calloc "FG_CALLOC"(Engine *e, size_t k, size_t n)
    void *fg_realloc "FG_REALLOC"(Engine *e, void *p, size_t n)
    void fg_free "FG_FREE"(Engine *e, void *p)

# A job's strings, laid out after its struct (see Job), and its handle.
cdef inline char *job_unique(const Job *j) noexcept nogil:
    return <char *>(j + 1)


cdef inline char *job_reducer(const Job *j) noexcept nogil:
    return <char *>(j + 1) + j.unique_len


cdef inline char *job_data(const Job *j) noexcept nogil:
    return <char *>(j + 1) + j.unique_len + j.reducer_len


cdef inline size_t fmt_u64(char *out, uint64_t v) noexcept nogil:
    """v in decimal at out (at most 20 bytes, no NUL): the printf family costs more
    than the rest of a job's handle."""
    cdef char tmp[20]
    cdef size_t n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef inline uint32_t job_handle(const Engine *e, const Job *j, char *out) noexcept nogil:
    """j's handle, prefix ':' number, into out (MAX_HANDLE bytes; NUL-terminated): its
    length. Cut at 63 bytes as gearmand's snprintf did (a 47-byte prefix leaves room for
    15 digits, so no handle of a running server is ever cut)."""
    cdef char num[20]
    cdef size_t nd = fmt_u64(num, j.hnum)
    if e.prefix_len + 1 + nd > MAX_HANDLE - 1:
        nd = MAX_HANDLE - 1 - e.prefix_len - 1
    memcpy(out, e.prefix, e.prefix_len)
    out[e.prefix_len] = 58          # ':'
    memcpy(out + e.prefix_len + 1, num, nd)
    out[e.prefix_len + 1 + nd] = 0
    return <uint32_t>(e.prefix_len + 1 + nd)


cdef int engine_init(Engine *e, const CoreConfig *cfg) noexcept nogil
cdef void engine_free(Engine *e) noexcept nogil
cdef void engine_release(Engine *e, void *p) noexcept nogil
cdef void ack_put(Engine *e, Ack *k) noexcept nogil
cdef int64_t engine_live_allocs(Engine *e) noexcept nogil
cdef void engine_clock(Engine *e) noexcept nogil
cdef void conn_attach(Engine *e, Conn *c) noexcept nogil
cdef void conn_detach(Engine *e, Conn *c) noexcept nogil
cdef void conn_dirty(Engine *e, Conn *c) noexcept nogil
cdef int engine_packet(Engine *e, Conn *c, Packet *pkt) noexcept nogil
cdef int engine_error(Engine *e, Conn *c, const char *code, const char *text) noexcept nogil
cdef int64_t engine_timers(Engine *e) noexcept nogil
cdef Function *func_get(Engine *e, const char *name, size_t n, int create) noexcept nogil
cdef Job *job_by_handle(Engine *e, const char *h, size_t n) noexcept nogil
cdef int engine_cancel(Engine *e, Job *j) noexcept nogil
cdef int engine_drop_function(Engine *e, Function *f) noexcept nogil
cdef void engine_job_stored(Engine *e, Job *j, int64_t row_id) noexcept nogil
cdef void engine_job_store_failed(Engine *e, Job *j) noexcept nogil
cdef Job *engine_replay(Engine *e, const char *func, size_t fn, const char *uniq, size_t un,
                        const char *data, size_t dn, int prio, int64_t when_s,
                        int64_t row_id, int *rc) noexcept nogil
cdef void job_make_runnable(Engine *e, Job *j, int front) noexcept nogil
cdef int64_t hist_bound_us(int i) noexcept nogil
cdef void results_expire(Engine *e) noexcept nogil
cdef Result *result_by_handle(Engine *e, const char *h, size_t n) noexcept nogil
cdef Result *results_unique_chain(Engine *e, const char *u, size_t n) noexcept nogil
cdef void results_configure(Engine *e, int64_t keep_us, uint64_t max_bytes) noexcept nogil
cdef Dead *dead_by_handle(Engine *e, const char *h, size_t n) noexcept nogil
cdef void dead_drop(Engine *e, Dead *d) noexcept nogil
cdef int engine_dead_requeue(Engine *e, Dead *d, char *handle_out,
                             uint32_t *handle_len) noexcept nogil
cdef Dead *engine_dead_restore(Engine *e, uint64_t id, const char *handle, size_t hn,
                               const char *func, size_t fn, const char *uniq, size_t un,
                               const char *data, size_t dn, const char *err, size_t en,
                               int prio, int reason, uint32_t attempts,
                               int64_t submitted_us, int64_t failed_us) noexcept nogil
