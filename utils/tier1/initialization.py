"""``parameter_initialization``: weights at the scale that the init schemes in use produce.

A weight matrix is judged by its *gain*, ``std × sqrt(fan_in)``: what one layer does to the
scale of a unit-variance input, i.e. its std against the ``1/sqrt(fan_in)`` its fan-in calls
for. Every common scheme lands at or below ≈ 2.4 — PyTorch's Linear default (1/√3 ≈ 0.58),
Xavier (≤ √2, ≤ 2.4 with tanh's gain), Kaiming (√2), GPT-2/BERT/Llama's N(0, 0.02) at their
widths (0.02·√d: 1.3 at d = 4096) — while std = 1 gives gain √fan_in: 4 at width 16, 16 at 256,
and activations that grow that much per layer. A matrix fails when its gain is above 3 even
after allowing for sampling noise: a matrix of n values estimates its init's std to within a
relative ``1/sqrt(2n)``, so the verdict takes the gain ``z = 3`` standard errors below the
measured one (``gain_low``), which separates std 1.0 from every healthy init from width 16 up,
and no small matrix fails or passes by the luck of its draw.

Norm weights (≈ 1) and biases (≈ 0) are fine as they are; embeddings are lookups, not
products, so PyTorch's N(0, 1) default is fine too (likewise learned latents, memory or prompt
vectors). Hugging Face's GPT-2 ``Conv1D`` stores its weight as (in, out), so its fan-in is the
first dimension. A raw ``nn.Parameter`` matrix may be used either way round (``x @ W`` or
``W @ x``), so its fan-in is taken as its smaller side; one whose mean outweighs its spread
holds settings (Mamba's ``A_log``, decay rates), not random weights, and has no gain.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from utils.checks import register
from utils.report import CheckResult
from utils.tier1.gradients import layer_of

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_GAIN_FAIL, _GAIN_WARN, _GAIN_TINY = 3.0, 2.5, 0.01
_Z = 3.0  # standard errors of the sampled std allowed before a verdict
_EMBED_STD_WARN = 3.0
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)
# Modules whose weight multiplies the input along its dimension 1 (PyTorch's fan-in).
_PRODUCTS = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)
# Names of raw parameters that are looked up or prepended, never multiplied with an input.
_LOOKUP_NAMES = ("emb", "pos", "wte", "wpe", "token", "latent", "memory", "register", "cls",
                 "prompt", "prefix")
# Names of raw parameters that hold biases even with two or more dims: a mixture of experts
# stacks one bias per expert (``b1`` of shape (experts, hidden)), zero at init like any bias.
_BIAS_NAME = re.compile(r".*bias.*|b\d*|b_\w+|\w+_b\d*")


def _kind(name: str, p: torch.Tensor, owner: nn.Module) -> tuple[str, int | None]:
    """``(kind, fan_in)``: kind is norm | bias | embedding | matrix | other."""
    leaf = name.rsplit(".", 1)[-1].lower()
    owner_name = type(owner).__name__.lower()
    if isinstance(owner, nn.Embedding) or (p.ndim >= 2 and any(
            w in leaf for w in _LOOKUP_NAMES)):
        return "embedding", None
    if p.ndim == 1:
        if isinstance(owner, _NORMS) or "norm" in owner_name or "norm" in leaf or leaf in (
                "gamma", "g", "scale", "ln"):
            return "norm", None
        return ("bias", None) if "bias" in leaf or leaf == "beta" else ("other", None)
    if p.ndim < 2:
        return "other", None
    if _BIAS_NAME.fullmatch(leaf):  # a mixture of experts' stacked biases, (experts, out)
        return "bias", None
    if owner_name == "conv1d" and not isinstance(owner, nn.Conv1d):  # HF GPT-2: (in, out)
        return "matrix", int(p.shape[0])
    fan_in = int(p[0].numel())
    if isinstance(owner, _PRODUCTS):
        return "matrix", fan_in
    data = p.detach().float()
    if data.numel() > 1 and bool(data.mean().abs() > data.std()):  # Mamba's A_log: rates
        return "other", None
    return "matrix", min(fan_in, int(p.shape[0]))


def _gain_bounds(gain: float, n: int) -> tuple[float, float]:
    """``gain`` ± ``_Z`` standard errors of a std estimated from ``n`` values (relative SE
    ``1/sqrt(2(n-1))`` for normal draws, smaller for uniform ones)."""
    tol = _Z / math.sqrt(2 * max(n - 1, 1))
    return gain * max(0.0, 1.0 - tol), gain * (1.0 + tol)


@register("parameter_initialization", tier=1, thresholds=("gain", "warn_gain"))
def check_parameter_initialization(adapter: Adapter, options) -> CheckResult:
    modules = dict(adapter.model.named_modules())
    fail_gain = options.threshold("parameter_initialization.gain", _GAIN_FAIL)
    warn_gain = options.threshold("parameter_initialization.warn_gain", _GAIN_WARN)
    rows: list[dict[str, Any]] = []
    for name, p in adapter.model.named_parameters():
        owner = modules.get(name.rsplit(".", 1)[0], adapter.model) if "." in name else adapter.model
        kind, fan_in = _kind(name, p, owner)
        data = p.detach().float()
        finite = bool(torch.isfinite(data).all())
        std = float(data.std()) if data.numel() > 1 and finite else 0.0
        row: dict[str, Any] = {"parameter": name, "layer": layer_of(name), "kind": kind, "shape": list(p.shape),
               "mean": float(data.mean()) if finite else math.nan, "std": std,
               "gain": std * math.sqrt(fan_in) if fan_in else None, "gain_low": None,
               "gain_high": None, "all_zero": bool((data == 0).all()), "finite": finite,
               "verdict": "ok"}
        gain = row["gain"]
        if gain is not None:
            row["gain_low"], row["gain_high"] = _gain_bounds(gain, p.numel())
        if not finite:
            row["verdict"] = "fail: NaN/Inf"
        elif kind == "matrix" and row["all_zero"]:
            row["verdict"] = "warn: all zero"
        elif gain is not None and row["gain_low"] > fail_gain:
            row["verdict"] = (f"fail: gain {gain:.3g} > {fail_gain:g}, std {std:.3g} at fan-in "
                              f"{fan_in}")
        elif gain is not None and row["gain_low"] > warn_gain:
            row["verdict"] = f"warn: gain {gain:.3g} > {warn_gain:g}"
        elif gain is not None and 0 < row["gain_high"] < _GAIN_TINY:
            row["verdict"] = f"warn: gain {gain:.2g} < {_GAIN_TINY:g}"
        elif kind == "embedding" and std > _EMBED_STD_WARN:
            row["verdict"] = f"warn: embedding std {std:.3g} > {_EMBED_STD_WARN:g}"
        rows.append(row)

    fails = [r for r in rows if r["verdict"].startswith("fail")]
    warns = [r for r in rows if r["verdict"].startswith("warn")]
    gains = [r["gain"] for r in rows if r["gain"] is not None and r["finite"]]
    metrics = {"parameters": len(rows), "failing": len(fails), "warning": len(warns),
               "max_gain": max(gains, default=0.0), "min_gain": min(gains, default=0.0)}
    # the bands apply to each matrix's gain_low (gain_high for the lower band): the gain less
    # (plus) sampling_z standard errors of its sampled std
    threshold = {"fail_gain_above": fail_gain, "warn_gain_above": warn_gain,
                 "warn_gain_below": _GAIN_TINY, "sampling_z": _Z}

    def listed(bad):
        shown = "; ".join(f"{r['parameter']} ({r['verdict'].split(': ', 1)[1]})" for r in bad[:3])
        return shown + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")

    if fails:
        return CheckResult(
            "parameter_initialization", 1, "fail",
            f"{len(fails)} weight(s) initialised far too large or non-finite: {listed(fails)}. "
            f"Gain = std × sqrt(fan_in) should be near 1 (it fails above {fail_gain:g} even "
            f"after allowing {_Z:g} standard errors of sampling noise): use "
            "nn.init.normal_(w, std=0.02) or xavier/kaiming init.", metrics, threshold, rows)
    if warns:
        zero = any(r["verdict"] == "warn: all zero" for r in warns)
        return CheckResult("parameter_initialization", 1, "warn",
                           f"{len(warns)} unusual initialisation(s): {listed(warns)}." +
                           (" An all-zero matrix is deliberate for an output projection in "
                            "some recipes (modded-nanogpt zero-initialises c_proj; the first "
                            "optimizer step opens its branch — gradient_flow checks that); "
                            "anywhere else it starts the layer dead." if zero else ""),
                           metrics, threshold, rows)
    return CheckResult("parameter_initialization", 1, "pass",
                       f"{len(rows)} parameters at plausible scale (weight gains "
                       f"{metrics['min_gain']:.2f}–{metrics['max_gain']:.2f}; norms and biases "
                       "as expected).", metrics, threshold, rows)
