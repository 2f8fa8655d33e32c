"""``parameter_initialization``: weights at the scale that the init schemes in use produce.

A weight matrix is judged by its *gain*, ``std × sqrt(fan_in)``: what one layer does to the
scale of a unit-variance input. Every common scheme lands near 1 — PyTorch's Linear default
(1/√3 ≈ 0.58), Xavier (≈ 0.7–1.3), Kaiming (√2), GPT-2/BERT/Llama's N(0, 0.02) at their widths
— while std = 1 on a 256-wide layer has gain 16 and explodes activations within a few layers.
Norm weights (≈ 1) and biases (≈ 0) are fine as they are; embeddings are lookups, not
products, so PyTorch's N(0, 1) default is fine too. Hugging Face's GPT-2 ``Conv1D`` stores
its weight as (in, out), so its fan-in is the first dimension.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from utils.checks import register
from utils.report import CheckResult
from utils.tier1.gradients import layer_of

_GAIN_FAIL, _GAIN_WARN, _GAIN_TINY = 8.0, 3.0, 0.01
_EMBED_STD_WARN = 3.0
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def _kind(name: str, p: torch.Tensor, owner: nn.Module) -> tuple[str, int | None]:
    """``(kind, fan_in)``: kind is norm | bias | embedding | matrix | other."""
    leaf = name.rsplit(".", 1)[-1].lower()
    owner_name = type(owner).__name__.lower()
    if isinstance(owner, nn.Embedding) or (p.ndim >= 2 and any(
            w in leaf for w in ("emb", "pos", "wte", "wpe", "token"))):
        return "embedding", None
    if p.ndim == 1:
        if isinstance(owner, _NORMS) or "norm" in owner_name or "norm" in leaf or leaf in (
                "gamma", "g", "scale", "ln"):
            return "norm", None
        return ("bias", None) if "bias" in leaf or leaf == "beta" else ("other", None)
    if p.ndim < 2:
        return "other", None
    if owner_name == "conv1d" and not isinstance(owner, nn.Conv1d):  # HF GPT-2: (in, out)
        return "matrix", int(p.shape[0])
    return "matrix", int(p[0].numel()) if p.ndim > 2 else int(p.shape[1])


@register("parameter_initialization", tier=1, thresholds=("gain",))
def check_parameter_initialization(adapter, options) -> CheckResult:
    modules = dict(adapter.model.named_modules())
    rows = []
    for name, p in adapter.model.named_parameters():
        owner = modules.get(name.rsplit(".", 1)[0], adapter.model) if "." in name else adapter.model
        kind, fan_in = _kind(name, p, owner)
        data = p.detach().float()
        finite = bool(torch.isfinite(data).all())
        std = float(data.std()) if data.numel() > 1 and finite else 0.0
        row = {"parameter": name, "layer": layer_of(name), "kind": kind, "shape": list(p.shape),
               "mean": float(data.mean()) if finite else math.nan, "std": std,
               "gain": std * math.sqrt(fan_in) if fan_in else None,
               "all_zero": bool((data == 0).all()), "finite": finite, "verdict": "ok"}
        gain = row["gain"]
        fail_gain = options.threshold("parameter_initialization.gain", _GAIN_FAIL)
        if not finite:
            row["verdict"] = "fail: NaN/Inf"
        elif kind == "matrix" and row["all_zero"]:
            row["verdict"] = "warn: all zero"
        elif gain is not None and gain > fail_gain:
            row["verdict"] = f"fail: gain {gain:.3g} > {fail_gain:g}"
        elif gain is not None and gain > _GAIN_WARN:
            row["verdict"] = f"warn: gain {gain:.3g} > {_GAIN_WARN:g}"
        elif gain is not None and 0 < gain < _GAIN_TINY:
            row["verdict"] = f"warn: gain {gain:.2g} < {_GAIN_TINY:g}"
        elif kind == "embedding" and std > _EMBED_STD_WARN:
            row["verdict"] = f"warn: embedding std {std:.3g} > {_EMBED_STD_WARN:g}"
        rows.append(row)

    fails = [r for r in rows if r["verdict"].startswith("fail")]
    warns = [r for r in rows if r["verdict"].startswith("warn")]
    gains = [r["gain"] for r in rows if r["gain"] is not None and r["finite"]]
    metrics = {"parameters": len(rows), "failing": len(fails), "warning": len(warns),
               "max_gain": max(gains, default=0.0), "min_gain": min(gains, default=0.0)}
    threshold = {"fail_gain_above": options.threshold("parameter_initialization.gain", _GAIN_FAIL),
                 "warn_gain_above": _GAIN_WARN, "warn_gain_below": _GAIN_TINY}

    def listed(bad):
        shown = "; ".join(f"{r['parameter']} ({r['verdict'].split(': ', 1)[1]})" for r in bad[:3])
        return shown + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")

    if fails:
        return CheckResult(
            "parameter_initialization", 1, "fail",
            f"{len(fails)} weight(s) initialised far too large or non-finite: {listed(fails)}. "
            "Gain = std × sqrt(fan_in) should be near 1: use nn.init.normal_(w, std=0.02) or "
            "xavier/kaiming init.", metrics, threshold, rows)
    if warns:
        return CheckResult("parameter_initialization", 1, "warn",
                           f"{len(warns)} unusual initialisation(s): {listed(warns)}.",
                           metrics, threshold, rows)
    return CheckResult("parameter_initialization", 1, "pass",
                       f"{len(rows)} parameters at plausible scale (weight gains "
                       f"{metrics['min_gain']:.2f}–{metrics['max_gain']:.2f}; norms and biases "
                       "as expected).", metrics, threshold, rows)
