"""Known GPUs: memory and dense peak FLOP/s, for "will it fit" answers and utilisation figures.

Shared by Tier 1 (``memory_footprint``, ``inference_speed``) and the presets (``preset_for``).

Peaks are the vendors' dense (no sparsity) figures in TFLOP/s. ``fp32`` is plain FP32 (not
TF32); ``half`` is fp16 tensor cores on T4 (no bf16 there), bf16 on the others.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gb: float
    fp32_tflops: float
    half_tflops: float


GPUS: dict[str, GPU] = {
    "T4": GPU("T4", 16.0, 8.1, 65.0),
    "L4": GPU("L4", 24.0, 30.3, 121.0),
    "A100": GPU("A100", 40.0, 19.5, 312.0),
    "H100": GPU("H100", 80.0, 67.0, 989.0),
}
COLAB_FREE = GPUS["T4"]
# CUDA context, allocator fragmentation and framework buffers take about this much of a card.
RESERVED_GB = 1.0
_GB = 2**30


def usable_bytes(total_bytes: int) -> int:
    """What a training step may use of a card with ``total_bytes``: the total less RESERVED_GB."""
    return max(0, int(total_bytes - RESERVED_GB * _GB))


def lookup(device_name: str) -> GPU | None:
    """The table entry whose name appears in ``torch.cuda.get_device_name()``, if any."""
    upper = device_name.upper()
    return next((gpu for key, gpu in GPUS.items() if key in upper), None)
