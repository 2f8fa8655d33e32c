"""Shared fixtures. Tests never touch the network: gists come from a loopback server that
speaks the Gist API's JSON, and caches live in a per-test folder."""

from __future__ import annotations

import os

# Before anything imports wandb or huggingface_hub: never go online from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.pop("GITHUB_TOKEN", None)
os.environ.pop("GH_TOKEN", None)

import json
from pathlib import Path

import pytest
import torch

ZOO = Path(__file__).parent / "zoo"


def zoo_cases() -> list[str]:
    return sorted(p.name for p in ZOO.iterdir() if (p / "expected.json").is_file())


def zoo_expected(name: str) -> dict:
    return json.loads((ZOO / name / "expected.json").read_text())


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own TESTBENCH_HOME (gist cache, hand-off files)."""
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
