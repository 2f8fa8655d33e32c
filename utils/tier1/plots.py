"""Figures for Tier 1 results, drawn from their rows only when ``Report.plots()`` asks."""

from __future__ import annotations

from utils.report import CheckResult, register_plot


def _axes(title: str, width: float = 8.0, height: float = 3.5):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_title(title)
    return fig, ax


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
    fig, ax = _axes("Gradient norm per layer (log scale)")
    ax.bar(range(len(layers)), [max(v, 1e-30) for v in layers.values()], color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), list(layers), rotation=60, ha="right", fontsize=7)
    missing = [r["parameter"] for r in result.rows if r["state"] in ("no gradient", "zero")]
    if missing:
        ax.text(0.01, 0.95, f"{len(missing)} parameters get no gradient", color="#cf222e",
                transform=ax.transAxes, va="top")
    fig.tight_layout()
    return fig


@register_plot("parameter_initialization")
def plot_parameter_initialization(result: CheckResult):
    rows = [r for r in result.rows if r["gain"] is not None]
    fig, ax = _axes("Weight gain = std × sqrt(fan_in) per matrix (≈ 1 is healthy)")
    colours = ["#cf222e" if r["verdict"].startswith("fail") else "#9a6700"
               if r["verdict"].startswith("warn") else "#4c72b0" for r in rows]
    ax.bar(range(len(rows)), [max(r["gain"], 1e-6) for r in rows], color=colours)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.axhline(result.threshold.get("fail_gain_above", 8.0), color="#cf222e", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [r["parameter"] for r in rows], rotation=70, ha="right",
                  fontsize=6)
    fig.tight_layout()
    return fig


@register_plot("output_stability")
def plot_output_stability(result: CheckResult):
    fig, ax = _axes("Largest |logit| by sequence length")
    for label in dict.fromkeys(r["input"] for r in result.rows):
        pts = [(r["seq_len"], r["max_abs_logit"]) for r in result.rows if r["input"] == label]
        ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.set_xlabel("sequence length")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@register_plot("memory_footprint")
def plot_memory_footprint(result: CheckResult):
    rows = result.rows
    fig, ax = _axes(f"Training memory at length {rows[0]['seq_len']} (estimate)")
    batches = [r["batch"] for r in rows]
    bottom = [0.0] * len(rows)
    for key, label in (("params_mb", "weights"), ("grads_mb", "gradients"),
                       ("optimizer_mb", "AdamW state"), ("activations_mb", "activations")):
        values = [r[key] for r in rows]
        ax.bar([str(b) for b in batches], values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    t4_mb = result.threshold["colab_t4_usable_gb"] * 1024
    if t4_mb <= 10 * max(bottom):  # stacked bars need a linear axis; show the card if in range
        ax.axhline(t4_mb, color="#cf222e", ls=":", label="Colab T4 (usable)")
    else:
        ax.set_title(f"{ax.get_title()} — a Colab T4 offers {t4_mb / 1024:.0f} GB, far above")
    ax.set_xlabel("batch size")
    ax.set_ylabel("MB")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@register_plot("inference_speed")
def plot_inference_speed(result: CheckResult):
    fig, ax = _axes("Forward latency over runs", height=3.0)
    ax.hist([r["ms"] for r in result.rows], bins=min(20, len(result.rows)), color="#4c72b0")
    ax.axvline(result.metrics["p50_ms"], color="black", ls="--", label="p50")
    ax.axvline(result.metrics["p90_ms"], color="#9a6700", ls=":", label="p90")
    ax.set_xlabel("ms")
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
    fig, ax = _axes("Change of earlier outputs when tokens from position k on change",
                    height=3.0)
    cuts = [str(r["changed_from"]) for r in result.rows]
    ax.bar(cuts, [max(r["max_rel_change_before"], 1e-12) for r in result.rows],
           color=["#cf222e" if r["positions_moved"] else "#1a7f37" for r in result.rows])
    ax.axhline(result.threshold["max_rel_leak"], color="black", ls=":", label="allowed")
    ax.set_yscale("log")
    ax.set_xlabel("k (first changed position)")
    ax.set_ylabel("relative change before k")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
