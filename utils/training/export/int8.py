"""``model.int8.onnx``: onnxruntime's dynamic int8 quantization of ``model.onnx`` for CPU
serving (weights of MatMul/Gemm in int8, activations quantized on the fly).

Weights are per channel and 7-bit (``reduce_range``): on x86 CPUs without VNNI the u8 x s8
kernels saturate with full 8-bit weights (measured here on a 48-wide GPT: 74% top-1 agreement
with fp32, against 97% with 7-bit). Not the deprecated ``torch.ao.quantization``. Embeddings stay in fp32, so on a small model
most of the file is not quantized; and at small widths int8 kernels are not faster than fp32
ones — the result reports the measured size and speed ratios, whichever way they go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from utils.environment import require
from utils.training.export import onnx as onnx_format
from utils.training.export.parity import time_pair
from utils.training.export.program import Job, staged

NAME, FILE, KIND = "int8", "model.int8.onnx", "int8"
REQUIRES = ("onnx", "onnxscript", "onnxruntime")


def write(job: Job) -> Path:
    source = job.artifacts.get("onnx")
    if source is None or not source.is_file():
        raise RuntimeError("int8 is quantized from model.onnx, which was not exported.")
    quantization = require("onnxruntime.quantization", "int8 quantization")
    external = onnx_format.weight_bytes(job.program.adapter.model) >= onnx_format.PROTOBUF_LIMIT
    with staged(job.out_dir) as tmp, onnx_format.quiet():
        quantization.quantize_dynamic(str(source), str(tmp / FILE),
                                      weight_type=quantization.QuantType.QInt8,
                                      per_channel=True, reduce_range=True,
                                      use_external_data_format=external)
    return job.out_dir / FILE


runner = onnx_format.runner


def extra_metrics(path: Path, job: Job, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Size and speed against the fp32 ``model.onnx`` in the same runtime."""
    fp32 = job.artifacts["onnx"]
    int8_s, fp32_s = time_pair(runner(path, job), onnx_format.runner(fp32, job), inputs)
    return {"size_ratio_vs_fp32": path.stat().st_size / fp32.stat().st_size,
            "speedup_vs_fp32": fp32_s / int8_s if int8_s else None}


def example(names: tuple[str, ...]) -> str:
    return onnx_format.example(names, FILE)
