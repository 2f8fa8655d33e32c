"""Figures for Tier 2 results, drawn from their rows only when ``Report.plots()`` asks."""

from __future__ import annotations

from utils.report import CheckResult, register_plot

_CLASS_COLOURS = {"previous-token": "#4c72b0", "positional/local": "#55a868",
                  "sink-dominated": "#c44e52", "uniform": "#bbbbbb", "mixed": "#8172b2",
                  "cross": "#ccb974"}


@register_plot("attention_patterns")
def plot_attention_patterns(result: CheckResult):
    """Top: each attention call's map (sample 0, mean over heads). Bottom: one cell per head,
    coloured by its class, labelled with its normalised entropy."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    layers = sorted({r["layer"] for r in result.rows})
    heads = max(r["head"] for r in result.rows) + 1
    cols = min(len(layers), 6)
    fig = plt.figure(figsize=(2.2 * cols + 1, 2.4 * (len(layers) + cols - 1) // cols + 2.6))
    grid = fig.add_gridspec((len(layers) + cols - 1) // cols + 1, cols)
    for k, layer in enumerate(layers):
        rows = [r for r in result.rows if r["layer"] == layer]
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(np.mean([r["map"] for r in rows], axis=0), cmap="viridis", vmin=0)
        ax.set_title(f"{layer}: …{rows[0]['module'][-24:]}" if len(rows[0]["module"]) > 24
                     else f"{layer}: {rows[0]['module']}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    classes = list(_CLASS_COLOURS)
    cells = np.full((len(layers), heads), np.nan)
    ax = fig.add_subplot(grid[-1, :])
    for r in result.rows:
        i = layers.index(r["layer"])
        cells[i, r["head"]] = classes.index(r["class"])
        if r.get("norm_entropy") is not None:
            ax.text(r["head"], i, f"{r['norm_entropy']:.2f}", ha="center", va="center",
                    fontsize=6)
    ax.imshow(cells, cmap=ListedColormap(list(_CLASS_COLOURS.values())), vmin=0,
              vmax=len(classes) - 1, aspect="auto")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("attention call")
    ax.set_title("Head classes (number: normalised entropy)", fontsize=9)
    ax.legend(handles=[Patch(color=c, label=n) for n, c in _CLASS_COLOURS.items()],
              fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


@register_plot("attribution_analysis")
def plot_attribution_analysis(result: CheckResult):
    import matplotlib.pyplot as plt

    rows = [r for r in result.rows if r["sample"] == 0]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(rows)), 3.2))
    x = [r["position"] for r in rows]
    ax.bar([p - 0.2 for p in x], [r["ig"] for r in rows], width=0.4, label="Integrated Gradients")
    ax.bar([p + 0.2 for p in x], [r["grad_x_input"] for r in rows], width=0.4,
           label="gradient × input", alpha=0.7)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, [str(r["token_id"]) for r in rows], rotation=90, fontsize=6)
    ax.set_xlabel(f"input token id (target: position {rows[0]['target_position']})")
    ax.set_title(f"Attribution per token, sample 0 (completeness delta "
                 f"{result.metrics.get('convergence_delta', float('nan')):.1e})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@register_plot("robustness")
def plot_robustness(result: CheckResult):
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["perturbation"] for r in result.rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.0 * len(kinds), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = [r for r in result.rows if r["perturbation"] == kind]
        x = [r["strength"] for r in rows]
        key = "agreement" if rows[0]["agreement"] is not None else "output_change"
        ax.plot(x, [r[key] for r in rows], marker="o", color="#4c72b0")
        ax.set_ylabel("top-1 agreement" if key == "agreement" else "relative output change",
                      color="#4c72b0")
        if kind == "embedding noise":
            ax.set_xscale("log")
        ax.set_xlabel("noise × embedding RMS" if kind == "embedding noise"
                      else "share of tokens replaced")
        ax.set_title(kind)
        if rows[0]["kl"] is not None:
            twin = ax.twinx()
            twin.plot(x, [r["kl"] for r in rows], marker="s", color="#c44e52", ls="--")
            twin.set_ylabel("KL(clean ‖ perturbed)", color="#c44e52")
    fig.tight_layout()
    return fig


@register_plot("generation_consistency")
def plot_generation_consistency(result: CheckResult):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    steps = [r["step"] for r in result.rows]
    ax.plot(steps, [max(r["rel_logit_diff"], 1e-12) for r in result.rows], marker="o",
            label="step-by-step vs full pass")
    if any("cached_rel_logit_diff" in r for r in result.rows):
        ax.plot(steps, [max(r["cached_rel_logit_diff"], 1e-12) for r in result.rows],
                marker="s", label="cached vs uncached")
    ax.axhline(result.threshold.get("rtol", 1e-4), color="#cf222e", ls=":", label="tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("generated token")
    ax.set_ylabel("relative logit difference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
