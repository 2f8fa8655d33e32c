"""Invariances a healthy transformer keeps, and the silent bugs that break them.

- ``causal_masking``: changing token t must not move any output before t (decoder side).
- ``batch_independence``: a sample's outputs must not depend on the other samples in its batch.
- ``padding_invariance``: padding, masked out, must not move the outputs at real positions.

All three train without an error when broken — a missing causal mask even gives a loss that
falls beautifully — so they are measured directly, by perturbation, in eval mode.
"""

from __future__ import annotations

import torch

from utils.checks import register
from utils.compare import rel_diff
from utils.report import CheckResult
from utils.tasks import IGNORE_INDEX
from utils.tier1._common import (
    after_first_steps,
    describe_module,
    different_ids,
    eval_logits,
    eval_randomness,
    random_in_eval,
    softmax_off_the_keys,
    token_key,
    train_without_dropout,
    where_positions_mix,
)

_EXACT = 1e-5  # relative; what float noise between two equivalent forwards stays under


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _not_finite(name: str, where: str) -> CheckResult:
    return CheckResult(name, 1, "skip", f"Outputs are not finite {where}, so nothing can be "
                       "compared; output_stability reports where NaN/Inf starts.")


# ---- causal_masking ---------------------------------------------------------------------
def _cuts(t: int) -> list[int]:
    return sorted({c for c in (1, 2, t // 4, t // 2, 3 * t // 4, t - 1) if 1 <= c < t})


@register("causal_masking", tier=1, thresholds=("rtol",))
def check_causal_masking(adapter, options) -> CheckResult:
    if not adapter.is_causal:
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
    grown = ""
    if not leaks and worst > _TINY_LEAK:  # a leak through a branch that starts small?
        with after_first_steps(adapter, options):
            later = _leak_rows(adapter, base, key, eval_logits(adapter, base, options.seed)
                               .float(), tol, options.seed)
        if any(r["positions_moved"] for r in later):
            rows, leaks = later, [r for r in later if r["positions_moved"]]
            metrics["max_rel_leak_at_init"] = worst
            metrics["max_rel_leak"] = max(r["max_rel_change_before"] for r in later)
            grown = (f" At init the leak is only {worst:.1e}, within the threshold, because the "
                     "branch it goes through starts small (a layer scale, a zero-initialised "
                     "projection); after the first two optimizer steps it is "
                     f"{metrics['max_rel_leak']:.1e} and grows with training.")
    if not leaks:
        return CheckResult(
            "causal_masking", 1, "pass",
            f"Changing {side}tokens from position k on never moved an output before k "
            f"({len(rows)} cuts at length {t}; max relative change {worst:.1e} ≤ {tol:g}).",
            metrics, threshold, rows)
    first = leaks[0]
    if all(r["only_previous_moved"] for r in leaks):
        diagnosis = ("only the position just before each change moved: every position sees the "
                     "next token — the mask is off by one (use tril(ones) / triu(ones, 1) with "
                     "diagonal=1 for the blocked part)")
    else:
        diagnosis = (f"position {first['earliest_moved']} already sees later tokens — the "
                     "causal mask is missing, not applied, or built from the wrong length")
    axis = softmax_off_the_keys(adapter, base, options.seed)
    if axis is not None:
        metrics["softmax_axis"] = axis
        diagnosis = (f"the attention weights come from a {axis}: normalised over anything but "
                     "the keys, a position's weights are made from later positions' scores — "
                     "softmax over the keys, dim=-1")
    else:  # where the leak enters: the first cut that leaked, with the ids it was given
        cut, i = first["changed_from"], rows.index(first)
        changed = base[key].clone()
        changed[:, cut:] = different_ids(adapter, changed[:, cut:], key, options.seed + 1 + i)
        mixing = where_positions_mix(adapter, base, {**base, key: changed}, cut, options.seed)
        if mixing is not None and mixing.first is not None:
            name, module = mixing.first
            metrics["leak_enters_at"] = name
            if _is_norm(module, name):
                diagnosis = (f"it enters at {describe_module(module, name)}, which mixes "
                             "positions: it normalises over the sequence axis (a mean or "
                             "variance over dim 1) — normalise each position over its features "
                             "(dim -1)")
            else:
                diagnosis += f"; it enters at {describe_module(module, name)}"
    return CheckResult(
        "causal_masking", 1, "fail",
        f"Future {side}tokens leak into earlier outputs: changing tokens from position "
        f"{first['changed_from']} on moved earlier outputs by up to "
        f"{first['max_rel_change_before']:.2e} (relative; allowed {tol:g}); {diagnosis}. A model "
        "that sees the future trains to a low loss and then cannot generate." + grown,
        metrics, threshold, rows)


# A causal model's earlier outputs do not move at all when later tokens change (masked scores
# softmax to exactly 0); above this a leak within the threshold is looked at again after the
# first optimizer steps, in case it runs through a branch that starts small.
_TINY_LEAK = 1e-7


def _is_norm(module, name: str) -> bool:
    return "norm" in type(module).__name__.lower() or "norm" in name.rsplit(".", 1)[-1].lower()


def _leak_rows(adapter, base, key: str, ref: torch.Tensor, tol: float,
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


# ---- batch_independence -----------------------------------------------------------------
def _rows(batch: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {k: v[index] for k, v in batch.items()}


def _train_mode_spread(adapter, batch, seed: int) -> tuple[float | None, str]:
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


def _batch_coupling_cause(adapter, batch: dict[str, torch.Tensor], seed: int,
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
def check_batch_independence(adapter, options) -> CheckResult:
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
        return CheckResult("batch_independence", 1, "fail",
                           f"{said} {_batch_coupling_cause(adapter, batch, options.seed, tol)}",
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
def _pad_right(adapter, batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
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


def _same_at_every_position(adapter, out: torch.Tensor) -> bool:
    """Per-token outputs that do not vary along the sequence (relative spread < 1e-4): what a
    fully masked attention gives, as when a mask is inverted and nothing is padded."""
    if adapter.task in ("classification", "seq2seq") or out.dim() != 3 or out.shape[1] < 2:
        return False
    spread = float((out - out.mean(dim=1, keepdim=True)).abs().max())
    return spread <= 1e-4 * max(float(out.abs().max()), 1e-12)


def _real_part(adapter, out: torch.Tensor, t: int) -> torch.Tensor:
    """Outputs at real positions: all of them for pooled or decoder-side outputs."""
    if adapter.task in ("classification", "seq2seq"):
        return out
    return out[:, :t]


def _nan_with_nothing_padded(adapter, batch: dict[str, torch.Tensor], seed: int,
                             t: int) -> CheckResult:
    """Outputs not finite with nothing padded: when they are finite without the mask, the
    mask blocks every key — applied inverted — which is the finding; otherwise a skip."""
    mask = batch.get("attention_mask")
    if mask is not None and adapter.spec.takes_mask:
        try:
            unmasked = eval_logits(adapter, {k: v for k, v in batch.items()
                                             if k != "attention_mask"}, seed).float()
        except Exception:  # the mask is required: nothing to compare with
            unmasked = None
        if unmasked is not None and _finite(unmasked):
            param = adapter.spec.mask_param
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
def check_padding_invariance(adapter, options) -> CheckResult:
    top = options.max_len(adapter)
    t = min(top - 1, 12)
    if t < 2:
        return CheckResult("padding_invariance", 1, "skip",
                           f"max_seq_len {top} leaves no room for padding after real tokens.")
    takes_mask = adapter.spec.takes_mask
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
        why = (f"masked through '{adapter.spec.mask_param}'" if takes_mask else
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
    param = adapter.spec.mask_param
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
