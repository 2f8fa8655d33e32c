"""The figure a person looks at after training: loss, perplexity and learning rate by step."""

from __future__ import annotations

from typing import Any

__all__ = ["plot_history"]


def plot_history(history: Any, *, title: str = "Training"):
    """Three panels from a ``metrics.csv`` frame: train/validation loss, validation
    perplexity (log scale), learning rate. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    fig.suptitle(title)
    loss, ppl, lr = axes
    if history is None or len(history) == 0:
        for ax in axes:
            ax.text(0.5, 0.5, "no steps logged yet", ha="center", va="center")
            ax.set_axis_off()
        return fig
    train = history.dropna(subset=["train_loss"]) if "train_loss" in history else history[:0]
    val = history.dropna(subset=["val_loss"]) if "val_loss" in history else history[:0]
    if len(train):
        loss.plot(train["step"], train["train_loss"], label="train", lw=1.2)
    if len(val):
        loss.plot(val["step"], val["val_loss"], "o-", label="validation", ms=4)
    loss.set(title="Loss", xlabel="optimizer step", ylabel="cross-entropy")
    loss.legend(loc="upper right")
    if len(val) and "val_perplexity" in val and val["val_perplexity"].notna().any():
        ppl.plot(val["step"], val["val_perplexity"], "o-", color="tab:orange", ms=4)
        ppl.set_yscale("log")
        ppl.set(title="Validation perplexity", xlabel="optimizer step", ylabel="perplexity")
    else:
        ppl.text(0.5, 0.5, "no validation perplexity\n(val_every=0, or a classifier)",
                 ha="center", va="center", transform=ppl.transAxes)
        ppl.set(title="Validation perplexity")
    if len(train) and "lr" in train:
        lr.plot(train["step"], train["lr"], color="tab:green")
    lr.set(title="Learning rate", xlabel="optimizer step", ylabel="lr")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig
