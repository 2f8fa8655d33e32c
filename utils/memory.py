"""What one training step costs in memory: the model behind ``memory_footprint`` and presets.

A step holds the parameters, their gradients, AdamW's two fp32 moments and the activations that
autograd saves for backward. Activations are measured exactly with ``saved_tensors_hooks`` at
two short lengths and fitted per sample as ``αT + βT²`` (attention maps grow with T²), so one
measurement answers any batch and any length. Mixed precision halves the activations (autocast
saves fp16/bf16 copies); weights, gradients and optimizer state stay fp32.

Example:
    >>> est = estimate_train_memory(adapter, batch_size=8, seq_len=256, precision="16-mixed")
    >>> est.total / 2**30, est.fits(15 * 2**30)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


__all__ = ["ACTIVATION_SHARE", "MemoryEstimate", "activation_fit", "estimate_train_memory",
           "max_batch_size"]

# Share of the fp32 activations a step keeps under each precision (TrainingConfig's values
# after ``effective_precision``; "auto" must be resolved first).
ACTIVATION_SHARE: dict[str, float] = {"32": 1.0, "16-mixed": 0.5, "bf16-mixed": 0.5}
# Longest length the fit measures at (two short forwards are enough to separate αT from βT²).
_MEASURE_LEN = 64

# model -> {(task, seed, lengths, dtype, device type): (α, β)}; measured once per model.
_FITS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[float, float]]] = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one optimizer step needs at a batch and length (estimates, hence floats).

    Attributes:
        params: The weights, at their own dtypes.
        grads: One fp32 gradient per trainable weight.
        optimizer: AdamW's two fp32 moments per trainable weight.
        activations: What autograd saves for backward, for the whole micro-batch.
        batch_size: The micro-batch the estimate is for.
        seq_len: The sequence length the estimate is for.
        precision: ``"32"``, ``"16-mixed"`` or ``"bf16-mixed"``.
    """

    params: float
    grads: float
    optimizer: float
    activations: float
    batch_size: int
    seq_len: int
    precision: str = "32"

    @property
    def total(self) -> float:
        """All of it: parameters + gradients + optimizer state + activations."""
        return self.params + self.grads + self.optimizer + self.activations

    def fits(self, device_bytes: float) -> bool:
        """Whether the step fits in ``device_bytes`` (pass what a step may use, not the card)."""
        return self.total <= device_bytes


def _saved_bytes(adapter: Adapter, batch: dict[str, torch.Tensor], param_ptrs: set[int]) -> int:
    """Bytes autograd keeps for backward during one forward (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        adapter.loss(batch)
    return sum(seen.values())


def _measure(adapter: Adapter, seed: int, t_a: int, t_b: int) -> tuple[float, float]:
    params = {p.untyped_storage().data_ptr() for p in adapter.model.parameters()}
    b = 2
    a_a = _saved_bytes(adapter, adapter.make_inputs(b, t_a, seed=seed), params) / b
    if t_b == t_a:
        return a_a / t_a, 0.0
    a_b = _saved_bytes(adapter, adapter.make_inputs(b, t_b, seed=seed), params) / b
    beta = (a_b / t_b - a_a / t_a) / (t_b - t_a)
    if beta < 0:
        return a_b / t_b, 0.0
    return max(a_a / t_a - beta * t_a, 0.0), beta


def activation_fit(adapter: Adapter, *, seed: int = 0, max_len: int | None = None) -> tuple[float, float]:
    """Per-sample activation bytes as ``(α, β)`` with activations(T) = αT + βT².

    Measured in train mode (dropout masks count) with two forwards at batch 2, at lengths
    ``max_len // 2`` (at most 16) and ``max_len`` (at most 64), and cached per model: the next
    call with the same settings costs nothing. The model's train/eval mode and the global RNG
    are left as they were.

    Args:
        adapter: A ``ModelAdapter``.
        seed: Seed of the generated inputs.
        max_len: Longest length the model takes; None = its ``max_seq_len`` (256 when unknown).
    """
    top = max_len or min(adapter.max_seq_len or 256, 256)
    t_a, t_b = max(1, min(top, _MEASURE_LEN // 2) // 2), min(top, _MEASURE_LEN)
    model = adapter.model
    first = next(model.parameters(), None)
    key = (adapter.task, seed, t_a, t_b, first.dtype if first is not None else None,
           adapter.device.type)
    cached = _FITS.setdefault(model, {})
    if key not in cached:
        was_training = model.training
        devices = [adapter.device] if adapter.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                model.train()
                cached[key] = _measure(adapter, seed, t_a, t_b)
        finally:
            model.train(was_training)
    return cached[key]


def _fixed_bytes(model: nn.Module) -> tuple[int, int, int]:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return params, trainable, 2 * trainable  # weights, fp32 grads, AdamW's two moments


def _share(precision: str) -> float:
    try:
        return ACTIVATION_SHARE[precision]
    except KeyError:
        raise ValueError(f"precision {precision!r} is not one of {sorted(ACTIVATION_SHARE)}; "
                         "resolve 'auto' with TrainingConfig.effective_precision first") from None


def estimate_train_memory(adapter: Adapter, batch_size: int, seq_len: int, *, precision: str = "32",
                          fit: tuple[float, float] | None = None) -> MemoryEstimate:
    """Bytes one training step of ``adapter`` needs at ``batch_size`` × ``seq_len``.

    Args:
        adapter: A ``ModelAdapter``.
        batch_size: The micro-batch (one forward/backward; gradient accumulation adds nothing).
        seq_len: Tokens per sample.
        precision: ``"32"``, ``"16-mixed"`` or ``"bf16-mixed"``.
        fit: ``(α, β)`` from :func:`activation_fit`; None measures (once per model).

    Example:
        >>> estimate_train_memory(adapter, 8, 256).total / 2**20   # MB
    """
    alpha, beta = fit if fit is not None else activation_fit(adapter)
    params, grads, optimizer = _fixed_bytes(adapter.model)
    per_sample = alpha * seq_len + beta * seq_len * seq_len
    return MemoryEstimate(params, grads, optimizer, per_sample * batch_size * _share(precision),
                          batch_size, seq_len, precision)


def max_batch_size(adapter: Adapter, seq_len: int, device_bytes: float, *, precision: str = "32",
                   fit: tuple[float, float] | None = None) -> int:
    """The largest micro-batch whose step fits in ``device_bytes``.

    0 when even one sample does not fit, or when the loss saved nothing for backward (no
    trainable weight reaches it, so there is nothing to train).
    """
    alpha, beta = fit if fit is not None else activation_fit(adapter)
    fixed = sum(_fixed_bytes(adapter.model))
    per_sample = (alpha * seq_len + beta * seq_len * seq_len) * _share(precision)
    if per_sample <= 0 or device_bytes <= fixed:
        return 0
    return int((device_bytes - fixed) // per_sample)
