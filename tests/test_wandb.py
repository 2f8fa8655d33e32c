"""W&B tracking (logger="wandb"): the mode is chosen before wandb.init, the run id survives a
SIGKILL and a resume, metrics continue from the resumed step with no step twice, nothing ever
prompts or waits, and the key is written nowhere.

The offline runs are read back from wandb's own log (``run-<id>.wandb``): 7 header bytes, then
32 KiB blocks of records (crc32, length, type: full/first/middle/last) holding protobuf
``Record``s — the leveldb-log format wandb writes (0.31 ships no reader of its own).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from training.tiny_lm import corpus, write_tiny_lm

pytest.importorskip("lightning")
pytest.importorskip("wandb")

SCRIPT = Path(__file__).parent / "training" / "run_training.py"
SETTINGS = {"max_steps": 6, "batch_size": 4, "seq_len": 32, "val_every": 3, "val_batches": 1,
            "checkpoint_every": 1, "log_every": 1, "seed": 3, "logger": "wandb"}
KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key (40 hex)


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file (a run killed before a flush: none)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def history(folder: Path) -> list[dict]:
    """The rows logged into an offline run folder."""
    [log] = folder.glob("run-*.wandb")
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
             for item in record.history.item}
            for record in wandb_records(log) if record.WhichOneof("record_type") == "history"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb")
    write_tiny_lm(root / "model")
    (root / "corpus.txt").write_text("\n\n".join(corpus(n_docs=5)))
    (root / "home").mkdir()  # $HOME: no ~/.netrc
    return root


def train(workspace: Path, out: Path, env: dict, kill_at: int | None = None):
    """run_training.py with stdin closed and a timeout: a prompt or a hang fails the test."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("WANDB_") and k not in ("NETRC",)}
    args = [sys.executable, str(SCRIPT), str(workspace / "model"),
            str(workspace / "corpus.txt"), str(out), json.dumps(SETTINGS)]
    proc = subprocess.run(args + ([str(kill_at)] if kill_at else []), capture_output=True,
                          text=True, timeout=150, stdin=subprocess.DEVNULL,
                          env={**clean, "HOME": str(workspace / "home"),
                               "TESTBENCH_HOME": str(workspace / "tb-home"), **env},
                          cwd=Path(__file__).parent)
    expected = -signal.SIGKILL if kill_at else 0
    assert proc.returncode == expected, proc.stderr[-3000:]
    return proc


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def offline(workspace):
    """Killed at step 3 with a key but an unreachable server (WANDB_MODE unset), then resumed
    with no key at all (WANDB_MODE unset): offline both times, nothing prompts or waits."""
    out = workspace / "offline"
    first = train(workspace, out, {"WANDB_API_KEY": KEY, "WANDB_BASE_URL": _closed_port_url()},
                  kill_at=3)
    record_after_kill = json.loads((out / "wandb.json").read_text())
    # run_training.py skips the gate (gate=False): the verdict as a gated run leaves it
    (out / "tier1.json").write_text(json.dumps({"passed": True, "checks": [
        {"name": "causal_masking", "status": "pass"}]}))
    second = train(workspace, out, {})
    return out, first, second, record_after_kill


@pytest.mark.slow
def test_offline_mode_is_chosen_without_prompting(offline):
    _out, first, second, _ = offline
    assert "W&B: offline" in first.stderr and "cannot be reached" in first.stderr
    assert "W&B: offline — no W&B API key is configured" in second.stderr
    assert "wandb: (1) Create a W&B account" not in first.stderr + second.stderr


@pytest.mark.slow
def test_offline_resume_keeps_the_run_id_in_a_second_folder(offline):
    out, _first, second, before = offline
    record = json.loads((out / "wandb.json").read_text())
    assert record["id"] == before["id"] and record["mode"] == "offline"
    assert len(record["folders"]) == 2 and record["folders"][0] == before["folders"][0]
    assert all(Path(f).name.endswith(f"-{record['id']}") for f in record["folders"])
    tb_home = out.parent / "tb-home"
    assert all(Path(f).is_relative_to(tb_home / "wandb") for f in record["folders"])
    assert "second local folder with the same run id" in second.stderr
    assert f"wandb sync {record['folders'][0]} {record['folders'][1]}" in second.stderr


@pytest.mark.slow
def test_metrics_continue_from_the_resumed_step_and_none_twice(offline):
    import pandas as pd

    out, *_ = offline
    record = json.loads((out / "wandb.json").read_text())
    killed, resumed = (history(Path(f)) for f in record["folders"])
    # the SIGKILL lost what wandb had not flushed (32 KiB blocks): metrics.csv has it
    assert all(row["trainer/global_step"] <= 3 for row in killed)
    steps = [row["trainer/global_step"] for row in resumed if "train_loss" in row]
    assert steps == [4, 5, 6]  # from the step after the resumed checkpoint
    pairs = [(key, row["trainer/global_step"]) for row in killed + resumed for key in row
             if not key.startswith("_") and key not in ("trainer/global_step", "epoch")]
    assert len(pairs) == len(set(pairs)), "a metric was logged twice for one step"
    csv = pd.read_csv(out / "metrics.csv")
    train_rows = csv[csv.train_loss.notna()].set_index("step")
    for row in resumed:
        if "train_loss" in row:
            assert row["train_loss"] == pytest.approx(train_rows.train_loss[
                row["trainer/global_step"]])
    val = [row for row in resumed if "val_loss" in row]
    assert [row["trainer/global_step"] for row in val] == [6]


@pytest.mark.slow
def test_the_config_tier1_and_final_metrics_are_logged(offline):
    out, *_ = offline
    record = json.loads((out / "wandb.json").read_text())
    records = list(wandb_records(next(Path(record["folders"][1]).glob("run-*.wandb"))))
    config = {item.key: json.loads(item.value_json) for r in records
              if r.WhichOneof("record_type") == "run" for item in r.run.config.update}
    config.update({item.key: json.loads(item.value_json) for r in records
                   if r.WhichOneof("record_type") == "config" for item in r.config.update})
    config = {k: v["value"] if isinstance(v, dict) and "value" in v else v
              for k, v in config.items()}
    assert config["max_steps"] == 6 and config["logger"] == "wandb"
    verdict = {"passed": True, "checks": {"causal_masking": "pass"}}
    assert config["tier1"] == verdict
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in r.summary.update})
    assert summary["steps"] == 6 and "final/val_loss" in summary
    assert summary["tier1"] == verdict
    summary_file = json.loads((out / "summary.json").read_text())
    assert summary["final/val_loss"] == pytest.approx(summary_file["val_loss"])


@pytest.mark.slow
def test_the_key_is_written_nowhere(offline):
    out, first, second, _ = offline
    places = [out, out.parent / "tb-home", out.parent / "home"]
    texts = [first.stdout, first.stderr, second.stdout, second.stderr]
    for place in places:
        for path in place.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert KEY.encode() not in path.read_bytes(), path
    assert not any(KEY in text for text in texts)


@pytest.mark.slow
def test_disabled_writes_nothing_and_keeps_the_run_id(workspace):
    out = workspace / "disabled"
    train(workspace, out, {"WANDB_MODE": "disabled"}, kill_at=3)
    first = json.loads((out / "wandb.json").read_text())
    proc = train(workspace, out, {"WANDB_MODE": "disabled"})
    assert "W&B is disabled (WANDB_MODE=disabled)" in proc.stderr
    record = json.loads((out / "wandb.json").read_text())
    assert record["id"] == first["id"] and record["mode"] == "disabled"
    assert record["folders"] == []
    folder = workspace / "tb-home" / "wandb" / "disabled"
    assert not folder.exists() or not any(folder.iterdir())
    assert json.loads(proc.stdout.strip().splitlines()[-1])["resumed_from_step"] == 3


# ---- the mode, decided without wandb (fast) -----------------------------------------------
@pytest.mark.parametrize(("env", "netrc", "reachable", "mode"), [
    ({}, False, True, "offline"),
    ({"WANDB_MODE": "online"}, False, True, "offline"),  # asked online, but no key: no prompt
    ({"WANDB_API_KEY": KEY}, False, True, "online"),
    ({"WANDB_API_KEY": KEY}, False, False, "offline"),  # a key and no network: no hang
    ({}, True, True, "online"),
    ({"WANDB_API_KEY": KEY, "WANDB_MODE": "offline"}, False, True, "offline"),
    ({"WANDB_API_KEY": KEY, "WANDB_MODE": "disabled"}, False, True, "disabled"),
])
def test_choose_mode(env, netrc, reachable, mode, monkeypatch, tmp_path):
    from utils.training import tracking

    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    if netrc:
        (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")
        (tmp_path / "netrc").chmod(0o600)
    monkeypatch.setattr(tracking, "_reachable", lambda url, timeout=3.0: reachable)
    assert tracking.choose_mode()[0] == mode


def test_colab_secret_is_a_key(monkeypatch):
    import types

    from utils.training import tracking

    for key in ("WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")
    userdata = types.SimpleNamespace(get=lambda name: KEY if name == "WANDB_API_KEY" else None)
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    assert tracking.api_key() == (KEY, "Colab's secret WANDB_API_KEY")
