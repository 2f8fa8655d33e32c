"""What a benchmark found: one row per trained model, the overlaid curves, and the verdict.

The verdict compares the user's final validation loss with the baseline's (the mean over its
seeds) against the noise level — the spread between two seeds of the baseline, when two were
trained: a difference below the spread is no difference; between one and two spreads it is
"probably"; beyond two it is called.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.atomic import json_safe

__all__ = ["CLEAR_MULTIPLE", "Arm", "BenchmarkResult", "verdict"]

CLEAR_MULTIPLE = 2.0  # a difference beyond this many seed-to-seed spreads is called


@dataclass
class Arm:
    """One trained model of the benchmark.

    Attributes:
        name: Its row label. role: ``"model"`` or ``"baseline"``. seed: Its training seed.
        parameters: Its parameter count. metrics: The run's final metrics.
        tokens_per_second: Steady-state training throughput.
        peak_memory_mb: The step's peak memory; measured on a GPU, estimated on the CPU
            (``memory_measured`` says which).
        wall_seconds: Training time (the fit, without the gate and the data preparation).
        run_dir: Its run folder. history: Its ``metrics.csv``.
    """

    name: str
    role: str
    seed: int
    parameters: int
    metrics: dict[str, float]
    tokens_per_second: float | None
    peak_memory_mb: float | None
    memory_measured: bool
    wall_seconds: float | None
    steps: int
    run_dir: str
    model_class: str = ""
    history: Any = field(default=None, repr=False)

    def row(self) -> dict[str, Any]:
        m = self.metrics
        return {"model": self.name, "parameters": self.parameters, "val_loss": m.get("val_loss"),
                "perplexity": m.get("val_perplexity"), "val_accuracy": m.get("val_accuracy"),
                "tokens_per_second": self.tokens_per_second,
                "peak_memory_mb": self.peak_memory_mb, "wall_seconds": self.wall_seconds}

    def to_record(self) -> dict[str, Any]:
        """Everything but the history (which stays in the run's ``metrics.csv``)."""
        return {k: v for k, v in self.__dict__.items() if k != "history"}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def verdict(model: Arm, baselines: list[Arm]) -> tuple[str, float | None, float | None]:
    """``(words, your val loss − the baseline's mean, seed-to-seed spread)``."""
    mine = model.metrics.get("val_loss")
    theirs = [b.metrics.get("val_loss") for b in baselines]
    if mine is None or not math.isfinite(mine):
        return ("No verdict: your model has no finite validation loss (see its run's "
                "metrics.csv).", None, None)
    finite = [v for v in theirs if v is not None and math.isfinite(v)]
    if not finite:
        return "No verdict: the baseline has no finite validation loss.", None, None
    base = _mean(finite)
    diff = mine - base
    noise = abs(finite[0] - finite[1]) if len(finite) >= 2 else None
    seeds = f"mean of {len(theirs)} seeds" if len(theirs) > 1 else "one seed"
    how = (f"validation loss {mine:.3f} vs the baseline's {base:.3f} ({seeds}): "
           f"{abs(diff):.3f} {'lower' if diff < 0 else 'higher'}")
    if model.metrics.get("val_perplexity") is not None:
        how += (f", perplexity {math.exp(min(mine, 50)):.4g} vs {math.exp(min(base, 50)):.4g} "
                f"({math.exp(max(min(diff, 50), -50)) - 1:+.0%})")
    side = "better" if diff < 0 else "worse"
    if noise is None:
        words = (f"Your model is {side}: {how}. The noise level was not measured (one baseline "
                 "seed), so whether this is more than chance is unknown; seeds=2 measures it.")
    else:
        factor = abs(diff) / noise if noise > 0 else math.inf
        spread = f"the seed-to-seed spread of {noise:.3f}"
        if factor < 1:
            words = (f"No clear difference: {how}, within {spread}.")
        elif factor < CLEAR_MULTIPLE:
            words = (f"Your model is probably {side}: {how}, {factor:.1f}× {spread} — under "
                     f"{CLEAR_MULTIPLE:g}×, so train longer or compare more seeds to be sure.")
        else:
            times = f"{factor:.1f}×" if math.isfinite(factor) else "far beyond"
            words = f"Your model is {side}: {how}, {times} {spread}."
    mine_tps = model.tokens_per_second
    base_tps = [b.tokens_per_second for b in baselines if b.tokens_per_second]
    if mine_tps and base_tps:
        words += f" It trains at {mine_tps / _mean(base_tps):.2f}× the baseline's tokens/s."
    return words, diff, noise


@dataclass
class BenchmarkResult:
    """The user's model against a baseline of matched size, same data, tokenizer and budget.

    Attributes:
        arms: The trained models: yours first, then the baseline's seeds.
        baseline: The baseline's :class:`~utils.tier3.baselines.BaselineSpec`.
        verdict: Which is better and by how much, in words, against the noise level.
        difference: Your final validation loss − the baseline's mean (negative: yours is
            better). noise: The spread between the baseline's two seeds (None with one).
        config: The ``TrainingConfig`` every arm trained with (its seed aside).
        run_dir: The benchmark's folder (one run folder per arm, ``benchmark.json``).
        notes: Sentences for a person (estimated memory, reused runs).
    """

    arms: list[Arm]
    baseline: Any
    verdict: str
    difference: float | None
    noise: float | None
    config: Any
    run_dir: Path
    notes: list[str] = field(default_factory=list)

    @property
    def table(self):
        """One row per arm: parameters, final val loss, perplexity, accuracy, tokens/s, peak
        memory (MB) and wall time (s), as a DataFrame indexed by model."""
        import pandas as pd

        frame = pd.DataFrame([a.row() for a in self.arms]).set_index("model")
        return frame.dropna(axis=1, how="all")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``testbench benchmark --json``); NaN/Inf as strings, as in reports."""
        return json_safe({"verdict": self.verdict, "difference": self.difference, "noise": self.noise,
                "baseline": self.baseline.to_dict(), "rows": [a.row() for a in self.arms],
                "runs": {a.name: a.run_dir for a in self.arms}, "steps": self.config.max_steps,
                "config": self.config.to_dict(), "run_dir": str(self.run_dir),
                "notes": list(self.notes)})

    def to_text(self) -> str:
        table = self.table.to_string(float_format=lambda v: f"{v:,.4g}")
        return "\n".join([f"Baseline  {self.baseline.describe()}", table, "",
                          self.verdict, *[f"note: {n}" for n in self.notes]])

    def __repr__(self) -> str:
        return f"<BenchmarkResult {len(self.arms)} runs of {self.config.max_steps} steps: " \
               f"{self.verdict.split(':')[0]}>"

    def _repr_html_(self) -> str:
        notes = "".join(f"<li><i>Note: {html.escape(n)}</i></li>" for n in self.notes)
        return (f"<div class='testbench-benchmark'><h4>Benchmark — "
                f"{html.escape(self.baseline.describe())}</h4>"
                f"{self.table.to_html(float_format=lambda v: f'{v:,.4g}')}"
                f"<p><b>{html.escape(self.verdict)}</b></p>"
                f"{f'<ul>{notes}</ul>' if notes else ''}</div>")

    def plot(self):
        """Training and validation loss of every arm, overlaid (a matplotlib Figure)."""
        import matplotlib.pyplot as plt

        fig, (tr, va) = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True)
        fig.suptitle(f"Benchmark: your model vs {self.baseline.describe().split(':')[0]}")
        for arm in self.arms:
            h = arm.history
            if h is None or not len(h):
                continue
            style = ({"color": "tab:blue", "lw": 1.8} if arm.role == "model"
                     else {"color": "0.45", "lw": 1.1, "ls": "--" if arm.seed % 2 else "-"})
            if "train_loss" in h:
                t = h.dropna(subset=["train_loss"])
                tr.plot(t["step"], t["train_loss"], label=arm.name, **style)
            if "val_loss" in h:
                v = h.dropna(subset=["val_loss"])
                va.plot(v["step"], v["val_loss"], marker="o", ms=3, label=arm.name, **style)
        tr.set(title="Training loss", xlabel="optimizer step", ylabel="cross-entropy")
        va.set(title="Validation loss", xlabel="optimizer step", ylabel="cross-entropy")
        for ax in (tr, va):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(loc="upper right")
        return fig
