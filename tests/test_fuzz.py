"""The fuzzers (tests/fuzz/) for a bounded time in CI: each runs once with a fixed seed,
so a regression shows up the same way every time, and once with a fresh random seed,
printed (and put in the failure message) so a new find can be reproduced with
`python tests/fuzz/codec_fuzz.py --seed N` or `python tests/fuzz/state_fuzz.py --seed N`.
Set FASTGEAR_FUZZ_SEED to pin the "random" seed. About 20 s of codec fuzzing and 30 s of
state fuzzing in all; longer runs are for people (README, "Fuzzing").
"""
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import missing

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import state_fuzz

CODEC_SECONDS = 10        # per seed, two seeds
STATE_SECONDS = 5         # per seed and thread mode: 2 seeds x 3 modes
FIXED_SEED = 1
RANDOM_SEED = int(os.environ.get("FASTGEAR_FUZZ_SEED") or random.SystemRandom().randrange(
    2, 2**31))
SEEDS = [pytest.param(FIXED_SEED, id="fixed-seed"), pytest.param(RANDOM_SEED, id="random-seed")]
CORPUS_LIMIT = 300 * 1024


@pytest.mark.parametrize("seed", SEEDS)
def test_codec_fuzzer_finds_no_crash_or_spec_difference(seed, tmp_path):
    print(f"codec fuzzer seed {seed}")
    cmd = [sys.executable, str(FUZZ / "codec_fuzz.py"), "--time", str(CODEC_SECONDS),
           "--seed", str(seed), "--work", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=CODEC_SECONDS + 240,
                       check=False)
    out = r.stdout + r.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-",
                                                                            "timeout-", "oom-")))
    if r.returncode == 3 and "ATHERIS IS NOT INSTALLED" in out:
        pytest.fail("atheris is not installed, so the codec was fuzzed without coverage "
                    "guidance: `pip install -e '.[test]'` installs it")
    assert r.returncode == 0, (f"codec fuzzer failed with seed {seed} (rerun: "
                               f"{' '.join(cmd[1:])}); inputs kept: {crashes}\n{out[-6000:]}")
    runs = re.search(r"Done (\d+) runs", out)
    assert runs and int(runs.group(1)) > 0, out[-3000:]
    print(f"codec fuzzer: {runs.group(0)}, seed {seed}")
    if "instrumented=yes" not in out:
        # Still a useful run (the model and harness are instrumented), but blind to the C
        # parser's own branches: say so where it is seen.
        warnings.warn("codec fuzzer ran without the instrumented C parser (no clang?): "
                      + out[out.find("instrumented build unavailable"):][:200], stacklevel=1)


@pytest.mark.parametrize("threads", ["0", "1", "4"])
@pytest.mark.parametrize("seed", SEEDS)
def test_state_fuzzer_keeps_the_server_serving_everyone(start_server, threads, seed):
    print(f"state fuzzer seed {seed}, -t {threads}")
    # No monitoring listener: it binds just after the Gearman port, and its socket would
    # count as a leak in the fuzzer's end-of-run socket check.
    srv = start_server("fastgear", "-t", threads, "--monitor", "off")
    fz = state_fuzz.Fuzzer((srv.host, srv.port), seed, alive=srv.alive,
                           label=f"[fastgear -t {threads}]", pid=srv.pid)
    try:
        stats = fz.run(STATE_SECONDS)
    except state_fuzz.Failure as e:
        pytest.fail(f"state fuzzer, seed {seed}, -t {threads} (rerun: python "
                    f"tests/fuzz/state_fuzz.py --seed {seed} --threads {threads} --time 30): "
                    f"{e}\nserver output: {srv.output()[-1500:]}", pytrace=False)
    assert srv.alive()
    print(f"state fuzzer: {dict(stats)}")
    assert stats["probes"] >= 2 and stats["actions"] > 100


def test_seed_corpus_is_small_and_covers_every_packet_type():
    corpus = FUZZ / "corpus" / "codec"
    files = list(corpus.iterdir())
    assert sum(p.stat().st_size for p in files) < CORPUS_LIMIT
    names = {p.name for p in files}
    import model
    for t, (name, *_rest) in model.SPEC.items():
        assert f"req-{t:02d}-{name.lower()}" in names


def test_instrumented_codec_build_works_where_clang_is_installed():
    """The coverage of the C parser depends on this build; it must not rot unnoticed.
    (The build is cached by a hash of its sources, so this is the codec fuzzer's own.)"""
    import build_instrumented as bi
    if bi.find_clang() is None:
        missing("clang (the codec fuzzer would run uninstrumented)", debian="clang")
    so = bi.build()
    nm = shutil.which("nm")
    if nm:
        symbols = subprocess.run([nm, "-D", str(so)], capture_output=True, text=True,
                                 check=True).stdout
        assert "__sanitizer_cov" in symbols and "__asan" in symbols
