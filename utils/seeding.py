"""Random number generators as data, and seeding that leaves the caller's generators alone.

Two needs share this module. A model's construction draws its initial weights from the global
generators, so the same seed must give the same weights (:func:`seeded`, used by
:func:`utils.load_model`), without shifting any random number the caller draws afterwards.
And Lightning restores the loops, the optimizer and the scheduler but not RNG states; without
them a resumed run draws different dropout masks than the run it continues
(:func:`capture_rng` / :func:`restore_rng`, stored in checkpoints in types
``torch.load(weights_only=True)`` accepts — a numpy state's array becomes a tensor).

Example:
    >>> with seeded(3):
    ...     model = GPT(config)   # the same weights every time; torch.rand() outside unchanged
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "seed_all", "seeded"]


def capture_rng() -> dict[str, Any]:
    """The states of torch (CPU and every CUDA device), numpy and Python's ``random``."""
    key, array, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": str(key), "state": torch.from_numpy(np.asarray(array).astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng` took."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with every global generator seeded from ``seed``, then put the caller's
    states back; ``None`` runs it on the caller's generators, untouched."""
    if seed is None:
        yield
        return
    state = capture_rng()
    seed_all(seed)
    try:
        yield
    finally:
        restore_rng(state)
