"""Figures for Tier 2 results, drawn from their rows only when ``Report.plots()`` asks."""

from __future__ import annotations

import textwrap

from utils.report import CheckResult, register_plot

_CLASS_COLOURS = {"previous-token": "#4c72b0", "positional/local": "#55a868",
                  "sink-dominated": "#c44e52", "uniform": "#bbbbbb", "mixed": "#8172b2",
                  "cross": "#ccb974"}


def _weights(result: CheckResult) -> str:
    """A title's tail saying the weights are random, when the check knows they are."""
    return " (random init)" if result.metrics.get("weights_loaded") is False else ""


_MAP_SIDE = 32  # attention_patterns stores maps pooled to at most this many rows and columns
_COLS = 6  # attention maps per figure row


def _positions(side: int, length: int | None) -> tuple[tuple[float, float], str]:
    """The axis extent of a stored map's side and what a unit along it is: token positions
    when the side is the real length (or was pooled from the known ``length``), else bins."""
    if side < _MAP_SIDE or length == side:
        return (-0.5, side - 0.5), "position"
    if length is not None and length > side:
        return (-0.5, length - 0.5), "position"
    return (-0.5, side - 0.5), f"({side} bins)"


def _short_module(name: str, room: int = 30) -> str:
    """``model.decoder.layers.0.self_attn`` → ``…decoder.layers.0.self_attn``: whole dotted
    parts dropped from the left until it fits."""
    parts = name.split(".")
    while len(parts) > 1 and len(".".join(parts)) > room:
        parts = parts[1:]
    short = ".".join(parts)
    return short if short == name else "…" + short


def _draw_maps(fig, result: CheckResult, layers: list[int]) -> None:
    """One heatmap per attention call (sample 0, mean over heads), one shared colour bar."""
    import numpy as np
    from matplotlib.colors import PowerNorm

    maps = {layer: [r for r in result.rows if r["layer"] == layer] for layer in layers}
    means = {layer: np.mean([r["map"] for r in rows], axis=0) for layer, rows in maps.items()}
    top = max(float(m.max()) for m in means.values()) or 1.0
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=top)  # √ scale: causal maps span 1/T … 1
    cols = min(len(layers), _COLS)
    axes = fig.subplots((len(layers) + cols - 1) // cols, cols, squeeze=False)
    seq_len = result.metrics.get("seq_len")
    for ax in axes.flat[len(layers):]:
        ax.set_axis_off()
    for k, (ax, layer) in enumerate(zip(axes.flat, layers, strict=False)):
        rows, m = maps[layer], means[layer]
        # a self-attention map was pooled from seq_len × seq_len; a cross one from lengths
        # the rows do not keep, so its pooled axes are labelled as bins
        known = seq_len if rows[0].get("kind", "self") == "self" else None
        (x0, x1), x_unit = _positions(m.shape[1], known)
        (y0, y1), y_unit = _positions(m.shape[0], known)
        image = ax.imshow(m, cmap="viridis", norm=norm, extent=(x0, x1, y1, y0),
                          interpolation="nearest", aspect="auto")
        ax.set_title(f"call {layer}: {_short_module(rows[0]['module'])}", fontsize=9)
        ax.tick_params(labelsize=8)
        if k % cols == 0 or y_unit != "position":
            ax.set_ylabel(f"query {y_unit}", fontsize=9)
        if k >= len(layers) - cols:
            ax.set_xlabel(f"key {x_unit}", fontsize=9)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9, pad=0.02)
    bar.set_label("attention weight (√ scale)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    fig.suptitle(f"Attention maps{_weights(result)} — sample 0, mean over heads: each row is a "
                 "query, each column the key it attends to", fontsize=10)


def _uninformative_classes(result: CheckResult) -> str | None:
    """Why the head classes say nothing, or None when they are worth drawing: at random init
    every head is near-uniform, so a panel of identical 'uniform' cells would only mislead."""
    if result.metrics.get("weights_loaded") is not False:
        return None
    if any(r["class"] != "uniform" for r in result.rows):
        return None
    entropies = sorted(f"{r['norm_entropy']:.2f}" for r in result.rows
                       if r.get("norm_entropy") is not None)
    spread = ("" if not entropies else f" (normalised entropy {entropies[0]}; 1 = uniform)"
              if entropies[0] == entropies[-1] else
              f" (normalised entropy {entropies[0]}–{entropies[-1]}; 1 = uniform)")
    return (f"Head classes: all {len(result.rows)} heads are uniform{spread}, as expected at "
            "random init — no weights were loaded, so no head has learned where to look yet. "
            "Previous-token, positional and sink heads appear only after training: load "
            "trained weights (a .pt or .safetensors file beside model.py) and run Tier 2 again.")


def _draw_classes(fig, result: CheckResult, layers: list[int]) -> None:
    """One cell per head, coloured by its class, labelled with its normalised entropy."""
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    heads = max(r["head"] for r in result.rows) + 1
    classes = list(_CLASS_COLOURS)
    cells = np.full((len(layers), heads), np.nan)
    ax = fig.subplots()
    labelled = len(layers) * heads <= 144
    for r in result.rows:
        i = layers.index(r["layer"])
        cells[i, r["head"]] = classes.index(r["class"])
        if labelled and r.get("norm_entropy") is not None:
            dark = r["class"] in ("previous-token", "sink-dominated", "mixed")
            ax.text(r["head"], i, f"{r['norm_entropy']:.2f}", ha="center", va="center",
                    fontsize=7, color="white" if dark else "black")
    ax.imshow(cells, cmap=ListedColormap(list(_CLASS_COLOURS.values())), vmin=0,
              vmax=len(classes) - 1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.tick_params(labelsize=8)
    ax.set_xlabel("head", fontsize=9)
    ax.set_ylabel("attention call", fontsize=9)
    note = "" if result.metrics.get("weights_loaded") else " — random or unknown weights"
    ax.set_title(f"Head classes (number: normalised entropy, 1 = uniform){note}", fontsize=9)
    present = {r["class"] for r in result.rows}
    ax.legend(handles=[Patch(color=c, label=n) for n, c in _CLASS_COLOURS.items()
                       if n in present], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


@register_plot("attention_patterns")
def plot_attention_patterns(result: CheckResult):
    """Top: each attention call's map (sample 0, mean over heads) with query/key axes and one
    colour bar. Bottom: the head classes — or, at random init where every head is uniform,
    the sentence saying why there is nothing to classify yet."""
    import matplotlib.pyplot as plt

    layers = sorted({r["layer"] for r in result.rows})
    heads = max(r["head"] for r in result.rows) + 1
    cols = min(len(layers), _COLS)
    map_rows = (len(layers) + cols - 1) // cols
    why_not = _uninformative_classes(result)
    bottom = 0.9 if why_not else 0.9 + 0.28 * len(layers)
    fig = plt.figure(figsize=(max(2.3 * cols + 1.2, 0.45 * heads + 3.0, 7.5),
                              2.5 * map_rows + 0.6 + bottom), layout="constrained")
    # an array of the two subfigures (the stubs say one SubFigure)
    top_fig, bottom_fig = fig.subfigures(  # type: ignore[misc]
        2, 1, height_ratios=[2.5 * map_rows + 0.6, bottom])
    _draw_maps(top_fig, result, layers)
    if why_not:
        width = int(fig.get_figwidth() * 12)  # characters of 9-pt text per line
        bottom_fig.text(0.02, 0.5, textwrap.fill(why_not, width), ha="left", va="center",
                        fontsize=9,
                        bbox={"boxstyle": "round", "facecolor": "#f6f8fa",
                              "edgecolor": "#d0d7de"})
    else:
        _draw_classes(bottom_fig, result, layers)
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
    ax.set_xticks(x, [str(r["token_id"]) for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("attribution")
    ax.set_xlabel(f"input token id (target: position {rows[0]['target_position']})")
    ax.set_title(f"Attribution per input token, sample 0{_weights(result)} (completeness delta "
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
        ax.set_title(kind, fontsize=10)
        if key == "agreement":
            ax.set_ylim(0, 1.05)
            need = result.threshold.get("warn_agreement_below")
            if kind == "embedding noise" and need is not None:
                tiny = result.threshold.get("tiny_noise", x[0])
                ax.plot([tiny], [need], marker="_", markersize=18, color="black")
                ax.text(tiny, need - 0.04, f"warn below {need:.0%}", fontsize=7, va="top")
        if rows[0]["kl"] is not None:
            twin = ax.twinx()
            twin.plot(x, [r["kl"] for r in rows], marker="s", color="#c44e52", ls="--")
            twin.set_ylabel("KL(clean ‖ perturbed)", color="#c44e52")
    fig.suptitle(f"Robustness{_weights(result)}: how predictions change as the input is "
                 "perturbed (blue: agreement with the clean input; red dashed: divergence)",
                 fontsize=10)
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
    ax.set_title("Generation consistency: greedy decoding step by step vs one full pass",
                 fontsize=10)
    ax.set_xlabel("generated token")
    ax.set_ylabel("relative logit difference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
