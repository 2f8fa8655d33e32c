"""The LightningModule over a :class:`~utils.adapters.ModelAdapter`: any task, one loss.

The module owns no model logic: the loss is ``adapter.loss_from_logits`` (the same one every
tier uses), so causal LM, masked LM, seq2seq and classification train through one path. It
adds what training needs around it: AdamW with no decay on biases, norms and embeddings, a
linear warmup then cosine schedule stepped per optimizer step, validation perplexity and
token accuracy (torchmetrics, labels ``IGNORE_INDEX`` ignored), and the guard that skips a
non-finite or spiking loss instead of letting it ruin the run.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from utils.environment import require
from utils.tasks import IGNORE_INDEX

__all__ = ["AdapterModule", "cosine_with_warmup", "parameter_groups"]

if TYPE_CHECKING:  # the type checker reads the real classes; at run time a missing extra
    import lightning as L  # is a MissingExtraError naming it
else:
    L = require("lightning", "Training")

_NO_DECAY_TYPES = (nn.LayerNorm, nn.Embedding, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d,
                   *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only — not on biases, norms or embeddings.

    A parameter is exempt when it is 1-D (biases, norm gains, whatever the module's class —
    hand-written RMSNorms included) or belongs to an embedding or norm module. Tied weights
    appear once.
    """
    exempt: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NO_DECAY_TYPES) or "norm" in type(module).__name__.lower()
        if is_norm or isinstance(module, nn.Embedding):
            exempt.update(id(p) for p in module.parameters(recurse=False))
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or id(p) in exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def cosine_with_warmup(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """The learning-rate multiplier at optimizer step ``step``: linear from 1/warmup up to 1
    over ``warmup`` steps, then cosine down to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _Schedule:
    """A picklable-free LambdaLR multiplier (LambdaLR stores no function state)."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        return cosine_with_warmup(step, warmup=self.warmup, total=self.total,
                                  min_ratio=self.min_ratio)


class AdapterModule(L.LightningModule):
    """Train ``adapter.model`` on batches in the standard dict format.

    Args:
        adapter: The model's adapter (task, loss, output shapes).
        config: The run's :class:`~utils.training.config.TrainingConfig`.
        total_steps: Optimizer steps the schedule spans (the run's max_steps, resolved).
    """

    def __init__(self, adapter: Any, config: Any, total_steps: int) -> None:
        super().__init__()
        self.adapter = adapter
        self.model = adapter.model  # registered, so state_dict keys are "model.<name>"
        self.config = config
        self.total_steps = total_steps
        self.lr_scale = 1.0  # lowered by the guard after a rollback
        self.skipped_steps = 0
        self.bad_in_a_row = 0
        self._recent: deque[float] = deque(maxlen=64)
        self.tokens_seen = 0
        self._good_in_step = False  # a micro-batch of the current optimizer step was stepped on
        self._val_metrics: dict[str, Any] | None = None
        self.last_validated: int | None = None  # the optimizer step of the last validation

    # ---- optimisation -----------------------------------------------------------------
    def configure_optimizers(self) -> Any:  # Lightning's OptimizerLRSchedulerConfig dict
        c = self.config
        opt = torch.optim.AdamW(parameter_groups(self.model, c.weight_decay), lr=float(c.lr),
                                betas=tuple(c.betas), eps=c.eps,
                                fused=None if self.device.type == "cuda" else False)
        warmup = min(c.warmup_steps, max(self.total_steps - 1, 0))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, _Schedule(warmup, self.total_steps, c.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- the guard --------------------------------------------------------------------
    def _is_bad(self, loss: torch.Tensor) -> str | None:
        """Why this loss must not be stepped on (non-finite, or a spike), else None."""
        value = float(loss.detach())
        if not math.isfinite(value):
            return f"non-finite loss {value}"
        if len(self._recent) >= 8:
            median = statistics.median(self._recent)
            if median > 0 and value > self.config.spike_factor * median:
                return (f"loss {value:.4g} above {self.config.spike_factor:g}× the running "
                        f"median {median:.4g}")
        self._recent.append(value)
        return None

    # ---- steps ------------------------------------------------------------------------
    def _count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else batch["input_ids"].numel()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        loss = self.adapter.loss_from_logits(self.adapter.logits(**inputs), batch)
        world = self._trainer.world_size if self._trainer is not None else 1
        self.tokens_seen += self._count_tokens(batch) * world  # equal shards: all ranks' tokens
        reason = self._is_bad(loss)
        distributed = self._trainer is not None and self._trainer.world_size > 1
        # every rank must skip the same batches: DDP all-reduces in backward, and the guard's
        # counters (and so its rollback) must stay equal across ranks
        if distributed and self.trainer.strategy.reduce_boolean_decision(
                reason is not None, all=False) and reason is None:
            reason = "a non-finite or spiking loss on another rank"
        if reason is not None:
            self.skipped_steps += 1
            self.bad_in_a_row += 1
            self.last_bad_reason = reason
            self.log("skipped_steps", float(self.skipped_steps), on_step=True)
            if distributed:
                # Lightning refuses None under DDP: a zero loss gives every parameter a zero
                # gradient (the all-reduce runs); on_before_optimizer_step drops the update
                zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
                return {"loss": zero, "skipped": True}  # not a training loss to log
            return None  # Lightning skips backward and the optimizer's update for this batch
        self.bad_in_a_row = 0
        self._good_in_step = True
        # For the progress bar (and callbacks reading callback_metrics) only: metrics.csv is
        # written by MetricsLog from the returned loss. Lightning's log() costs ~0.7 ms of CPU
        # a call, ~1.5 % of a 0.8M-parameter model's step, so it runs every log_every steps.
        if self.global_step % max(1, getattr(self.config, "log_every", 1)) == 0:
            self.log("train_loss", loss.detach(), on_step=True, prog_bar=True, batch_size=1)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Under DDP, a step whose every micro-batch was skipped must not update (AdamW would
        still move the weights on zero gradients, by momentum and decay): drop its gradients,
        as a single process that returned None has none."""
        if not self._good_in_step and self._trainer is not None and self.trainer.world_size > 1:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        self._good_in_step = False

    def on_validation_epoch_start(self) -> None:
        tm = require("torchmetrics", "Validation metrics")
        self._val_metrics = {"loss_sum": 0.0, "n": 0}
        if self.adapter.task in ("causal_lm", "masked_lm", "seq2seq"):
            from torchmetrics.classification import MulticlassAccuracy
            from torchmetrics.text import Perplexity

            vocab = self.adapter.output_size
            self._val_metrics["perplexity"] = Perplexity(ignore_index=IGNORE_INDEX).to(
                self.device)
            self._val_metrics["accuracy"] = MulticlassAccuracy(
                num_classes=vocab, ignore_index=IGNORE_INDEX, average="micro").to(self.device)
        elif self.adapter.task == "classification":
            classes = self.adapter.num_classes or self.adapter.output_size
            self._val_metrics["accuracy"] = tm.classification.MulticlassAccuracy(
                num_classes=classes, average="micro").to(self.device)

    def _aligned(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the labels they predict: shifted for causal LM, padding ignored."""
        labels = batch["labels"]
        if self.adapter.task == "causal_lm":
            logits, labels = logits[:, :-1], labels[:, 1:]
            mask = batch.get("attention_mask")
            if mask is not None:
                labels = labels.masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        return logits, labels

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.adapter.logits(**inputs)
        loss = self.adapter.loss_from_logits(logits, batch)
        m = self._val_metrics
        assert m is not None, "on_validation_epoch_start sets it"
        # weight by rows so the epoch value is the mean over all rows, not over batches
        rows = batch["input_ids"].shape[0]
        m["loss_sum"] += float(loss) * rows
        m["n"] += rows
        if "labels" not in batch or self.adapter.task == "encoder":
            return
        logits, labels = self._aligned(logits.float(), batch)
        if "perplexity" in m:
            m["perplexity"].update(logits, labels)
            m["accuracy"].update(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        elif "accuracy" in m:
            m["accuracy"].update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        m = self._val_metrics
        if not m or not m["n"]:
            return
        values = {"val_loss": m["loss_sum"] / m["n"]}
        if "perplexity" in m:
            values["val_perplexity"] = float(m["perplexity"].compute())
        if "accuracy" in m:
            values["val_accuracy"] = float(m["accuracy"].compute())
        for key, value in values.items():
            self.log(key, value, prog_bar=key == "val_loss", sync_dist=True)
        self._val_metrics = None
        self.last_validated = self.trainer.global_step
