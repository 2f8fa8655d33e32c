"""Shared fixtures. Tests never touch the network: gists come from a loopback server that
speaks the Gist API's JSON. Tests never touch the user's real testbench home either: a
temporary one is in place from the moment this file is imported (before any fixture, whatever
its scope), each test gets its own on top, and the session fails if the real one changed."""

from __future__ import annotations

import os

# Before anything imports wandb or huggingface_hub: never go online from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("GITHUB_TOKEN", None)
os.environ.pop("GH_TOKEN", None)

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from utils.environment import testbench_home

ZOO = Path(__file__).parent / "zoo"


# The suite's own processes get a cache folder of their own (XDG_CACHE_HOME, inherited by
# every subprocess), so the default testbench home they would fall back to is this session's,
# not the machine's: another process using ~/.cache/transformer-testbench meanwhile cannot fail
# the session, and code that bypasses TESTBENCH_HOME still does (it lands in this one).
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="testbench-session-cache-"))
os.environ["XDG_CACHE_HOME"] = str(SESSION_CACHE)


def default_home() -> Path:
    """Where testbench_home() goes without ``$TESTBENCH_HOME``: this session's default home."""
    given = os.environ.pop("TESTBENCH_HOME", None)
    try:
        return testbench_home()
    finally:
        if given is not None:
            os.environ["TESTBENCH_HOME"] = given


SESSION_DEFAULT_HOME = default_home()
SESSION_HOME = Path(tempfile.mkdtemp(prefix="testbench-session-home-"))
os.environ["TESTBENCH_HOME"] = str(SESSION_HOME)


def pytest_sessionfinish(session):
    stray = sorted(str(p.relative_to(SESSION_DEFAULT_HOME))
                   for p in SESSION_DEFAULT_HOME.rglob("*")) \
        if SESSION_DEFAULT_HOME.exists() else None
    shutil.rmtree(SESSION_HOME, ignore_errors=True)
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)
    if stray is None:
        return
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    more = ", …" if len(stray) > 5 else ""
    message = (f"The test session wrote into the default testbench home {SESSION_DEFAULT_HOME} "
               f"({', '.join(stray[:5])}{more}): some code bypassed TESTBENCH_HOME.")
    if reporter is not None:
        reporter.write_line(message, red=True)
    else:
        print(message)


def zoo_cases() -> list[str]:
    return sorted(p.name for p in ZOO.iterdir() if (p / "expected.json").is_file())


def zoo_expected(name: str) -> dict:
    return json.loads((ZOO / name / "expected.json").read_text())


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own TESTBENCH_HOME (gist cache, hand-off files, runs), on top of the
    session's: state never leaks from one test into the next."""
    monkeypatch.setenv("TESTBENCH_HOME", str(tmp_path / "testbench-home"))
    monkeypatch.delenv("GIST_API_URL", raising=False)
    torch.manual_seed(0)


@pytest.fixture
def gist_server(monkeypatch):
    """A real HTTP server on 127.0.0.1 speaking the Gist API; GIST_API_URL points at it."""
    from gist_server import GistServer

    with GistServer() as server:
        monkeypatch.setenv("GIST_API_URL", server.url)
        yield server


@pytest.fixture
def write_model(tmp_path):
    """Write a model folder: ``write_model(code, config=None, name="m", files={name: text})``."""

    def write(code: str, config: dict | None = None, name: str = "m",
              files: dict[str, str | bytes] | None = None) -> Path:
        folder = tmp_path / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.py").write_text(code)
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config))
        for fname, content in (files or {}).items():
            path = folder / fname
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return folder

    return write
