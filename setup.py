"""Build script: compiles fastgear's Cython modules (codec, engine, I/O loop) to C.

Release builds use -O2 with assertions off. FASTGEAR_DEBUG=1 builds with -O0 -g, C
assert() on and Cython's bounds/overflow checks, so the test suite can be run against
a build that stops at the first broken invariant instead of corrupting memory.
"""
import os
import shlex
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTGEAR_DEBUG", "") not in ("", "0")

# The I/O loops link liburing (the io_uring loop) and OpenSSL (TLS). Without their
# headers the C compiler would fail deep in the build; say which packages to install.
C_HEADERS = {"liburing.h": "liburing-dev", "openssl/ssl.h": "libssl-dev"}


def check_c_headers():
    cc = shlex.split(os.environ.get("CC", "cc"))
    missing = []
    for header, package in C_HEADERS.items():
        try:
            r = subprocess.run(cc + ["-E", "-x", "c", "-", "-o", os.devnull],
                               input=f"#include <{header}>\n", text=True,
                               capture_output=True, check=False)
        except FileNotFoundError:
            return      # no C compiler at all: the build says so itself
        if r.returncode != 0:
            missing.append((header, package))
    if missing:
        sys.exit("fastgear: building needs the C headers "
                 + ", ".join(h for h, _ in missing) + ". On Debian or Ubuntu: apt-get install "
                 + " ".join(p for _, p in missing) + " (Fedora: "
                 + " ".join(p.replace("-dev", "-devel").replace("libssl", "openssl")
                            for _, p in missing) + ").")


check_c_headers()

if DEBUG:
    cflags = ["-O0", "-g", "-UNDEBUG", "-DFASTGEAR_DEBUG=1"]
    directives = {"boundscheck": True, "wraparound": False, "cdivision": True,
                  "initializedcheck": True}
else:
    cflags = ["-O2", "-DNDEBUG", "-DFASTGEAR_DEBUG=0"]
    directives = {"boundscheck": False, "wraparound": False, "cdivision": True,
                  "initializedcheck": False}
directives["language_level"] = 3
# FASTGEAR_LOCKSTATS=1: time every hold of the engine lock (bench/lock_hold.py).
if os.environ.get("FASTGEAR_LOCKSTATS", "") not in ("", "0"):
    cflags.append("-DFASTGEAR_LOCKSTATS=1")

# Dotted names live in subpackages: "bench._loop" is fastgear/bench/_loop.pyx.
MODULES = ["protocol", "coreconfig", "engine", "engine_harness", "iothreads", "snapshot",
           "control", "bench._loop"]

extensions = [
    Extension(
        f"fastgear.{name}",
        [f"fastgear/{name.replace('.', '/')}.pyx"],
        extra_compile_args=cflags + ["-Wno-unused-function"],
        # liburing (Debian: liburing-dev) for the io_uring loop (iothreads_uring.pxi);
        # libssl/libcrypto (Debian: libssl-dev) for TLS in the loops (iothreads_tls.pxi).
        libraries=["pthread"] + (["uring", "ssl", "crypto"] if name == "iothreads" else []),
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        include_path=["fastgear"],
    ),
)
