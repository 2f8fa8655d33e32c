"""A few training steps on a snapshot of the model (restored afterwards), for the checks that
look at what the first steps do."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO

import torch
from torch import nn

from utils.environment import free_memory_bytes

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



class Snapshot:
    """The model's state, restorable; kept in host memory only when it fits comfortably."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        state = model.state_dict()
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        free = free_memory_bytes("cpu")
        self.in_memory = free is None or nbytes < 0.25 * free
        self.copy: dict[str, torch.Tensor] | None = None
        self.file: BinaryIO | None = None
        if self.in_memory:  # one host copy (off the GPU for a CUDA model)
            self.copy = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        else:  # a big model: through the disk, never a second copy in memory
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by restore)
            torch.save(state, self.file)

    def restore(self) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.copy = torch.load(self.file, map_location="cpu", weights_only=True)
            self.file.close()
        assert self.copy is not None, "restore() once per snapshot"
        self.model.load_state_dict(self.copy)
        self.copy = None


# Optimizer steps after which a branch closed by design must have opened: two, because two
# zero matrices in series (modded-nanogpt zero-initialises both lm_head and each c_proj) give
# the inner one a gradient only once the outer one has moved.
OPENING_STEPS = 2


def train_without_dropout(model: nn.Module) -> None:
    """Train mode with every dropout module in eval, so train-mode forwards are repeatable."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or (
                "dropout" in type(m).__name__.lower() and not any(m.children())):
            m.eval()


@contextmanager
def after_first_steps(adapter: Adapter, options, lr: float = 1e-3,
                      touched: set[str] | None = None) -> Iterator[None]:
    """The model as after its first :data:`OPENING_STEPS` optimizer steps on random batches,
    while inside; its weights (and train/eval mode) as before afterwards.

    Each step is Adam's first, ``lr · sign(grad)``: every parameter with a gradient moves by
    the same amount whatever its scale. What starts closed by design — a zero-initialised
    output projection or head (modded-nanogpt), a layer scale or ReZero gain at 0 — opens
    after them, as in training; a real cut (``.detach()``, a diagonal-only mask) does not.
    A zero gate whose two steps are equal and opposite lands back on 0, closed again, though
    its branch had a gradient at the second step: ``touched``, when given, collects the names
    of the parameters that got a nonzero finite gradient at any of the steps.
    """
    model = adapter.model
    was_training = model.training
    snapshot = Snapshot(model)
    try:
        train_without_dropout(model)
        t = min(options.max_len(adapter), 16)
        for step in range(OPENING_STEPS):
            model.zero_grad(set_to_none=True)
            loss = adapter.loss(adapter.make_inputs(2, t, seed=options.seed + 97 + step))
            if not loss.requires_grad:
                break
            loss.backward()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.grad is not None and bool(torch.isfinite(p.grad).all()):
                        p.add_(p.grad.sign(), alpha=-lr)
                        if touched is not None and bool(p.grad.any()):
                            touched.add(name)
        model.zero_grad(set_to_none=True)
        model.eval()
        yield
    finally:
        model.zero_grad(set_to_none=True)
        snapshot.restore()
        model.train(was_training)
