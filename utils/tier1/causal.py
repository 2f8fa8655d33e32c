"""``causal_masking``: changing token t must not move any output before t (decoder side).

A missing or misapplied causal mask trains without an error — the loss falls beautifully,
because every position copies the next token — so it is measured directly: the tokens from a
cut on are replaced and the outputs before the cut compared, in eval mode. A leak that starts
small (a layer scale) or closed (a gate at exactly 0) is looked at again after the first
optimizer steps. A model the probe alone called bidirectional, whose leak looked like a causal
mask that leaks, gets a warning with the override to run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from utils.adapters.detection import closed_at_init
from utils.adapters.inference import SUSPECTED
from utils.checks import register
from utils.report import CheckResult
from utils.tier1.inputs import different_ids, token_key
from utils.tier1.invariances import _EXACT, _finite, _is_norm, _not_finite
from utils.tier1.locate import describe_module, softmax_off_the_keys, where_positions_mix
from utils.tier1.outputs import eval_logits
from utils.tier1.training_steps import after_first_steps

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



# ---- causal_masking ---------------------------------------------------------------------
def _cuts(t: int) -> list[int]:
    return sorted({c for c in (1, 2, t // 4, t // 2, 3 * t // 4, t - 1) if 1 <= c < t})


@register("causal_masking", tier=1, thresholds=("rtol",))
def check_causal_masking(adapter: Adapter, options) -> CheckResult:
    if not adapter.is_causal:
        probe = adapter.evidence.get("causal_probe")
        if probe is not None and probe.value == SUSPECTED:  # the probe alone decided
            return CheckResult(
                "causal_masking", 1, "warn",
                f"Task '{adapter.task}' is bidirectional by the causality probe alone, and it "
                f"found a {SUSPECTED}: {probe.detail}.", {"suspected_leak": True})
        return CheckResult("causal_masking", 1, "skip",
                           f"Task '{adapter.task}' is bidirectional: every position may see "
                           "every token, so there is no causal mask to check.")
    t = min(options.max_len(adapter), 32)
    if t < 2:
        return CheckResult("causal_masking", 1, "skip", "Sequences of length 1 have no future.")
    key = token_key(adapter)
    base = adapter.make_inputs(1, t, seed=options.seed)
    ref = eval_logits(adapter, base, options.seed).float()
    if not _finite(ref):
        return _not_finite("causal_masking", f"at batch 1 × {t}")
    tol = options.threshold("causal_masking.rtol", _EXACT)
    rows = _leak_rows(adapter, base, key, ref, tol, options.seed)
    worst = max(r["max_rel_change_before"] for r in rows)
    side = "decoder " if key == "decoder_input_ids" else ""
    metrics = {"seq_len": t, "cuts_tested": len(rows), "max_rel_leak": worst,
               "leaking_cuts": sum(r["positions_moved"] > 0 for r in rows)}
    threshold = {"max_rel_leak": tol}
    leaks = [r for r in rows if r["positions_moved"]]
    grown, diagnosis = "", ""
    gates = closed_at_init(adapter.model)
    # a leak through a branch that starts small, or closed by a gate at exactly 0?
    if not leaks and (worst > _TINY_LEAK or gates):
        with after_first_steps(adapter, options):
            later = _leak_rows(adapter, base, key, eval_logits(adapter, base, options.seed)
                               .float(), tol, options.seed)
            if any(r["positions_moved"] for r in later):  # said on the weights that leak
                diagnosis = _diagnosis(adapter, base, key, later, metrics, options.seed)
        metrics["looked_after_first_steps"] = True
        if diagnosis:
            rows, leaks = later, [r for r in later if r["positions_moved"]]
            metrics["max_rel_leak_at_init"] = worst
            metrics["max_rel_leak"] = max(r["max_rel_change_before"] for r in later)
            starts = (f"only {worst:.1e}, within the threshold, because the branch it goes "
                      "through starts small (a layer scale, a zero-initialised projection)"
                      if worst > _TINY_LEAK else "exactly 0, because the path it goes through "
                      f"starts closed: {_named(gates)} at exactly 0")
            grown = (f" At init the leak is {starts}; after the first two optimizer steps it "
                     f"is {metrics['max_rel_leak']:.1e} and grows with training.")
    if not leaks:
        return CheckResult(
            "causal_masking", 1, "pass",
            f"Changing {side}tokens from position k on never moved an output before k "
            f"({len(rows)} cuts at length {t}; max relative change {worst:.1e} ≤ {tol:g}).",
            metrics, threshold, rows)
    first = leaks[0]
    diagnosis = diagnosis or _diagnosis(adapter, base, key, rows, metrics, options.seed)
    return CheckResult(
        "causal_masking", 1, "fail",
        f"Future {side}tokens leak into earlier outputs: changing tokens from position "
        f"{first['changed_from']} on moved earlier outputs by up to "
        f"{first['max_rel_change_before']:.2e} (relative; allowed {tol:g}); {diagnosis}. A model "
        "that sees the future trains to a low loss and then cannot generate." + grown +
        _never_given(adapter) + _why_causal(adapter), metrics, threshold, rows)


def _diagnosis(adapter: Adapter, base, key: str, rows: list[dict], metrics: dict, seed: int) -> str:
    """What the leak looks like and where it enters (recorded in ``metrics``), on the weights
    the leaking ``rows`` were measured with."""
    leaks = [r for r in rows if r["positions_moved"]]
    first = leaks[0]
    if all(r["only_previous_moved"] for r in leaks):
        diagnosis = ("only the position just before each change moved: every position sees the "
                     "next token — the mask is off by one (use tril(ones) / triu(ones, 1) with "
                     "diagonal=1 for the blocked part), or a shift mixes in x[:, 1:] (the next "
                     "position) where it meant the previous one")
    else:
        diagnosis = (f"position {first['earliest_moved']} already sees later tokens — the "
                     "causal mask is missing, not applied, or built from the wrong length")
    axis = softmax_off_the_keys(adapter, base, seed)
    if axis is not None:
        metrics["softmax_axis"] = axis
        return (f"the attention weights come from a {axis}: normalised over anything but "
                "the keys, a position's weights are made from later positions' scores — "
                "softmax over the keys, dim=-1")
    # where the leak enters: the first cut that leaked, with the ids it was given
    cut, i = first["changed_from"], rows.index(first)
    changed = base[key].clone()
    changed[:, cut:] = different_ids(adapter, changed[:, cut:], key, seed + 1 + i)
    mixing = where_positions_mix(adapter, base, {**base, key: changed}, cut, seed)
    if mixing is not None and mixing.first is not None:
        name, module = mixing.first
        metrics["leak_enters_at"] = name
        if _is_norm(module, name):
            return (f"it enters at {describe_module(module, name)}, which mixes "
                    "positions: it normalises over the sequence axis (a mean or "
                    "variance over dim 1) — normalise each position over its features "
                    "(dim -1)")
        diagnosis += f"; it enters at {describe_module(module, name)}"
    return diagnosis


def _named(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _never_given(adapter: Adapter) -> str:
    """When forward takes a mask the adapter leaves at its default (a [T, T] attention mask,
    not a [batch, seq_len] padding mask): called as model(ids), that mask is never applied."""
    mask = adapter.evidence.get("mask")
    if mask is None or mask.value != "not a padding mask":
        return ""
    name = next((n for n in adapter.unfed_params() if "mask" in n), None)
    if name is None:
        return ""
    return (f" forward's '{name}' defaults to None and is not a [batch, seq_len] padding mask, "
            f"so called as model(ids) — as generation and most training loops call it — no "
            f"causal mask is applied: build it in forward when '{name}' is None (e.g. "
            f"nn.Transformer.generate_square_subsequent_mask(T), or register a tril buffer).")


def _why_causal(adapter: Adapter) -> str:
    """What in the model's code made it causal (not its behaviour), and the way out for a model
    meant to be bidirectional."""
    task = adapter.evidence.get("task")
    if task is None or task.method != "structure" or adapter.task != "causal_lm":
        return ""
    other = "masked_lm" if adapter.output_size == adapter.vocab_size else "encoder"
    return (f" It is checked as a causal LM because its code says so ({task.detail}); if it is "
            f"meant to be bidirectional, run it with --task {other} (adapt(..., "
            f"task=\"{other}\")).")


# A causal model's earlier outputs do not move at all when later tokens change (masked scores
# softmax to exactly 0); above this a leak within the threshold is looked at again after the
# first optimizer steps, in case it runs through a branch that starts small.
_TINY_LEAK = 1e-7


def _leak_rows(adapter: Adapter, base, key: str, ref: torch.Tensor, tol: float,
               seed: int) -> list[dict]:
    """Per cut k: how far outputs before k move when the tokens from k on change."""
    t = base[key].shape[1]
    scale = float(ref.abs().max())
    rows = []
    for i, cut in enumerate(_cuts(t)):
        ids = base[key].clone()
        ids[:, cut:] = different_ids(adapter, ids[:, cut:], key, seed + 1 + i)
        out = eval_logits(adapter, {**base, key: ids}, seed).float()
        moved = (out[0, :cut] - ref[0, :cut]).abs().amax(-1) / max(scale, 1e-12)  # (cut,)
        leaked = (moved > tol).nonzero().flatten().tolist()
        rows.append({"changed_from": cut, "max_rel_change_before": float(moved.max()),
                     "positions_moved": len(leaked), "earliest_moved": leaked[0] if leaked
                     else None, "only_previous_moved": leaked == [cut - 1]})
    return rows
