"""Parity: an artifact, loaded back from disk in the runtime that serves it, against eager.

The inputs are fresh: another seed, a batch and a length that differ from the traced example
(so a graph that specialised on the example's shapes fails), and — where the model takes a
padding mask — one row padded at the end. The comparison is :func:`utils.compare.compare`
(``torch.testing.assert_close``'s rule and figures, as data); int8 artifacts are not expected
to match elementwise and are judged by top-1 agreement instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from utils.compare import Mismatch, compare, tolerance
from utils.training.export.program import EXAMPLE_BATCH, Program

__all__ = ["INT8_MIN_TOP1", "Parity", "check", "eager_runner", "parity_inputs", "time_pair"]

INT8_MIN_TOP1 = 0.9  # an int8 artifact passes when >= 90% of its top-1 predictions agree
ONNX_SLACK = 10  # onnxruntime fuses and reorders float ops: 10x the dtype's default tolerance


@dataclass
class Parity:
    """How an artifact's outputs compare with the eager model's on the parity inputs."""

    mismatch: Mismatch
    top1_agreement: float
    shapes: dict[str, list[int]]
    rule: str  # what decides ok: "elementwise" or "top-1 >= 0.9"
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        if self.mismatch.shape_error:
            return False
        if self.rule == "elementwise":
            return self.mismatch.ok
        return self.top1_agreement >= INT8_MIN_TOP1

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rule": self.rule, **self.mismatch.to_dict(),
                "top1_agreement": self.top1_agreement, "inputs": self.shapes, **self.metrics}

    def summary(self) -> str:
        top1 = f"top-1 agreement {self.top1_agreement:.1%}"
        if self.rule == "elementwise":
            return f"{self.mismatch} {top1}."
        return (f"{top1} (at least {INT8_MIN_TOP1:.0%} required); greatest absolute "
                f"difference {self.mismatch.max_abs:.3g} at index {self.mismatch.max_abs_index}.")


def parity_inputs(program: Program, *, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch one larger than the example and of another length; a padded row when the
    model takes a mask (its padding ids set to the pad token where one is known)."""
    adapter = program.adapter
    traced = program.example["input_ids"].shape[1]
    top = program.seq_max or traced + 5
    length = min(traced + 5, top)
    if length == traced:
        length = max(1, traced - 1)
    batch = adapter.make_inputs(EXAMPLE_BATCH + 1, length, seed=seed, device="cpu")
    if "attention_mask" in program.names and length > 1:
        keep = max(1, (2 * length) // 3)
        batch["attention_mask"][0, keep:] = 0
        if adapter.pad_token_id is not None:
            batch["input_ids"][0, keep:] = adapter.pad_token_id
    if "decoder_input_ids" in program.names and length > 2:
        batch["decoder_input_ids"] = batch["decoder_input_ids"][:, : length - 2]
    return {n: batch[n] for n in program.names}


def eager_runner(program: Program) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    module = program.module

    def run(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            return module(*inputs)

    return run


def time_pair(run: Callable[[Any], Any], baseline: Callable[[Any], Any], inputs: Any, *,
              repeats: int = 10) -> tuple[float, float]:
    """Best-of-``repeats`` seconds per call of ``run`` and of ``baseline``, timed in
    alternation after two warm-up calls each. The minimum, not the median: on a shared 2-core
    VM other processes stretch single calls by 10-100x (measured here), which says nothing
    about either runtime."""
    for _ in range(2):
        run(inputs)
        baseline(inputs)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((run, times[0]), (baseline, times[1])):
            start = time.perf_counter()
            fn(inputs)
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def _top1(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.shape != expected.shape or expected.numel() == 0:
        return 0.0
    return float((actual.argmax(-1) == expected.argmax(-1)).float().mean())


def check(actual: torch.Tensor, expected: torch.Tensor, inputs: dict[str, torch.Tensor], *,
          kind: str = "exact") -> Parity:
    """Compare ``actual`` with ``expected``.

    ``kind``: ``"identical"`` (bit for bit: the rebuilt folder), ``"exact"`` (the dtype's
    ``assert_close`` tolerance: torch.export), ``"onnx"`` (10x that: onnxruntime reorders
    float ops) or ``"int8"`` (figures reported, decided by top-1 agreement).
    """
    actual = torch.as_tensor(actual).detach().cpu()
    expected = expected.detach().cpu()
    rtol, atol = tolerance(expected.dtype)
    if kind == "identical":
        rtol, atol = 0.0, 0.0
    elif kind == "onnx":
        rtol, atol = rtol * ONNX_SLACK, atol * ONNX_SLACK
    elif kind == "int8":  # elementwise figures against 5% of the logits' scale, for reading
        scale = float(expected.abs().max()) if expected.numel() else 1.0
        rtol, atol = 0.05, 0.05 * scale
    mismatch = compare(actual.to(expected.dtype), expected, rtol=rtol, atol=atol)
    rule = f"top-1 >= {INT8_MIN_TOP1:g}" if kind == "int8" else "elementwise"
    return Parity(mismatch, _top1(actual, expected),
                  {n: list(t.shape) for n, t in inputs.items()}, rule)
