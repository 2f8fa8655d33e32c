"""Figures for Tier 1 results, drawn from their rows only when ``Report.plots()`` asks."""

from __future__ import annotations

import math

from utils.gpu_table import COLAB_FREE
from utils.report import CheckResult, register_plot


def _axes(title: str, width: float = 8.0, height: float = 3.5):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_title(title)
    return fig, ax


def _log_scale(ax, axis: str = "y") -> None:
    """A log axis whose ticks read ``0.5`` or ``2e-06``, not ``5 × 10^-1``; ticks at 2 and 5
    are labelled too when the axis spans less than two decades (else only powers of ten)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis

    def minor(value, _):
        lo, hi = sorted(target.get_view_interval())
        return f"{value:.3g}" if lo > 0 and hi / lo < 100 else ""

    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    target.set_minor_locator(LogLocator(subs=(2, 5)))
    target.set_minor_formatter(FuncFormatter(minor))


def short_names(names: list[str]) -> list[str]:
    """Parameter names without the dotted prefix they all share (``transformer.``) and without
    ``.weight``, so tick labels stay short: ``transformer.h.0.attn.weight`` → ``h.0.attn``. A
    block index keeps its container's name (``h.0``, never a bare ``0``)."""
    if len(names) > 1:
        parts = [n.split(".") for n in names]
        common = 0
        while all(len(p) > common + 1 and p[common] == parts[0][common]
                  and not p[common + 1].isdigit() for p in parts):
            common += 1
        names = [".".join(p[common:]) for p in parts]
    return [n.removesuffix(".weight") or n for n in names]


def _by_layer(rows: list[dict], key: str) -> dict[str, float]:
    """Layer -> root-sum-square of ``key`` over its rows, in model order."""
    out: dict[str, float] = {}
    for r in rows:
        value = r.get(key)
        if value is not None and value == value and value != float("inf"):
            out[r["layer"]] = (out.get(r["layer"], 0.0) ** 2 + value**2) ** 0.5
    return out


@register_plot("gradient_flow")
def plot_gradient_flow(result: CheckResult):
    layers = _by_layer(result.rows, "grad_norm")
    labels = short_names(list(layers))
    fig, ax = _axes("Gradient norm per layer (root-sum-square over its parameters)",
                    width=max(8.0, 0.35 * len(layers)))
    ax.bar(range(len(layers)), [max(v, 1e-30) for v in layers.values()], color="#4c72b0")
    _log_scale(ax)
    slanted = len(labels) > 8 or max(map(len, labels), default=0) > 8
    ax.set_xticks(range(len(layers)), labels, rotation=45 if slanted else 0,
                  ha="right" if slanted else "center", fontsize=8)
    ax.set_ylabel("gradient norm")
    missing = [r["parameter"] for r in result.rows if r["state"] in ("no gradient", "zero")]
    if missing:
        ax.text(0.01, 0.95, f"{len(missing)} parameters get no gradient", color="#cf222e",
                transform=ax.transAxes, va="top")
    fig.tight_layout()
    return fig


_VERDICT_COLOURS = {"fail": "#cf222e", "warn": "#9a6700", "pass": "#1a7f37"}
_MANY_MATRICES = 40  # above this, one row per layer (each matrix a dot) instead of per matrix


def init_bands(threshold: dict) -> list[tuple[float, float, str]]:
    """``[(low, high, verdict)]`` over gains ``(0, inf)``, as ``parameter_initialization``
    judges a weight matrix: warn below ``warn_gain_below``, pass up to ``warn_gain_above``, warn
    up to ``fail_gain_above``, fail beyond (each upper bound belongs to the band below it)."""
    low = threshold.get("warn_gain_below", 0.01)
    fail = threshold.get("fail_gain_above", 8.0)
    high = min(threshold.get("warn_gain_above", 3.0), fail)  # a fail limit below it wins
    return [(0.0, low, "warn"), (low, high, "pass"), (high, fail, "warn"),
            (fail, math.inf, "fail")]


@register_plot("parameter_initialization")
def plot_parameter_initialization(result: CheckResult):
    """One row per weight matrix (per layer for big models), its gain on a log axis over the
    bands the check judges by (:func:`init_bands`, from the result's own threshold), so the
    figure agrees with the verdict whatever the thresholds were."""
    from matplotlib.ticker import NullFormatter

    rows = [r for r in result.rows if r["gain"] is not None]
    bands = init_bands(result.threshold)
    low, high, fail = bands[1][0], bands[1][1], bands[3][0]
    per_layer = len(rows) > _MANY_MATRICES
    labels = list(dict.fromkeys(short_names([r["layer"] for r in rows]) if per_layer
                                else short_names([r["parameter"] for r in rows])))
    keys = short_names([r["layer"] for r in rows]) if per_layer else labels
    fig, ax = _axes(f"Weight gain = std × √fan_in per {'layer' if per_layer else 'matrix'}: "
                    f"passes in {low:g}–{high:g}, fails above {fail:g}",
                    width=8.0, height=1.9 + 0.24 * max(len(labels), 4))
    ax.set_title(ax.get_title(), pad=14, fontsize=11)  # room for the band names above the axes
    gains = [r["gain"] for r in rows if r["gain"] > 0]
    left = min([low / 3, *(g / 2 for g in gains)])
    right = max([fail * 3, *(g * 2 for g in gains)])
    for lo, hi, word in bands:
        lo, hi = max(lo, left), min(hi, right)
        if hi <= lo:
            continue
        ax.axvspan(lo, hi, color=_VERDICT_COLOURS[word], alpha=0.12, lw=0, label=word)
        ax.text((lo * hi) ** 0.5, 1.0, word, color=_VERDICT_COLOURS[word], ha="center",
                va="bottom", fontsize=8, transform=ax.get_xaxis_transform())
    ax.axvline(1.0, color="black", lw=0.6, ls="--")
    colours = [_VERDICT_COLOURS[r["verdict"][:4]] if r["verdict"][:4] in ("fail", "warn")
               else "#4c72b0" for r in rows]
    y = [labels.index(k) for k in keys]
    ax.scatter([max(r["gain"], left) for r in rows], y, c=colours, s=22, zorder=3)
    spans = [(yi, r, c) for yi, r, c in zip(y, rows, colours, strict=True) if r.get("gain_low")]
    if spans:  # the sampling tolerance the verdict allows: it goes by the bar's ends
        ax.hlines([yi for yi, _, _ in spans], [max(r["gain_low"], left) for _, r, _ in spans],
                  [r["gain_high"] for _, r, _ in spans], colors=[c for _, _, c in spans],
                  lw=1.2, zorder=2)
    ax.set_xlim(left, right)
    _log_scale(ax, "x")
    # powers of ten and the band edges; a power of ten too close to an edge (10 by 8) gives way
    decades = [10.0**e for e in range(math.ceil(math.log10(left)),
                                      math.floor(math.log10(right)) + 1)]
    ticks = sorted({low, high, fail, *(v for v in decades if all(
        abs(math.log10(v / edge)) > 0.2 for edge in (high, fail)))})
    ticks, names = _apart(ticks)
    ax.set_xticks(ticks, names)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # model order, top to bottom
    ax.set_xlabel(f"gain{' (one dot per matrix)' if per_layer else ''}; dashed: 1, the input's "
                  f"scale kept; bars: ±{result.threshold.get('sampling_z', 0):g} standard "
                  "errors of the sampled std\ncommon inits give ≈ 0.1–1.5; N(0, 0.02) at width "
                  "d gives 0.02·√d", fontsize=9)
    if not rows:
        ax.text(0.5, 0.5, "no weight matrices (only embeddings, norms and biases)",
                transform=ax.transAxes, ha="center")
    fig.tight_layout()
    return fig


def _apart(ticks: list[float], min_decades: float = 0.15) -> tuple[list[float], list[str]]:
    """Ticks on a log axis at least ``min_decades`` apart, so no two labels run together
    (2.5 and 3 printed as "2.53"); a tick too close to the one before joins its label."""
    kept: list[float] = []
    names: list[str] = []
    for t in ticks:
        if kept and math.log10(t / kept[-1]) < min_decades:
            names[-1] = f"{names[-1]}/{t:g}"
            continue
        kept.append(t)
        names.append(f"{t:g}")
    return kept, names


@register_plot("output_stability")
def plot_output_stability(result: CheckResult):
    fig, ax = _axes("Largest |logit| by sequence length")
    for label in dict.fromkeys(r["input"] for r in result.rows):
        pts = [(r["seq_len"], r["max_abs_logit"]) for r in result.rows if r["input"] == label]
        ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set_xlabel("sequence length")
    ax.set_ylabel("largest |logit|")
    _log_scale(ax)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@register_plot("memory_footprint")
def plot_memory_footprint(result: CheckResult):
    import numpy as np

    rows = result.rows
    fig, ax = _axes(f"Training memory at length {rows[0]['seq_len']} (estimate)")
    # side by side on a log axis: stacked, the weights of a small model vanish under its
    # activations; here each part stays readable, and so does the card's size above them
    parts = (("params_mb", "weights"), ("grads_mb", "gradients"),
             ("optimizer_mb", "AdamW state"), ("activations_mb", "activations"))
    x, width = np.arange(len(rows)), 0.8 / (len(parts) + 1)
    for i, (key, label) in enumerate(parts):
        ax.bar(x + (i - len(parts) / 2) * width, [max(r[key], 1e-3) for r in rows], width,
               label=label)
    totals = [sum(r[k] for k, _ in parts) for r in rows]
    ax.bar(x + len(parts) / 2 * width, totals, width, color="#57606a", label="total")
    usable_gb = result.threshold["colab_t4_usable_gb"]
    ax.axhline(usable_gb * 1024, color="#cf222e", ls=":",
               label=f"Colab T4 ({COLAB_FREE.memory_gb:g} GB card, {usable_gb:g} GB usable)")
    ax.set_xticks(x, [str(r["batch"]) for r in rows])
    _log_scale(ax)
    ax.set_xlabel("batch size")
    ax.set_ylabel("MB (log scale)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@register_plot("inference_speed")
def plot_inference_speed(result: CheckResult):
    fig, ax = _axes("Forward latency over runs", height=3.0)
    ax.hist([r["ms"] for r in result.rows], bins=min(20, len(result.rows)), color="#4c72b0")
    ax.axvline(result.metrics["p50_ms"], color="black", ls="--", label="p50")
    ax.axvline(result.metrics["p90_ms"], color="#9a6700", ls=":", label="p90")
    ax.set_xlabel("ms per forward")
    ax.set_ylabel("runs")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # runs are counted, not measured
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@register_plot("overfit_one_batch")
def plot_overfit_one_batch(result: CheckResult):
    fig, ax = _axes("Loss while overfitting one batch", height=3.0)
    ax.plot([r["step"] for r in result.rows], [r["loss"] for r in result.rows], marker=".")
    first = result.metrics.get("initial_loss")
    need = result.threshold.get("pass_relative_drop")
    if first is not None and need is not None and first == first:
        ax.axhline(first * (1 - need), color="#1a7f37", ls=":", label=f"pass: −{need:.0%}")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{result.metrics.get('optimizer', '')} step")
    ax.set_ylabel("loss")
    fig.tight_layout()
    return fig


@register_plot("causal_masking")
def plot_causal_masking(result: CheckResult):
    fig, ax = _axes("Causal masking: change of earlier outputs when positions ≥ k change",
                    height=3.0)
    cuts = [str(r["changed_from"]) for r in result.rows]
    floor = result.threshold["max_rel_leak"] / 1e3  # an exact 0 is drawn here, and says so
    changes = [r["max_rel_change_before"] for r in result.rows]
    ax.bar(cuts, [max(c, floor) for c in changes],
           color=["#cf222e" if r["positions_moved"] else "#1a7f37" for r in result.rows])
    for x, c in enumerate(changes):
        if c <= 0:
            ax.text(x, floor, "0", ha="center", va="bottom", fontsize=8)
    ax.axhline(result.threshold["max_rel_leak"], color="black", ls=":", label="allowed")
    _log_scale(ax)
    ax.set_xlabel("k (first changed position)")
    ax.set_ylabel("relative change before k")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
