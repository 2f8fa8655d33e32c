"""What every format exports: the model wrapped to return one logits tensor, its named inputs,
the example batch that is traced, and the dynamic batch and sequence dimensions.

The graph's inputs are ``input_ids`` ``[B, T]`` (int64), ``attention_mask`` ``[B, T]`` (int64,
1 = real token) when the model takes a padding mask, and ``decoder_input_ids`` ``[B, T_dec]``
for seq2seq; the mask shares the ids' ``Dim``s. Whatever mask convention the model uses (1 =
keep, or True = padding) is translated inside the graph by the adapter, so every artifact is
called the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["EXAMPLE_BATCH", "Job", "LogitsModule", "Program", "eval_mode", "export_with_limit",
           "staged"]

EXAMPLE_BATCH = 2  # >= 2 in every dynamic dimension, or torch.export specialises it to 1


class LogitsModule(nn.Module):
    """``forward(*inputs) -> logits`` over an adapter: what torch.export and ONNX trace.

    The model is a registered submodule, so its parameters and buffers become the graph's; the
    adapter (a plain object) only maps the named inputs onto the model's own signature.
    """

    def __init__(self, adapter: Any, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model = adapter.model
        self.names = names
        self.__dict__["adapter"] = adapter  # not a submodule: no second copy of the weights

    adapter: Any  # in __dict__, not a submodule (see __init__)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.adapter.logits(**dict(zip(self.names, inputs, strict=True)))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in ``eval()`` on the CPU with no key/value cache for the export; its mode and
    device are restored afterwards."""
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    config: Any = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    if cache is not None:  # Hugging Face models return a DynamicCache torch.export cannot pass
        config.use_cache = False
    model.eval().to("cpu")
    try:
        yield
    finally:
        model.train(was_training).to(device)
        if cache is not None:
            config.use_cache = cache


def _length(adapter: Any) -> int:
    """The example's sequence length: 8 (or the position limit when shorter), at least 2."""
    limit = adapter.max_seq_len or 16
    return max(2, min(8, limit - 1 if limit > 2 else limit))


@dataclass
class Program:
    """The traced module, its input names, the example batch and the dynamic dimensions."""

    adapter: Any
    names: tuple[str, ...]
    example: dict[str, torch.Tensor]
    seq_max: int | None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, adapter: Any, *, seed: int = 0) -> Program:
        names = ["input_ids"]
        if adapter.takes_mask:
            names.append("attention_mask")
        if adapter.task == "seq2seq":
            names.append("decoder_input_ids")
        batch = adapter.make_inputs(EXAMPLE_BATCH, _length(adapter), seed=seed, device="cpu")
        example = {n: batch[n] for n in names}
        return cls(adapter, tuple(names), example, adapter.max_seq_len)

    @property
    def module(self) -> LogitsModule:
        return LogitsModule(self.adapter, self.names)

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.example[n] for n in self.names)

    def dynamic_shapes(self, seq_max: int | None = None) -> tuple[tuple[dict, ...]]:
        """Per input ``{0: batch, 1: seq}``: one ``Dim`` for the batch, one for the length
        (``decoder_input_ids`` gets its own), from 1 to ``seq_max`` (default: the position
        limit). Wrapped in a 1-tuple because the module takes ``*inputs``."""
        from torch.export import Dim

        top = seq_max if seq_max is not None else self.seq_max
        limits = {"max": top} if top else {}
        batch = Dim("batch", min=1)
        seq, dec = Dim("seq", min=1, **limits), Dim("target_seq", min=1, **limits)
        return (tuple({0: batch, 1: dec if n == "decoder_input_ids" else seq}
                      for n in self.names),)

    @property
    def dims(self) -> dict[str, list[int | None]]:
        """Each dynamic dimension's ``[min, max]`` (max None: unbounded)."""
        dims = {"batch": [1, None], "seq": [1, self.seq_max]}
        if "decoder_input_ids" in self.names:
            dims["target_seq"] = [1, self.seq_max]
        return dims

    def feed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The graph's positional inputs from a batch dict (on the CPU)."""
        return tuple(batch[n].cpu() for n in self.names)


def export_with_limit(program: Program, trace) -> Any:
    """``trace(dynamic_shapes)`` with the length up to the position limit; when the model's
    code specialises on the full length (a slice ``mask[:T, :T]`` of a buffer exactly that
    long makes torch.export guard ``T != limit``), once more up to ``limit - 1``, with a note.
    """
    try:
        return trace(program.dynamic_shapes())
    except Exception as exc:  # torch._dynamo.exc.UserError: constraint violation
        top = program.seq_max
        if not top or top < 3 or f"!= {top}" not in str(exc):
            raise
    program.notes.append(f"Exported for lengths 1..{top - 1}: the model's code takes another "
                         f"path at exactly {top} tokens, which one graph cannot cover.")
    program.seq_max = top - 1
    return trace(program.dynamic_shapes())


@dataclass
class Job:
    """One export: what is traced, where the model came from, and where the files go."""

    program: Program
    origin: Any  # utils.training.export.origin.Origin
    out_dir: Path
    artifacts: dict[str, Path] = field(default_factory=dict)  # what earlier formats wrote


@contextlib.contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A staging folder beside the artifacts for writers that need a path (the ONNX exporter,
    onnxruntime's quantizer): what it holds on success is renamed into ``out_dir`` file by file
    (``os.replace``, atomic on one filesystem, like :mod:`utils.atomic`); a failure leaves the
    previous artifacts as they were."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export.", suffix=".tmp", dir=out_dir))
    try:
        yield tmp
        for file in sorted(tmp.iterdir()):
            os.replace(file, out_dir / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
