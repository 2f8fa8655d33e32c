"""Numbers at init: finite outputs at every length, a sane initial loss, deterministic eval."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from utils.checks import register
from utils.report import CheckResult
from utils.tasks import chance_loss
from utils.tier1.lengths import first_failing_length, grid_batch, lengths, shortest_length
from utils.tier1.outputs import NAN_SOURCES, eval_logits, output_stats, summarise

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


# Above this |logit| softmax saturates and fp16 (max 65504) is one bad layer from overflow.
_LOGIT_WARN = 1e3


def _probes(adapter: Adapter, t: int, options):
    """``(label, OutputStats)`` at length ``t``: random ids — the batch shape_robustness runs at
    this length, so its forward is not repeated — then the lowest and the highest valid id
    everywhere (extreme token ids), one row each, in one forward."""
    random = adapter.make_inputs(grid_batch(adapter, options), t, seed=options.seed)
    yield "random", output_stats(adapter, random)
    values = (0, adapter.id_limit - 1)
    template = adapter.make_inputs(len(values), t, seed=options.seed)
    ids = torch.stack([torch.full_like(template["input_ids"][0], v) for v in values])
    extremes = {**template, "input_ids": ids}
    out = eval_logits(adapter, extremes)
    for i, value in enumerate(values):
        row = {k: v[i : i + 1] for k, v in extremes.items()}
        yield f"all id {value}", summarise(adapter, row, out[i : i + 1])


@register("output_stability", tier=1, thresholds=("max_abs_logit",))
def check_output_stability(adapter: Adapter, options) -> CheckResult:
    rows, first_bad, scale = [], None, 0.0
    shortest = shortest_length(adapter, options)  # a model may refuse one token by design
    for t in [t for t in lengths(adapter, options) if t >= shortest.length]:
        for label, stats in _probes(adapter, t, options):
            loss_ok = stats.loss_finite is not False
            scale = max(scale, stats.max_abs)
            rows.append({"seq_len": t, "input": label, "finite": stats.finite,
                         "loss_finite": loss_ok, "max_abs_logit": stats.max_abs,
                         "logit_std": stats.std})
            if (not stats.finite or not loss_ok) and first_bad is None:
                first_bad = rows[-1]
    metrics = {"max_abs_logit": scale, "lengths_tested": sorted({r["seq_len"] for r in rows})}
    threshold = {"non_finite": 0, "max_abs_logit_warn": _LOGIT_WARN}
    if first_bad is not None:
        what = "outputs" if not first_bad["finite"] else "loss"
        good = [r["seq_len"] for r in rows if r["finite"] and r["loss_finite"]
                and r["seq_len"] < first_bad["seq_len"]]
        onset = _onset(adapter, options, max(good, default=0), first_bad["seq_len"])
        metrics["first_non_finite_length"] = onset
        return CheckResult(
            "output_stability", 1, "fail",
            f"NaN/Inf in the {what} from length {onset} on ({first_bad['input']} input; "
            f"finite up to {onset - 1}). " + (
                "NaN from the shortest lengths on, with nothing padded, is most often a "
                "padding mask that blocks every key (applied inverted; padding_invariance "
                "checks it) or a softmax over scores that are all -inf; otherwise look for "
                "divisions and exp/log without clamping." if onset <= 2 and
                adapter.takes_mask else
                "Look for divisions, exp/log without clamping, or scores that grow with "
                "length (scale attention by 1/sqrt(head_dim))."),
            metrics, threshold, rows)
    if scale > options.threshold("output_stability.max_abs_logit", _LOGIT_WARN):
        return CheckResult(
            "output_stability", 1, "warn",
            f"Outputs are finite, but logits reach {scale:.3g} (warn above {_LOGIT_WARN:g}): "
            "softmax saturates and fp16 training may overflow. Check the output scale and init.",
            metrics, threshold, rows)
    return CheckResult("output_stability", 1, "pass",
                       f"All outputs finite at lengths {metrics['lengths_tested']} including "
                       f"extreme token ids; max |logit| {scale:.3g}.", metrics, threshold, rows)


def _onset(adapter: Adapter, options, good: int, bad: int) -> int:
    """The shortest non-finite length in (good, bad], on random inputs."""

    def finite(t: int) -> bool:
        batch = adapter.make_inputs(grid_batch(adapter, options), t, seed=options.seed)
        return bool(torch.isfinite(eval_logits(adapter, batch)).all())

    return first_failing_length(finite, good, bad)


@register("initial_loss", tier=1, thresholds=("ratio", "warn_ratio"))
def check_initial_loss(adapter: Adapter, options) -> CheckResult:
    chance = chance_loss(adapter)
    if chance is None:
        return CheckResult("initial_loss", 1, "skip",
                           f"Task '{adapter.task}' has no task loss to compare with chance.")
    expected, formula = chance
    t = min(options.max_len(adapter), 64)
    adapter.model.eval()
    with torch.no_grad():
        losses = [float(adapter.loss(adapter.make_inputs(options.batch(adapter), t,
                                                          seed=options.seed + i)))
                  for i in range(3)]
    loss = sum(losses) / len(losses)
    high = options.threshold("initial_loss.ratio", 2.0)
    warn_high = options.threshold("initial_loss.warn_ratio", 1.3)
    ratio = loss / expected if expected > 0 else math.inf
    metrics = {"loss": loss, "expected": expected, "ratio": ratio}
    threshold = {"fail_above_ratio": high, "warn_above_ratio": warn_high,
                 "warn_below_ratio": 0.5}
    measured = f"Initial loss {loss:.3f} vs chance {formula} = {expected:.3f} (×{ratio:.2f})"
    if not math.isfinite(loss):
        return CheckResult("initial_loss", 1, "fail",
                           f"The initial loss is {loss} (chance: {formula} = {expected:.3f}): the "
                           "model's outputs are not finite at init, so nothing can train. "
                           + NAN_SOURCES, metrics, threshold)
    if ratio > high:
        return CheckResult("initial_loss", 1, "fail",
                           f"{measured}, above ×{high:g}: the model is confidently wrong at init. "
                           "Initialise weights small (std ~0.02) and do not scale the output up.",
                           metrics, threshold)
    if ratio > warn_high:
        return CheckResult("initial_loss", 1, "warn", f"{measured}, above ×{warn_high:g}: "
                           "a large output scale at init slows early training.", metrics,
                           threshold)
    if ratio < 0.5:
        return CheckResult("initial_loss", 1, "warn", f"{measured}: far below chance on random "
                           "labels, so the model may see the labels it predicts (leakage).",
                           metrics, threshold)
    return CheckResult("initial_loss", 1, "pass", f"{measured}: as expected at init.", metrics,
                       threshold)


@register("determinism", tier=1, thresholds=("rtol",))
def check_determinism(adapter: Adapter, options) -> CheckResult:
    batch = adapter.make_inputs(options.batch(adapter, 2), min(options.max_len(adapter), 32),
                                seed=options.seed)
    runs = []
    for seed in (options.seed, options.seed, options.seed + 1):
        torch.manual_seed(seed)
        runs.append(eval_logits(adapter, batch).float())
    scale = float(runs[0].abs().max().clamp_min(1e-12))
    same_seed = float((runs[0] - runs[1]).abs().max()) / scale
    other_seed = float((runs[0] - runs[2]).abs().max()) / scale
    tol = options.threshold("determinism.rtol", 1e-6)
    metrics = {"same_seed_rel_diff": same_seed, "other_seed_rel_diff": other_seed}
    threshold = {"rtol": tol}
    if same_seed > tol:
        return CheckResult("determinism", 1, "fail",
                           f"The same input gave different outputs twice in eval mode (relative "
                           f"difference {same_seed:.2e} > {tol:g}): forward changes hidden state "
                           "or uses nondeterministic operations.", metrics, threshold)
    if other_seed > tol:
        return CheckResult("determinism", 1, "fail",
                           f"Eval-mode outputs depend on the random seed (relative difference "
                           f"{other_seed:.2e}): randomness stays on in eval, e.g. "
                           "F.dropout(x, p) without training=self.training.", metrics, threshold)
    return CheckResult("determinism", 1, "pass", "Same input → identical outputs in eval mode, "
                       f"whatever the seed (max relative difference {max(same_seed, other_seed):.1e}"
                       f" ≤ {tol:g}).", metrics, threshold)
