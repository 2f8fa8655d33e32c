"""Comparing tensors: one owner for "how different are these two outputs?".

Tier 1 and Tier 2 compare a model's outputs under changes that must not move them
(:func:`rel_diff`); export compares an exported artifact with the eager model
(:func:`compare`, the ``torch.testing.assert_close`` rule and message, as data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Mismatch", "compare", "rel_diff", "tolerance"]

# torch.testing.assert_close's defaults (rtol, atol) by dtype
_TOLERANCE = {torch.float16: (1e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-5),
              torch.float32: (1.3e-6, 1e-5), torch.float64: (1e-7, 1e-7)}


def rel_diff(a: torch.Tensor, b: torch.Tensor, scale: float | None = None) -> float:
    """``max |a − b|`` relative to ``scale`` (default: ``max |a|``); inf when not comparable."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.detach().float(), b.detach().float()
    denom = scale if scale is not None else float(a.abs().max()) if a.numel() else 0.0
    return float((a - b).abs().max()) / max(denom, 1e-12) if a.numel() else 0.0


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for ``dtype``, as ``torch.testing.assert_close`` uses by default."""
    return _TOLERANCE.get(dtype, (0.0, 0.0))


@dataclass(frozen=True)
class Mismatch:
    """How ``actual`` differs from ``expected`` element by element.

    An element mismatches when ``|actual − expected| > atol + rtol·|expected|`` (or one is
    non-finite where the other is not). ``str()`` gives the assert_close-style message.
    """

    shape: tuple[int, ...]
    mismatched: int
    total: int
    max_abs: float
    max_abs_index: tuple[int, ...]
    max_rel: float
    max_rel_index: tuple[int, ...]
    rtol: float
    atol: float
    shape_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.shape_error is None and self.mismatched == 0

    def to_dict(self) -> dict:
        return {"ok": self.ok, "mismatched": self.mismatched, "total": self.total,
                "max_abs_diff": self.max_abs, "max_abs_index": list(self.max_abs_index),
                "max_rel_diff": self.max_rel, "max_rel_index": list(self.max_rel_index),
                "rtol": self.rtol, "atol": self.atol, "shape_error": self.shape_error}

    def __str__(self) -> str:
        if self.shape_error:
            return self.shape_error
        if self.ok:
            return (f"All {self.total:,} elements agree (greatest absolute difference "
                    f"{self.max_abs:.3g}, rtol={self.rtol:g}, atol={self.atol:g}).")
        share = 100 * self.mismatched / max(self.total, 1)
        return (f"Mismatched elements: {self.mismatched:,} / {self.total:,} ({share:.1f}%). "
                f"Greatest absolute difference: {self.max_abs:.3g} at index "
                f"{self.max_abs_index} (up to {self.atol:g} allowed). Greatest relative "
                f"difference: {self.max_rel:.3g} at index {self.max_rel_index} (up to "
                f"{self.rtol:g} allowed).")


def compare(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float | None = None,
            atol: float | None = None) -> Mismatch:
    """Element-wise comparison with dtype-aware default tolerances (the lower-precision
    dtype of the two decides), returned as data rather than raised."""
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    floats = [d for d in (actual.dtype, expected.dtype) if d in _TOLERANCE] or [torch.float32]
    d_rtol, d_atol = max(tolerance(d) for d in floats)  # the less precise dtype decides
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    shape = tuple(expected.shape)
    if actual.shape != expected.shape:
        return Mismatch(shape, expected.numel(), expected.numel(), math.inf, (), math.inf, (),
                        rtol, atol, shape_error=f"The shapes differ: {tuple(actual.shape)} "
                        f"where {shape} was expected.")
    a, e = actual.cpu().double(), expected.cpu().double()
    if a.numel() == 0:
        return Mismatch(shape, 0, 0, 0.0, (), 0.0, (), rtol, atol)
    both_nan = a.isnan() & e.isnan()
    diff = (a - e).abs().masked_fill(both_nan, 0.0)
    diff = diff.masked_fill((a == e), 0.0)  # equal infinities
    diff = torch.where(diff.isnan(), torch.full_like(diff, math.inf), diff)
    rel = diff / e.abs().clamp_min(torch.finfo(torch.float64).tiny)
    rel = rel.masked_fill(diff == 0, 0.0)
    bad = diff > atol + rtol * e.abs()
    abs_at = torch.unravel_index(diff.argmax(), a.shape) if diff.numel() else ()
    rel_at = torch.unravel_index(rel.argmax(), a.shape) if rel.numel() else ()
    return Mismatch(shape, int(bad.sum()), a.numel(), float(diff.max()),
                    tuple(int(i) for i in abs_at), float(rel.max()),
                    tuple(int(i) for i in rel_at), rtol, atol)
