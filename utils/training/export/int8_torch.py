"""``model.int8.pt``: torchao's dynamic int8 (``quantize_(m,
Int8DynamicActivationInt8WeightConfig())``: int8 weights per channel, activations per token)
saved as a state dict, the PyTorch option for int8.

Reloading needs the float model built first (from the exported folder, or the model's code)
and ``load_state_dict(state, assign=True)``, which puts torchao's int8 tensors in place of the
float parameters. Quantizing unties tied weights: the embedding stays fp32, the output head
becomes int8.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from utils.atomic import write_atomic_stream
from utils.environment import require
from utils.training.export.program import Job, LogitsModule

NAME, FILE, KIND = "int8_torch", "model.int8.pt", "int8"
REQUIRES = ("torchao",)


def _float_copy(job: Job) -> torch.nn.Module:
    return copy.deepcopy(job.program.adapter.model).eval()


def write(job: Job) -> Path:
    quant = require("torchao.quantization", "int8 quantization with torchao")
    model = _float_copy(job)
    quant.quantize_(model, quant.Int8DynamicActivationInt8WeightConfig())
    path = job.out_dir / FILE
    write_atomic_stream(path, lambda fh: torch.save(model.state_dict(), fh))
    return path


def runner(path: Path, job: Job) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    require("torchao.quantization", "Loading a torchao int8 model")
    model = _float_copy(job)  # the float architecture; every tensor comes from the file
    model.load_state_dict(torch.load(path, weights_only=True), assign=True)
    module = LogitsModule(dataclasses.replace(job.program.adapter, model=model),
                          job.program.names).eval()

    def run(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            return module(*inputs)

    return run


def extra_metrics(path: Path, job: Job, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    model = job.program.adapter.model
    unique = {t.data_ptr(): t.numel() * t.element_size()
              for t in [*model.parameters(), *model.buffers()]}
    return {"size_ratio_vs_fp32": path.stat().st_size / max(sum(unique.values()), 1)}


def example(names: tuple[str, ...]) -> str:
    args = ", ".join(names)
    return ("import torch, torchao, utils\n"
            "model = utils.load_model(\"folder/\").model  # the float architecture\n"
            "model.load_state_dict(torch.load(\"model.int8.pt\"), assign=True)\n"
            f"logits = model({args})  # as the model's own forward takes them")
