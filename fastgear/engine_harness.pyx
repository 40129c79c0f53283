# The engine without sockets, for unit tests and micro benchmarks; the server never
# imports it. Connections are numbered, `feed` parses and applies request bytes and
# `output` returns what the engine queued. It is compiled code in its own extension so
# that the production module carries no test surface: it reaches the engine through
# the entry points in engine.pxd (cross-module calls are fine here), and run_cycle
# drives them without the GIL. In the debug build `close` reports the engine's
# allocations left after engine_free, which the tests assert to be none.
from libc.stdlib cimport calloc, free
from libc.stdint cimport int64_t, uint32_t, uint64_t

from fastgear.buffer cimport Buf, buf_init, buf_free, buf_len, buf_head, buf_consume, buf_append
from fastgear.protocol cimport (Packet, parse_packet, encode_packet, P_PACKET,
                                CMD_SUBMIT_JOB_BG, CMD_CAN_DO, CMD_GRAB_JOB_UNIQ,
                                CMD_WORK_COMPLETE)
from fastgear.engine cimport (Engine, Conn, Function, Job, E_OK, FASTGEAR_DEBUG, engine_init,
                              engine_free, engine_live_allocs, engine_timers, engine_packet,
                              conn_attach, conn_detach, func_get, results_configure,
                              engine_drop_function)
from fastgear.coreconfig cimport CoreConfig, core_config_defaults
from fastgear.includes.sys cimport pthread_self

# True where the build counts the engine's allocations (FASTGEAR_DEBUG=1).
ALLOC_COUNTING = bool(FASTGEAR_DEBUG)


cdef struct HConn:
    # What the I/O loop's IOConn is to a socket: the engine's Conn first, then the
    # unparsed input, which the engine never sees.
    Conn c
    Buf inbuf


cdef class EngineHarness:
    """Drives the engine without sockets: connections are numbered, `feed` parses and
    applies request bytes, `output` returns (and clears) what the engine queued."""
    cdef Engine e
    cdef list conns_
    cdef bint closed

    def __cinit__(self, bytes prefix=b"H:test", int job_retries=0, int worker_wakeup=0,
                  bint exceptions=False):
        cdef CoreConfig cfg
        self.conns_ = []
        core_config_defaults(&cfg, prefix, len(prefix))
        cfg.job_retries = job_retries
        cfg.worker_wakeup = worker_wakeup
        cfg.exceptions = exceptions
        if engine_init(&self.e, &cfg) != 0:
            self.closed = True      # nothing for engine_free to walk
            raise MemoryError()
        # The harness is single-threaded: it stands in for the engine lock's holder.
        self.e.owner = pthread_self()

    def __dealloc__(self):
        self._close()

    cdef int64_t _close(self):
        cdef HConn *c
        if self.closed:
            return engine_live_allocs(&self.e)
        self.closed = True
        for addr in self.conns_:
            c = <HConn *><size_t>addr
            conn_detach(&self.e, &c.c)
            buf_free(&c.inbuf)
            buf_free(&c.c.outbuf)
            free(c)
        self.conns_ = []
        engine_free(&self.e)
        return engine_live_allocs(&self.e)

    def close(self):
        """Detach every connection and free the engine. Returns how many of the engine's
        allocations were not given back (always 0 where ALLOC_COUNTING is false)."""
        return self._close()

    cdef Conn *conn(self, int n) except NULL:
        if self.closed:
            raise ValueError("harness closed")
        return <Conn *><size_t>self.conns_[n]

    def connect(self):
        cdef Conn *c
        if self.closed:
            raise ValueError("harness closed")
        c = <Conn *>calloc(1, sizeof(HConn))
        if c == NULL:
            raise MemoryError()
        c.fd = len(self.conns_)
        conn_attach(&self.e, c)
        self.conns_.append(<size_t>c)
        return c.fd

    def disconnect(self, int n):
        conn_detach(&self.e, self.conn(n))

    def advance(self, int64_t ms=0, int64_t wall=0):
        """Move the engine's clocks forward and run due timers."""
        self.e.now_ms += ms
        self.e.now_wall_s += wall if wall else ms // 1000
        return engine_timers(&self.e)

    def keep_results(self, int64_t ms, uint64_t max_bytes=1 << 30):
        """Keep finished jobs' outcomes for ms (--keep-results)."""
        results_configure(&self.e, ms * 1000, max_bytes)

    def dead_letters(self, uint64_t max_count, uint64_t max_bytes=1 << 30,
                     uint32_t retries=0, int64_t backoff_ms=0, int64_t backoff_max_ms=0):
        """Keep dead letters (--dead-letters, --dead-letters-bytes) and retry background
        jobs (--bg-retries, --bg-retry-backoff[-max])."""
        self.e.dead_max = max_count
        self.e.dead_max_bytes = max_bytes
        self.e.bg_retries = retries
        self.e.bg_backoff_ms = backoff_ms
        self.e.bg_backoff_max_ms = backoff_max_ms

    def dead_counts(self):
        """(count, bytes, added, evicted) of the dead letters."""
        return self.e.dcount, self.e.dbytes, self.e.d_added, self.e.d_evicted

    def set_durable(self, bint on):
        """Background jobs wait for a store commit before JOB_CREATED (none comes here)."""
        self.e.durable = on

    def feed(self, int n, bytes data):
        cdef Conn *c = self.conn(n)
        cdef Buf *inbuf = &(<HConn *>c).inbuf
        cdef Packet pkt
        cdef int st, r = 0
        buf_append(inbuf, data, len(data))
        while True:
            st = parse_packet(buf_head(inbuf), buf_len(inbuf), 0xffffffff, &pkt)
            if st != P_PACKET:
                break
            r = engine_packet(&self.e, c, &pkt)
            buf_consume(inbuf, pkt.size)
            if r != E_OK:
                break
        if st < 0:
            return st
        return r

    def output(self, int n):
        cdef Conn *c = self.conn(n)
        out = buf_head(&c.outbuf)[:buf_len(&c.outbuf)]
        buf_consume(&c.outbuf, buf_len(&c.outbuf))
        self.e.dirty = NULL
        c.dirty = 0
        return out

    def function(self, bytes name):
        """(total, running, workers, queued high/normal/low, future) of one function."""
        cdef Function *f = func_get(&self.e, name, len(name), 0)
        if f == NULL:
            return None
        return (f.total, f.running, f.workers, f.queued[0], f.queued[1], f.queued[2],
                f.future)

    def drop_function(self, bytes name):
        """engine_drop_function: 0 dropped, 1 workers or running jobs, 2 jobs queued,
        -1 no such function."""
        cdef Function *f = func_get(&self.e, name, len(name), 0)
        if f == NULL:
            return -1
        return engine_drop_function(&self.e, f)

    @staticmethod
    def job_record_size():
        """sizeof(Job): a queued job's memory is this plus its unique key, reducer and
        payload (the handle is not stored)."""
        return sizeof(Job)

    def counts(self):
        return {"jobs": self.e.jobs, "functions": self.e.fcount, "connections": self.e.nconns,
                "queued_bytes": self.e.queued_bytes}

    def free_lists(self):
        """Records waiting for reuse on each free list, and how many were reused."""
        return {"attach": self.e.free_attach.n, "ability": self.e.free_ability.n,
                "ack": self.e.free_ack.n, "reused": self.e.n_reused}

    def live_allocs(self):
        """The engine's allocations not freed yet (counted in debug builds only)."""
        return engine_live_allocs(&self.e)

    def run_cycle(self, bytes func, int jobs, int payload=16):
        """Benchmark: `jobs` background submit + grab + complete cycles, no GIL, no
        sockets. Returns the number completed."""
        cdef Conn *cl
        cdef Conn *wk
        cdef Packet pkt
        cdef int _i, done = 0
        cdef bytes sub = _req(CMD_SUBMIT_JOB_BG, [func, b"", b"x" * payload])
        cdef bytes cando = _req(CMD_CAN_DO, [func])
        cdef bytes grab = _req(CMD_GRAB_JOB_UNIQ, [])
        cdef const char *ps = sub
        cdef const char *pg = grab
        cdef size_t ls = len(sub), lg = len(grab)
        cdef const char *fs[2]
        cdef size_t fl[2]
        cdef Buf done_pkt
        ci = self.connect()
        wi = self.connect()
        cl = self.conn(ci)
        wk = self.conn(wi)
        self.feed(wi, cando)
        buf_init(&done_pkt)
        with nogil:
            for _i in range(jobs):
                parse_packet(ps, ls, 0xffffffff, &pkt)
                engine_packet(&self.e, cl, &pkt)
                parse_packet(pg, lg, 0xffffffff, &pkt)
                engine_packet(&self.e, wk, &pkt)
                # JOB_ASSIGN_UNIQ: the handle is the first field of the reply.
                parse_packet(buf_head(&wk.outbuf), buf_len(&wk.outbuf), 0xffffffff, &pkt)
                fs[0] = pkt.f[0]
                fl[0] = pkt.flen[0]
                fs[1] = b""
                fl[1] = 0
                done_pkt.start = 0
                done_pkt.end = 0
                encode_packet(&done_pkt, 0, CMD_WORK_COMPLETE, 2, fs, fl)
                buf_consume(&wk.outbuf, buf_len(&wk.outbuf))
                buf_consume(&cl.outbuf, buf_len(&cl.outbuf))
                parse_packet(buf_head(&done_pkt), buf_len(&done_pkt), 0xffffffff, &pkt)
                if engine_packet(&self.e, wk, &pkt) == E_OK:
                    done += 1
            self.e.dirty = NULL
            cl.dirty = 0
            wk.dirty = 0
        buf_free(&done_pkt)
        return done


def _req(uint32_t t, fields):
    from fastgear.protocol import encode
    return encode(t, fields, request=True)
