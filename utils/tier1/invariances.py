"""Invariances a healthy transformer keeps, and the silent bugs that break them.

- ``causal_masking`` (:mod:`utils.tier1.causal`): changing token t must not move any output
  before t (decoder side).
- ``batch_independence``: a sample's outputs must not depend on the other samples in its batch.
- ``padding_invariance``: padding, masked out, must not move the outputs at real positions.

All three train without an error when broken — a missing causal mask even gives a loss that
falls beautifully — so they are measured directly, by perturbation, in eval mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from utils.checks import register
from utils.compare import rel_diff
from utils.report import CheckResult
from utils.tasks import IGNORE_INDEX
from utils.tier1.locate import (
    describe_module,
    softmax_off_the_keys,
    where_positions_mix,
    where_samples_mix,
)
from utils.tier1.outputs import eval_logits, eval_randomness, random_in_eval
from utils.tier1.training_steps import train_without_dropout

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_EXACT = 1e-5  # relative; what float noise between two equivalent forwards stays under


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _not_finite(name: str, where: str) -> CheckResult:
    return CheckResult(name, 1, "skip", f"Outputs are not finite {where}, so nothing can be "
                       "compared; output_stability reports where NaN/Inf starts.")


def _is_norm(module, name: str) -> bool:
    return "norm" in type(module).__name__.lower() or "norm" in name.rsplit(".", 1)[-1].lower()


# ---- batch_independence -----------------------------------------------------------------
def _rows(batch: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in batch.items()}


def _train_mode_spread(adapter: Adapter, batch, seed: int) -> tuple[float | None, str]:
    """Largest relative change of a sample's train-mode outputs between batch and alone."""
    model = adapter.model
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    try:
        train_without_dropout(model)
        with torch.no_grad():
            torch.manual_seed(seed)
            together = adapter.logits(**inputs).float()
            torch.manual_seed(seed + 1)
            again = adapter.logits(**inputs).float()
            if rel_diff(together, again) > _EXACT:  # e.g. F.dropout, nn.MultiheadAttention's
                return None, "not compared in train mode: it draws random numbers outside " \
                    "nn.Dropout modules"
            spread = 0.0
            for i in range(batch["input_ids"].shape[0]):
                torch.manual_seed(seed)
                alone = adapter.logits(**_rows(inputs, slice(i, i + 1))).float()
                spread = max(spread, rel_diff(together[i : i + 1], alone))
            return spread, ""
    finally:
        model.eval()


def _batch_coupling_cause(adapter: Adapter, batch: dict[str, torch.Tensor], seed: int,
                          tol: float) -> str:
    """What couples the samples, in the user's terms: copies of one sample that come out
    different by their place in the batch point at something indexed by the batch position
    (a seq-first position table fed batch-first input); otherwise batch statistics or a
    reshape that mixes batch and sequence."""
    from utils.tier1.positions import seq_first_position_table

    b = batch["input_ids"].shape[0]
    copies = {k: v[:1].expand(b, *v.shape[1:]).contiguous() for k, v in batch.items()}
    out = eval_logits(adapter, copies, seed).float()
    by_place = rel_diff(out, out[:1].expand_as(out)) if _finite(out) else 0.0
    table = seq_first_position_table(adapter.model, adapter.max_seq_len)
    if by_place > tol and table is not None:
        return (f"Copies of one sample come out different by their place in the batch "
                f"({by_place:.1e}), and the position tensor {table} has the (seq, batch, dim) "
                "layout of PyTorch's tutorial encoding: fed (batch, seq, dim) input, "
                "pe[:x.size(0)] adds one position per sample instead of one per token, so "
                "the model sees no word order. Index it by the sequence: x + "
                "self.pe[:x.size(1)].transpose(0, 1) (or build pe as (1, max_len, d_model) "
                "and add pe[:, :x.size(1)]).")
    if by_place > tol:
        return (f"Copies of one sample come out different by their place in the batch "
                f"({by_place:.1e}): something is indexed by the batch position — a position "
                "table indexed with x.size(0) of batch-first input, or a reshape/view that "
                "mixes batch and sequence (view(T, B, …) without transpose).")
    return ("Look for statistics over dim 0 (a norm or mean over the batch), or a reshape/view "
            "that mixes batch and sequence (e.g. view(T, B, …) without transpose).")


@register("batch_independence", tier=1, thresholds=("rtol",))
def check_batch_independence(adapter: Adapter, options) -> CheckResult:
    b = max(2, options.batch(adapter, 4))
    t = min(options.max_len(adapter), 16)
    batch = adapter.make_inputs(b, t, seed=options.seed)
    together = eval_logits(adapter, batch, options.seed).float()
    if not _finite(together):
        return _not_finite("batch_independence", f"at batch {b} × {t}")
    noise = eval_randomness(adapter, batch, options.seed, together)
    if noise > _EXACT:
        return random_in_eval("batch_independence", noise)
    scale = float(together.abs().max())
    rows = []
    for i in range(b):
        alone = eval_logits(adapter, _rows(batch, slice(i, i + 1))).float()
        rows.append({"sample": i, "alone_vs_in_batch": rel_diff(together[i : i + 1], alone,
                                                                  scale)})
    order = torch.arange(b - 1, -1, -1)
    reordered = eval_logits(adapter, _rows(batch, order)).float()
    perm = rel_diff(together[order], reordered, scale)
    worst = max([r["alone_vs_in_batch"] for r in rows] + [perm])
    tol = options.threshold("batch_independence.rtol", 1e-4)
    metrics = {"batch": b, "seq_len": t, "max_rel_diff_eval": worst, "reordered_rel_diff": perm}
    threshold = {"max_rel_diff": tol}
    if worst > tol:
        said = (f"In eval mode a sample's outputs change with the other samples in its batch "
                f"(alone vs in a batch of {b}, or the batch reordered: relative difference "
                f"{worst:.2e} > {tol:g}).")
        mixing = where_samples_mix(adapter, batch, options.seed)  # the line it enters at
        enters = f" It enters at {describe_module(mixing[1], mixing[0])}." if mixing else ""
        return CheckResult("batch_independence", 1, "fail",
                           f"{said}{enters} "
                           f"{_batch_coupling_cause(adapter, batch, options.seed, tol)}",
                           metrics, threshold, rows)
    spread, note = _train_mode_spread(adapter, batch, options.seed)
    metrics["max_rel_diff_train"] = spread
    if spread is not None and spread > tol:
        return CheckResult(
            "batch_independence", 1, "warn",
            f"Independent in eval mode (≤ {worst:.1e}), but in training mode samples influence "
            f"each other (relative difference {spread:.2e}): statistics over the batch, as "
            "BatchNorm computes. Transformers normally use LayerNorm; batch statistics make "
            "small-batch training and gradient accumulation behave differently.",
            metrics, threshold, rows)
    mode = f"; {note}" if note else " and in training mode"
    return CheckResult(
        "batch_independence", 1, "pass",
        f"Each sample's outputs are the same alone, in a batch of {b}, and reordered (max "
        f"relative difference {worst:.1e} ≤ {tol:g}) in eval mode{mode}.", metrics, threshold,
        rows)


# ---- padding_invariance -----------------------------------------------------------------
def _pad_right(adapter: Adapter, batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """The batch with ``extra`` padding tokens appended to the (encoder) input, masked out."""
    pad = adapter.pad_token_id if adapter.pad_token_id is not None else 0
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b = ids.shape[0]
    out = dict(batch)
    out["input_ids"] = torch.cat([ids, ids.new_full((b, extra), pad)], dim=1)
    out["attention_mask"] = torch.cat([mask, mask.new_zeros((b, extra))], dim=1)
    if adapter.task == "causal_lm" and "labels" in batch:
        out["labels"] = torch.cat([batch["labels"], ids.new_full((b, extra), IGNORE_INDEX)], dim=1)
    return out


def _same_at_every_position(adapter: Adapter, out: torch.Tensor) -> bool:
    """Per-token outputs that do not vary along the sequence (relative spread < 1e-4): what a
    fully masked attention gives, as when a mask is inverted and nothing is padded."""
    if adapter.task in ("classification", "seq2seq") or out.dim() != 3 or out.shape[1] < 2:
        return False
    spread = float((out - out.mean(dim=1, keepdim=True)).abs().max())
    return spread <= 1e-4 * max(float(out.abs().max()), 1e-12)


def _real_part(adapter: Adapter, out: torch.Tensor, t: int) -> torch.Tensor:
    """Outputs at real positions: all of them for pooled or decoder-side outputs."""
    if adapter.task in ("classification", "seq2seq"):
        return out
    return out[:, :t]


def _nan_with_nothing_padded(adapter: Adapter, batch: dict[str, torch.Tensor], seed: int,
                             t: int) -> CheckResult:
    """Outputs not finite with nothing padded: when they are finite without the mask, the
    mask blocks every key — applied inverted — which is the finding; otherwise a skip."""
    mask = batch.get("attention_mask")
    if mask is not None and adapter.takes_mask:
        try:
            unmasked = eval_logits(adapter, {k: v for k, v in batch.items()
                                             if k != "attention_mask"}, seed).float()
        except Exception:  # the mask is required: nothing to compare with
            unmasked = None
        if unmasked is not None and _finite(unmasked):
            param = adapter.mask_param
            return CheckResult(
                "padding_invariance", 1, "fail",
                f"With nothing padded ({param} all ones, 1 = real token) the outputs are "
                "NaN, and without the mask they are finite: the mask blocks every key, so it "
                f"is applied inverted. A key-padding mask means True = padding: pass "
                f"{param} == 0 (src_key_padding_mask=attention_mask == 0 for "
                "nn.TransformerEncoder / nn.MultiheadAttention), not attention_mask.bool().",
                {"takes_mask": True, "nan_with_all_ones_mask": True,
                 "finite_without_mask": True, "inverted_mask": True})
    return _not_finite("padding_invariance", f"at batch 1 × {t}")


@register("padding_invariance", tier=1, thresholds=("rtol",))
def check_padding_invariance(adapter: Adapter, options) -> CheckResult:
    top = options.max_len(adapter)
    t = min(top - 1, 12)
    if t < 2:
        return CheckResult("padding_invariance", 1, "skip",
                           f"max_seq_len {top} leaves no room for padding after real tokens.")
    takes_mask = adapter.takes_mask
    rows = []
    for extra in sorted({1, min(top - t, t)}):
        batch = adapter.make_inputs(1, t, seed=options.seed + extra)
        clean = eval_logits(adapter, batch, options.seed).float()
        if not _finite(clean):
            return _nan_with_nothing_padded(adapter, batch, options.seed, t)
        noise = eval_randomness(adapter, batch, options.seed, clean)
        if noise > _EXACT:
            return random_in_eval("padding_invariance", noise)
        padded = eval_logits(adapter, _pad_right(adapter, batch, extra)).float()
        real = _real_part(adapter, padded, t)
        rows.append({"real_len": t, "padding": extra, "rel_change": rel_diff(clean, real),
                     "finite": _finite(real)})
    worst = max(r["rel_change"] for r in rows)
    tol = options.threshold("padding_invariance.rtol", 1e-4)
    metrics = {"takes_mask": takes_mask, "max_rel_change": worst,
               "padding_tested": [r["padding"] for r in rows]}
    threshold = {"max_rel_change": tol}
    how = f"padding {metrics['padding_tested']} token(s) after {t} real ones"
    if worst <= tol:
        why = (f"masked through '{adapter.mask_param}'" if takes_mask else
               "no mask needed: a causal model never looks right")
        return CheckResult("padding_invariance", 1, "pass",
                           f"Outputs at real positions unchanged by {how} ({why}; max relative "
                           f"change {worst:.1e} ≤ {tol:g}).", metrics, threshold, rows)
    probed = adapter.evidence.get("mask")  # what the adapter's polarity probe found at load
    found = f" The mask probe at load: {probed.detail}." if probed is not None else ""
    if not takes_mask:
        who = "its encoder" if adapter.task == "seq2seq" else "the model"
        return CheckResult(
            "padding_invariance", 1, "warn",
            f"forward takes no attention mask, and {how} moved the outputs at real positions by "
            f"{worst:.2e} (relative): {who} attends to padding, so it cannot be trained on "
            "batches of different lengths. Accept an attention_mask (1 = real token) and apply "
            "it to the attention scores." + found, metrics, threshold, rows)
    param = adapter.mask_param
    inverted = probed is not None and "inverted" in (probed.detail or "")
    constant = _same_at_every_position(adapter, clean)
    if inverted or constant:
        metrics["inverted_mask"] = True  # the runner re-asks later failures with it flipped
        seen = ("with nothing padded, the outputs are the same at every position — every key is "
                "masked, so attention sees nothing but the mask's fill" if constant else
                "the load-time probe found it works only the other way round")
        return CheckResult(
            "padding_invariance", 1, "fail",
            f"The model applies its mask '{param}' inverted: {seen}. Real tokens are blocked "
            f"and padding attended ({how} moved the real positions by {worst:.1e}). Mask the "
            "keys it marks as padding: attention_mask (1 = real token) → "
            "scores.masked_fill(attention_mask == 0, float('-inf')); key_padding_mask (True = "
            "padding) → scores.masked_fill(key_padding_mask, float('-inf'))." + found,
            metrics, threshold, rows)
    advice = ("the mask is ignored or applied wrongly. Apply it to the attention scores of "
              "every layer (masked keys → -inf before softmax), and mind its meaning: "
              "attention_mask 1 = real token, key_padding_mask True = padding.")
    enters = None
    axis = softmax_off_the_keys(adapter, batch, options.seed)
    if axis is not None:
        metrics["softmax_axis"] = axis
        advice = (f"the attention weights come from a {axis}, not over the keys: the masked "
                  "keys' -inf then does not make their weights 0 (they are normalised with "
                  "other rows or heads). Softmax over the keys, dim=-1.")
    elif (mixing := where_positions_mix(adapter, batch, _pad_right(adapter, batch, extra), t,
                                        options.seed)) is not None:
        enters = mixing.first
        if not mixing.touched and adapter.task == "classification":
            enters = ("", adapter.model)  # every hidden state agrees: the pooling reads pads
    if enters is not None:
        name, module = enters
        metrics["padding_enters_at"] = name
        if module is adapter.model and adapter.task == "classification":
            advice = ("the hidden states at the real positions are unchanged, so the mask works "
                      "in attention; what changes is the pooling, which reads padded positions "
                      "(x[:, -1] is a pad in a right-padded row, a mean over all positions "
                      "counts the pads). Pool the first token, the last real one "
                      "(x[range(B), attention_mask.sum(1) - 1]) or a mean weighted by the mask.")
        elif _is_norm(module, name):
            advice = (f"it enters at {describe_module(module, name)}, which normalises over "
                      "the sequence axis, pads included — normalise each position over its "
                      "features (dim -1).")
        else:
            advice += (" The padding first reaches the real positions in "
                       f"{describe_module(module, name)}.")
    return CheckResult(
        "padding_invariance", 1, "fail",
        f"The model takes a mask ('{param}') but {how} moved the outputs at "
        f"real positions by {worst:.2e} (relative; allowed {tol:g}): {advice}" + found,
        metrics, threshold, rows)
