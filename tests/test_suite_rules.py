"""The suite's own rules on a fresh machine: every Debian peer comes from the PEERS list in ci/install-peers.sh
and is checked by ci/install-peers.sh after installing it, and a peer missing under CI
fails the test that needs it (naming the package) instead of skipping it."""
import os
import subprocess
from types import SimpleNamespace

import conftest
import pytest
from conftest import DEBIAN_PEERS, ROOT


def test_missing_peer_skips_outside_ci_naming_its_package(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="Debian package gearman-tools"):
        conftest.missing("gearadmin", debian="gearman-tools")
    with pytest.raises(pytest.skip.Exception, match="pip package gear "):
        conftest.missing("the Python module 'gear'", pip="gear")


def test_missing_peer_fails_under_ci_naming_its_package(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="Debian package chromium"):
        conftest.missing("chromium", debian="chromium")


def test_a_package_that_install_peers_does_not_install_is_refused(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.fail.Exception, match="PEERS list"):
        conftest.missing("nmap", debian="nmap")


def test_any_other_skip_becomes_a_failure_under_ci_but_xfail_does_not(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", True)
    skipped = SimpleNamespace(skipped=True, outcome="skipped",
                              longrepr=("f.py", 1, "Skipped: no such tool"))
    conftest._fail_skip_in_ci(skipped)
    assert skipped.outcome == "failed" and "no such tool" in skipped.longrepr
    xfailed = SimpleNamespace(skipped=True, outcome="skipped", longrepr="", wasxfail="known")
    conftest._fail_skip_in_ci(xfailed)
    assert xfailed.outcome == "skipped"
    monkeypatch.setattr(conftest, "IN_CI", False)
    local = SimpleNamespace(skipped=True, outcome="skipped", longrepr=("f.py", 1, "x"))
    conftest._fail_skip_in_ci(local)
    assert local.outcome == "skipped"


def test_peer_list_names_the_packages_the_suite_uses():
    assert {"gearman-job-server", "gearman-tools", "libgearman-client-perl", "php-gearman",
            "chromium", "clang", "libclang-rt-dev", "iproute2"} <= DEBIAN_PEERS


def run_install_peers(tmp_path, lines):
    """ci/install-peers.sh against a list of installed packages with the given checks:
    nothing is missing, so apt-get is not run and only the checks are."""
    (tmp_path / "peers").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PEERS_FILE=str(tmp_path / "peers"))
    return subprocess.run(["bash", str(ROOT / "ci" / "install-peers.sh")], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


def test_install_peers_fails_naming_a_package_whose_check_fails(tmp_path):
    res = run_install_peers(tmp_path, ["gearman-tools | command -v gearadmin",
                                       "clang | exit 3"])
    assert res.returncode == 1, res.stderr
    assert "check failed for clang: exit 3" in res.stderr
    assert "not working: clang" in res.stderr
    assert "gearman-tools" not in res.stderr.split("check failed", 1)[1]


def test_install_peers_passes_when_every_check_passes(tmp_path):
    res = run_install_peers(tmp_path, ["gearman-tools | command -v gearadmin",
                                       "clang | clang --version"])
    assert res.returncode == 0, res.stderr
    assert "2 packages checked" in res.stderr


def test_install_peers_refuses_a_line_without_a_check(tmp_path):
    res = run_install_peers(tmp_path, ["clang"])
    assert res.returncode == 1 and "bad line" in res.stderr
