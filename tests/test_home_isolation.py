"""The suite never writes into a real testbench home: conftest puts a temporary home in place at
import time (a module-scoped fixture runs before any per-test override) and gives the suite's
processes a cache folder of their own, whose default home must stay empty: code that bypasses
TESTBENCH_HOME fails the session, another process using the machine's default home does not.
Proven on a small suite run for real with this conftest."""

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
    if os.environ.get("PROBE_BYPASS"):  # code that ignores TESTBENCH_HOME: the default home
        default = Path(os.environ["XDG_CACHE_HOME"]) / "transformer-testbench"
        default.mkdir(parents=True, exist_ok=True)
        (default / "stray").write_text("y")
        Path(os.environ["PROBE_REPORT"]).write_text(str(default))
    if os.environ.get("PROBE_OTHER"):  # another process on the machine, in the user's cache
        (Path(os.environ["PROBE_OTHER"]) / "transformer-testbench" / "other").write_text("z")
"""


def run_suite(tmp_path: Path, bypass: bool = False,
              other: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(TESTS / "conftest.py", suite)
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_probe.py").write_text(textwrap.dedent(PROBE))
    cache = tmp_path / "user-cache"  # stands in for ~/.cache
    (cache / "transformer-testbench").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "TESTBENCH_HOME"}
    env.update(XDG_CACHE_HOME=str(cache), HOME=str(tmp_path / "user"),
               PROBE_REPORT=str(tmp_path / "default-home.txt"))
    if bypass:
        env["PROBE_BYPASS"] = "1"
    if other:
        env["PROBE_OTHER"] = str(cache)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_probe.py"], cwd=suite, env=env, capture_output=True,
                          text=True, timeout=300)
    return proc, cache / "transformer-testbench"


def test_a_module_scoped_fixture_never_reaches_a_real_home(tmp_path):
    proc, real = run_suite(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout and "warning" not in proc.stdout, proc.stdout
    assert list(real.iterdir()) == []


def test_the_session_fails_when_code_bypasses_testbench_home(tmp_path):
    proc, real = run_suite(tmp_path, bypass=True)
    default = Path((tmp_path / "default-home.txt").read_text())
    assert not default.is_relative_to(real.parent)  # the session's own cache, not the user's
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED
    assert "1 passed" in proc.stdout
    assert f"wrote into the default testbench home {default} (stray)" in proc.stdout
    assert not default.exists()  # the session's cache is removed with it


def test_another_process_using_the_machines_default_home_does_not_fail_the_session(tmp_path):
    proc, real = run_suite(tmp_path, other=True)
    assert (real / "other").is_file()
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_this_session_runs_in_a_temporary_home():
    import conftest

    assert Path(os.environ["TESTBENCH_HOME"]) != conftest.SESSION_DEFAULT_HOME
    assert conftest.SESSION_HOME.is_dir()
    assert conftest.SESSION_DEFAULT_HOME.is_relative_to(conftest.SESSION_CACHE)
