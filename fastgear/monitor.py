"""The monitoring listener: JSON status, Prometheus metrics, kept results and the dashboard.

`start(cfg, server)` binds `--monitor HOST:PORT` and serves HTTP/1.1 from a standard
library server in daemon threads, so none of it runs on the I/O loops. Everything it shows
comes from `fastgear.snapshot`, whose calls copy what they need under the engine lock (the
large listings in short slices) and build Python objects only after releasing it. A
sampler thread takes one sample per second (server counters and per-function figures),
keeps the last ten minutes of totals for the dashboard's chart and computes rates from
the deltas between samples; requests reuse a sample younger than 250 ms, so a busy
scraper or many open dashboards cost the engine at most a few lock acquisitions per
second, never one per request. Endpoints: `/status` (JSON), `/metrics` (Prometheus text
0.0.4), `/jobs/<handle>`, `/jobs?unique=<key>` and `/jobs?function=F&outcome=O&since=T`
(kept results, newest first, paged with `before=<next>`), `/dead` (dead letters:
GET lists, `/dead/<handle>` shows one, POST `/dead/<handle>/requeue` and
`/dead/requeue?function=F` queue them again, DELETE `/dead/<handle>` discards one; a
request carrying an Origin header from another site is refused, so a web page cannot
act on them through an operator's browser), `/healthz`, `/` (the page in
dashboard.html). `--admin-allow` limits the changing actions (POST, DELETE) and
`--admin-allow-read` every page but `/healthz` to the peers they list (403 otherwise). Names, handles and data are bytes in the engine; JSON gives them
as text (invalid UTF-8 escaped with backslashes) and result data also as base64.
"""
from __future__ import annotations

import base64
import collections
import errno
import http.server
import itertools
import logging
import math
import operator
import os
import socket
import sys
import threading
import time
from importlib import resources
from urllib.parse import unquote_to_bytes, urlsplit

from fastgear import access, config, control, snapshot

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)
except ImportError:  # orjson is the fast path; the server still runs without it
    import json

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

__all__ = ["Monitor", "MonitorError", "Sampler", "render_metrics", "result_json", "start"]

log = logging.getLogger("fastgear")

PRIORITIES = ("high", "normal", "low")
COUNTERS = ("submitted", "completed", "failed", "exception", "retried")
_ZEROS = (0,) * len(COUNTERS)
SAMPLE_PERIOD_S = 1.0
HISTORY_SAMPLES = 600        # ten minutes at one sample per second
CACHE_S = 0.25               # a request reuses a sample this young
MAX_SAMPLER_SHARE = 0.02     # of one core, for the periodic samples
RATE_WINDOW_S = 5.0          # rates are averaged over this long, so one slow tick is smoothed
MAX_CLIENTS = 64             # concurrent HTTP connections; more are closed at once
IDLE_TIMEOUT_S = 30          # an idle keep-alive connection gives its thread back after this


class MonitorError(Exception):
    """The listener could not start (e.g. an explicitly requested port is busy)."""


def _text(value: bytes) -> str:
    # Backslash escapes keep undecodable bytes visible and distinct, and they are valid
    # JSON strings and Prometheus label values (after label escaping).
    return value.decode("utf-8", "backslashreplace")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Sampler:
    """Samples the engine and keeps the history; thread-safe, one snapshot at a time."""

    def __init__(self, loop, version: str = "", period: float = SAMPLE_PERIOD_S,
                 keep: int = HISTORY_SAMPLES):
        self.loop = loop
        self.version = version
        self.period = period
        self.interval = period   # the period in use: longer when samples are expensive
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.history = collections.deque(maxlen=keep)
        # (monotonic time, {name: counters}) of the last few periodic samples: rates.
        self._recent = collections.deque(maxlen=int(RATE_WINDOW_S / period) + 2)
        self._lock = threading.Lock()
        self._latest = None
        self._workers = None
        self._stop = threading.Event()
        self._thread = None
        # The store thread's status() (kind, lease, peers, takeovers); None: memory only.
        self.store_status = None

    # -- sampling -------------------------------------------------------------------
    def _take(self) -> dict:
        mono = time.monotonic()
        stats = snapshot.stats(self.loop)
        funcs = snapshot.function_stats(self.loop)
        results = snapshot.results_stats(self.loop)
        dead = snapshot.dead_stats(self.loop)
        ref = self._reference(mono)
        queued = running = future = 0
        totals = dict.fromkeys(COUNTERS, 0)
        rates = dict.fromkeys(COUNTERS, 0.0)
        for f in funcs:
            queued += sum(f["queued"])
            future += f["future"]
            running += f["running"]
            f["rates"] = self._rates(f, ref, mono)
            for k in COUNTERS:
                totals[k] += f[k]
                rates[k] += f["rates"][k]
        return {"t": time.time(), "mono": mono, "stats": stats, "functions": funcs,
                "results": results, "dead": dead, "rss": _rss_bytes(), "queued": queued,
                "future": future, "running": running, "totals": totals, "rates": rates}

    def _reference(self, mono):
        """The oldest recent sample within the rate window (at least 0.5 s old)."""
        window = max(RATE_WINDOW_S, 2.5 * self.interval)
        for entry in self._recent:
            if mono - window - 0.5 <= entry[0] <= mono - 0.5:
                return entry
        return None

    @staticmethod
    def _rates(f, ref, mono) -> dict:
        if ref is None:
            return dict.fromkeys(COUNTERS, 0.0)
        # A function missing from the reference sample was created since: it had none.
        before = ref[1].get(f["name"], _ZEROS)
        dt = mono - ref[0]
        # A function dropped and created again restarts its counters: never negative.
        return {k: max(f[k] - b, 0) / dt for k, b in zip(COUNTERS, before)}

    def tick(self) -> dict:
        """Take a periodic sample and record it in the history."""
        with self._lock:
            s = self._take()
            self._latest = s
            self._recent.append((s["mono"], {f["name"]: tuple(f[k] for k in COUNTERS)
                                             for f in s["functions"]}))
            workers = sum(f["workers"] for f in s["functions"])
            self.history.append({
                "t": round(s["t"], 3),
                "submitted_rate": round(s["rates"]["submitted"], 3),
                "completed_rate": round(s["rates"]["completed"], 3),
                "failed_rate": round(s["rates"]["failed"] + s["rates"]["exception"], 3),
                "queued": s["queued"], "running": s["running"], "workers": workers,
                "connections": s["stats"]["connections"],
            })
            return s

    def current(self) -> dict:
        """The latest sample, taken now if the last one is older than CACHE_S."""
        with self._lock:
            s = self._latest
            if s is None or time.monotonic() - s["mono"] > self._max_age():
                s = self._latest = self._take()
            return s

    def _max_age(self) -> float:
        # When samples are expensive (see _run), requests reuse them for longer too.
        return CACHE_S if self.interval <= self.period else self.interval / 2

    def workers(self) -> list:
        """snapshot.workers, cached like the samples (only requests need it)."""
        with self._lock:
            w = self._workers
            if w is None or time.monotonic() - w[0] > self._max_age():
                w = self._workers = (time.monotonic(), snapshot.workers(self.loop))
            return w[1]

    # -- the sampler thread -----------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="fastgear-monitor-sampler",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        next_at = time.monotonic()
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.tick()
            except Exception:  # a failed sample must not end sampling
                log.exception("monitor: sampling failed")
            # With thousands of functions a sample is no longer cheap; sampling less
            # often keeps the sampler under MAX_SAMPLER_SHARE of a core (and the engine
            # lock free for the loops) whatever the number of functions.
            self.interval = max(self.period, (time.monotonic() - began) / MAX_SAMPLER_SHARE)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (suspended, overloaded): restart the schedule
                next_at, delay = time.monotonic(), 0
            self._stop.wait(delay)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


# -- JSON views ------------------------------------------------------------------------

def status_json(sampler: Sampler, since: float | None = None) -> dict:
    s = sampler.current()
    st = s["stats"]
    now = time.time()
    jobs = st["jobs"]
    out = {
        "server": {
            "version": sampler.version, "pid": os.getpid(),
            "started_at": sampler.started_wall,
            "uptime_s": round(time.monotonic() - sampler.started_mono, 3),
            "threads": st["threads"], "io": getattr(sampler.loop, "io_backend", None),
            "connections": st["connections"],
            "connections_accepted": st["accepted"], "packets": st["packets"],
            "protocol_errors": st["protocol_errors"], "rss_bytes": s["rss"],
            "functions": st["functions"], "jobs": jobs, "queued": s["queued"],
            "future": s["future"], "running": s["running"],
            "job_bytes": st["queued_bytes"],
            "bytes_per_job": round(st["queued_bytes"] / jobs, 1) if jobs else None,
            "rss_per_job": round(s["rss"] / jobs, 1) if jobs else None,
            "job_bytes_limit": st.get("max_queued_bytes"),
            "jobs_refused_for_memory": st.get("budget_refused"),
            "memory_trims": st.get("memory_trims"),
            # FASTGEAR_LOCKSTATS builds only (bench/lock_hold.py); 0 otherwise.
            "lock_held_ns": st.get("lock_held_ns"), "lock_holds": st.get("lock_holds"),
        },
        "sampled_at": s["t"],
        "rate_window_s": RATE_WINDOW_S,
        "totals": {**s["totals"], "rates": {k: round(v, 3) for k, v in s["rates"].items()}},
        "functions": [_function_json(f) for f in s["functions"]],
        "workers": [_worker_json(w, now) for w in sampler.workers()],
        "results": s["results"],
        "dead": s["dead"],
        "store": store_json(sampler),
    }
    if since is not None:
        out["history"] = [h for h in list(sampler.history) if h["t"] > since]
    return out


def store_json(sampler: Sampler) -> dict:
    """Where background jobs are kept; for the shared PostgreSQL store also this
    server's lease and epoch, the other servers with their lease age, and takeovers."""
    if sampler.store_status is None:
        return {"kind": "memory"}
    try:
        return sampler.store_status()
    except Exception as exc:  # noqa: BLE001 (a status read must not break /status)
        return {"kind": "unknown", "error": str(exc)}


def _function_json(f: dict) -> dict:
    oldest = f["oldest_queued_s"]
    return {
        "name": _text(f["name"]),
        "queued": dict(zip(PRIORITIES, f["queued"])),
        "future": f["future"], "running": f["running"], "workers": f["workers"],
        "total": f["total"],
        "oldest_queued_s": round(oldest, 6) if oldest is not None else None,
        **{k: f[k] for k in COUNTERS},
        "rates": {k: round(v, 3) for k, v in f["rates"].items()},
        "wait_sum_s": f["wait_sum_s"], "run_sum_s": f["run_sum_s"],
    }


def _worker_json(w: dict, now: float) -> dict:
    return {
        "id": w["id"], "fd": w["fd"], "peer": w["peer"],
        "client_id": _text(w["client_id"]) if w["client_id"] else None,
        # The verified TLS client certificate's subject CN (None: plain, or no certificate).
        "tls": w.get("tls", False),
        "tls_cn": _text(w["tls_cn"]) if w.get("tls_cn") else None,
        "functions": [_text(n) for n in w["functions"]],
        "sleeping": w["sleeping"], "jobs_done": w["jobs_done"],
        "current": [{"handle": _text(j["handle"]), "function": _text(j["function"]),
                     "started_at": j["started_at"],
                     "running_s": round(max(now - j["started_at"], 0.0), 3),
                     # The job's last WORK_STATUS as [numerator, denominator]; [0, 0]
                     # until the worker sends one.
                     "progress": list(j.get("progress", (0, 0)))}
                    for j in w["current"]],
    }


def _utf8_or_none(data: bytes):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def result_json(r: dict) -> dict:
    """A kept result for JSON: data (the result, or the exception's text) and the job's
    payload (its first bytes) as UTF-8 text when they are valid UTF-8, always base64."""
    data = r["data"]
    payload = r.get("payload", b"")
    return {
        "handle": _text(r["handle"]), "function": _text(r["function"]),
        "unique": _text(r["unique"]), "outcome": r["outcome"],
        "background": r["background"], "data": _utf8_or_none(data),
        "data_base64": base64.b64encode(data).decode("ascii"),
        "data_size": r.get("data_size", len(data)),
        "data_truncated": len(data) < r.get("data_size", len(data)),
        "submitted_at": r["submitted_at"], "started_at": r["started_at"],
        "finished_at": r["finished_at"], "worker": r["worker"],
        "peer": r.get("peer"), "priority": r.get("priority"), "attempt": r.get("attempt"),
        "queue_wait_s": r.get("queue_wait_s"), "run_time_s": r.get("run_time_s"),
        "progress": r.get("progress"), "data_packets": r.get("data_packets"),
        "warnings": r.get("warnings"), "payload": _utf8_or_none(payload),
        "payload_base64": base64.b64encode(payload).decode("ascii"),
        "payload_size": r.get("payload_size"), "id": r.get("id"),
    }


def dead_json(d: dict) -> dict:
    """A dead letter for JSON: payload (a preview in listings) as text and base64."""
    data = d["data"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "handle": _text(d["handle"]), "function": _text(d["function"]),
        "unique": _text(d["unique"]), "priority": ("high", "normal", "low")[d["priority"]],
        "reason": d["reason"], "attempts": d["attempts"], "error": _text(d["error"]),
        "data": text, "data_base64": base64.b64encode(data).decode("ascii"),
        "data_size": d["data_size"], "data_truncated": len(data) < d["data_size"],
        "submitted_at": d["submitted_at"], "failed_at": d["failed_at"], "id": d["id"],
    }


# -- Prometheus text exposition 0.0.4 -----------------------------------------------------

def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v) -> str:
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def render_metrics(sampler: Sampler) -> bytes:
    s = sampler.current()
    st = s["stats"]
    workers = sampler.workers()
    out = []

    def family(name, kind, help_text, samples):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in samples:
            lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
            out.append(f"{name}{suffix}{{{lab}}} {_num(value)}" if lab
                       else f"{name}{suffix} {_num(value)}")

    def one(name, kind, help_text, value):
        family(name, kind, help_text, [("", (), value)])

    family("fastgear_info", "gauge", "Server version (value is always 1).",
           [("", (("version", sampler.version),), 1)])
    one("fastgear_start_time_seconds", "gauge", "Unix time the server started.",
        sampler.started_wall)
    one("fastgear_uptime_seconds", "gauge", "Seconds since the server started.",
        time.monotonic() - sampler.started_mono)
    one("fastgear_io_threads", "gauge", "I/O loop threads.", st["threads"])
    one("fastgear_connections", "gauge", "Open client, worker and admin connections.",
        st["connections"])
    one("fastgear_connections_accepted_total", "counter", "Connections accepted.",
        st["accepted"])
    one("fastgear_packets_total", "counter", "Binary protocol packets handled.",
        st["packets"])
    one("fastgear_protocol_errors_total", "counter",
        "Connections closed for a protocol error.", st["protocol_errors"])
    # The limits' and wake-ups' counters (issue 7, 8); absent from older snapshots.
    for name, key, text in (
            ("fastgear_connections_refused_total", "refused",
             "Connections refused at --max-connections or out of descriptors."),
            ("fastgear_connections_paused_total", "paused",
             "Times a connection's input was paused at --max-output."),
            ("fastgear_connections_output_closed_total", "output_hard_closed",
             "Connections closed at --max-output-hard."),
            ("fastgear_worker_wakeups_total", "noops", "NOOPs sent to sleeping workers."),
            ("fastgear_worker_rewakes_total", "rewakes",
             "Extra sleepers woken because a woken worker did not grab in time.")):
        if key in st:
            one(name, "counter", text, st[key])
    one("fastgear_resident_memory_bytes", "gauge", "Resident memory of the server process.",
        s["rss"])
    one("fastgear_jobs", "gauge", "Jobs in memory (queued, scheduled and running).",
        st["jobs"])
    one("fastgear_job_memory_bytes", "gauge", "Bytes the engine holds for jobs in memory.",
        st["queued_bytes"])
    if st.get("max_queued_bytes") is not None:
        one("fastgear_job_memory_limit_bytes", "gauge",
            "Memory budget for jobs; submissions beyond it are refused.",
            st["max_queued_bytes"])
        one("fastgear_jobs_refused_total", "counter",
            "Submissions refused because the job memory budget was spent.",
            st.get("budget_refused", 0))
    store = store_json(sampler)
    family("fastgear_store_info", "gauge", "Where background jobs are kept (value is 1).",
           [("", (("kind", store["kind"]), ("server_id", str(store.get("server_id", "")))),
             1)])
    if "epoch" in store:
        one("fastgear_store_epoch", "gauge", "This server's epoch in the shared store.",
            store["epoch"] or 0)
        one("fastgear_store_lease_seconds", "gauge",
            "Seconds this server's lease still counts (0: fenced).", store["lease_left_s"])
        one("fastgear_store_fenced", "gauge",
            "1 while the lease has lapsed: no dispatch, submissions refused.",
            int(bool(store["fenced"])))
        family("fastgear_store_peer_lease_age_seconds", "gauge",
               "Seconds since each other registered server renewed its lease.",
               [("", (("server_id", p["server_id"]), ("addr", p["addr"])),
                 p["lease_age_s"] or 0.0) for p in store["peers"]])
        one("fastgear_store_takeovers_total", "counter",
            "Dead servers whose jobs this server took over.", store["takeovers"])
        one("fastgear_store_jobs_claimed_total", "counter",
            "Jobs this server claimed from dead servers.", store["jobs_claimed"])
        one("fastgear_store_last_takeover_time_seconds", "gauge",
            "Unix time of this server's last takeover (0: none).",
            store["last_takeover"] or 0)
    if "commits" in store:
        one("fastgear_store_commits_total", "counter", "Group commits of the store.",
            store["commits"])
        one("fastgear_store_write_failures_total", "counter",
            "Store writes that failed (their submitters got QUEUE_ERROR).",
            store["write_failures"])
    one("fastgear_worker_connections", "gauge",
        "Connections that registered a function or hold a job.", len(workers))
    one("fastgear_workers_busy", "gauge", "Worker connections holding at least one job.",
        sum(1 for w in workers if w["current"]))
    one("fastgear_workers_sleeping", "gauge", "Worker connections asleep (PRE_SLEEP).",
        sum(1 for w in workers if w["sleeping"]))
    res = s["results"]
    one("fastgear_kept_results", "gauge", "Finished jobs whose outcome is kept.",
        res["count"])
    one("fastgear_kept_results_bytes", "gauge", "Memory held by kept results.",
        res["bytes"])
    one("fastgear_kept_results_evicted_total", "counter",
        "Kept results dropped before their time to stay under the memory bound.",
        res["evicted"])
    dead = s["dead"]
    one("fastgear_dead_letters", "gauge",
        "Background jobs on the dead-letter list (retries used up).", dead["count"])
    one("fastgear_dead_letters_bytes", "gauge", "Memory held by dead letters.",
        dead["bytes"])
    one("fastgear_dead_letters_evicted_total", "counter",
        "Dead letters dropped, oldest first, to stay within --dead-letters(-bytes).",
        dead["evicted"])

    # Per-function series are most of the text with many functions: each label is
    # escaped once and lines are formatted directly, not through family().
    funcs = [('function="' + _label(_text(f["name"])) + '"', f) for f in s["functions"]]

    def per_function(name, kind, help_text, value):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend([f"{name}{{{lab}}} {_num(value(f))}" for lab, f in funcs])

    name = "fastgear_queue_jobs"
    out.append(f"# HELP {name} Jobs waiting for a worker, by priority.")
    out.append(f"# TYPE {name} gauge")
    for lab, f in funcs:
        high, normal, low = f["queued"]
        out.append(f'{name}{{{lab},priority="high"}} {high}')
        out.append(f'{name}{{{lab},priority="normal"}} {normal}')
        out.append(f'{name}{{{lab},priority="low"}} {low}')
    per_function("fastgear_scheduled_jobs", "gauge", "Epoch and sched jobs not yet due.",
                 lambda f: f["future"])
    per_function("fastgear_running_jobs", "gauge", "Jobs a worker is running.",
                 lambda f: f["running"])
    per_function("fastgear_workers", "gauge", "Worker registrations (CAN_DO) for the function.",
                 lambda f: f["workers"])
    per_function("fastgear_queue_oldest_age_seconds", "gauge",
                 "Age of the oldest job waiting for a worker (0 when none waits).",
                 lambda f: f["oldest_queued_s"] or 0.0)
    for key, name, help_text in (
            ("submitted", "fastgear_jobs_submitted_total", "Jobs submitted."),
            ("completed", "fastgear_jobs_completed_total", "Jobs completed (WORK_COMPLETE)."),
            ("failed", "fastgear_jobs_failed_total",
             "Jobs failed (WORK_FAIL, retries spent, timeouts, cancels)."),
            ("exception", "fastgear_jobs_exceptions_total",
             "Jobs ended by WORK_EXCEPTION."),
            ("retried", "fastgear_jobs_retried_total",
             "Jobs handed back by a lost worker and queued again."),
            ("bg_retried", "fastgear_jobs_bg_retries_total",
             "Background jobs run again after a failed run (--bg-retries)."),
            ("dead", "fastgear_jobs_dead_lettered_total",
             "Background jobs that used up their retries (dead letters)."),
            ("requeued", "fastgear_jobs_requeued_total",
             "Dead letters queued again by an operator.")):
        per_function(name, "counter", help_text, operator.itemgetter(key))
    les = [f',le="{_num(b)}"}} ' for b in snapshot.HIST_BOUNDS_S] + [',le="+Inf"} ']
    for hist, total, name, help_text in (
            ("wait_hist", "wait_sum_s", "fastgear_job_queue_wait_seconds",
             "Time jobs waited in the queue before a worker took them."),
            ("run_hist", "run_sum_s", "fastgear_job_run_seconds",
             "Time from a worker taking a job to its end.")):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} histogram")
        bucket = name + "_bucket{"
        for lab, f in funcs:
            prefix = bucket + lab
            counts = list(itertools.accumulate(f[hist]))
            out.extend([prefix + le + str(c) for le, c in zip(les, counts)])
            out.append(f"{name}_sum{{{lab}}} {_num(float(f[total]))}")
            out.append(f"{name}_count{{{lab}}} {counts[-1] if counts else 0}")
    out.append("")
    return "\n".join(out).encode()


# -- HTTP -----------------------------------------------------------------------------

_DASHBOARD = None


def _dashboard() -> bytes:
    global _DASHBOARD
    if _DASHBOARD is None:
        _DASHBOARD = resources.files("fastgear").joinpath("dashboard.html").read_bytes()
    return _DASHBOARD


def _query(raw: str) -> dict:
    """Query parameters as bytes (unique keys are bytes, not necessarily UTF-8)."""
    out = {}
    for part in raw.split("&"):
        if part:
            key, _, value = part.partition("=")
            out.setdefault(key, unquote_to_bytes(value.replace("+", " ")))
    return out


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Answers to unparsable or HTTP/0.9 request lines still carry a status line and
    # headers (http.server would send a bare body), so any client sees the error.
    default_request_version = "HTTP/1.0"
    server_version = "fastgear-monitor"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    monitor: Monitor = None  # set on a subclass per listener

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    def do_POST(self):
        self._act()

    def do_DELETE(self):
        self._act()

    def _act(self):
        # Only the dead letters take actions; elsewhere these methods are refused as
        # every other one.
        path = urlsplit(self.path).path
        if path == "/dead" or path.startswith("/dead/"):
            self._serve(body=True)
        else:
            self._not_allowed()

    def __getattr__(self, name):
        # Every other method is refused with 405 (http.server would answer 501).
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def version_string(self):
        return self.server_version

    def _not_allowed(self):
        # The request's body (if any) is not read, so the connection cannot be reused.
        self.close_connection = True
        self._send(405, b'{"error":"method not allowed"}', "application/json",
                   extra=(("Allow", "GET, HEAD"),))

    def _allowed(self) -> bool:
        """--admin-allow for the changing actions (POST, DELETE), --admin-allow-read for
        every page but /healthz (a load balancer's probe, which tells nothing); a refusal
        is answered 403 and logged. The monitor has no TLS, so cn: entries never match."""
        mon = self.monitor
        policy = mon.access
        if policy.open:
            return True
        change = self.command not in ("GET", "HEAD")
        if not change and urlsplit(self.path).path == "/healthz":
            return True
        peer = access.Peer(self.client_address[0])
        if policy.may_change(peer) if change else policy.may_read(peer):
            return True
        flag = policy.flag_for(change)
        name = f"{self.command} {urlsplit(self.path).path[:60]}"
        mon.refusals.refused("monitor request", repr(name), peer, self.client_address[1],
                             flag)
        self.close_connection = True  # a POST body, if any, is not read
        what = "change the server" if change else "read the monitor"
        self._send(403, _dumps({"error": f"{peer.ip} may not {what} ({flag})"}),
                   "application/json", body=self.command != "HEAD")
        return False

    def _serve(self, body: bool):
        if not self._allowed():
            return
        try:
            status, payload, ctype = self._route()
        except Exception:  # never let a bug end the connection without an answer
            log.exception("monitor: %s %s failed", self.command, self.path[:200])
            status, payload, ctype = 500, b'{"error":"internal error"}', "application/json"
        self._send(status, payload, ctype, body=body)

    def _route(self):
        url = urlsplit(self.path)
        path = url.path
        mon = self.monitor
        if path == "/dead" or path.startswith("/dead/"):
            return self._dead(path, _query(url.query))
        if path == "/status":
            q = _query(url.query)
            since = None
            if "since" in q:
                try:
                    since = float(q["since"].decode("ascii"))
                except (UnicodeDecodeError, ValueError):
                    return 400, b'{"error":"since must be a number"}', "application/json"
            return 200, _dumps(status_json(mon.sampler, since)), "application/json"
        if path == "/metrics":
            return 200, render_metrics(mon.sampler), "text/plain; version=0.0.4; charset=utf-8"
        if path == "/healthz":
            return 200, b"ok\n", "text/plain; charset=utf-8"
        if path in ("/", "/index.html"):
            return 200, _dashboard(), "text/html; charset=utf-8"
        if path == "/jobs":
            q = _query(url.query)
            if "unique" in q:
                return self._results(unique=q["unique"])
            return self._browse(q)
        if path.startswith("/jobs/") and len(path) > 6:
            return self._results(handle=unquote_to_bytes(path[6:]))
        return 404, b'{"error":"not found"}', "application/json"

    def _dead(self, path, q):
        """The dead letters: list, show, re-queue, discard (see the module docstring)."""
        loop = self.monitor.loop
        parts = path.split("/")[2:]      # [] | [handle] | [handle, "requeue"] | ["requeue"]
        method = "GET" if self.command == "HEAD" else self.command
        if method != "GET":
            # The body (if any) is not read: the connection cannot be reused.
            self.close_connection = True
            origin = self.headers.get("Origin")
            if origin and urlsplit(origin).netloc != self.headers.get("Host", ""):
                return 403, b'{"error":"cross-site request refused"}', "application/json"
        function = q.get("function")
        if parts == [] and method == "GET":
            try:
                limit = max(1, min(int(q.get("limit", b"100")), 1000))
                before = int(q.get("before", b"0"))
            except ValueError:
                return 400, b'{"error":"limit and before must be numbers"}', \
                    "application/json"
            rows = snapshot.dead_letters(loop, function, limit, before)
            return 200, _dumps({**snapshot.dead_stats(loop),
                                "dead": [dead_json(d) for d in rows],
                                "next": rows[-1]["id"] if len(rows) == limit else None}), \
                "application/json"
        if parts == ["requeue"] and method == "POST":
            if function is None:
                return 400, b'{"error":"give ?function=F"}', "application/json"
            n = control.requeue_dead_function(loop, function)
            return 200, _dumps({"function": _text(function), "requeued": n}), \
                "application/json"
        handle = unquote_to_bytes(parts[0]) if parts and parts[0] else None
        if handle is None or len(parts) > 2 or (len(parts) == 2 and parts[1] != "requeue"):
            return 404, b'{"error":"not found"}', "application/json"
        if len(parts) == 2 and method == "POST":
            status, new = control.requeue_dead(loop, handle)
            if status == "notfound":
                return 404, _dumps({"error": "no such dead letter",
                                    "handle": _text(handle)}), "application/json"
            if status == "full":
                return 409, _dumps({"error": "the function's queue is at its maxqueue "
                                             "limit", "handle": _text(handle)}), \
                    "application/json"
            if status == "refused":
                return 409, _dumps({"error": "its function name or unique key is over "
                                             "this server's limits",
                                    "handle": _text(handle)}), "application/json"
            return 200, _dumps({"handle": _text(handle), "coalesced": status == "coalesced",
                                "new_handle": _text(new) if new else None}), \
                "application/json"
        if len(parts) == 1 and method == "DELETE":
            if not control.discard_dead(loop, handle):
                return 404, _dumps({"error": "no such dead letter",
                                    "handle": _text(handle)}), "application/json"
            return 200, _dumps({"handle": _text(handle), "discarded": True}), \
                "application/json"
        if len(parts) == 1 and method == "GET":
            d = snapshot.dead_letter(loop, handle)
            if d is None:
                return 404, _dumps({"error": "no such dead letter",
                                    "handle": _text(handle)}), "application/json"
            return 200, _dumps(dead_json(d)), "application/json"
        return 405, b'{"error":"method not allowed"}', "application/json"

    def _results(self, handle=None, unique=None):
        loop = self.monitor.loop
        if not self.monitor.keep_results:
            return 404, _dumps({"error": "results are not kept: start the server with "
                                         "--keep-results SECONDS"}), "application/json"
        if handle is not None:
            r = snapshot.result(loop, handle)
            if r is None:
                return 404, _dumps({"error": "no kept result for this handle (unknown, "
                                             "still running, or expired)",
                                    "handle": _text(handle)}), "application/json"
            return 200, _dumps(result_json(r)), "application/json"
        found = snapshot.results_by_unique(loop, unique)
        if not found:
            return 404, _dumps({"error": "no kept result for this unique key",
                                "unique": _text(unique)}), "application/json"
        return 200, _dumps({"unique": _text(unique),
                            "results": [result_json(r) for r in found]}), "application/json"

    def _browse(self, q):
        """GET /jobs?function=F&outcome=O&since=UNIX&limit=N&before=CURSOR: kept outcomes
        newest first, a page at a time; `next` is the cursor for the next page."""
        if not self.monitor.keep_results:
            return 404, _dumps({"error": "results are not kept: start the server with "
                                         "--keep-results SECONDS"}), "application/json"
        outcome = q.get("outcome", b"").decode("ascii", "replace")
        if outcome and outcome not in snapshot.OUTCOMES:
            return 400, b'{"error":"outcome is complete, fail or exception"}', \
                "application/json"
        try:
            limit = max(1, min(int(q.get("limit", b"100")), 1000))
            before = int(q.get("before", b"0"))
            since = float(q.get("since", b"0"))
        except ValueError:
            return 400, b'{"error":"limit, before and since must be numbers"}', \
                "application/json"
        rows, cursor = snapshot.results_page(
            self.monitor.loop, q.get("function"),
            snapshot.OUTCOMES.index(outcome) if outcome else -1, since, limit,
            max(before, 0))
        return 200, _dumps({"results": [result_json(r) for r in rows],
                            "next": cursor or None}), "application/json"

    def _send(self, status, payload, ctype, body=True, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def send_error(self, code, message=None, explain=None):
        # Malformed requests: a short JSON body instead of http.server's HTML page, and
        # the connection is closed since its framing can no longer be trusted.
        self.close_connection = True
        try:
            payload = _dumps({"error": message or self.responses.get(code, ("",))[0]})
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(payload)
        except OSError:
            pass

    def log_message(self, fmt, *args):
        log.debug("monitor: %s %s", self.address_string(), fmt % args)


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address, handler, family):
        self.address_family = family
        self._clients = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, handler)

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # socketserver.TCPServer.server_bind, without HTTPServer's getfqdn() (a DNS
        # lookup that can stall start-up on a machine without a resolver).
        # SO_REUSEADDR: a restart must not fail on the last run's TIME_WAIT connections.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def process_request(self, request, client_address):
        # A bound on threads: a flood of connections cannot exhaust the process.
        if not self._clients.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._clients.release()

    def handle_error(self, request, client_address):
        # Called inside socketserver's except block: a client that misbehaves or goes
        # away is routine, not worth more than a debug line.
        log.debug("monitor: connection from %s failed: %r", client_address,
                  sys.exc_info()[1])


class Monitor:
    """A running listener and its sampler; `stop()` ends both."""

    def __init__(self, httpd, sampler, loop, keep_results):
        self.httpd = httpd
        self.sampler = sampler
        self.loop = loop
        self.keep_results = keep_results
        self.access = access.Policy()        # everyone, unless start() is given lists
        self.refusals = access.RefusalLog()
        host, port = httpd.server_address[:2]
        self.host, self.port = host, port
        self.url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.25,),
                                        name="fastgear-monitor-http", daemon=True)

    def _start(self):
        self.sampler.start()
        self._thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.sampler.stop()
        self._thread.join(5)


def _bind(host: str, port: int, handler):
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {exc}") from exc
    error = None
    for family, _, _, _, addr in infos:
        try:
            return _HTTPServer(addr[:2] if family == socket.AF_INET else addr, handler,
                               family)
        except OSError as exc:
            error = exc
    raise error


class Bound:
    """A listener bound for cfg.monitor and not yet served (see bind())."""

    def __init__(self, httpd, handler):
        self.httpd, self.handler = httpd, handler

    def close(self):
        self.httpd.server_close()


def bind(cfg):
    """Bind the listener for cfg.monitor: a Bound for start(), or None when monitoring is
    off or the default port is busy. Raises MonitorError when an address the user chose
    cannot be bound. The server binds before it detaches (-d), so that this error reaches
    the terminal and the exit status; the threads start after the fork."""
    where = config.parse_monitor(cfg.monitor)
    if not where:
        return None
    host, port = where
    handler = type("BoundHandler", (Handler,), {})
    try:
        return Bound(_bind(host, port, handler), handler)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if where == config.parse_monitor(config.DEFAULT_MONITOR):
            log.warning("monitor not started: cannot listen on %s:%d (%s); start with "
                        "--monitor HOST:PORT or --monitor off", host, port, reason)
            return None
        raise MonitorError(f"cannot listen for monitoring on {host}:{port}: {reason}") \
            from exc


def start(cfg, server, bound=None):
    """Serve cfg.monitor (bound by bind(), or here): returns a Monitor (with stop()) or
    None when monitoring is off or the default port is busy. Raises MonitorError when an
    address the user chose cannot be bound."""
    if bound is None:
        bound = bind(cfg)
        if bound is None:
            return None
    httpd, handler = bound.httpd, bound.handler
    version = server.control.version() if hasattr(server, "control") else ""
    sampler = Sampler(server.loop, version)
    sampler.store_status = getattr(server, "store_status", None)
    mon = Monitor(httpd, sampler, server.loop, getattr(cfg, "keep_results", 0))
    mon.access = access.Policy.from_config(cfg)
    # One log (and one rate limit) for the admin port's refusals and the monitor's.
    mon.refusals = getattr(server, "refusals", None) or mon.refusals
    handler.monitor = mon
    mon._start()
    log.info("monitor listening on %s", mon.url)
    return mon
