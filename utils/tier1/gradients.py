"""``gradient_flow``: one backward pass of the task loss reaches every parameter, at sane scale.

Flags parameters that receive no gradient (unused modules, branches cut by ``.detach()`` or
``torch.no_grad``), non-finite gradients, and layers whose gradients vanish relative to the
others. Some parameters get a zero gradient by construction — a separate attention key bias
shifts every score of a query equally and softmax ignores that — and are not flagged.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch

from utils.checks import register
from utils.report import CheckResult
from utils.tier1.outputs import NAN_SOURCES
from utils.tier1.training_steps import after_first_steps

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


# key biases: softmax(q·(k + b)) = softmax(q·k + q·b), and q·b is constant across keys
_ZERO_BY_CONSTRUCTION = re.compile(r"(^|\.)(k_proj|key|k|to_k|wk|k_lin)\.bias$")


def layer_of(name: str) -> str:
    """Group a parameter by layer: up to the first block index (``h.3``), else its module."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or parts[0]


def _backward(adapter: Adapter, options) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """The task loss of one training-mode batch, and each trainable parameter's gradient."""
    model = adapter.model
    model.train()
    model.zero_grad(set_to_none=True)
    t = min(options.max_len(adapter), 64)
    loss = adapter.loss(adapter.make_inputs(options.batch(adapter, 4), t, seed=options.seed))
    if loss.requires_grad:  # else the output itself is cut from the graph: nothing gets one
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss, grads


def _closed_at_init(adapter: Adapter, options, cut: list[str]) -> list[str]:
    """Of the parameters in ``cut`` (no or zero gradient), those that get one during or after
    the first optimizer steps: their branch starts closed by design — a zero-initialised
    output projection (modded-nanogpt), a layer scale or ReZero gain at 0 — and training opens
    it. A parameter that receives a gradient at any step is alive, though a zero gate whose
    two opening steps cancel (equal and opposite) stands closed again after them."""
    touched: set[str] = set()
    with after_first_steps(adapter, options, touched=touched):
        _, grads = _backward(adapter, options)
    return [n for n in cut if n in touched or ((g := grads.get(n)) is not None and
            bool(torch.isfinite(g).all()) and bool(g.any()))]


@register("gradient_flow", tier=1, thresholds=("layer_spread",))
def check_gradient_flow(adapter: Adapter, options) -> CheckResult:
    model = adapter.model
    loss, grads = _backward(adapter, options)

    rows: list[dict[str, Any]] = []
    layers: dict[str, float] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = grads.get(name)
        if g is None:
            state = "no gradient"
            norm = None
        elif not bool(torch.isfinite(g).all()):
            state, norm = "non-finite", math.inf
        else:
            norm = float(g.detach().float().norm())
            state = ("zero (expected)" if _ZERO_BY_CONSTRUCTION.search(name) else "zero") \
                if norm == 0.0 else "ok"
        rows.append({"parameter": name, "layer": layer_of(name), "grad_norm": norm,
                     "param_norm": float(p.detach().float().norm()), "state": state})
        if norm is not None and math.isfinite(norm) and state != "zero (expected)":
            layers[layer_of(name)] = math.hypot(layers.get(layer_of(name), 0.0), norm)

    missing = [r["parameter"] for r in rows if r["state"] == "no gradient"]
    zero = [r["parameter"] for r in rows if r["state"] == "zero"]
    closed = _closed_at_init(adapter, options, missing + zero) \
        if (missing or zero) and loss.requires_grad else []
    for r in rows:
        if r["parameter"] in closed:
            r["state"] = "closed at init (the first optimizer steps open it)"
    missing = [n for n in missing if n not in closed]
    zero = [n for n in zero if n not in closed]
    bad = [r["parameter"] for r in rows if r["state"] == "non-finite"]
    positive = [v for v in layers.values() if v > 0]
    spread = max(positive) / min(positive) if positive else math.inf
    total = math.sqrt(sum((r["grad_norm"] or 0.0) ** 2 for r in rows
                          if r["grad_norm"] is not None and math.isfinite(r["grad_norm"])))
    max_spread = options.threshold("gradient_flow.layer_spread", 1e4)
    metrics: dict[str, Any] = {"loss": loss.item(), "total_grad_norm": total, "parameters": len(rows),
               "no_gradient": len(missing), "zero_gradient": len(zero), "non_finite": len(bad),
               "layer_spread": spread, "layer_grad_norms": layers,
               "closed_at_init": len(closed)}
    threshold = {"no_gradient": 0, "non_finite": 0, "warn_layer_spread_above": max_spread}

    def listed(names):
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    if not math.isfinite(metrics["loss"]):
        return CheckResult("gradient_flow", 1, "fail",
                           f"The training-mode loss is {metrics['loss']}: with outputs that are "
                           "not finite every gradient is NaN or missing, so none can be judged. "
                           + NAN_SOURCES, metrics, threshold, rows)
    if bad:
        return CheckResult("gradient_flow", 1, "fail",
                           f"NaN/Inf gradients in {len(bad)} parameter(s): {listed(bad)}. "
                           "Look for log/sqrt/division of values that can be 0.",
                           metrics, threshold, rows)
    if missing or zero:
        names = missing + zero
        cause = ("The model's output itself is detached (the loss has no grad_fn)" if not
                 loss.requires_grad else "They are unused in forward, or their branch is cut")
        return CheckResult(
            "gradient_flow", 1, "fail",
            f"{len(names)}/{len(rows)} parameters get no gradient from the loss: {listed(names)}. "
            f"{cause}: .detach(), torch.no_grad, .data and integer casts cut the graph; such "
            "weights never train.", metrics, threshold, rows)
    if spread > max_spread:
        low = min(layers, key=lambda name: layers[name])
        return CheckResult(
            "gradient_flow", 1, "warn",
            f"Layer gradient norms differ by ×{spread:.2g} (warn above ×{max_spread:g}); the "
            f"smallest is '{low}': gradients vanish there. Check residual connections and norms.",
            metrics, threshold, rows)
    opened = (f" — {len(closed)} of them ({listed(closed)}) only after the first steps: their "
              "branch starts closed by design (a zero-initialised output projection, a layer "
              "scale or ReZero gain at 0) and the first optimizer steps open it" if closed
              else "")
    return CheckResult("gradient_flow", 1, "pass",
                       f"All {len(rows)} parameters receive finite gradients{opened}; layer "
                       f"norms within ×{spread:.2g} of each other (total {total:.3g}).", metrics,
                       threshold, rows)
