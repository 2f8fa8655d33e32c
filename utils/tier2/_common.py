"""Small pieces the Tier 2 analyses share: pass counting, the token-embedding hook, and what
the testbench knows about the weights being analysed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



@contextmanager
def counting(adapter: Adapter) -> Iterator[dict[str, int]]:
    """Count the model's forward passes (one per top-level call, whatever the batch) while the
    block runs; callers add their backward passes to ``counts["backward_passes"]``."""
    counts = {"forward_passes": 0, "backward_passes": 0}

    def pre_hook(_module, _args):
        counts["forward_passes"] += 1

    handle = adapter.model.register_forward_pre_hook(pre_hook)
    try:
        yield counts
    finally:
        handle.remove()


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad, so a backward to the inputs builds no weight graph."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class EmbeddingSwap:
    """A forward hook on the token embedding that can read or replace its output.

    ``arm(fn)`` makes the next call of the embedding return ``fn(output)`` (one call only: a
    seq2seq model sharing one table for source and target keeps its decoder side untouched).
    ``seen`` holds the last original output.
    """

    def __init__(self, adapter) -> None:
        self.module = adapter.model.get_submodule(adapter.token_embedding)
        self._fn = None
        self.seen: torch.Tensor | None = None
        self.applied = 0

    def arm(self, fn) -> None:
        self._fn = fn

    def _hook(self, _module, _args, output: Any):
        if self._fn is None or not isinstance(output, torch.Tensor):
            return None
        fn, self._fn = self._fn, None
        self.seen = output.detach()
        new = fn(output)
        if new is None:
            return None
        if new.shape != output.shape:
            raise RuntimeError(f"embedding replacement of shape {tuple(new.shape)} does not fit "
                               f"the embedding output {tuple(output.shape)}")
        self.applied += 1
        return new.to(output.dtype)

    def __enter__(self) -> EmbeddingSwap:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def no_embedding_reason(adapter: Adapter) -> str | None:
    """Why the token embedding cannot be hooked, or None when it can."""
    if adapter.token_embedding is None:
        return ("no nn.Embedding receives the token ids (the adapter found none), so there is "
                "no embedding output to perturb or attribute to")
    return None


def weights_note(adapter: Adapter) -> tuple[bool | None, str]:
    """Whether trained weights were loaded, and the sentence a summary should carry."""
    weights = adapter.source.get("weights")
    if weights:
        return True, f"Weights loaded from {weights.get('file')}."
    if adapter.source.get("kind"):
        return False, ("Random init (no weights were loaded): these patterns describe the "
                       "architecture, not learned behaviour.")
    return None, ("No weights were loaded by the testbench; if this module is untrained, these "
                  "patterns describe the architecture, not learned behaviour.")


def call_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without labels: what ``adapter.logits`` takes."""
    return {k: v for k, v in batch.items() if k != "labels"}


def repeat_batch(batch: dict[str, torch.Tensor], times: int) -> dict[str, torch.Tensor]:
    """``times`` copies of every tensor, stacked along the batch dimension."""
    return {k: v.repeat(times, *([1] * (v.ndim - 1))) for k, v in batch.items()}


def mean_of(values) -> float | None:
    """The mean of the finite numbers among ``values`` (None when there are none)."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None
