"""``position_shift``: do relative positions stay relative when the sequence moves?

RoPE, ALiBi and relative-position biases promise that attention depends on the distance between
tokens, not on where they sit: the same sequence left-padded with masked pads must give the
same outputs at its real positions. A one-line bug breaks that and trains anyway — RoPE rotated
into the values instead of the keys, a bias indexed by absolute position. Models with an
absolute position table (learned or sinusoidal) change under a shift by design, so they are
skipped with the reason; the family is read from the model's structure and said in the result.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from utils.checks import register
from utils.compare import rel_diff
from utils.report import CheckResult
from utils.tier1._common import eval_logits, eval_randomness, random_in_eval

_EXACT = 1e-5
# Names (of modules, their classes, parameters and buffers) that say which encoding a model has.
_RELATIVE = (("rotary", re.compile(r"rotary|\brope\b|_rope|rope_|inv_freq|freqs?_cis|"
                                   r"(cos|sin)_cached", re.I)),
             ("ALiBi", re.compile(r"alibi|slopes", re.I)),
             ("relative-position bias", re.compile(r"relative|rel_pos|relpos", re.I)))
_ABSOLUTE = re.compile(r"(^|[._])(wpe|pos|pe|pos_emb\w*|pos_embed\w*|position\w*|"
                       r"positional\w*)($|[._])", re.I)
_HF_FAMILY = {"llama": "rotary", "mistral": "rotary", "gpt_neox": "rotary", "qwen2": "rotary",
              "gemma": "rotary", "phi": "rotary", "gptj": "rotary", "bloom": "ALiBi",
              "mpt": "ALiBi", "t5": "relative-position bias"}


def position_family(adapter) -> tuple[str, str]:
    """``(family, evidence)``: ``"absolute"``, ``"rotary"``, ``"ALiBi"``,
    ``"relative-position bias"`` or ``"none found"``, and what in the model said so."""
    model: nn.Module = adapter.model
    top = adapter.max_seq_len or 0
    token_rows = adapter.vocab_size
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and _ABSOLUTE.search(name) and \
                "relative" not in name.lower() and module.num_embeddings != token_rows:
            return "absolute", f"position table '{name}' ({module.num_embeddings} rows)"
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        leaf = name.rsplit(".", 1)[-1]
        if _ABSOLUTE.search(leaf) and not any(p.search(name) for _, p in _RELATIVE) and \
                tensor.dim() >= 2 and top and any(top <= d <= top + 2 for d in tensor.shape):
            return "absolute", f"position tensor '{name}' of shape {tuple(tensor.shape)}"
    names = [(n, type(m).__name__) for n, m in model.named_modules()]
    names += [(n, "") for n, _ in [*model.named_parameters(), *model.named_buffers()]]
    for family, pattern in _RELATIVE:
        for name, cls in names:
            if pattern.search(name) or pattern.search(cls):
                return family, f"'{name or cls}'" + (f" ({cls})" if cls and name else "")
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in _HF_FAMILY:
        return _HF_FAMILY[model_type], f"Hugging Face model_type '{model_type}'"
    return "none found", "no position table, rotary, ALiBi or relative bias in the structure"


def _pad_left(adapter, batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    pad = adapter.pad_token_id if adapter.pad_token_id is not None else 0
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b = ids.shape[0]
    return {**batch, "input_ids": torch.cat([ids.new_full((b, extra), pad), ids], dim=1),
            "attention_mask": torch.cat([mask.new_zeros((b, extra)), mask], dim=1)}


@register("position_shift", tier=1, thresholds=("rtol",))
def check_position_shift(adapter, options) -> CheckResult:
    name = "position_shift"
    if adapter.task not in ("causal_lm", "masked_lm", "encoder"):
        return CheckResult(name, 1, "skip", f"A {adapter.task} model's outputs are not aligned "
                           "with its input positions, so a shift of the input cannot be compared "
                           "position by position.")
    family, evidence = position_family(adapter)
    metrics = {"family": family, "evidence": evidence}
    if family == "absolute":
        return CheckResult(name, 1, "skip", f"Absolute positions ({evidence}): moving the "
                           "sequence changes every position's encoding by design, so shift "
                           "invariance is not a property of this model.", metrics)
    if not adapter.spec.takes_mask:
        return CheckResult(name, 1, "skip", f"Positions: {family} ({evidence}). The forward "
                           "takes no attention mask, so left padding cannot be masked and a "
                           "shift cannot be tested.", metrics)
    top = options.max_len(adapter)
    extra = min(4, top // 3)
    t = min(12, top - extra)
    if extra < 1 or t < 2:
        return CheckResult(name, 1, "skip", f"max_seq_len {top} leaves no room for a shift.",
                           metrics)
    batch = adapter.make_inputs(2, t, seed=options.seed)
    clean = eval_logits(adapter, batch, options.seed).float()
    noise = eval_randomness(adapter, batch, options.seed, clean)
    if noise > _EXACT:
        return random_in_eval(name, noise)
    shifted = eval_logits(adapter, _pad_left(adapter, batch, extra), options.seed).float()
    real = shifted[:, extra:]
    tol = options.threshold(f"{name}.rtol", 1e-4)
    change = rel_diff(clean, real) if bool(torch.isfinite(real).all()) else float("inf")
    metrics.update({"shift": extra, "real_len": t, "max_rel_change": change})
    threshold = {"max_rel_change": tol}
    what = (f"Positions: {family} ({evidence}). The same {t} tokens moved right by {extra} "
            f"masked pad(s)")
    if change <= tol:
        return CheckResult(name, 1, "pass", f"{what} give the same outputs at the real positions "
                           f"(max relative change {change:.1e} ≤ {tol:g}): attention depends on "
                           "distance, not on absolute position.", metrics, threshold)
    if change == float("inf"):
        return CheckResult(name, 1, "warn", f"{what} give NaN/Inf at real positions: a query "
                           "whose keys are all masked (a pad row) softmaxes -inf to NaN, which "
                           "the next layer spreads. Mask with torch.finfo(dtype).min instead of "
                           "-inf, or zero fully masked rows.", metrics, threshold)
    if family == "none found":
        return CheckResult(name, 1, "warn", f"{what} moved the outputs at real positions by "
                           f"{change:.1e} (relative; allowed {tol:g}). If the model computes "
                           "absolute positions in forward (a sinusoid of arange), that is by "
                           "design; if it has no positions or relative ones, the padding mask "
                           "or the positions of the real tokens are wrong.", metrics, threshold)
    return CheckResult(
        name, 1, "fail", f"{what} moved the outputs at real positions by {change:.1e} "
        f"(relative; allowed {tol:g}): the {family} encoding depends on absolute position. "
        "Rotate queries and keys only (never the values or the hidden states), and index "
        "position biases by the distance i − j, not by i or j.", metrics, threshold)
