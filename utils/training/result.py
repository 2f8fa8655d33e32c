"""What a training run produced: :class:`TrainResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.training.config import TrainingConfig

if TYPE_CHECKING:
    from utils.training.training_core import Run

__all__ = ["TrainResult", "build_result"]

SUMMARY_SCHEMA = 1


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        run_dir: The run folder. final_dir: ``run_dir/final`` (None when interrupted).
        metrics: The final values of the documented keys (``train_loss``, ``val_loss``,
            ``val_perplexity``, ``val_accuracy``, ``lr``, ``tokens_per_second``).
        history: Every row of ``metrics.csv`` as a DataFrame.
        tokens_per_second: Steady-state training throughput.
        resumed_from: ``{"step", "file"}`` of the checkpoint this call continued, or None.
        steps, tokens: Optimizer steps done in all (resumed included) and tokens trained on.
        skipped_steps, rollbacks: What the loss guard did.
        notes: Sentences for a person (resume merges, guard events, lr finder).
        config: The config the run used (after resume merging and ``lr="auto"``).
        gate: The Tier 1 gate's report (None on resume or when skipped).
        interrupted: Training stopped on an interrupt; a checkpoint was saved.
        data: What the run trained on (source and split sizes), as ``summary.json`` records it.
    """

    run_dir: Path
    final_dir: Path | None
    metrics: dict[str, float]
    history: Any
    tokens_per_second: float | None
    resumed_from: dict[str, Any] | None
    steps: int
    tokens: int
    skipped_steps: int
    rollbacks: int
    config: TrainingConfig
    notes: list[str] = field(default_factory=list)
    gate: Any = None
    interrupted: bool = False
    adapter: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)
    report: Any = None  # Tier 3's learning-sanity Report, set by fine_tune
    data: str | None = None

    def __repr__(self) -> str:
        shown = {k: round(v, 4) for k, v in self.metrics.items() if k.startswith("val_")}
        resumed = f", resumed from step {self.resumed_from['step']}" if self.resumed_from else ""
        return (f"TrainResult({self.steps} steps{resumed}, {shown or 'no validation'}, "
                f"run_dir='{self.run_dir}')")

    def summary(self) -> dict[str, Any]:
        """The JSON summary (``summary.json``, ``testbench train --json``)."""
        m = self.metrics
        return {"schema_version": SUMMARY_SCHEMA, "steps": self.steps, "tokens": self.tokens,
                "train_loss": m.get("train_loss"), "val_loss": m.get("val_loss"),
                "val_perplexity": m.get("val_perplexity"),
                "val_accuracy": m.get("val_accuracy"),
                "tokens_per_second": self.tokens_per_second,
                "resumed_from_step": (self.resumed_from or {}).get("step"),
                "skipped_steps": self.skipped_steps, "rollbacks": self.rollbacks,
                "interrupted": self.interrupted, "data": self.data,
                "run_dir": str(self.run_dir),
                "final_dir": str(self.final_dir) if self.final_dir else None,
                "notes": self.notes, "config": self.config.to_dict()}

    def plot(self):
        """Loss, perplexity and learning-rate curves over optimizer steps (a Figure)."""
        from utils.training.plots import plot_history

        return plot_history(self.history, title=f"Training — {self.run_dir.name}")

    def sample(self, prompt: str = "", n_tokens: int = 40, *, temperature: float = 0.8,
               top_k: int | None = 40, seed: int = 0) -> str:
        """Text generated from ``prompt`` by the trained model (causal LMs)."""
        from utils.training.sampling import generate

        return generate(self.adapter, self.tokenizer, prompt, n_tokens,
                        temperature=temperature, top_k=top_k, seed=seed)


def build_result(run: Run, final_dir: Path | None) -> TrainResult:
    """The :class:`TrainResult` of a finished (or interrupted) :class:`Run`."""
    import pandas as pd

    csv = run.run_dir / "metrics.csv"
    history = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    keys = ("train_loss", "val_loss", "val_perplexity", "val_accuracy", "lr")
    # the last value of each, over the whole run (a resumed call may not validate again) ...
    metrics = {k: float(history[k].dropna().iloc[-1]) for k in keys
               if k in history and history[k].notna().any()}
    # ... but this call's own values from memory: under DDP only rank 0 writes metrics.csv, and
    # another rank may read it before rank 0 has appended the last validation
    metrics.update({k: float(run.metrics_log.final[k]) for k in keys
                    if k in run.metrics_log.final})
    tps = run.metrics_log.tokens_per_second()
    if tps is not None:
        metrics["tokens_per_second"] = tps
    metrics["seconds"] = run.seconds
    return TrainResult(run_dir=run.run_dir, final_dir=final_dir, metrics=metrics,
                       history=history, tokens_per_second=tps, resumed_from=run.resumed,
                       steps=run.trainer.global_step, tokens=run.module.tokens_seen,
                       skipped_steps=run.module.skipped_steps, rollbacks=run.state.rollbacks,
                       config=run.config, notes=run.notes, gate=run.report,
                       interrupted=run.interrupted, adapter=run.adapter,
                       tokenizer=run.tokenizer, data=_describe_data(getattr(run.dm, "data", None)))


def _describe_data(data: Any) -> str | None:
    """The one-line description of a TextDataset (or what a look-alike says of itself)."""
    if data is None:
        return None
    describe = getattr(data, "describe", None)
    if callable(describe):
        return describe()
    return getattr(data, "source", None) or type(data).__name__
