"""The build's own error: without the C headers of liburing or OpenSSL, setup.py stops
before compiling and names the packages to install, instead of a compiler error deep
in the build. A stand-in C compiler (CC) that cannot find a header plays the machine
without them."""
import os
import subprocess
import sys

from conftest import ROOT


def run_setup(tmp_path, missing):
    cc = tmp_path / "cc"
    checks = "".join(f'grep -q "{h}" "$in" && {{ echo "fatal error: {h}: No such file or '
                     f'directory" >&2; exit 1; }}\n' for h in missing)
    cc.write_text(f'#!/bin/sh\nin=$(mktemp)\ncat > "$in"\n{checks}rm -f "$in"\nexit 0\n')
    cc.chmod(0o755)
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT,
                          env={**os.environ, "CC": str(cc)}, capture_output=True,
                          text=True, timeout=120, check=False)


def test_missing_c_headers_stop_the_build_naming_the_packages(tmp_path):
    r = run_setup(tmp_path, ["liburing.h", "openssl/ssl.h"])
    assert r.returncode == 1
    assert ("building needs the C headers liburing.h, openssl/ssl.h. On Debian or Ubuntu: "
            "apt-get install liburing-dev libssl-dev") in r.stderr


def test_the_build_goes_on_when_the_headers_are_there(tmp_path):
    r = run_setup(tmp_path, [])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("fastgear")
