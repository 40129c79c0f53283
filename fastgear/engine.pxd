# The job engine's data model and its nogil entry points (DESIGN.md §4). The engine
# owns functions, jobs, workers and their queues, and writes replies into connection
# output buffers; it never touches a socket. Callers hold the engine lock around every
# call (one acquisition per I/O batch, not per packet).
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
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

# kept results' outcomes
cdef enum:
    OUT_COMPLETE = 0
    OUT_FAIL = 1
    OUT_EXCEPTION = 2

# engine_packet results
cdef enum:
    E_OK = 0
    E_CLOSE = -1             # queue flushed, then close the connection
    E_NOMEM = -2

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

cdef struct Ack:
    # A submitter waiting for JOB_CREATED until the job's row is committed. Kept by
    # (fd, connection id), not by pointer: the connection may be gone by then.
    int fd
    uint64_t conn_id
    Ack *next

cdef struct Job:
    Function *func
    char handle[MAX_HANDLE]
    uint32_t handle_len
    uint64_t handle_hash
    uint64_t unique_hash
    char *unique
    uint32_t unique_len
    uint8_t ukind            # 0 none (never coalesces), 1 unique key, 2 '-' (by payload)
    char *reducer
    uint32_t reducer_len
    char *data
    size_t data_len
    uint8_t priority
    uint8_t background
    uint8_t persisted
    uint8_t state            # JOB_QUEUED, JOB_FUTURE, JOB_RUNNING, JOB_STORING
    uint32_t retries
    uint32_t num
    uint32_t den
    uint64_t seq             # submission order, for FIFO across functions
    int64_t when_s           # wall-clock epoch for EPOCH/SCHED jobs, 0 = now
    int64_t timer_ms         # monotonic deadline while in the timer heap
    int64_t heap_idx         # -1 when not in the timer heap
    int64_t created_us       # monotonic microseconds: submitted
    int64_t queued_us        # ... became runnable (this attempt)
    int64_t started_us       # ... grabbed
    Job *q_prev              # function queue, or the worker's held list
    Job *q_next
    Job *h_next              # handle hash chain
    Job *u_next              # unique hash chain
    Conn *worker
    Attach *clients
    int64_t store_id         # row id in the persistent store, 0 when not stored
    Ack *acks                # submitters to answer once the row is committed
    Job *store_next          # the engine's list of jobs waiting for the store

cdef struct Conn:
    int fd
    uint64_t id
    int thread
    Buf inbuf
    Buf outbuf               # written by the engine, under the engine lock
    Buf wbuf                 # being sent by the owning I/O thread, no lock needed
    char ip[48]
    uint8_t loopback
    char client_id[MAX_CLIENT_ID]
    uint32_t client_id_len
    uint8_t sleeping
    uint8_t noop_sent
    uint8_t exceptions
    uint8_t closing          # flush what is queued, then close
    uint8_t dead             # socket gone: drop output
    uint8_t admin_pending    # a text line is with the control thread: hold input
    uint8_t want_out         # EPOLLOUT registered
    uint8_t dirty
    uint8_t eof              # peer closed its side: close once replies are out
    uint8_t detached         # engine state released
    uint8_t in_close
    uint8_t in_resume
    uint8_t in_remote
    uint8_t admin_close      # the admin reply asked for the connection to close
    uint8_t in_flush
    uint8_t in_check
    Conn *dirty_next
    Conn *remote_next        # owner's list of connections made dirty by other threads
    Conn *flush_next
    Conn *check_next         # owner's list of flushed connections to maybe close
    Conn *close_next
    Conn *resume_next
    Conn *all_prev
    Conn *all_next
    Ability *abilities
    Job *held                # jobs assigned to this worker
    Attach *attached         # jobs this client listens to
    uint64_t jobs_done
    uint32_t nabil           # registrations
    uint32_t amask
    Ability **atab           # function -> registration, once there are many
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
    char *data
    size_t data_len
    uint8_t outcome          # OUT_COMPLETE, OUT_FAIL or OUT_EXCEPTION
    uint8_t background
    int64_t submitted_us     # wall clock
    int64_t started_us       # wall clock; 0 when it never ran
    int64_t finished_us      # wall clock
    int64_t expires_us       # monotonic
    size_t size


cdef struct Engine:
    Function **ftab
    uint64_t fmask
    uint64_t fcount
    Function *f_first
    Function *f_last
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
    uint64_t next_seq
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

cdef int engine_init(Engine *e, const CoreConfig *cfg) noexcept nogil
cdef void engine_free(Engine *e) noexcept nogil
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
                        int64_t row_id) noexcept nogil
cdef void job_make_runnable(Engine *e, Job *j, int front) noexcept nogil
cdef int64_t hist_bound_us(int i) noexcept nogil
cdef void results_expire(Engine *e) noexcept nogil
cdef Result *result_by_handle(Engine *e, const char *h, size_t n) noexcept nogil
cdef Result *results_unique_chain(Engine *e, const char *u, size_t n) noexcept nogil
cdef void results_configure(Engine *e, int64_t keep_us, uint64_t max_bytes) noexcept nogil
