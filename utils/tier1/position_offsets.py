"""Positions moved without a mask: every position offset by a constant, or all pinned to one.

A relative encoding (RoPE on queries and keys) gives the same outputs when every position is
offset by the same constant: q·k depends on the distance only. RoPE rotated into the values or
the hidden states does not. With no attention mask there is no padding to shift a sequence
with, so the offset is applied where the positions are read:

- rotary tables a model precomputes (``cos``/``sin`` buffers, ``cos_cached``, a complex
  ``freqs_cis``) are moved along their position axis, so position ``p`` reads row ``p + k``;
- positions built in forward with ``torch.arange(T)`` in the model's own files start at ``k``.

Pinning every row of the tables to row 0 (every position rotated as the first) tells whether
the tables reach the outputs at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from utils.compare import rel_diff
from utils.report import CheckResult
from utils.tier1.locate import call_site
from utils.tier1.outputs import eval_logits, eval_randomness, random_in_eval, without_padding
from utils.tier1.training_steps import after_first_steps

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_TABLE = re.compile(r"^(cos|sin)(_?(cached|cache|table|emb|buf))?$|^_(cos|sin)(_cached)?$|"
                    r"(cos|sin)_cached|freqs?_cis|rope_cache|rotary_cache", re.I)


def rotary_tables(model: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    """``(name, tensor, position axis)`` of the rotary tables the model keeps (buffers, or
    plain tensor attributes of its modules). The position axis is the longest one before the
    last (the last holds the frequencies): ``(L, d)``, ``(1, L, 1, d)``, ``(1, 1, L, d)``."""
    found, seen = [], set()
    for prefix, module in model.named_modules():
        tensors = [*module.named_buffers(recurse=False),
                   *((k, v) for k, v in vars(module).items() if isinstance(v, torch.Tensor)
                     and not isinstance(v, nn.Parameter))]
        for leaf, t in tensors:
            if id(t) in seen or not _TABLE.search(leaf) or t.dim() < 2 or \
                    not (t.is_floating_point() or t.is_complex()):
                continue
            seen.add(id(t))
            axis = max(range(t.dim() - 1), key=lambda d: t.shape[d])
            if t.shape[axis] > 1:
                found.append((f"{prefix}.{leaf}" if prefix else leaf, t, axis))
    return found


@contextmanager
def _rewritten(tables: list[tuple[str, torch.Tensor, int]], how) -> Iterator[None]:
    saved = [t.detach().clone() for _, t, _ in tables]
    try:
        with torch.no_grad():
            for _, t, axis in tables:
                t.copy_(how(t, axis))
        yield
    finally:
        with torch.no_grad():
            for (_, t, _), old in zip(tables, saved, strict=True):
                t.copy_(old)


def shifted_tables(tables, offset: int):
    """While inside, position ``p`` of every table holds what position ``p + offset`` held
    (the last ``offset`` rows wrap round: keep ``T + offset`` within the tables)."""
    return _rewritten(tables, lambda t, axis: torch.roll(t, -offset, dims=axis))


def pinned_tables(tables):
    """While inside, every position of every table holds what position 0 held."""
    return _rewritten(tables, lambda t, axis: t.narrow(axis, 0, 1).expand_as(t))


class OffsetPositions(TorchFunctionMode):
    """While active, ``torch.arange(T)`` (or ``arange(0, T)``) called from the model's own
    files for the current length ``T`` starts at ``offset`` instead: the positions a model
    builds in forward, moved. Counts the calls it moved and keeps the first call site."""

    def __init__(self, files: set[str], length: int, offset: int) -> None:
        super().__init__()
        self.files, self.length, self.offset = files, length, offset
        self.moved, self.site = 0, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") != "arange" or not isinstance(out, torch.Tensor) or \
                out.dim() != 1 or out.numel() != self.length or out.numel() < 2 or \
                float(out[0]) != 0 or float(out[1]) != 1:
            return out
        site = call_site(self.files)
        if site is None:
            return out
        self.moved += 1
        self.site = self.site or site
        return out + self.offset


# Opening steps ten times Adam's usual first step: a zero-initialised projection then passes
# enough of the attention output for a change in positions to stand clear of rounding.
OPENING_LR = 1e-2


def starts_closed(model: nn.Module) -> bool:
    """Some weight matrix is all zero at init (a zero-initialised output projection): the
    outputs may not depend on positions until the first steps open it."""
    return any(p.dim() >= 2 and not bool(p.detach().any()) for p in model.parameters())


def _listed(tables) -> str:
    return ", ".join(f"'{n}'" for n, _, _ in tables[:3]) + ("…" if len(tables) > 3 else "")


def offset_shift(adapter: Adapter, options, family: str, evidence: str) -> CheckResult:
    """``position_shift`` for a model that takes no attention mask: every position offset by
    a constant — the rotary tables read further on, or ``torch.arange(T)`` starting later —
    must leave a relative encoding's outputs unchanged."""
    name = "position_shift"
    tables = rotary_tables(adapter.model)
    family = "rotary" if tables and family == "none found" else family
    metrics: dict[str, Any] = {"family": family, "evidence": evidence}
    where = f"Positions: {family} ({evidence})."
    top = options.max_len(adapter)
    t = min(11, top)  # odd: unlikely to be the size of another axis
    room = min((tab.shape[axis] for _, tab, axis in tables), default=top) - t
    if t < 2 or room < 1:
        return CheckResult(name, 1, "skip", f"{where} The forward takes no attention mask and "
                           f"max_seq_len {top} leaves no room to offset the positions.", metrics)
    offset = min(16, room)
    batch = without_padding(adapter.make_inputs(2, t, seed=options.seed))
    clean = eval_logits(adapter, batch, options.seed).float()
    noise = eval_randomness(adapter, batch, options.seed, clean)
    if noise > 1e-5:
        return random_in_eval(name, noise)

    def moved_by_offset() -> tuple[float, str | None]:
        """How far an offset moves the outputs, and how it was applied (None: it could not)."""
        ref = eval_logits(adapter, batch, options.seed).float()
        if tables:
            with shifted_tables(tables, offset):
                out = eval_logits(adapter, batch, options.seed).float()
            return rel_diff(ref, out), (f"every position read {offset} rows further into the "
                                        f"rotary tables {_listed(tables)}")
        mode = OffsetPositions(adapter.model_files, t, offset)
        try:
            with mode:
                out = eval_logits(adapter, batch, options.seed).float()
        except Exception:  # positions past a table: nothing to compare
            return 0.0, None
        if not mode.moved:
            return 0.0, None
        return rel_diff(ref, out), (f"the positions built in forward ({mode.site}) started at "
                                    f"{offset} instead of 0")

    change, how = moved_by_offset()
    tol = options.threshold(f"{name}.rtol", 1e-4)
    if how is not None and change <= tol and starts_closed(adapter.model):
        with after_first_steps(adapter, options, lr=OPENING_LR):  # a closed branch hides them
            change, how = moved_by_offset()
        how = how and f"{how} (after the first optimizer steps: a branch starts closed)"
    if how is None:
        return CheckResult(name, 1, "skip", f"{where} The forward takes no attention mask, so "
                           "left padding cannot be masked, and no rotary tables or positions "
                           "built in forward (torch.arange(T)) were found to offset instead.",
                           metrics)
    metrics.update({"offset": offset, "length": t, "max_rel_change": change, "how": how})
    threshold = {"max_rel_change": tol}
    what = f"{where} With no attention mask to pad with, {how}"
    if change <= tol:
        return CheckResult(name, 1, "pass", f"{what}: the outputs stay the same (max relative "
                           f"change {change:.1e} ≤ {tol:g}), so attention depends on distance, "
                           "not on absolute position.", metrics, threshold)
    if family == "none found":
        return CheckResult(name, 1, "warn", f"{what}: the outputs moved by {change:.1e} "
                           f"(relative; allowed {tol:g}). If the model computes absolute "
                           "positions in forward (a sinusoid of arange), that is by design; if "
                           "its positions are meant to be relative, they are not.",
                           metrics, threshold)
    return CheckResult(
        name, 1, "fail", f"{what}: the outputs moved by {change:.1e} (relative; allowed "
        f"{tol:g}), so the {family} encoding depends on absolute position — an offset of every "
        "position leaves q·k unchanged only when queries and keys alone are rotated. Rotate "
        "queries and keys only (never the values or the hidden states).", metrics, threshold)


def pinned_tables_verdict(adapter: Adapter, options, batch: dict[str, torch.Tensor], where: str,
                          metrics: dict) -> CheckResult:
    """``position_information`` for a model whose rotary tables are precomputed: with every
    position pinned to the first row the outputs must move, or the tables never reach them."""
    name = "position_information"
    tables = rotary_tables(adapter.model)
    tol = options.threshold(f"{name}.rtol", 1e-5)

    def moved() -> float:
        ref = eval_logits(adapter, batch, options.seed).float()
        with pinned_tables(tables):
            return rel_diff(ref, eval_logits(adapter, batch, options.seed).float())

    change, later = moved(), ""
    if change <= tol and starts_closed(adapter.model):
        with after_first_steps(adapter, options, lr=OPENING_LR):
            change = moved()
        later = " after the first optimizer steps (a branch starts closed)"
    metrics = {**metrics, "pinned": [n for n, _, _ in tables], "max_rel_change": change}
    threshold = {"order_blind_at_or_below": tol}
    what = f"{where} Pinning every position of the rotary tables {_listed(tables)} to the first"
    if change > tol:
        return CheckResult(name, 1, "pass", f"{what} changes the outputs{later} (max relative "
                           f"change {change:.1e}): the encoding reaches them.", metrics, threshold)
    return CheckResult(
        name, 1, "fail", f"{what} leaves the outputs unchanged{later} ({change:.1e} ≤ {tol:g}): "
        "the rotary tables never reach them — every query and key is rotated as if at one "
        "position (the tables sliced [:1], positions fed as zeros) or the rotation is never "
        "applied to the queries and keys attention uses. Rotate q and k by cos[:T], sin[:T].",
        metrics, threshold)
