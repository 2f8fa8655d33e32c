"""The suite never writes into the user's real testbench home: a module-scoped fixture runs
before any per-test override, so conftest puts a temporary home in place at import time, and
fails the session when the real home changed anyway. Proven on a small suite run for real with
this conftest, against a stand-in for the real home."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

PROBE = """
import os
from pathlib import Path

import pytest

from utils import environment


@pytest.fixture(scope="module")
def cache():  # module-scoped: runs before the per-test TESTBENCH_HOME
    home = environment.testbench_home()  # where the gist cache, datasets and hand-off files go
    (home / "datasets").mkdir(parents=True, exist_ok=True)
    (home / "datasets" / "probe").write_text("x")
    return home


def test_uses_the_cache(cache):
    assert (cache / "datasets" / "probe").is_file()
    if os.environ.get("PROBE_BYPASS"):  # code that ignores TESTBENCH_HOME
        real = Path(os.environ["XDG_CACHE_HOME"]) / "transformer-testbench"
        (real / "stray").write_text("y")
"""


def run_suite(tmp_path: Path, bypass: bool) -> tuple[subprocess.CompletedProcess, Path]:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(TESTS / "conftest.py", suite)
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_probe.py").write_text(textwrap.dedent(PROBE))
    cache = tmp_path / "user-cache"  # stands in for ~/.cache
    env = {k: v for k, v in os.environ.items() if k != "TESTBENCH_HOME"}
    env.update(XDG_CACHE_HOME=str(cache), HOME=str(tmp_path / "user"))
    if bypass:
        env["PROBE_BYPASS"] = "1"
        (cache / "transformer-testbench").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_probe.py"], cwd=suite, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, cache / "transformer-testbench"


def test_a_module_scoped_fixture_never_reaches_the_real_home(tmp_path):
    proc, real = run_suite(tmp_path, bypass=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout and "warning" not in proc.stdout, proc.stdout
    assert not real.exists()


def test_the_session_fails_when_the_real_home_changed(tmp_path):
    proc, real = run_suite(tmp_path, bypass=True)
    assert (real / "stray").is_file()
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED
    assert "1 passed" in proc.stdout
    assert f"wrote into the real testbench home {real}" in proc.stdout


def test_this_session_runs_in_a_temporary_home():
    import conftest

    assert Path(os.environ["TESTBENCH_HOME"]) not in conftest.REAL_HOMES
    assert conftest.SESSION_HOME.is_dir()
