"""Resume is proven by equivalence: a run killed with SIGKILL at step k and resumed in a new
process ends bit-identical to the same run uninterrupted (dropout on, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training.tiny_lm import corpus, write_tiny_lm

pytestmark = pytest.mark.slow
pytest.importorskip("lightning")

SCRIPT = Path(__file__).parent / "training" / "run_training.py"
# 5 batches an epoch (checked below); validation every 3 steps; every step checkpointed
SETTINGS = {"max_steps": 14, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2,
            "val_every": 3, "val_batches": 2, "checkpoint_every": 1, "keep_last": 3,
            "log_every": 1, "seed": 7}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_tiny_lm(root / "model")
    text = root / "corpus.txt"
    text.write_text("\n\n".join(corpus(n_docs=5)))
    return root


def run(workspace: Path, out: Path, kill_at: int | None = None, settings=None, env=None):
    args = [sys.executable, str(SCRIPT), str(workspace / "model"), str(workspace / "corpus.txt"),
            str(out), json.dumps(settings or SETTINGS)]
    if kill_at is not None:
        args.append(str(kill_at))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})},
                          cwd=Path(__file__).parent)
    if kill_at is not None:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def final_state(out: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(sorted((out / "checkpoints").glob("*.ckpt"))[-1], weights_only=True)
    return ckpt


def assert_identical(a: Path, b: Path) -> None:
    ca, cb = final_state(a), final_state(b)
    assert ca["global_step"] == cb["global_step"] == SETTINGS["max_steps"]
    for key, tensor in ca["state_dict"].items():
        assert torch.equal(tensor, cb["state_dict"][key]), f"weights differ: {key}"
    sa, sb = ca["optimizer_states"][0]["state"], cb["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        for name, value in sa[pid].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[pid][name])), name
    assert torch.equal(ca["testbench"]["rng"]["torch"], cb["testbench"]["rng"]["torch"])


@pytest.fixture(scope="module")
def straight(workspace):
    out = workspace / "straight"
    summary = run(workspace, out)
    return out, summary


def test_the_straight_run_crosses_epochs_and_validates(straight):
    out, summary = straight
    import pandas as pd

    history = pd.read_csv(out / "metrics.csv")
    steps_per_epoch = int((history.dropna(subset=["train_loss"])["epoch"] == 0).sum())
    assert steps_per_epoch == 5, "the corpus no longer gives 5 batches an epoch; adjust k below"
    assert history["val_loss"].notna().sum() == 5  # steps 3, 6, 9, 12 and the last, 14
    assert summary["resumed_from_step"] is None and summary["steps"] == 14


@pytest.mark.parametrize("k", [2, 5, 4], ids=["mid-epoch", "last-batch-of-epoch",
                                               "right-after-validation"])
def test_killed_and_resumed_run_is_bit_identical(workspace, straight, k):
    # k=4: the checkpoint of step 4 follows the validation run of step 3
    out = workspace / f"killed-{k}"
    run(workspace, out, kill_at=k)
    summary = run(workspace, out)
    assert summary["resumed_from_step"] == k
    assert_identical(straight[0], out)
    import pandas as pd

    history = pd.read_csv(out / "metrics.csv")
    logged = history.dropna(subset=["train_loss"])["step"].tolist()
    assert logged == sorted(set(logged)) == list(range(1, 15))  # no step logged twice


def test_truncated_newest_checkpoint_falls_back_and_still_ends_identical(workspace, straight):
    out = workspace / "truncated"
    run(workspace, out, kill_at=9)
    newest = sorted((out / "checkpoints").glob("*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn by a crash
    summary = run(workspace, out)
    assert summary["resumed_from_step"] == 8
    assert_identical(straight[0], out)


def test_resume_from_the_mirror_alone_after_the_vm_is_gone(workspace, straight):
    out, mirror = workspace / "vm-local", workspace / "drive"
    settings = {**SETTINGS, "mirror_dir": str(mirror)}
    run(workspace, out, kill_at=7, settings=settings)
    shutil.rmtree(out)  # a recycled Colab VM: only Drive survives
    summary = run(workspace, out, settings=settings)
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] <= 7
    assert_identical(straight[0], out)
    assert (mirror / "final" / "model.safetensors").is_file()
    assert (mirror / "checkpoints" / "latest.json").is_file()


def test_an_interrupt_saves_a_checkpoint_and_the_run_resumes(workspace, straight):
    out = workspace / "interrupted"
    args = [sys.executable, str(SCRIPT), str(workspace / "model"),
            str(workspace / "corpus.txt"), str(out),
            json.dumps({**SETTINGS, "checkpoint_every": 100})]  # only the interrupt saves
    env = {**os.environ, "TB_INTERRUPT_AT": "6"}  # the script raises SIGINT at step 6
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["final_dir"] is None
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 6
    resumed = run(workspace, out)
    assert resumed["resumed_from_step"] == 6
    assert_identical(straight[0], out)


def test_resume_from_a_checkpoint_file_or_run_folder_the_user_names(workspace, straight):
    """``resume=PATH``: a .ckpt under any name (its step read from the checkpoint) or another
    run's folder (its newest valid checkpoint) continues into a new run folder, bit-identical."""
    source = workspace / "named-source"
    run(workspace, source, kill_at=5)
    mine = workspace / "my-copy.ckpt"
    shutil.copy(source / "checkpoints" / "step-00000005.ckpt", mine)
    for name, resume in (("from-file", mine), ("from-folder", source)):
        out = workspace / name
        summary = run(workspace, out, settings={**SETTINGS, "resume": str(resume)})
        assert summary["resumed_from_step"] == 5, name
        assert_identical(straight[0], out)
