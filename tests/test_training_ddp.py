"""Two CPU processes under Lightning's ``ddp`` strategy (gloo): the ranks train on disjoint
shards of the data and end with identical weights; only rank 0 writes the run folder; a
non-finite loss on one rank is skipped on both.

``ddp`` re-runs ``sys.argv`` for rank 1, so the run is a real script (``training/run_ddp.py``)
in a subprocess. One run serves every test here (about 45 s on 2 busy cores, most of it the two
processes importing Lightning one after the other). FSDP refuses a CPU accelerator and is not
tested (``TrainingConfig`` rejects it on CPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training.tiny_lm import corpus, write_tiny_lm

import utils

pytestmark = pytest.mark.slow
pytest.importorskip("lightning")

SCRIPT = Path(__file__).parent / "training" / "run_ddp.py"
STEPS = 8
# 5 batches of 2 rows per rank an epoch (checked below), so the run crosses into a second epoch
SETTINGS = {"max_steps": STEPS, "batch_size": 2, "seq_len": 32, "lr": 3e-3, "warmup_steps": 1,
            "val_every": 4, "val_batches": 2, "checkpoint_every": 2, "log_every": 1, "seed": 7,
            "devices": 2, "strategy": "ddp", "accelerator": "cpu"}
NAN_RANK, NAN_AT_CALL = 1, 4  # rank 1's model outputs NaN on its training calls 4, 5 and 6


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    model = write_tiny_lm(root / "model")
    text = root / "corpus.txt"
    text.write_text("\n\n".join(corpus(n_docs=5)))
    out, record = root / "run", root / "record"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(model), str(text), str(out),
                           str(record), json.dumps(SETTINGS), str(NAN_RANK), str(NAN_AT_CALL)],
                          capture_output=True, text=True, timeout=300, cwd=SCRIPT.parent.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    states = [torch.load(record / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return {"model": model, "out": out, "ranks": ranks, "states": states}


def test_ranks_train_on_disjoint_shards(ddp_run):
    r0, r1 = ddp_run["ranks"]
    assert (r0["rank"], r1["rank"]) == (0, 1)
    rows = r0["rows"]
    assert len(r0["batches"]) == len(r1["batches"]) == STEPS  # one batch a step, no accumulation
    for epoch in (0, 1):
        seen = [[i for b in r["batches"] if b["epoch"] == epoch for i in b["indices"]]
                for r in (r0, r1)]
        for indices in seen:
            assert len(indices) == len(set(indices)), "a row came twice in one epoch on a rank"
            assert all(0 <= i < rows for i in indices)
        assert not set(seen[0]) & set(seen[1]), f"the ranks shared rows in epoch {epoch}"
        if epoch == 0:  # a whole epoch: the two shards cover the split (less an odd row)
            assert len(seen[0]) == len(seen[1]) == rows // 2 == 5 * 2
            assert len(set(seen[0]) | set(seen[1])) == rows - rows % 2
    assert all(a["sha256"] != b["sha256"] for a, b in zip(r0["batches"], r1["batches"],
                                                           strict=True))
    positions = [(b["epoch"], b["position"]) for b in r0["batches"]]
    assert positions == [(0, p) for p in range(5)] + [(1, p) for p in range(3)]


def test_ranks_end_with_identical_weights_that_trained(ddp_run):
    s0, s1 = ddp_run["states"]
    assert s0.keys() == s1.keys()
    for key in s0:
        assert torch.equal(s0[key], s1[key]), f"rank 0 and rank 1 differ at {key}"
    torch.manual_seed(0)  # the script's initial weights
    initial = utils.load_model(ddp_run["model"], say=lambda m: None).model.state_dict()
    moved = [k for k in s0 if s0[k].is_floating_point() and not torch.equal(s0[k], initial[k])]
    assert len(moved) > len(s0) // 2, "training did not change the weights"


def test_validation_metrics_are_reduced_across_ranks(ddp_run):
    s0, s1 = (r["summary"] for r in ddp_run["ranks"])
    for key in ("val_loss", "val_perplexity", "val_accuracy"):
        assert s0[key] is not None and s0[key] == s1[key], key


def test_a_nan_on_one_rank_is_skipped_on_both(ddp_run):
    s0, s1 = (r["summary"] for r in ddp_run["ranks"])
    for s in (s0, s1):
        assert (s["steps"], s["skipped_steps"], s["rollbacks"]) == (STEPS, 3, 1)
    assert "another rank" in s0["notes"][0] and "non-finite loss nan" in s1["notes"][0]


def test_only_rank_zero_writes_the_run_folder(ddp_run):
    import pandas as pd

    out = ddp_run["out"]
    history = pd.read_csv(out / "metrics.csv")
    steps = history.dropna(subset=["lr"])["step"].tolist()
    assert steps == list(range(1, STEPS + 1)), "metrics.csv has rows from both ranks"
    assert history["val_loss"].notna().sum() == 2  # steps 4 and 8, once each
    skipped = history.dropna(subset=["lr"]).set_index("step")
    assert skipped.loc[[4, 5, 6], "train_loss"].isna().all()  # no loss logged for a skip
    s0, s1 = (r["summary"] for r in ddp_run["ranks"])
    assert s0["final_dir"] == str(out / "final") and s1["final_dir"] is None
    assert json.loads((out / "summary.json").read_text())["run_dir"] == str(out)
    assert (out / "final" / "model.safetensors").is_file()
