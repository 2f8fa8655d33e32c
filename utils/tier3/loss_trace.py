"""``LossTrace``: the loss of every training batch, for Tier 3's learning checks.

``metrics.csv`` averages the loss over ``log_every`` steps; the first-loss and early-decrease
checks need the loss of each step, the very first one before any update included. This module
imports Lightning, so only :func:`utils.tier3.fine_tune.fine_tune` imports it, inside the call.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from utils.environment import require

__all__ = ["LossTrace"]

if TYPE_CHECKING:  # the type checker reads the real classes; at run time a missing extra
    import lightning as L  # is a MissingExtraError naming it
else:
    L = require("lightning", "Fine-tuning")


class LossTrace(L.Callback):
    """Records ``(optimizer step, loss)`` per micro-batch (NaN where the loss guard skipped it)
    and ``(step, val_loss)`` per validation (NaN kept)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float]] = []
        self.validations: list[tuple[int, float]] = []
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the step this micro-batch belongs to

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else math.nan
        self.batches.append((self._step, value))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and "val_loss" in trainer.callback_metrics:
            self.validations.append((trainer.global_step,
                                     float(trainer.callback_metrics["val_loss"])))

    def per_step(self) -> list[tuple[int, float]]:
        """One loss per optimizer step: the mean of its finite micro-batch losses (NaN when
        every one of them was skipped)."""
        steps: dict[int, list[float]] = {}
        for step, value in self.batches:
            steps.setdefault(step, []).append(value)
        out = []
        for step, values in steps.items():
            finite = [v for v in values if math.isfinite(v)]
            out.append((step, sum(finite) / len(finite) if finite else math.nan))
        return out
