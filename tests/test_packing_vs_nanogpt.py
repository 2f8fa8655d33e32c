"""What benchmarks/vs_nanogpt.py found against nanoGPT's train.py, pinned on tiny data."""

from __future__ import annotations

import pytest
from training.tiny_lm import corpus, write_tiny_lm

import utils

pytest.importorskip("lightning")

from utils.training.config import TrainingConfig
from utils.training.training_core import train

QUIET = {"say": lambda m: None, "progress": False, "gate": False}


def test_train_loss_is_logged_to_lightning_every_log_every_steps(tmp_path, monkeypatch):
    # Lightning's log() cost ~0.7 ms of CPU a step (1.5 % of the nanoGPT CPU recipe's step);
    # metrics.csv never depended on it, so it keeps a row every log_every steps and the last
    from utils.training.lightning_module import AdapterModule

    logged: list[int] = []
    original = AdapterModule.log

    def counting(self, name, value, *args, **kwargs):
        if name == "train_loss":
            logged.append(self.global_step)
        return original(self, name, value, *args, **kwargs)

    monkeypatch.setattr(AdapterModule, "log", counting)
    loaded = utils.load_model(write_tiny_lm(tmp_path / "tiny"), say=lambda m: None)
    config = TrainingConfig(max_steps=12, batch_size=4, seq_len=32, warmup_steps=2,
                            val_every=0, checkpoint_every=0, log_every=5,
                            out_dir=str(tmp_path / "run"))
    result = train(loaded, corpus(40), config, **QUIET)
    assert logged == [0, 5, 10]
    rows = result.history.dropna(subset=["train_loss"])
    assert list(rows["step"]) == [5, 10, 12]
    assert result.metrics["train_loss"] == pytest.approx(float(rows["train_loss"].iloc[-1]))
