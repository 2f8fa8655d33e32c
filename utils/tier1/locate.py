"""Where in the model something happens: which module mixes positions or samples, which line
calls it, and whether a softmax runs over the wrong axis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from utils.compare import rel_diff
from utils.tier1.outputs import eval_logits

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



@dataclass(frozen=True)
class Mixing:
    """Where a change elsewhere in the sequence (later tokens, padding) enters the first
    positions: ``first`` is ``(name, module)`` of the first module whose inputs there are the
    same and whose output is not (None when no module's is); ``touched`` whether any
    submodule's inputs or outputs there differ at all."""

    first: tuple[str, nn.Module] | None
    touched: bool


def describe_module(module: nn.Module, name: str) -> str:
    """``'name' (Class)``, with where its forward is defined when that is the user's code."""
    import inspect
    from pathlib import Path

    label = f"'{name}' ({type(module).__name__})" if name else type(module).__name__
    try:
        file = inspect.getsourcefile(type(module).forward)
        line = inspect.getsourcelines(type(module).forward)[1]
    except (OSError, TypeError):
        return label
    if file and "site-packages" not in file and f"{Path('torch')}/" not in file:
        return f"{label}, forward at {Path(file).name}, line {line}"
    return label


def where_positions_mix(adapter: Adapter, before: dict[str, torch.Tensor],
                        after: dict[str, torch.Tensor], keep: int, seed: int,
                        tol: float = 1e-5) -> Mixing | None:
    """Compare, module by module (in the order calls finish), what the forwards of
    ``before`` and ``after`` see and give at positions ``:keep``; None when the two forwards
    cannot be lined up. Only batch-first tensors of the whole sequence are compared (dim 0
    the batch, dim 1 the run's length)."""
    names = {m: n for n, m in adapter.model.named_modules()}
    b = before["input_ids"].shape[0]

    def run(batch) -> list[tuple[nn.Module, list, list]]:
        lengths = {v.shape[1] for v in batch.values() if v.ndim == 2}  # encoder, decoder

        def early(values) -> list[torch.Tensor]:  # [B, T, …] tensors of a sequence's length
            values = values if isinstance(values, (tuple, list)) else (values,)
            return [v[:, :keep].detach().float().clone() for v in values
                    if isinstance(v, torch.Tensor) and v.ndim >= 2 and v.shape[0] == b
                    and v.shape[1] in lengths and (v.is_floating_point() or
                                                   v.dtype == torch.long)]

        return _module_calls(adapter, batch, seed, early)

    def same(xs: list, ys: list) -> bool:
        return _same(xs, ys, tol)

    try:
        one, two = run(before), run(after)
    except Exception:
        return None
    first, touched = None, False
    for (mod, ins, outs), (mod2, ins2, outs2) in zip(one, two, strict=False):
        if mod is not mod2:
            return None  # the calls went differently: nothing to line up
        if mod is not adapter.model and not (same(ins, ins2) and same(outs, outs2)):
            touched = True
        if first is None and outs and same(ins, ins2) and not same(outs, outs2):
            first = names.get(mod, ""), mod
    return Mixing(first, touched)


def _module_calls(adapter: Adapter, batch: dict[str, torch.Tensor], seed: int,
                  pick: Callable[[Any], list[torch.Tensor]],
                  ) -> list[tuple[nn.Module, list, list]]:
    """``(module, pick(inputs), pick(output))`` of every module call of one eval forward, in
    the order the calls finish (forward hooks, removed after)."""
    calls: list[tuple[nn.Module, list, list]] = []
    hooks = [m.register_forward_hook(
        lambda mod, args, out: calls.append((mod, pick(args), pick(out))))
        for m in adapter.model.modules()]
    try:
        eval_logits(adapter, batch, seed)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _same(xs: list, ys: list, tol: float) -> bool:
    """The two lists of tensors agree, shape for shape, within ``tol`` (relative)."""
    return len(xs) == len(ys) and all(
        x.shape == y.shape and rel_diff(x, y) <= tol for x, y in zip(xs, ys, strict=True))


def where_samples_mix(adapter: Adapter, batch: dict[str, torch.Tensor], seed: int,
                      tol: float = 1e-5) -> tuple[str, nn.Module] | None:
    """``(name, module)`` of the first module (in the order calls finish) whose inputs for the
    last sample are the same alone as in ``batch`` and whose output for it is not: where the
    samples of a batch start to mix (a norm over the batch, a view that swaps batch and
    sequence, a table indexed by the batch position — which the first sample would not show).
    None when no module's is, or the two forwards cannot be lined up."""
    names = {m: n for n, m in adapter.model.named_modules()}
    b = batch["input_ids"].shape[0]

    def run(inputs, rows: int) -> list[tuple[nn.Module, list, list]]:
        def first(values) -> list[torch.Tensor]:  # the last sample of batch-first tensors
            values = values if isinstance(values, (tuple, list)) else (values,)
            return [v[-1:].detach().float().clone() for v in values
                    if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == rows
                    and (v.is_floating_point() or v.dtype == torch.long)]

        return _module_calls(adapter, inputs, seed, first)

    def same(xs: list, ys: list) -> bool:
        return _same(xs, ys, tol)

    try:
        together = run(batch, b)
        alone = run({k: v[-1:] for k, v in batch.items()}, 1)
    except Exception:
        return None
    for (mod, ins, outs), (mod2, ins2, outs2) in zip(together, alone, strict=False):
        if mod is not mod2:
            return None  # the calls went differently: nothing to line up
        if outs and same(ins, ins2) and not same(outs, outs2):
            return names.get(mod, ""), mod
    return None


def call_site(files: set[str]) -> str | None:
    """'file, line N: code' of the innermost frame of the current stack in ``files``."""
    import traceback
    from pathlib import Path

    for frame in reversed(traceback.extract_stack()):
        if frame.filename in files:
            return f"{Path(frame.filename).name}, line {frame.lineno}: {(frame.line or '')[:80]}"
    return None


def softmax_off_the_keys(adapter: Adapter, batch: dict[str, torch.Tensor], seed: int) -> str | None:
    """Where the model softmaxes attention scores over another axis than the keys, or None.

    Scores are a tensor whose last two axes both have the sequence's length ([…, T, T]); a
    softmax over them must run over the last (the keys). One over the queries (dim=-2) or the
    heads (dim=1) trains, and leaks or mixes what it should not.
    """
    from torch.overrides import TorchFunctionMode

    lengths = {v.shape[1] for v in batch.values() if v.ndim == 2}
    files = adapter.model_files

    class Watch(TorchFunctionMode):
        found: str | None = None

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if self.found is None and getattr(func, "__name__", "") == "softmax" and args and \
                    isinstance(args[0], torch.Tensor):
                x = args[0]
                dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
                if isinstance(dim, int) and x.ndim >= 3 and x.shape[-1] in lengths and \
                        x.shape[-2] == x.shape[-1] and dim % x.ndim != x.ndim - 1:
                    axis = "the queries" if dim % x.ndim == x.ndim - 2 else (
                        "the heads" if x.ndim == 4 and dim % x.ndim == 1 else f"dim {dim}")
                    site = call_site(files)
                    self.found = (f"softmax over {axis} (dim={dim}) of scores shaped "
                                  f"{tuple(x.shape)}" + (f" at {site}" if site else ""))
            return func(*args, **kwargs)

    watch = Watch()
    try:
        with watch:
            eval_logits(adapter, batch, seed)
    except Exception:
        return None
    return watch.found
