"""How fragile the predictions are: token-substitution and embedding-noise sweeps.

Each strength is compared with the clean forward pass on the same batch: top-1 agreement (per
position for LMs, per sample for classifiers), KL(clean ‖ perturbed) per prediction, the loss
increase of the clean top-1 under the perturbation (cross-entropy against the model's own clean
predictions, so it means something at random init too), and the relative output change divided
by the relative input change (amplification). Noise is Gaussian, scaled to the RMS of the
token embedding's output and injected through a hook on it; all strengths of a sweep run as one
batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from utils.checks import register
from utils.report import CheckResult
from utils.tier2._common import (
    EmbeddingSwap,
    call_inputs,
    counting,
    no_embedding_reason,
    repeat_batch,
    weights_note,
)

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


NAME = "robustness"
NOISE = (0.01, 0.03, 0.1, 0.3, 1.0)  # × the embedding's RMS
SUBSTITUTION = (0.05, 0.1, 0.2, 0.4)  # share of tokens replaced


def compare(adapter: Adapter, clean: torch.Tensor, noisy: torch.Tensor,
            ) -> dict[str, float | None]:
    """Agreement, KL, loss increase and relative change of ``noisy`` against ``clean``
    (both ``(B, C)`` or ``(B, T, V)``, one strength)."""
    clean, noisy = clean.float(), noisy.float()
    change = float((noisy - clean).norm() / clean.norm().clamp_min(1e-12))
    if adapter.task == "encoder":  # hidden states: no distribution to compare
        return {"agreement": None, "kl": None, "loss_increase": None, "output_change": change}
    top = clean.argmax(-1)
    logp_clean, logp_noisy = clean.log_softmax(-1), noisy.log_softmax(-1)
    kl = (logp_clean.exp() * (logp_clean - logp_noisy)).sum(-1)
    ce_clean = -logp_clean.gather(-1, top[..., None]).squeeze(-1)
    ce_noisy = -logp_noisy.gather(-1, top[..., None]).squeeze(-1)
    return {"agreement": float((noisy.argmax(-1) == top).float().mean()),
            "kl": float(kl.mean()), "loss_increase": float((ce_noisy - ce_clean).mean()),
            "output_change": change}


def _substituted(adapter: Adapter, ids: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """``ids`` with a share ``rate`` of positions (at least one) replaced by other valid ids."""
    chosen = torch.rand(ids.shape, generator=gen) < rate
    chosen[torch.arange(ids.shape[0]), torch.randint(0, ids.shape[1], (ids.shape[0],),
                                                     generator=gen)] = True
    limit = adapter.id_limit
    shift = torch.randint(1, max(limit, 2), ids.shape, generator=gen)
    other = (ids.cpu() + shift) % max(limit, 2)  # never the original id
    if adapter.pad_token_id is not None:
        other[other == adapter.pad_token_id] = (adapter.pad_token_id + 1) % max(limit, 2)
    return torch.where(chosen, other, ids.cpu()).to(ids.device)


def _run(adapter: Adapter, inputs: dict[str, torch.Tensor], copies: int, chunk: int,
         swap: EmbeddingSwap | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``copies`` stacked copies of ``inputs``, in chunks of whole copies; with
    ``noise`` (``(copies·B, T, D)``), added to the embedding output of each row."""
    b = inputs["input_ids"].shape[0]
    per = max(1, chunk // b)
    outs = []
    for start in range(0, copies, per):
        n = min(per, copies - start)
        sub = repeat_batch(inputs, n)
        if swap is not None and noise is not None:
            part = noise[start * b:(start + n) * b]
            swap.arm(lambda out, part=part: out + part.to(out.device, out.dtype))
        outs.append(adapter.logits(**sub))
    return torch.cat(outs)


@torch.no_grad()
def sweeps(adapter: Adapter, batch: dict[str, torch.Tensor], seed: int, chunk: int = 32) -> list[dict]:
    """One row per (perturbation, strength) with :func:`compare`'s numbers."""
    adapter.model.eval()
    inputs = call_inputs(batch)
    b = inputs["input_ids"].shape[0]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    reason = no_embedding_reason(adapter)
    if reason is None:
        with EmbeddingSwap(adapter) as swap:
            swap.arm(lambda out: None)
            clean = adapter.logits(**inputs)
            assert swap.seen is not None, "the forward passed through the embedding"
            emb = swap.seen.float()
            rms = float(emb.pow(2).mean().sqrt())
            noise = torch.cat([s * rms * torch.randn(emb.shape, generator=gen)
                               for s in NOISE])
            noisy = _run(adapter, inputs, len(NOISE), chunk, swap, noise)
        for i, s in enumerate(NOISE):
            rows.append({"perturbation": "embedding noise", "strength": s,
                         **compare(adapter, clean, noisy[i * b:(i + 1) * b])})
    else:
        clean = adapter.logits(**inputs)
    subs = [_substituted(adapter, inputs["input_ids"], r, gen) for r in SUBSTITUTION]
    stacked = {**repeat_batch(inputs, len(SUBSTITUTION)), "input_ids": torch.cat(subs)}
    swapped = _run(adapter, stacked, 1, len(SUBSTITUTION) * b)
    for i, r in enumerate(SUBSTITUTION):
        rows.append({"perturbation": "token substitution", "strength": r,
                     **compare(adapter, clean, swapped[i * b:(i + 1) * b])})
    return rows


@register(NAME, tier=2, thresholds=("tiny_noise_agreement", "tiny_noise_amplification"))
def check_robustness(adapter: Adapter, options) -> CheckResult:
    t = min(options.max_len(adapter), 64)
    batch = adapter.make_inputs(options.batch(adapter, 4), t, seed=options.seed)
    with counting(adapter) as counts:
        rows = sweeps(adapter, batch, options.seed, chunk=8 * options.batch(adapter))
    loaded, note = weights_note(adapter)
    min_agree = options.threshold(f"{NAME}.tiny_noise_agreement", 0.9)
    max_amp = options.threshold(f"{NAME}.tiny_noise_amplification", 10.0)
    threshold = {"tiny_noise": NOISE[0], "warn_agreement_below": min_agree,
                 "warn_amplification_above": max_amp}
    metrics: dict = {**counts, "seq_len": t, "weights_loaded": loaded}
    for r in rows:
        key = "noise" if r["perturbation"] == "embedding noise" else "substitution"
        for m in ("agreement", "kl", "loss_increase", "output_change"):
            metrics.setdefault(f"{key}_{m}", []).append(r[m])
    values = [v for r in rows for v in (r["kl"], r["loss_increase"], r["output_change"])
              if v is not None]
    if not bool(torch.isfinite(torch.tensor(values, dtype=torch.float64)).all()):
        return CheckResult(NAME, 2, "fail", "Non-finite outputs or divergences under "
                           "perturbation: a small change of the input breaks the numerics. "
                           "Run Tier 1's output_stability.", metrics, threshold, rows)
    subs = [r for r in rows if r["perturbation"] == "token substitution"]
    noise = [r for r in rows if r["perturbation"] == "embedding noise"]
    parts = [_line("replacing", subs, "of tokens")]
    if not noise:
        parts.append(f"no embedding-noise sweep ({no_embedding_reason(adapter)})")
        summary = "; ".join(parts)
        return CheckResult(NAME, 2, "pass", f"{summary}. {note}", metrics, threshold, rows)
    parts.insert(0, _line("embedding noise", noise, "RMS"))
    tiny = noise[0]
    amplification = tiny["output_change"] / NOISE[0]
    metrics["tiny_noise_amplification"] = amplification
    summary = "; ".join(parts)
    if tiny["agreement"] is not None and tiny["agreement"] < min_agree:
        return CheckResult(NAME, 2, "warn", f"Predictions flip under tiny noise: only "
                           f"{tiny['agreement']:.0%} of top-1 predictions survive noise of "
                           f"{NOISE[0]:g} × the embedding RMS (warn below {min_agree:.0%}). "
                           f"{summary}. {note}", metrics, threshold, rows)
    if amplification > max_amp:
        return CheckResult(NAME, 2, "warn", f"Tiny input noise is amplified ×{amplification:.3g}"
                           f" in the output (warn above ×{max_amp:g}). {summary}. {note}",
                           metrics, threshold, rows)
    return CheckResult(NAME, 2, "pass", f"{summary}. {note}", metrics, threshold, rows)


def _line(label: str, rows: list[dict], unit: str) -> str:
    if rows[0]["agreement"] is None:
        pts = ", ".join(f"{r['output_change']:.3g}" for r in rows)
        return f"{label} {rows[0]['strength']:g}…{rows[-1]['strength']:g} {unit}: relative " \
               f"output change {pts}"
    pts = ", ".join(f"{r['agreement']:.0%}" for r in rows)
    return (f"{label} {rows[0]['strength']:g}…{rows[-1]['strength']:g} {unit}: top-1 agreement "
            f"{pts}")

