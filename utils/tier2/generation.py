"""Greedy decoding token by token must agree with one full forward pass over the result.

Decoding runs the whole prefix at every step (no cache) and appends the argmax; then one
forward over the final sequence must give the same argmax at every generated position and,
up to float noise, the same logits. A mismatch means the prediction at a position depends on
what comes after it or on the total length (a causal-mask or position bug). Where the forward
takes a KV cache (``cache``/``past_key_values`` and ``use_cache``, Hugging Face style), cached
decoding one token at a time must give the uncached logits too. Causal LMs decode their
input; seq2seq models decode the target for a fixed source. Other tasks do not decode.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from utils.checks import register
from utils.compare import rel_diff
from utils.report import CheckResult
from utils.tier2._common import counting

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


NAME = "generation_consistency"
_CACHE_PARAMS = ("cache", "past_key_values")


def _decode(adapter: Adapter, batch: dict[str, torch.Tensor], prompt: int, new: int,
            limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy tokens ``(B, new)``, per-step logits ``(B, new, V)`` and the full pass's logits
    at the same positions."""
    seq2seq = adapter.task == "seq2seq"
    key = "decoder_input_ids" if seq2seq else "input_ids"
    fixed = {k: v for k, v in batch.items()
             if k not in ("labels", "attention_mask", key)}
    if seq2seq:
        fixed["attention_mask"] = batch["attention_mask"]
    seq = batch[key][:, :prompt]
    steps, tokens = [], []
    for _ in range(new):
        inputs = {**fixed, key: seq}
        logits = adapter.logits(**inputs)[:, -1].float()  # (B, V)
        nxt = logits[:, :limit].argmax(-1)
        steps.append(logits)
        tokens.append(nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    full = adapter.logits(**{**fixed, key: seq})[:, prompt - 1: prompt - 1 + new].float()
    return torch.stack(tokens, 1), torch.stack(steps, 1), full


def _output_cache(out: Any) -> Any:
    if isinstance(out, dict):  # HF ModelOutput is a dict
        for name in _CACHE_PARAMS:
            if out.get(name) is not None:
                return out[name]
    return None


def _cached_logits(adapter: Adapter, ids: torch.Tensor, prompt: int, new: int) -> torch.Tensor | None:
    """Per-step logits from cached decoding of ``ids``, or None if the forward takes no cache."""
    params = inspect.signature(adapter.model.forward).parameters
    cache_param = next((p for p in _CACHE_PARAMS if p in params), None)
    token = adapter.token_param
    if adapter.task != "causal_lm" or cache_param is None or "use_cache" not in params \
            or token is None:
        return None
    out = adapter.model(**{token: ids[:, :prompt]}, use_cache=True)
    cache, steps = _output_cache(out), [out["logits"][:, -1].float()]
    if cache is None:
        return None
    for i in range(prompt, prompt + new - 1):
        out = adapter.model(**{token: ids[:, i: i + 1], cache_param: cache}, use_cache=True)
        new_cache = _output_cache(out)
        cache = cache if new_cache is None else new_cache
        steps.append(out["logits"][:, -1].float())
    return torch.stack(steps, 1)


@register(NAME, tier=2, thresholds=("rtol",))
@torch.no_grad()
def check_generation_consistency(adapter: Adapter, options) -> CheckResult:
    if adapter.task not in ("causal_lm", "seq2seq"):
        return CheckResult(NAME, 2, "skip", f"Task '{adapter.task}' does not decode token by "
                           "token; only causal LMs and seq2seq models are checked.")
    top = options.max_len(adapter)
    prompt = min(4, top - 1)
    new = min(8, top - prompt)
    if prompt < 1 or new < 1:
        return CheckResult(NAME, 2, "skip", f"max_seq_len {top} leaves no room to decode.")
    adapter.model.eval()
    batch = adapter.make_inputs(options.batch(adapter, 2), prompt + new, seed=options.seed)
    limit = adapter.id_limit if adapter.task == "causal_lm" else min(
        adapter.target_vocab_size or adapter.vocab_size, adapter.output_size)
    tol = options.threshold(f"{NAME}.rtol", 1e-4)
    threshold = {"rtol": tol}
    with counting(adapter) as counts:
        tokens, steps, full = _decode(adapter, batch, prompt, new, limit)
        cached_note, cached_rel = "", None
        try:
            cached = _cached_logits(adapter, torch.cat(
                [batch["input_ids"][:, :prompt], tokens], 1), prompt, new)
        except Exception as exc:  # a cache the testbench cannot drive is reported, not fatal
            cached, cached_note = None, f" Cached decoding not compared: {type(exc).__name__}: " \
                                        f"{exc}."
    rel = rel_diff(full, steps)
    agree = (full[..., :limit].argmax(-1) == tokens)
    metrics = {**counts, "prompt_len": prompt, "new_tokens": new,
               "argmax_agreement": float(agree.float().mean()), "max_rel_logit_diff": rel}
    rows = [{"step": s, "rel_logit_diff": rel_diff(full[:, s], steps[:, s]),
             "argmax_equal": bool(agree[:, s].all())} for s in range(new)]
    if cached is not None:
        cached_rel = rel_diff(steps, cached)
        metrics["cached_max_rel_logit_diff"] = cached_rel
        for s, row in enumerate(rows):
            row["cached_rel_logit_diff"] = rel_diff(steps[:, s], cached[:, s])
    if not (torch.isfinite(steps).all() and torch.isfinite(full).all()):
        return CheckResult(NAME, 2, "fail", "Non-finite logits while decoding.", metrics,
                           threshold, rows)
    what = f"Greedy decoding of {new} tokens after a {prompt}-token prompt"
    if rel > tol:
        first = next((r["step"] for r in rows if r["rel_logit_diff"] > tol), 0)
        return CheckResult(NAME, 2, "fail", f"{what} differs from one full forward pass from "
                           f"step {first} on (relative logit difference {rel:.2e} > {tol:g}, "
                           f"argmax agreement {metrics['argmax_agreement']:.0%}): the output at "
                           "a position depends on later tokens or on the total length — check "
                           "the causal mask and position handling.", metrics, threshold, rows)
    if cached_rel is not None and cached_rel > tol:
        return CheckResult(NAME, 2, "fail", f"{what} agrees with the full pass, but cached "
                           f"decoding does not (relative logit difference {cached_rel:.2e} > "
                           f"{tol:g}): the KV cache or its positions are wrong.", metrics,
                           threshold, rows)
    cache = ("; cached decoding agrees too" if cached_rel is not None
             else "; the forward takes no KV cache" if not cached_note else "")
    return CheckResult(NAME, 2, "pass", f"{what} equals one full forward pass (relative logit "
                       f"difference {rel:.1e} ≤ {tol:g}){cache}.{cached_note}", metrics,
                       threshold, rows)
