"""Tier 3's learning-sanity checks: what a person reads off a training run by hand.

Each check is one function ``check_<name>(run, options) -> CheckResult`` over a
:class:`LearningRun` — the facts of a finished run (the loss of every step, ``metrics.csv``,
the loss guard's counters, throughput) — so it can be tested on made-up runs without training.
Thresholds are declared with :func:`~utils.checks.register` and overridden like Tier 1's, by
``"<check>.<name>"`` keys (``fine_tune(..., thresholds={"loss_decrease.fraction": 0.5})``).

The checks: the first loss against chance (ln(vocab), ln(classes)); the loss falls within the
first part of training; the train/validation gap at the end (overfitting, or a leak); no
skipped or non-finite steps; tokens/s and the model FLOPs utilisation where the device's peak
is known.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from utils.checks import REGISTRY, CheckOptions, register, select
from utils.errors import UserError
from utils.report import CheckResult, Report

__all__ = ["TIER3_CHECKS", "LearningRun", "run_learning_checks", "validate_thresholds"]

TIER3_CHECKS: tuple[str, ...] = ("first_loss", "loss_decrease", "train_val_gap", "skipped_steps",
                                 "throughput")


@dataclass
class LearningRun:
    """What the learning checks read from a finished run.

    Attributes:
        task: The model's task.
        chance: ``(expected loss, formula)`` of a model that predicts uniformly, or None
            (an encoder has no task loss).
        losses: The training loss of each optimizer step this call ran, in order, as
            ``(step, loss)``; NaN where the loss guard skipped the step.
        val_losses: ``(step, validation loss)`` of each validation this call ran, NaN kept
            (``metrics.csv`` cannot tell a NaN from a missing value).
        resumed_from: The step this call continued from (its first loss is not the model's).
        steps: Optimizer steps of the whole run. warmup_steps: The schedule's warm-up.
        history: ``metrics.csv`` as a DataFrame (train_loss every log_every steps, val_loss at
            each validation).
        skipped_steps, rollbacks: The loss guard's counters.
        tokens_per_second: Steady-state training throughput.
        flops_per_token: Training FLOPs per token (6 × the weights that multiply activations).
        device: ``"cpu"`` or the CUDA device's name. precision: The effective precision.
        peak_flops: The device's dense peak FLOP/s at that precision, None when unknown.
    """

    task: str
    chance: tuple[float, str] | None
    losses: list[tuple[int, float]]
    steps: int
    history: Any = None
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    resumed_from: int | None = None
    warmup_steps: int = 0
    skipped_steps: int = 0
    rollbacks: int = 0
    tokens_per_second: float | None = None
    flops_per_token: float | None = None
    device: str = "cpu"
    precision: str = "32"
    peak_flops: float | None = None
    notes: list[str] = field(default_factory=list)

    def column(self, name: str) -> list[tuple[int, float]]:
        """``(step, value)`` of a ``metrics.csv`` column where it has a value."""
        h = self.history
        if h is None or name not in getattr(h, "columns", ()):
            return []
        rows = h.dropna(subset=[name])
        return [(int(s), float(v)) for s, v in zip(rows["step"], rows[name], strict=True)]


def _finite(values: Iterable[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ---- the checks ---------------------------------------------------------------------------
@register("first_loss", tier=3, thresholds=("fail_ratio", "warn_ratio", "low_ratio"))
def check_first_loss(run: LearningRun, options: CheckOptions) -> CheckResult:
    if run.chance is None:
        return CheckResult("first_loss", 3, "skip",
                           f"Task '{run.task}' has no task loss to compare with chance.")
    if run.resumed_from:
        return CheckResult("first_loss", 3, "skip",
                           f"This call resumed at step {run.resumed_from}, so its first loss is "
                           "a trained model's; the check belongs to a run's first step.",
                           {"resumed_from": run.resumed_from})
    if not run.losses:
        return CheckResult("first_loss", 3, "skip", "No training step ran.")
    expected, formula = run.chance
    loss = run.losses[0][1]
    high = options.threshold("first_loss.fail_ratio", 2.0)
    warn = options.threshold("first_loss.warn_ratio", 1.3)
    low = options.threshold("first_loss.low_ratio", 0.5)
    ratio = loss / expected if expected > 0 and math.isfinite(loss) else math.inf
    metrics = {"first_loss": loss, "expected": expected, "ratio": ratio}
    threshold = {"fail_above_ratio": high, "warn_above_ratio": warn, "warn_below_ratio": low}
    measured = (f"First training loss {loss:.3f} vs chance {formula} = {expected:.3f} "
                f"(×{ratio:.2f})")
    if not math.isfinite(loss):
        return CheckResult("first_loss", 3, "fail",
                           f"The first training loss is {loss}: the forward overflows before "
                           "any update (or the loss guard skipped the first step). Look for "
                           "unclamped exp/log and the initial output scale.", metrics, threshold)
    if ratio > high:
        return CheckResult("first_loss", 3, "fail",
                           f"{measured}, above ×{high:g}: the model is confidently wrong before "
                           "training — its outputs start far too large. Initialise weights "
                           "small (std ~0.02, residual projections smaller) and do not scale "
                           "the logits up.", metrics, threshold)
    if ratio > warn:
        return CheckResult("first_loss", 3, "warn",
                           f"{measured}, above ×{warn:g}: a large output scale at init wastes "
                           "the first steps un-learning it. Initialise the output head "
                           "smaller.", metrics, threshold)
    if ratio < low:
        return CheckResult("first_loss", 3, "warn",
                           f"{measured}, below ×{low:g}: an untrained model should not beat "
                           "chance this much — it may see the tokens it predicts (a causal "
                           "leak, or labels fed as inputs).", metrics, threshold)
    return CheckResult("first_loss", 3, "pass", f"{measured}: the model starts at chance, as "
                       "an untrained one should.", metrics, threshold)


def _step_losses(run: LearningRun) -> tuple[list[tuple[int, float]], str]:
    """Per-step losses from the start of the run, or metrics.csv's coarser rows on resume."""
    if run.losses and not run.resumed_from:
        return run.losses, "per step"
    return run.column("train_loss"), "from metrics.csv"


@register("loss_decrease", tier=3, thresholds=("fraction", "min_drop", "fail_drop", "min_steps"))
def check_loss_decrease(run: LearningRun, options: CheckOptions) -> CheckResult:
    series, how = _step_losses(run)
    finite = [(s, v) for s, v in series if math.isfinite(v)]
    fraction = options.threshold("loss_decrease.fraction", 0.25)
    need = options.threshold("loss_decrease.min_drop", 0.05)
    fail = options.threshold("loss_decrease.fail_drop", 0.01)
    min_steps = int(options.threshold("loss_decrease.min_steps", 8))
    threshold = {"within_fraction_of_steps": fraction, "pass_relative_drop": need,
                 "fail_relative_drop_below": fail, "min_steps": min_steps}
    if len(finite) < min_steps:
        return CheckResult("loss_decrease", 3, "skip",
                           f"Only {len(finite)} finite training losses ({how}); at least "
                           f"{min_steps} are needed to tell a falling loss from noise. Train "
                           "longer (max_steps) or log more often (log_every).",
                           {"losses": len(finite)}, threshold)
    total = max(run.steps, finite[-1][0] + 1)
    # the window: the first `fraction` of the steps, and at least the warm-up plus a few
    end_step = min(total, max(math.ceil(fraction * total), run.warmup_steps + 4))
    window = [v for s, v in finite if s < end_step] or [v for _, v in finite[:min_steps]]
    k = max(1, min(5, len(window) // 4))  # average a few losses at each end against noise
    start, end = _mean(window[:k]), _mean(window[-k:])
    drop = (start - end) / start if start > 0 else 0.0
    overall = (start - _mean([v for _, v in finite][-k:])) / start if start > 0 else 0.0
    metrics = {"start_loss": start, "loss_at_window_end": end, "relative_drop": drop,
               "window_steps": end_step, "run_relative_drop": overall}
    rows = [{"step": s, "loss": v} for s, v in series]
    measured = (f"Training loss {start:.3f} → {end:.3f} over the first {end_step} of {total} "
                f"steps ({-drop:+.1%}; {-overall:+.1%} by the end)")
    if drop < fail:
        return CheckResult("loss_decrease", 3, "fail",
                           f"{measured}, below {fail:.0%}: the model is not learning. Raise the "
                           "learning rate (it may be near zero, or the warm-up far too long), "
                           "check that the outputs can move (no squashing tanh or huge "
                           "temperature before the head) and that the labels match the "
                           "inputs.", metrics, threshold, rows)
    if drop < need:
        return CheckResult("loss_decrease", 3, "warn",
                           f"{measured}, below {need:.0%}: it learns, but slowly. Try a higher "
                           "learning rate (lr='auto' runs the finder) or a shorter warm-up.",
                           metrics, threshold, rows)
    return CheckResult("loss_decrease", 3, "pass", f"{measured}, ≥ {need:.0%}.", metrics,
                       threshold, rows)


@register("train_val_gap", tier=3, thresholds=("warn_gap", "fail_gap", "low_gap", "warn_rise",
                                               "fail_rise"))
def check_train_val_gap(run: LearningRun, options: CheckOptions) -> CheckResult:
    val, train = run.column("val_loss"), run.column("train_loss")
    if not val or not train:
        return CheckResult("train_val_gap", 3, "skip",
                           "No validation loss was recorded, so overfitting cannot be told. "
                           "Set val_every > 0 (and a validation split in the data).")
    warn_gap = options.threshold("train_val_gap.warn_gap", 0.10)
    fail_gap = options.threshold("train_val_gap.fail_gap", 0.50)
    low_gap = options.threshold("train_val_gap.low_gap", -0.25)
    warn_rise = options.threshold("train_val_gap.warn_rise", 0.02)
    fail_rise = options.threshold("train_val_gap.fail_rise", 0.10)
    threshold = {"warn_above_gap": warn_gap, "fail_above_gap": fail_gap,
                 "warn_below_gap": low_gap, "warn_above_rise": warn_rise,
                 "fail_above_rise": fail_rise}
    v_step, v_last = val[-1]
    t_last = train[-1][1]
    best_step, best = min(val, key=lambda sv: sv[1])
    gap = (v_last - t_last) / t_last if t_last > 0 else 0.0
    rise = (v_last - best) / best if best > 0 else 0.0
    metrics = {"val_loss": v_last, "train_loss": t_last, "relative_gap": gap,
               "best_val_loss": best, "best_val_step": best_step, "rise_from_best": rise}
    rows = [{"step": s, "val_loss": v} for s, v in val]
    measured = (f"At step {v_step}: validation loss {v_last:.3f} vs training {t_last:.3f} "
                f"({gap:+.1%}); best validation {best:.3f} at step {best_step}")
    if not math.isfinite(v_last):
        return CheckResult("train_val_gap", 3, "fail", f"{measured}: the validation loss is not "
                           "finite.", metrics, threshold, rows)
    advice = ("Stop earlier (early_stopping_patience, or fewer steps), add regularisation "
              "(dropout, weight_decay) or train on more data.")
    if gap > fail_gap or rise > fail_rise:
        return CheckResult("train_val_gap", 3, "fail",
                           f"{measured} (+{rise:.1%} since): the model is overfitting — it "
                           f"memorises the training split. {advice}", metrics, threshold, rows)
    if gap > warn_gap or rise > warn_rise:
        return CheckResult("train_val_gap", 3, "warn",
                           f"{measured} (+{rise:.1%} since): overfitting is starting (limits "
                           f"{warn_gap:+.0%} gap, {warn_rise:+.0%} rise). {advice}", metrics,
                           threshold, rows)
    if gap < low_gap:
        return CheckResult("train_val_gap", 3, "warn",
                           f"{measured}: validation is far easier than training (below "
                           f"{low_gap:+.0%}) — documents may repeat across the split "
                           "(dedup=True), or dropout is very heavy.", metrics, threshold, rows)
    return CheckResult("train_val_gap", 3, "pass", f"{measured}: no sign of overfitting.",
                       metrics, threshold, rows)


@register("skipped_steps", tier=3, thresholds=("warn_share",))
def check_skipped_steps(run: LearningRun, options: CheckOptions) -> CheckResult:
    share_ok = options.threshold("skipped_steps.warn_share", 0.01)
    nonfinite = sum(not math.isfinite(v) for _, v in run.losses)
    skipped = max(run.skipped_steps, nonfinite)
    steps = max(run.steps, 1)
    share = skipped / steps
    val_bad = [s for s, v in run.val_losses or run.column("val_loss") if not math.isfinite(v)]
    metrics = {"skipped_steps": skipped, "steps": run.steps, "share": share,
               "rollbacks": run.rollbacks, "nonfinite_val_steps": len(val_bad)}
    threshold = {"warn_up_to_share": share_ok, "fail_on_rollback": True}
    if val_bad:
        return CheckResult("skipped_steps", 3, "fail",
                           f"Validation loss was NaN/Inf at step(s) {val_bad[:5]}: the model's "
                           "outputs overflow. Lower the learning rate, clip gradients "
                           "(grad_clip), and look for unclamped exp/log in forward.", metrics,
                           threshold)
    if skipped == 0:
        return CheckResult("skipped_steps", 3, "pass", f"All {run.steps} steps had a finite "
                           "loss; the loss guard skipped none.", metrics, threshold)
    what = (f"The loss guard skipped {skipped} of {run.steps} steps ({share:.1%}) for a "
            f"non-finite or spiking loss" + (f" and rolled back {run.rollbacks} time(s)"
                                             if run.rollbacks else ""))
    if run.rollbacks or share > share_ok:
        return CheckResult("skipped_steps", 3, "fail",
                           f"{what}: training is unstable. Lower the learning rate, keep "
                           "gradient clipping on, lengthen the warm-up, and check forward for "
                           "overflow (fp16 on a T4: scores above 65,504).", metrics, threshold)
    return CheckResult("skipped_steps", 3, "warn", f"{what}, within {share_ok:.0%}: occasional "
                       "spikes; watch the loss curve.", metrics, threshold)


@register("throughput", tier=3, thresholds=("warn_mfu",))
def check_throughput(run: LearningRun, options: CheckOptions) -> CheckResult:
    tps = run.tokens_per_second
    if not tps:
        return CheckResult("throughput", 3, "skip",
                           "Throughput was not measured (too few steady steps; train a few "
                           "more steps).")
    warn = options.threshold("throughput.warn_mfu", 0.05)
    metrics: dict[str, Any] = {"tokens_per_second": tps, "device": run.device,
                               "precision": run.precision, "flops_per_token": run.flops_per_token}
    threshold = {"warn_below_mfu": warn}
    said = f"{tps:,.0f} tokens/s on {run.device} ({run.precision})"
    if run.peak_flops is None or not run.flops_per_token:
        why = ("no peak FLOP/s is known for CPUs" if run.device == "cpu" else
               f"the peak FLOP/s of {run.device!r} is not in utils/gpu_table.py")
        return CheckResult("throughput", 3, "skip", f"{said}; MFU not computed: {why}.", metrics,
                           threshold)
    mfu = tps * run.flops_per_token / run.peak_flops
    metrics.update(mfu=mfu, peak_flops=run.peak_flops)
    measured = (f"{said}: model FLOPs utilisation {mfu:.1%} of the {run.peak_flops / 1e12:g} "
                "TFLOP/s peak (6 FLOPs per weight per token; attention scores not counted)")
    if mfu < warn:
        return CheckResult("throughput", 3, "warn",
                           f"{measured}, below {warn:.0%}: the device mostly waits. Use a larger "
                           "micro-batch, mixed precision (16-mixed on a T4), compile=True, or "
                           "DataLoader workers (num_workers=2 in Colab).", metrics, threshold)
    return CheckResult("throughput", 3, "pass", f"{measured}, ≥ {warn:.0%}.", metrics, threshold)


# ---- the runner ----------------------------------------------------------------------------
def validate_thresholds(thresholds: Mapping[str, float] | None) -> None:
    """Every key names a Tier 3 threshold, checked before any training is spent.

    Raises:
        UserError: an unknown key, with the nearest valid one and the list of all.
    """
    import difflib

    valid = sorted(f"{n}.{t}" for n in TIER3_CHECKS for t in REGISTRY[n].thresholds)
    unknown = [k for k in (thresholds or {}) if k not in valid]
    if not unknown:
        return
    hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
        k, valid, n=1)) else repr(k) for k in unknown]
    raise UserError(f"Unknown Tier 3 threshold key(s): {', '.join(hints)}.",
                    why=f"No learning check reads them. Valid keys: {', '.join(valid)}.",
                    fix="Use '<check>.<threshold>' with one of the keys above.")


def _run_one(name: str, run: LearningRun, options: CheckOptions) -> CheckResult:
    """One check, timed; a crash becomes status ``error``, never a stop."""
    began = time.perf_counter()
    try:
        result = REGISTRY[name].fn(run, options)
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1:]
        result = CheckResult(name, 3, "error", f"The check crashed: {type(exc).__name__}: {exc}",
                             error={"type": type(exc).__name__, "message": str(exc),
                                    "file": frame[0].filename if frame else None,
                                    "line": frame[0].lineno if frame else None})
    result.seconds = time.perf_counter() - began
    return result


def run_learning_checks(run: LearningRun, thresholds: Mapping[str, float] | None = None, *,
                        checks: Iterable[str] | None = None, model: dict | None = None,
                        source: dict | None = None) -> Report:
    """The Tier 3 report of a run: every learning check (or ``checks``), in order."""
    from utils.environment import versions

    validate_thresholds(thresholds)
    options = CheckOptions(thresholds=dict(thresholds or {}))
    names = select(list(TIER3_CHECKS), checks, None)
    report = Report(model=model, source=dict(source or {}),
                    environment={**versions(), "device": run.device})
    report.results = [_run_one(name, run, options) for name in names]
    report.notes += run.notes
    return report
