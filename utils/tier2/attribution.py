"""Which input tokens drive a prediction: Integrated Gradients and gradient × input, in-house.

The target is one scalar per sample: the logit of the predicted token at the last position
(causal LM, seq2seq decoder), at the first masked position (masked LM), the predicted class's
logit (classification), or the output at the last position projected on its own direction
(encoder). Attributions are taken on the output of the token embedding (a forward hook replaces
it), so no ``inputs_embeds`` argument is needed; the baseline is the zero embedding.

Integrated Gradients (Sundararajan et al., 2017) integrates the gradient along the straight
path from the baseline with Gauss–Legendre quadrature on the decades [0, 1e-3], …, [0.1, 1]:
normalisation layers (LayerNorm, RMSNorm) make the path's integrand change sharply close to
the zero baseline, where evenly spaced steps miss it. Every step of every sample is one row of
a few batched forward/backward passes. Completeness — attributions sum to f(x) − f(baseline) —
is reported as the convergence delta. Gradient × input comes free from the path's end point.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from utils.checks import register
from utils.report import CheckResult
from utils.tasks import IGNORE_INDEX
from utils.tier2._common import (
    EmbeddingSwap,
    call_inputs,
    counting,
    frozen,
    mean_of,
    no_embedding_reason,
    weights_note,
)

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


NAME = "attribution_analysis"


def target_positions(adapter: Adapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The position whose prediction is explained, per sample (ignored for classifiers)."""
    ids = batch.get("decoder_input_ids", batch["input_ids"])
    last = torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)
    if adapter.task == "masked_lm" and "labels" in batch:
        masked = (batch["labels"] != IGNORE_INDEX).cpu()
        first = masked.float().argmax(dim=1)
        return torch.where(masked.any(dim=1), first, last)
    return last


def target_directions(adapter: Adapter, logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Per sample, the output direction f projects on: one-hot predicted class/token, or the
    unit vector of an encoder's own output."""
    out = _at(adapter, logits, pos).float()
    if adapter.task == "encoder":
        return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.nn.functional.one_hot(out.argmax(-1), out.shape[-1]).float()


def _at(adapter: Adapter, logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    if adapter.task == "classification":
        return logits
    return logits[torch.arange(logits.shape[0], device=logits.device), pos.to(logits.device)]


def path_nodes(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature points in (0, 1) and their weights: Gauss–Legendre on each decade, half of
    the points on [0.1, 1] where most of the change usually happens."""
    edges = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
    small = max(1, steps // 6)
    counts = (small, small, max(1, steps - 2 * small - steps // 2), max(1, steps // 2))
    nodes, weights = [], []
    for (a, b), n in zip(pairwise(edges), counts, strict=True):
        x, w = np.polynomial.legendre.leggauss(n)
        nodes.append(a + (b - a) * (x + 1) / 2)
        weights.append((b - a) * w / 2)
    return (torch.tensor(np.concatenate(nodes), dtype=torch.float32),
            torch.tensor(np.concatenate(weights), dtype=torch.float32))


def integrated_gradients(adapter: Adapter, batch: dict[str, torch.Tensor], steps: int = 32,
                         chunk: int = 32, counts: dict[str, int] | None = None,
                         ) -> dict[str, Any]:
    """IG and gradient × input on the token-embedding output of ``batch`` (N samples).

    Returns ``ig`` and ``gxi`` of shape ``(N, T)`` (summed over the embedding dim), ``f_input``,
    ``f_baseline`` and ``delta = sum(ig) - (f_input - f_baseline)``, each ``(N,)``, the target
    ``positions`` and ``connected`` (False when the output has no autograd path at all).
    """
    counts = counts if counts is not None else {"backward_passes": 0}
    model, inputs = adapter.model, call_inputs(batch)
    n = batch["input_ids"].shape[0]
    nodes, quad = path_nodes(steps)
    alphas = torch.cat([torch.zeros(1), nodes, torch.ones(1)])  # baseline, quadrature, input
    k = len(alphas)
    model.eval()
    with EmbeddingSwap(adapter) as swap, frozen(model):
        swap.arm(lambda out: None)
        with torch.no_grad():
            clean = adapter.logits(**inputs)
        assert swap.seen is not None, "the forward passed through the embedding"
        emb = swap.seen.float()  # (N, T, D)
        pos = target_positions(adapter, batch)
        direction = target_directions(adapter, clean, pos).to(emb.device)
        # row r = sample r // k at alpha r % k
        sample, alpha = torch.arange(n).repeat_interleave(k), alphas.repeat(n).to(emb.device)
        f_rows, grad_rows, connected = [], [], True
        for start in range(0, n * k, chunk):
            rows = slice(start, min(start + chunk, n * k))
            s = sample[rows]
            path = (alpha[rows, None, None] * emb[s]).requires_grad_(True)  # zero baseline
            swap.arm(lambda out, path=path: path)
            sub = {key: v[s.to(v.device)] for key, v in inputs.items()}
            out = _at(adapter, adapter.logits(**sub), pos[s]).float()
            f = (out * direction[s]).sum(-1)
            if f.requires_grad:
                (grad,) = torch.autograd.grad(f.sum(), path, allow_unused=True)
                counts["backward_passes"] += 1
            else:  # the forward detached its output: no gradient path to the tokens
                grad, connected = None, False
            grad = torch.zeros_like(path) if grad is None else grad
            f_rows.append(f.detach())
            grad_rows.append(grad.detach())
    f_all = torch.cat(f_rows).view(n, k)
    grads = torch.cat(grad_rows).view(n, k, *emb.shape[1:])  # (N, k, T, D)
    avg = (grads[:, 1:-1] * quad.to(grads.device)[None, :, None, None]).sum(1)
    ig = (emb * avg).sum(-1)
    gxi = (emb * grads[:, -1]).sum(-1)
    f_input, f_base = f_all[:, -1], f_all[:, 0]
    return {"ig": ig.cpu(), "gxi": gxi.cpu(), "f_input": f_input.cpu(),
            "f_baseline": f_base.cpu(), "delta": (ig.sum(-1) - (f_input - f_base)).cpu(),
            "positions": pos.cpu(), "connected": connected}


def _rank_corr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Spearman correlation of two score vectors (None when either is constant)."""
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    if float(a.std()) == 0 or float(b.std()) == 0:
        return None
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@register(NAME, tier=2, thresholds=("steps", "rel_delta"))
def check_attribution_analysis(adapter: Adapter, options) -> CheckResult:
    reason = no_embedding_reason(adapter)
    if reason is not None:
        return CheckResult(NAME, 2, "skip", f"Skipped: {reason}.")
    t = min(options.max_len(adapter), 32)
    steps = int(options.threshold(f"{NAME}.steps", 32))
    batch = adapter.make_inputs(options.batch(adapter, 2), t, seed=options.seed)
    with counting(adapter) as counts:
        res = integrated_gradients(adapter, batch, steps=steps,
                                   chunk=8 * options.batch(adapter), counts=counts)
    loaded, note = weights_note(adapter)
    # relative to the larger of |f(x) - f(baseline)| and the attributions' total mass, so a
    # prediction that barely moves along the path does not inflate it
    change = (res["f_input"] - res["f_baseline"]).abs()
    rel = res["delta"].abs() / torch.maximum(change, res["ig"].abs().sum(-1)).clamp_min(1e-6)
    tol = options.threshold(f"{NAME}.rel_delta", 0.05)
    total = res["ig"].abs().sum(-1)
    share = (res["ig"].abs().max(-1).values / total.clamp_min(1e-30))
    corr = [_rank_corr(res["ig"][i], res["gxi"][i]) for i in range(len(total))]
    metrics = {**counts, "seq_len": t, "steps": steps, "samples": len(total),
               "weights_loaded": loaded,
               "convergence_delta": float(res["delta"].abs().max()),
               "relative_delta": float(rel.max()),
               "f_input_minus_baseline": [float(v) for v in res["f_input"] - res["f_baseline"]],
               "top_token_share": float(share.mean()),
               "ig_gxi_rank_corr": mean_of(corr)}
    threshold = {"relative_delta_warn": tol}
    ids = batch["input_ids"].cpu()
    rows = [{"sample": i, "position": p, "token_id": int(ids[i, p]),
             "target_position": int(res["positions"][i]), "ig": float(res["ig"][i, p]),
             "grad_x_input": float(res["gxi"][i, p])}
            for i in range(len(total)) for p in range(ids.shape[1])]
    metrics["gradient_path"] = res["connected"]
    finite = all(bool(torch.isfinite(res[k]).all()) for k in ("ig", "gxi", "delta"))
    if not finite:
        return CheckResult(NAME, 2, "fail", "Non-finite attributions: gradients through the "
                           "model overflow or hit NaN. Run Tier 1's gradient_flow and "
                           "output_stability.", metrics, threshold, rows)
    measured = (f"Integrated Gradients ({steps} steps, {len(total)} sample(s) × {t} tokens): "
                f"completeness delta {metrics['convergence_delta']:.2e} "
                f"({metrics['relative_delta']:.1%} of max(|f(x) − f(baseline)|, Σ|attribution|))")
    if not res["connected"]:
        return CheckResult(NAME, 2, "warn", "No attribution possible: the output has no "
                           "gradient path back to the token embedding (forward detaches it, or "
                           "runs under torch.no_grad()), so the model cannot be trained either.",
                           metrics, threshold, rows)
    if float(total.max()) == 0.0 and float(res["gxi"].abs().max()) == 0.0:
        return CheckResult(NAME, 2, "warn", f"{measured}; every attribution is exactly zero: "
                           "the prediction does not depend on the input tokens. Check that the "
                           "embedding output reaches the head.", metrics, threshold, rows)
    if float(rel.max()) > tol:
        return CheckResult(NAME, 2, "warn", f"{measured}, above {tol:.0%}: the path integral "
                           f"has not converged; raise '{NAME}.steps'. {note}", metrics,
                           threshold, rows)
    return CheckResult(NAME, 2, "pass", f"{measured}; the top token carries "
                       f"{metrics['top_token_share']:.0%} of |attribution|. {note}", metrics,
                       threshold, rows)

