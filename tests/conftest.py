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


def real_homes() -> set[Path]:
    """The homes a run outside the tests would use: ``$TESTBENCH_HOME`` as given, and the
    default one (``~/.cache/transformer-testbench``) it would fall back to."""
    given = os.environ.pop("TESTBENCH_HOME", None)
    try:
        default = testbench_home()
    finally:
        if given is not None:
            os.environ["TESTBENCH_HOME"] = given
    return {default, testbench_home()}


def snapshot(home: Path) -> tuple | None:
    """What is in ``home`` (None when it does not exist): each entry's path, size and mtime."""
    if not home.exists():
        return None
    return tuple(sorted((str(p.relative_to(home)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in [home, *home.rglob("*")]))


REAL_HOMES = {home: snapshot(home) for home in real_homes()}
SESSION_HOME = Path(tempfile.mkdtemp(prefix="testbench-session-home-"))
os.environ["TESTBENCH_HOME"] = str(SESSION_HOME)


def pytest_sessionfinish(session):
    shutil.rmtree(SESSION_HOME, ignore_errors=True)
    changed = []
    for home, before in REAL_HOMES.items():
        after = snapshot(home)
        if after != before:
            entries = sorted({e[0] for e in set(after or ()) ^ set(before or ())})
            more = ", …" if len(entries) > 5 else ""
            changed.append(f"{home} ({', '.join(entries[:5])}{more})")
    if changed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"The test session wrote into the real testbench home {'; '.join(changed)}: "
                   "some code bypassed TESTBENCH_HOME (or another process used it meanwhile).")
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
