"""Named training presets, and :func:`preset_for`, which sizes one to a model and a device.

A preset is a plain :class:`~utils.training.config.TrainingConfig`; the table below is the only
place presets are defined, for the CLI (``--preset``), the notebooks and the wizard.

Example:
    >>> config = preset("smoke")                       # seconds on a CPU
    >>> config = preset_for(adapter)                   # colab-t4 on a GPU, cpu otherwise, sized
    >>> config = preset_for(adapter, "cuda", name="colab-a100", max_steps=10_000)
"""

from __future__ import annotations

import difflib
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from utils.environment import free_memory_bytes, resolve_device
from utils.errors import UserError
from utils.gpu_table import usable_bytes
from utils.memory import activation_fit, estimate_train_memory, max_batch_size
from utils.training.config import TrainingConfig

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


__all__ = ["CPU_MEMORY_SHARE", "PRESETS", "device_budget", "fit_length", "preset", "preset_for"]

PRESETS: MappingProxyType[str, TrainingConfig] = MappingProxyType({
    # Tests and demos: a few seconds on one CPU core, with a validation and a checkpoint.
    "smoke": TrainingConfig(
        max_steps=20, batch_size=4, seq_len=64, lr=1e-3, warmup_steps=2, val_every=10,
        val_batches=2, checkpoint_every=10, log_every=1, precision="32", accelerator="cpu"),
    # A small model on a laptop or Colab's CPU runtime: minutes.
    "cpu": TrainingConfig(
        max_steps=300, batch_size=8, seq_len=128, lr=1e-3, warmup_steps=30, val_every=100,
        val_batches=20, checkpoint_every=100, precision="32", accelerator="cpu"),
    # Colab's free T4 (16 GB, fp16 tensor cores, no bf16; 2 CPU cores for loader workers).
    "colab-t4": TrainingConfig(
        max_steps=2000, batch_size=8, grad_accum=4, lr=3e-4, warmup_steps=100, val_every=200,
        val_batches=50, checkpoint_every=200, precision="16-mixed", accelerator="gpu",
        num_workers=2),
    # Colab's A100 (40 GB, bf16, 12 CPU cores).
    "colab-a100": TrainingConfig(
        max_steps=5000, batch_size=32, grad_accum=2, lr=3e-4, warmup_steps=200, val_every=250,
        val_batches=100, checkpoint_every=250, precision="bf16-mixed", accelerator="gpu",
        num_workers=4),
})

# Share of the host's available RAM a CPU training step may use: the data, the tokenizer, the
# Python process itself and whatever else runs on the machine need the rest.
CPU_MEMORY_SHARE = 0.5
_GB = 2**30


def preset(name: str, **overrides: Any) -> TrainingConfig:
    """The preset called ``name`` with ``overrides`` (TrainingConfig fields) applied.

    An unknown name is a :class:`~utils.errors.UserError` listing the presets.
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"Unknown preset {name!r}.{hint}",
                        why=f"The presets are: {', '.join(PRESETS)}.",
                        fix="Pass one of those names (--preset NAME), or build a TrainingConfig.")
    return PRESETS[name].replace(**overrides)


def fit_length(config: TrainingConfig, adapter, *, explicit: bool = False) -> TrainingConfig:
    """A preset's ``seq_len`` capped at the model's ``max_seq_len`` (a preset does not know
    the model); a length the caller gave explicitly is left for the config to refuse."""
    top = adapter.max_seq_len
    if explicit or not config.seq_len or not top or config.seq_len <= top:
        return config
    return config.replace(seq_len=top)


def device_budget(device: torch.device) -> int | None:
    """Bytes one training step may use on ``device``; None when it cannot be told.

    A GPU: its free memory, at most the card's total less the share the CUDA context and the
    allocator take (``utils.gpu_table.RESERVED_GB``). A model already on the card is counted
    again by the estimate, which errs on the safe side. The CPU: ``CPU_MEMORY_SHARE`` of the
    host's available RAM.
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return min(int(free), usable_bytes(total))
    available = free_memory_bytes(device)
    return None if available is None else int(available * CPU_MEMORY_SHARE)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def preset_for(adapter: Adapter, device: str | torch.device | None = None, *, name: str | None = None,
               memory_bytes: int | None = None, **overrides: Any) -> TrainingConfig:
    """A preset whose micro-batch fits ``adapter``'s training step in the device's memory.

    The step's memory comes from :func:`utils.memory.estimate_train_memory` (Tier 1's model,
    measured once per model), at the preset's length and effective precision. The effective
    batch (``batch_size × grad_accum``) is kept: the micro-batch becomes the largest divisor of
    it that fits, and ``grad_accum`` makes up the rest. A micro-batch given in ``overrides``
    (``batch_size``/``grad_accum``) is kept when it fits and only shrunk when it does not.

    Args:
        adapter: A ``ModelAdapter``.
        device: Where training runs: ``"cpu"``, ``"cuda"``, a ``torch.device``; None = a CUDA
            GPU when there is one, else the CPU.
        name: The preset; None = ``"colab-t4"`` on a CUDA device, ``"cpu"`` otherwise.
        memory_bytes: What a step may use; None = :func:`device_budget` of ``device``. When
            neither tells, the preset's split is returned unchanged.
        **overrides: TrainingConfig fields applied to the preset before it is sized.

    Raises:
        UserError: When even one sample at the preset's length does not fit.
    """
    dev = resolve_device(None if device is None else str(device))
    config = preset(name or ("colab-t4" if dev.type == "cuda" else "cpu"), **overrides)
    config = fit_length(config, adapter, explicit="seq_len" in overrides)
    budget = memory_bytes if memory_bytes is not None else device_budget(dev)
    if budget is None:
        return config
    seq = config.seq_len_for(adapter.max_seq_len)
    bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    precision = config.effective_precision(dev.type, bf16)
    fit = activation_fit(adapter, seed=config.seed)
    most = max_batch_size(adapter, seq, budget, precision=precision, fit=fit)
    if most < 1:
        need = estimate_train_memory(adapter, 1, seq, precision=precision, fit=fit).total
        raise UserError(
            f"One training sample of length {seq} needs ≈ {need / _GB:.2f} GB at precision "
            f"{precision!r} (weights, gradients, AdamW state and activations), but {dev.type} "
            f"offers ≈ {budget / _GB:.2f} GB for a step.",
            why="Estimated from autograd's saved tensors (the model behind Tier 1's "
            "memory_footprint).",
            fix="Pass a shorter seq_len, use precision='16-mixed' or 'bf16-mixed' on a GPU, "
            "shrink the model, or use a larger GPU.")
    effective = config.effective_batch_size
    explicit = "batch_size" in overrides or "grad_accum" in overrides
    if explicit and config.batch_size <= most:
        return config
    micro = _largest_divisor(effective, most)
    return config.replace(batch_size=micro, grad_accum=effective // micro)
