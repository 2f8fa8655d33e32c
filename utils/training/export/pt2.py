"""``model.pt2``: ``torch.export`` with a dynamic batch and length, served by
``torch.export.load(path).module()``.

The traced module is :class:`~utils.training.export.program.LogitsModule` in ``eval()``: it
takes the named inputs positionally and returns one logits tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from utils.training.export.program import Job, export_with_limit, staged

NAME, FILE, KIND = "pt2", "model.pt2", "exact"
REQUIRES: tuple[str, ...] = ()


def write(job: Job) -> Path:
    program = job.program
    module = program.module.eval()
    ep = export_with_limit(program, lambda shapes: torch.export.export(
        module, program.args, dynamic_shapes=shapes))
    with staged(job.out_dir) as tmp:  # torch.export.save wants a path or a seekable buffer
        torch.export.save(ep, str(tmp / FILE))
    return job.out_dir / FILE


def runner(path: Path, job: Job) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    module = torch.export.load(str(path)).module()

    def run(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            return module(*inputs)

    return run


def example(names: tuple[str, ...]) -> str:
    args = ", ".join(names)
    return ("import torch\n"
            "model = torch.export.load(\"model.pt2\").module()\n"
            f"logits = model({args})  # int64 tensors [batch, seq]")
