"""What each attention head looks at: per-head statistics, a class per head, degenerate heads.

Per head, averaged over the batch and over query rows 1…T-1 (row 0 has a single key in a
causal model): entropy (also normalised by the log of the number of visible keys), mean
distance |i - j| in tokens, the share on the first token (an attention sink), on the previous
token and on the diagonal, and the largest weight per row. Heads are classed previous-token,
sink-dominated, positional/local, uniform or mixed (cross-attention: cross). The check fails
only on non-finite or non-normalised weights; saturated heads, near-identical heads and
all-sink layers are warnings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from utils.checks import register
from utils.report import CheckResult
from utils.tier2._common import counting, mean_of, weights_note
from utils.tier2.capture import AttentionMap, capture_attention

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


NAME = "attention_patterns"
_MAP_SIDE = 32  # stored maps are pooled to at most this many rows and columns


def head_stats(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head statistics of self-attention weights ``w`` of shape ``(B, H, T, T)``."""
    T = w.shape[-1]
    i = torch.arange(T)
    causal = bool((w.triu(1).abs() <= 1e-6).all())
    # Keys each query can see, read off the map itself: masked keys get exactly 0 after
    # softmax (-inf, finfo.min or -1e4 all underflow), so causal, sliding-window and padding
    # masks are all accounted for. Rows that see one key have no entropy to normalise.
    visible = (w > 0).sum(-1).float()  # (B, H, T)
    seen = visible > 1
    dist = (i[:, None] - i[None, :]).abs().float()  # (T, T)
    ent = -(w * w.clamp_min(1e-12).log()).sum(-1)  # (B, H, T)
    rows = slice(1, None)

    def mean(x: torch.Tensor) -> torch.Tensor:  # (B, H, T-1) -> (H,)
        return x.mean(dim=(0, 2))

    norm = torch.where(seen, ent / visible.clamp_min(2).log(), torch.zeros_like(ent))
    norm_entropy = norm[..., rows].sum(dim=(0, 2)) / seen[..., rows].sum(dim=(0, 2)).clamp_min(1)
    return {
        "entropy": mean(ent[..., rows]),
        "norm_entropy": norm_entropy,
        "distance": mean((w * dist).sum(-1)[..., rows]),
        "first": mean(w[..., rows, 0]),
        "previous": mean(w.diagonal(offset=-1, dim1=-2, dim2=-1)),
        "diagonal": mean(w.diagonal(dim1=-2, dim2=-1)[..., rows]),
        "local": mean((w * (dist <= 2)).sum(-1)[..., rows]),
        "max_weight": mean(w.amax(-1)[..., rows]),
        "causal": torch.tensor(causal),
    }


def classify(s: Mapping[str, Any], cut: float = 0.5) -> str:
    """previous-token | sink-dominated | positional/local | uniform | mixed."""
    if s["previous"] >= cut:
        return "previous-token"
    if s["first"] >= cut:
        return "sink-dominated"
    if s["local"] >= 0.6 and s["norm_entropy"] < 0.9:
        return "positional/local"
    if s["norm_entropy"] >= 0.95:
        return "uniform"
    return "mixed"


def _pooled(w: torch.Tensor) -> list[list[float]]:
    """A ``(T, S)`` map pooled to at most ``_MAP_SIDE`` per side, rows still summing to 1."""
    T, S = w.shape
    if max(T, S) > _MAP_SIDE:
        w = torch.nn.functional.adaptive_avg_pool2d(w[None, None], (min(T, _MAP_SIDE),
                                                                    min(S, _MAP_SIDE)))[0, 0]
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return [[round(v, 4) for v in row] for row in w.tolist()]


def _head_rows(index: int, amap: AttentionMap) -> list[dict]:
    w = amap.weights
    self_attn = amap.kind == "self" and w.shape[-1] == w.shape[-2] and w.shape[-1] > 1
    stats = head_stats(w) if self_attn else None
    rows = []
    for h in range(w.shape[1]):
        row: dict[str, Any] = {"layer": index, "module": amap.name, "head": h,
                               "mechanism": amap.mechanism,
               "kind": amap.kind}
        if stats is None:
            ent = -(w[:, h] * w[:, h].clamp_min(1e-12).log()).sum(-1).mean()
            row |= {"class": "cross" if amap.kind == "cross" else "mixed",
                    "entropy": float(ent), "first": float(w[:, h, :, 0].mean()),
                    "max_weight": float(w[:, h].amax(-1).mean())}
        else:
            row |= {k: float(v[h]) for k, v in stats.items() if k != "causal"}
            row["class"] = classify(row)
        row["map"] = _pooled(w[0, h])
        rows.append(row)
    return rows


def _duplicates(amap: AttentionMap, rows: list[dict], tv_cut: float) -> list[tuple[int, int]]:
    """Pairs of heads in one call whose maps differ by less than ``tv_cut`` (total variation);
    pairs of uniform heads are left out: at random init every head is near-uniform."""
    w = amap.weights  # (B, H, T, S)
    pairs = []
    for a in range(w.shape[1]):
        for b in range(a + 1, w.shape[1]):
            if rows[a]["class"] == "uniform" and rows[b]["class"] == "uniform":
                continue
            tv = 0.5 * float((w[:, a] - w[:, b]).abs().sum(-1).mean())
            if tv < tv_cut:
                pairs.append((a, b))
    return pairs


def _malformed(maps: list[AttentionMap], tol: float) -> str | None:
    for amap in maps:
        w = amap.weights
        if not bool(torch.isfinite(w).all()):
            return f"non-finite attention weights in {amap.name} ({amap.mechanism})"
        worst = float((w.sum(-1) - 1).abs().max())
        if worst > tol or float(w.min()) < -tol:
            return (f"attention weights of {amap.name} do not form distributions (row sums off "
                    f"by up to {worst:.3g}, min weight {float(w.min()):.3g})")
    return None


@register(NAME, tier=2, thresholds=("row_sum_tol", "saturated", "duplicate_tv"))
def check_attention_patterns(adapter: Adapter, options) -> CheckResult:
    t = min(options.max_len(adapter), 64)
    batch = adapter.make_inputs(options.batch(adapter, 2), t, seed=options.seed)
    with counting(adapter) as passes:
        capture = capture_attention(adapter, batch)
    loaded, note = weights_note(adapter)
    metrics = {**passes, "seq_len": t, "weights_loaded": loaded}
    tol = options.threshold(f"{NAME}.row_sum_tol", 1e-3)
    saturated_cut = options.threshold(f"{NAME}.saturated", 0.98)
    tv_cut = options.threshold(f"{NAME}.duplicate_tv", 0.02)
    threshold = {"row_sum_tol": tol, "saturated_max_weight": saturated_cut,
                 "duplicate_tv_below": tv_cut}
    if not capture.maps:
        return CheckResult(NAME, 2, "skip", f"Skipped: {capture.note}.", metrics, threshold)
    how = " + ".join(capture.mechanisms)
    metrics |= {"mechanism": how, "attention_calls": len(capture.maps),
                "heads": sum(m.weights.shape[1] for m in capture.maps)}
    bad = _malformed(capture.maps, tol)
    if bad is not None:
        return CheckResult(NAME, 2, "fail", f"{bad} (captured via {how}). Attention must be a "
                           "softmax over finite scores: look for -inf on whole rows, missing "
                           "scaling, or a mask added after the softmax.", metrics, threshold)
    rows, duplicates = [], []
    for index, amap in enumerate(capture.maps):
        head_rows = _head_rows(index, amap)
        duplicates += [f"{amap.name} heads {a}&{b}" for a, b in _duplicates(amap, head_rows,
                                                                            tv_cut)]
        rows += head_rows
    classes = {c: sum(r["class"] == c for r in rows) for c in dict.fromkeys(
        r["class"] for r in rows)}
    saturated = [f"{r['module']} head {r['head']}" for r in rows
                 if r["max_weight"] >= saturated_cut and r["class"] != "previous-token"]
    sinks = [i for i in range(len(capture.maps))
             if all(r["class"] == "sink-dominated" for r in rows if r["layer"] == i)]
    metrics |= {"classes": classes, "saturated_heads": len(saturated),
                "duplicate_pairs": len(duplicates), "all_sink_calls": len(sinks),
                "mean_norm_entropy": mean_of(r.get("norm_entropy") for r in rows)}
    found = (f"{metrics['heads']} heads in {len(capture.maps)} attention calls via {how}: "
             + ", ".join(f"{n} {c}" for c, n in classes.items()))
    problems = []
    if saturated:
        problems.append(f"{len(saturated)} saturated head(s) (a weight ≥ {saturated_cut:g} in "
                        f"every row: scores too large, gradients vanish), e.g. {saturated[0]}")
    if duplicates:
        problems.append(f"{len(duplicates)} near-identical head pair(s) (redundant capacity), "
                        f"e.g. {duplicates[0]}")
    if sinks:
        problems.append(f"every head of {len(sinks)} attention call(s) parks on the first token")
    if loaded and classes.get("uniform", 0) == len(rows):
        problems.append("every head is uniform although trained weights were loaded")
    if problems:
        return CheckResult(NAME, 2, "warn", f"{found}. Degenerate: {'; '.join(problems)}. "
                           f"{note}", metrics, threshold, rows)
    return CheckResult(NAME, 2, "pass", f"{found}; weights finite and normalised. {note}",
                       metrics, threshold, rows)

