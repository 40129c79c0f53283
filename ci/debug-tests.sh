#!/usr/bin/env bash
# Runs the engine and wire behaviour tests (fastgear with 0, 1 and 4 I/O threads, on
# io_uring and on epoll, and over TLS), the TLS and I/O-backend tests and the
# 1,000-connection stress test against the debug build: -O0, C assert() on, every
# engine entry point asserting that the calling thread holds the engine lock, and the
# engine's list/heap invariants checked. Builds in a scratch copy so the normal build
# in the work tree is left alone.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$src" ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$work")
cd "$work"
FASTGEAR_DEBUG=1 python setup.py build_ext --inplace -q
PYTHONPATH="$work" python -m pytest -q -p no:cacheprovider -k "not gearmand" \
    tests/test_engine.py tests/test_wire_jobs.py tests/test_wire_workers.py \
    tests/test_wire_errors.py tests/test_stress_threads.py tests/test_wakeups.py \
    tests/test_limits.py tests/test_http.py tests/test_dead_letters.py tests/test_outcomes.py \
    tests/test_memory_return.py tests/test_tls.py tests/test_io_backend.py
