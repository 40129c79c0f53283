"""Builds a coverage-instrumented, AddressSanitizer-checked copy of fastgear.protocol for
the codec fuzzer. atheris only sees Python bytecode by default, so without this the
fuzzer would be blind to the branches of the C parser. We cythonize
fastgear/protocol.pyx into a scratch directory (never into the source tree, whose
build must stay the release one) and compile it with clang
`-fsanitize=address,fuzzer-no-link`; the fuzz process then preloads atheris'
asan_with_fuzzer.so, which supplies the ASan runtime and the libFuzzer that collects
the module's edge counters. Builds are cached by a hash of the inputs.

Usage: python tests/fuzz/build_instrumented.py [--out DIR]  (prints the module's path)
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "fastgear" / n for n in ("protocol.pyx", "protocol.pxd", "buffer.pxd")]
CFLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fPIC", "-shared",
          "-fsanitize=address,fuzzer-no-link", "-Wno-unused-function",
          "-Wno-unreachable-code", "-DNDEBUG"]
# The release build's directives (setup.py), so the fuzzed C is the shipped C.
DIRECTIVES = "boundscheck=False,wraparound=False,cdivision=True,initializedcheck=False"


class Unavailable(RuntimeError):
    """The instrumented build cannot be made here (no clang, or no ASan+libFuzzer
    runtime from atheris)."""


def find_clang():
    for name in ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15",
                 "clang-14"):
        path = shutil.which(name)
        if path:
            return path
    return None


def runtime_library():
    """atheris' ASan runtime with libFuzzer linked in, to be LD_PRELOADed."""
    try:
        import atheris
    except ImportError as e:
        raise Unavailable("atheris is not installed") from e
    lib = Path(atheris.path()) / "asan_with_fuzzer.so"
    if not lib.exists():
        raise Unavailable(f"{lib} is missing (atheris was built without it)")
    return lib


def build(out=None):
    """Path of the instrumented extension module, building it if needed."""
    clang = find_clang()
    if clang is None:
        raise Unavailable("clang is not installed (apt-get install clang)")
    version = subprocess.run([clang, "--version"], capture_output=True, text=True,
                             check=False).stdout
    h = hashlib.sha256(version.encode() + " ".join(CFLAGS).encode() + DIRECTIVES.encode())
    for src in SOURCES:
        h.update(src.read_bytes())
    out = Path(out) if out else Path(tempfile.gettempdir()) / f"fastgear-fuzz-{h.hexdigest()[:16]}"
    target = out / ("protocol" + sysconfig.get_config_var("EXT_SUFFIX"))
    if target.exists():
        return target
    out.mkdir(parents=True, exist_ok=True)
    c_file = out / "protocol.c"
    subprocess.run([sys.executable, "-m", "cython", "-3", "-I", str(ROOT), "-X", DIRECTIVES,
                    "-o", str(c_file), str(ROOT / "fastgear" / "protocol.pyx")], check=True)
    tmp = target.with_suffix(".tmp")
    subprocess.run([clang, *CFLAGS, "-I", sysconfig.get_paths()["include"], str(c_file),
                    "-o", str(tmp)], check=True)
    # Atomic, so a concurrent fuzz run never imports a half-written module.
    os.replace(tmp, target)
    return target


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="build directory (default: a cache dir under /tmp)")
    args = ap.parse_args()
    try:
        print(build(args.out))
    except Unavailable as e:
        sys.exit(f"cannot build the instrumented codec: {e}")


if __name__ == "__main__":
    main()
