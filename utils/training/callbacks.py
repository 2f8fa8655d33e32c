"""The Lightning callbacks of a run: checkpoints that resume bit-exactly, the loss guard's
rollback, and the metrics record.

Lightning restores its loops, the optimizer, the scheduler and the precision plugin's scaler;
:class:`RunState` adds what it does not: every RNG state (restored at the first resumed batch,
after everything Lightning does on start-up has drawn its numbers), the data position of the
batch last *trained* (the loader has prefetched one more when a checkpoint is taken), and the
guard's counters. Checkpoint files go through :class:`ManagerIO` to the one
:class:`~utils.training.checkpoint_manager.CheckpointManager`.
"""

from __future__ import annotations

import csv
import math
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from utils.environment import require
from utils.seeding import capture_rng, restore_rng

__all__ = ["METRIC_FIELDS", "ManagerIO", "MetricsLog", "RunState"]

if TYPE_CHECKING:  # the type checker reads the real classes; at run time a missing extra
    import lightning as L  # is a MissingExtraError naming it
    import lightning.fabric.plugins.io.checkpoint_io as _io
else:
    L = require("lightning", "Training")
    _io = require("lightning.fabric.plugins.io.checkpoint_io", "Training")

# The columns of metrics.csv, fixed and documented (docs/training.md).
METRIC_FIELDS = ("step", "epoch", "train_loss", "train_perplexity", "val_loss",
                 "val_perplexity", "val_accuracy", "lr", "tokens_per_second", "skipped_steps")


class ManagerIO(_io.CheckpointIO):
    """Lightning's checkpoint file I/O, routed to the run's checkpoint manager."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        # Returns once the tensors are copied to host memory; the file is written (and then
        # mirrored) in the background, so a checkpoint costs the step almost nothing. A later
        # save, latest_valid() and close() wait for it.
        options = storage_options or {}
        self.manager.save_async(checkpoint, int(checkpoint["global_step"]),
                                val_loss=options.get("val_loss"))

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return self.manager.load(path, map_location=map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        """Rotation belongs to the manager (keep_last + best); Lightning deletes nothing."""


def _stepped(trainer: Any, seen: int) -> bool:
    """Whether an optimizer step happened since ``seen`` (False between accumulated batches)."""
    return trainer.global_step != seen


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


class RunState(L.Callback):
    """Checkpoint every ``config.checkpoint_every`` optimizer steps and on interrupt; resume
    exactly; roll back after ``config.max_bad_steps`` skipped steps in a row."""

    def __init__(self, manager: Any, config: Any, *, on_save=None, say=print) -> None:
        self.manager, self.config, self.on_save, self.say = manager, config, on_save, say
        self._rng: dict[str, Any] | None = None  # taken at the end of the last trained batch
        self._pending_rng: dict[str, Any] | None = None
        self._seen_step = -1
        self.last_saved = -1
        self.rollbacks = 0
        self.events: list[str] = []
        self.resumed_step: int | None = None

    # ---- what goes into a checkpoint ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks, "events": list(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollbacks = int(state.get("rollbacks", 0))
        self.events = list(state.get("events", []))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["testbench"] = {
            "rng": self._rng if self._rng is not None else capture_rng(),
            "skipped_steps": pl_module.skipped_steps,
            "bad_in_a_row": pl_module.bad_in_a_row,
            "recent_losses": [float(x) for x in pl_module._recent],
            "tokens_seen": pl_module.tokens_seen,
            "lr_scale": pl_module.lr_scale,
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        tb = checkpoint.get("testbench", {})
        self._pending_rng = tb.get("rng")
        pl_module.skipped_steps = int(tb.get("skipped_steps", 0))
        pl_module.bad_in_a_row = int(tb.get("bad_in_a_row", 0))
        pl_module._recent = deque(tb.get("recent_losses", []), maxlen=pl_module._recent.maxlen)
        pl_module.tokens_seen = int(tb.get("tokens_seen", 0))
        pl_module.lr_scale = float(tb.get("lr_scale", 1.0))
        self.resumed_step = int(checkpoint.get("global_step", 0))
        self.last_saved = self._seen_step = self.resumed_step

    # ---- the training loop ----------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending_rng is not None:  # the first batch after a resume
            restore_rng(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loader = trainer.train_dataloader
        if hasattr(loader, "mark_trained"):
            loader.mark_trained(batch_idx + 1)
        self._rng = capture_rng()
        if not _stepped(trainer, self._seen_step):
            return  # between accumulated micro-batches: no step to save or judge
        self._seen_step = trainer.global_step
        if pl_module.bad_in_a_row >= self.config.max_bad_steps:
            self._rollback(trainer, pl_module)
        every = self.config.checkpoint_every
        if every and trainer.global_step % every == 0:
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.global_step > self.last_saved:
            self.save(trainer)
            self.events.append(f"Interrupted at step {trainer.global_step}: checkpoint saved.")

    def save(self, trainer) -> None:
        """Checkpoint the current step (once per step)."""
        if trainer.global_step == self.last_saved:
            return
        val = trainer.callback_metrics.get("val_loss")
        trainer.save_checkpoint(f"step-{trainer.global_step}", weights_only=False,
                                storage_options={"val_loss": float(val) if val is not None
                                                 else None})
        self.last_saved = trainer.global_step
        if self.on_save is not None:
            self.on_save()

    # ---- the guard's rollback -----------------------------------------------------------
    def _rollback(self, trainer, pl_module) -> None:
        factor = self.config.rollback_lr_factor
        info = self.manager.latest_valid() if trainer.is_global_zero else None
        if trainer.world_size > 1:
            # only rank 0 saves, in the background: its latest_valid() waits for that write,
            # another rank's could find an older file and leave the ranks' weights apart
            info = trainer.strategy.broadcast(info, src=0)
        where = "no checkpoint yet, so the weights stay as they are"
        if info is not None:
            ckpt = self.manager.load(info)
            pl_module.load_state_dict(ckpt["state_dict"])
            for opt, state in zip(trainer.optimizers, ckpt["optimizer_states"], strict=False):
                opt.load_state_dict(state)
                _optimizer_to(opt, pl_module.device)
            where = f"rolled back to the checkpoint of step {info.step}"
        for sched in trainer.lr_scheduler_configs:
            sched.scheduler.base_lrs = [lr * factor for lr in sched.scheduler.base_lrs]
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] *= factor
        pl_module.lr_scale *= factor
        pl_module.bad_in_a_row = 0
        pl_module._recent.clear()
        self.rollbacks += 1
        note = (f"Step {trainer.global_step}: {self.config.max_bad_steps} bad steps in a row "
                f"(last: {getattr(pl_module, 'last_bad_reason', '?')}); {where}; learning "
                f"rate × {factor:g} (now × {pl_module.lr_scale:g} of the schedule).")
        self.events.append(note)
        self.say(note)


class MetricsLog(L.Callback):
    """``metrics.csv`` (the record of truth), steady-state throughput, and one printed line
    per validation when there is no progress bar.

    On resume, rows after the resumed step are dropped first, so no step is logged twice.
    """

    def __init__(self, path: str | Path, *, log_every: int, plain: bool, say=print,
                 warmup_steps: int = 3) -> None:
        self.path, self.log_every, self.plain, self.say = Path(path), log_every, plain, say
        self.warmup_steps = warmup_steps
        self._writes = True  # global rank 0 only: under DDP every rank runs these callbacks
        self._seen_step = -1
        self._last_end: float | None = None
        self._interrupted = False  # validation or a checkpoint ran since the last step
        self._window: list[float | None] = []  # losses of the batches since the last row
        self._tokens_at_step = 0
        self.steady: list[tuple[int, float]] = []  # (tokens, seconds) per clean step
        self.final: dict[str, float] = {}

    # ---- the file -----------------------------------------------------------------------
    def _write(self, row: dict[str, Any]) -> None:
        if not self._writes:
            return
        new = not self.path.is_file()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=METRIC_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k) for k in METRIC_FIELDS})

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        with self.path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= step]
        from utils.atomic import write_atomic

        lines = [",".join(METRIC_FIELDS)]
        lines += [",".join(r.get(k) or "" for k in METRIC_FIELDS) for r in rows]
        write_atomic(self.path, "\n".join(lines) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        self._writes = trainer.is_global_zero
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._writes and trainer.global_step > 0:
            self._truncate_after(trainer.global_step)
        elif self._writes and self.path.is_file():
            self.path.unlink()
        self._seen_step = trainer.global_step
        self._tokens_at_step = pl_module.tokens_seen

    # ---- per step -----------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        loss = None
        if isinstance(outputs, dict) and outputs.get("skipped"):
            pass  # the loss guard's zero loss under DDP (see AdapterModule.training_step)
        elif isinstance(outputs, dict) and outputs.get("loss") is not None:
            loss = float(outputs["loss"].detach())
        elif isinstance(outputs, torch.Tensor):
            loss = float(outputs.detach())
        self._window.append(loss)
        if not _stepped(trainer, self._seen_step):
            return
        self._seen_step = step = trainer.global_step
        tokens = pl_module.tokens_seen - self._tokens_at_step
        self._tokens_at_step = pl_module.tokens_seen
        if self._last_end is not None and not self._interrupted:
            seconds = now - self._last_end
            self.steady.append((tokens, seconds))
        self._last_end, self._interrupted = now, False
        if step % self.log_every and step != trainer.max_steps:
            return
        losses = [x for x in self._window if x is not None and math.isfinite(x)]
        mean = sum(losses) / len(losses) if losses else None
        recent = self.steady[-self.log_every:]
        tps = (sum(t for t, _ in recent) / sum(s for _, s in recent)
               if recent and sum(s for _, s in recent) > 0 else None)
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        row = {"step": step, "epoch": trainer.current_epoch, "train_loss": mean,
               "train_perplexity": math.exp(min(mean, 50)) if mean is not None else None,
               "lr": lr, "tokens_per_second": tps, "skipped_steps": pl_module.skipped_steps}
        self._write(row)
        self.final.update({k: v for k, v in row.items() if v is not None})
        self._window = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self._interrupted = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        for key in ("val_loss", "val_perplexity", "val_accuracy"):
            if key in m:
                row[key] = float(m[key])
        if len(row) == 2:
            return
        self._write(row)
        self.final.update(row)
        if self.plain and self._writes:
            parts = [f"{k}={row[k]:.4g}" for k in ("val_loss", "val_perplexity", "val_accuracy")
                     if k in row]
            self.say(f"step {trainer.global_step}: " + ", ".join(parts))

    def mark_interrupted(self) -> None:
        """A checkpoint (or anything else slow) ran: the next step's time is not steady."""
        self._interrupted = True

    def tokens_per_second(self) -> float | None:
        """Steady-state throughput: clean steps after the first ``warmup_steps``."""
        clean = self.steady[self.warmup_steps:] or self.steady
        seconds = sum(s for _, s in clean)
        return sum(t for t, _ in clean) / seconds if clean and seconds > 0 else None
