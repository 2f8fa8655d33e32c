"""``residual_paths``: does every block add to the residual stream instead of replacing it?

``x = self.mlp(self.ln_2(x))`` where ``x = x + self.mlp(…)`` was meant trains without an error,
keeps every invariance and still memorises a batch (so overfit_one_batch passes it). Each block
of the model's stack is replayed from its recorded call with its input nudged by a small random
``δ``: a residual block's output moves along ``δ`` (the identity path) plus whatever the
sublayers add; without the residual the response is a random direction (mean cosine with ``δ``
near 0). The sublayer that carries everything — zeroing its output freezes the block's output,
and it has no residual of its own inside — is named, with the line that calls it. Sublayers
that merely dwarf the stream (a huge init) are told apart by that same zeroing.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from utils.checks import register
from utils.report import CheckResult
from utils.tier1.outputs import eval_logits

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_BLOCKISH = re.compile(r"block|layer", re.I)


# ---- the blocks --------------------------------------------------------------------------
def block_stacks(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """The model's stacks of blocks: runs of consecutive same-class, non-leaf modules that
    look like transformer blocks, outermost only — what is inside a block (heads, experts) is
    the block's business. In a ModuleList, Sequential or ModuleDict (nanoGPT's
    ``transformer.h``) a block has a normalisation module inside, or a class named
    block/layer and two sublayers (a functional RMSNorm, as in modded-nanogpt and nanochat);
    a single one counts when its class says block/layer. Elsewhere (blocks kept as
    attributes, ``self.block1``, ``self.block2``) a run of two or more named so counts."""
    stacks: list[tuple[str, list[tuple[str, nn.Module]]]] = []
    claimed: list[str] = []
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in claimed):
            continue
        container = isinstance(module, (nn.ModuleList, nn.Sequential, nn.ModuleDict))
        run: list[tuple[str, nn.Module]] = []
        for key, child in [*module.named_children(), ("", None)]:
            if run and (child is None or type(child) is not type(run[0][1])):
                single_ok = isinstance(module, (nn.ModuleList, nn.ModuleDict)) and \
                    _BLOCKISH.search(type(run[0][1]).__name__)
                if len(run) >= 2 or single_ok:
                    stacks.append((name, run))
                    claimed += [n for n, _ in run]
                run = []
            if child is not None and _blockish(child, strict=not container):
                run.append((f"{name}.{key}" if name else key, child))
    return stacks


def _blockish(module: nn.Module, strict: bool) -> bool:
    """A transformer block: parameters and submodules, and a norm module inside or a class
    named block/layer with two sublayers; ``strict`` (outside a container) asks for the
    name."""
    if next(module.children(), None) is None or not any(True for _ in module.parameters()):
        return False
    named = bool(_BLOCKISH.search(type(module).__name__))
    sublayers = sum(1 for m in module.children() if any(True for _ in m.parameters()))
    if strict:
        return named and (sublayers >= 2 or _has_norm(module))
    return _has_norm(module) or (named and sublayers >= 2)


def _has_norm(module: nn.Module) -> bool:
    return any("norm" in type(m).__name__.lower() for m in module.modules())


def _first_tensor(value: Any) -> torch.Tensor | None:
    if torch.is_tensor(value):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for v in value:
            if torch.is_tensor(v):
                return v
    return None


def _replace_first(value: Any, new: torch.Tensor) -> Any:
    """``value`` with its first tensor (itself, or the first in a tuple/list) replaced."""
    if torch.is_tensor(value):
        return new
    if isinstance(value, (tuple, list)):
        items = list(value)
        for i, v in enumerate(items):
            if torch.is_tensor(v):
                items[i] = new
                return tuple(items) if isinstance(value, tuple) else items
    return value


def _hidden_slot(args: tuple, kwargs: dict) -> tuple[int | str, torch.Tensor] | None:
    """Where the hidden states are in a block's call: the first floating tensor of ≥ 2 dims."""
    for i, a in enumerate(args):
        if torch.is_tensor(a) and a.is_floating_point() and a.dim() >= 2:
            return i, a
    for k, a in kwargs.items():
        if torch.is_tensor(a) and a.is_floating_point() and a.dim() >= 2:
            return k, a
    return None


class _Call:
    """One recorded call of a block, replayable with other hidden states."""

    def __init__(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        self.block, self.args, self.kwargs = block, args, dict(kwargs)
        for key in list(self.kwargs):  # a replay must not grow a KV cache
            if key == "use_cache":
                self.kwargs[key] = False
            elif re.search(r"past|cache", key, re.I) and not isinstance(self.kwargs[key], bool):
                self.kwargs[key] = None
        slot = _hidden_slot(args, kwargs)
        self.slot: int | str | None = slot[0] if slot else None
        self.hidden: torch.Tensor | None = slot[1] if slot else None

    @torch.no_grad()
    def __call__(self, hidden: torch.Tensor) -> torch.Tensor | None:
        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(self.slot, int):
            args[self.slot] = hidden
        elif self.slot is not None:
            kwargs[self.slot] = hidden
        return _first_tensor(self.block(*args, **kwargs))


def _record_calls(run, modules: list[nn.Module]) -> dict[int, _Call]:
    """The first call of each of ``modules`` while ``run()`` runs, by ``id``."""
    calls: dict[int, _Call] = {}

    def hook(module, args, kwargs) -> None:  # None: the call goes on unchanged
        calls.setdefault(id(module), _Call(module, args, kwargs))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return calls


def _nudge(call: _Call, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(δ, response)``: a 1 % random nudge of the call's hidden states and how its output
    moved; None when the output is not shaped like the input. Replaying may raise."""
    x = call.hidden
    if x is None:  # the call had no hidden-state argument to nudge
        return None
    delta = torch.randn(x.shape, generator=gen).to(x.device, x.dtype) * \
        (1e-2 * float(x.float().std()) or 1e-3)
    base, moved = call(x), call(x + delta)
    if base is None or moved is None or base.shape != x.shape:
        return None
    return delta, moved.float() - base.float()


def _mean_cosine(delta_out: torch.Tensor, delta_in: torch.Tensor) -> float:
    a = delta_out.float().reshape(-1, delta_out.shape[-1])
    b = delta_in.float().reshape(-1, delta_in.shape[-1])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-30).mean())


@contextmanager
def _zeroed(module: nn.Module) -> Iterator[None]:
    """``module`` returns zeros (of its first output tensor) while inside."""
    def zeros(_module: nn.Module, _args: Any, out: Any) -> Any:
        first = _first_tensor(out)
        return out if first is None else _replace_first(out, torch.zeros_like(first))

    handle = module.register_forward_hook(zeros)
    try:
        yield
    finally:
        handle.remove()


def _carrier(call: _Call, x: torch.Tensor, nudged: torch.Tensor, moved: float,
             need: float, gen: torch.Generator) -> str | None:
    """The direct child whose zeroed output freezes the block's output — everything goes
    through it — and which has no residual of its own inside (BERT keeps its residuals inside
    the attention and output modules): the residual around it is missing."""
    for name, child in call.block.named_children():
        cls = type(child).__name__
        if not any(True for _ in child.parameters()) or "norm" in cls.lower() or \
                isinstance(child, nn.Dropout):
            continue
        try:
            with _zeroed(child):
                a, b = call(x), call(nudged)
        except Exception:
            continue
        if a is None or b is None or float((b.float() - a.float()).norm()) > 1e-4 * moved:
            continue
        if _passes_input_through(child, call, x, need, gen) is False:
            return name
    return None


def _passes_input_through(child: nn.Module, call: _Call, x: torch.Tensor, need: float,
                          gen: torch.Generator) -> bool | None:
    """Whether ``child``'s own output follows a nudge of its own input (a residual inside it);
    None when that cannot be told (its input and output differ in shape, or it cannot be
    replayed)."""
    try:
        inner = _record_calls(lambda: call(x), [child]).get(id(child))
        nudged = _nudge(inner, gen) if inner is not None and inner.hidden is not None else None
    except Exception:
        return None
    return None if nudged is None else _mean_cosine(nudged[1], nudged[0]) >= need


def _call_site(block: nn.Module, child: str, files: set[str]) -> str:
    """``model.py, line 37: return self.mlp(self.ln_2(x))`` for the line in the block's
    forward that calls ``self.<child>``, when that forward is the user's code."""
    try:
        lines, start = inspect.getsourcelines(type(block).forward)
        path = inspect.getsourcefile(type(block).forward)
    except (OSError, TypeError):
        return ""
    if files and path not in files:
        return ""
    call = re.compile(rf"\bself\.{re.escape(child)}\s*\(")
    found = [(offset, text, m) for offset, text in enumerate(lines) if (m := call.search(text))]
    # the slip is a call whose result is not added to anything: prefer such a line
    bare = [f for f in found if "+" not in f[1][:f[2].start()]]
    for offset, text, _ in bare or found:
        return f" ({str(path).rsplit('/', 1)[-1]}, line {start + offset}: {text.strip()})"
    return ""


@register("residual_paths", tier=1, thresholds=("min_cosine",))
def check_residual_paths(adapter: Adapter, options) -> CheckResult:
    name = "residual_paths"
    stacks = block_stacks(adapter.model)
    if not stacks:
        return CheckResult(name, 1, "skip", "No stack of blocks found (same-class layers in "
                           "a ModuleList, Sequential, ModuleDict or side by side), so there is "
                           "no residual stream to follow.")
    blocks = [(n, b) for _, run in stacks for n, b in run]
    batch = adapter.make_inputs(2, min(options.max_len(adapter), 16), seed=options.seed)
    calls = _record_calls(lambda: eval_logits(adapter, batch, options.seed),
                          [b for _, b in blocks])
    need = options.threshold(f"{name}.min_cosine", 0.2)
    gen = torch.Generator().manual_seed(options.seed)
    rows: list[dict[str, Any]] = []
    broken: list[dict[str, Any]] = []
    swamped: list[dict[str, Any]] = []
    skipped: list[str] = []
    for label, block in blocks:
        call = calls.get(id(block))
        if call is None or call.hidden is None:
            skipped.append(f"{label} (not called with hidden states)")
            continue
        try:
            nudged = _nudge(call, gen)
        except Exception as exc:
            skipped.append(f"{label} (replaying it raised {type(exc).__name__})")
            continue
        if nudged is None:
            skipped.append(f"{label} (its output is not shaped like its input)")
            continue
        delta, response = nudged
        x = call.hidden
        moved = float(response.norm())
        cosine = _mean_cosine(response, delta) if moved > 0 else 0.0
        row = {"block": label, "class": type(block).__name__, "mean_cosine": cosine}
        if cosine < need:  # a missing residual, or sublayers that dwarf the stream: which?
            row["carrier"] = _carrier(call, x, x + delta, moved, need, gen) if moved > 0 \
                else None
            (broken if row["carrier"] or moved == 0 else swamped).append(row)
        rows.append(row)
    metrics = {"blocks": len(rows), "stacks": [n or "(model)" for n, _ in stacks],
               "min_mean_cosine": min((r["mean_cosine"] for r in rows), default=None),
               "skipped_blocks": skipped}
    threshold = {"min_mean_cosine": need}
    if not rows:
        return CheckResult(name, 1, "skip", "No block could be replayed: " +
                           "; ".join(skipped[:3]) + ".", metrics, threshold)
    if not broken:
        low = min((r["mean_cosine"] for r in rows if r not in swamped), default=None)
        said = f"Each of {len(rows)} blocks passes its input through"
        if low is not None:
            said += (f": a small nudge of a block's input moves its output along the nudge "
                     f"(mean cosine ≥ {low:.2f}; a block without a residual gives ≈ 0)")
        if swamped:
            said += (f"; in {', '.join(repr(r['block']) for r in swamped[:3])} the sublayers' "
                     f"outputs dwarf the stream (mean cosine {swamped[0]['mean_cosine']:.2f}), "
                     "but zeroing any one of them leaves the output following the input, so "
                     "the residual is there")
        return CheckResult(name, 1, "pass", said + ".", metrics, threshold, rows)
    first = broken[0]
    names = ", ".join(f"'{r['block']}'" for r in broken[:4]) + \
        (f" and {len(broken) - 4} more" if len(broken) > 4 else "")
    block = dict(blocks)[first["block"]]
    if first.get("carrier"):
        child = first["carrier"]
        site = _call_site(block, child, adapter.model_files)
        how = (f"everything goes through '{child}' — with its output zeroed the block's output "
               f"no longer depends on its input{site}. Add the residual: "
               f"x = x + self.{child}(…) instead of x = self.{child}(…)")
    else:  # the output does not move at all
        how = ("its output does not depend on its input at all. Add the block's input back to "
               "what its sublayers compute: x = x + self.attn(self.ln_1(x)); "
               "x = x + self.mlp(self.ln_2(x))")
    return CheckResult(
        name, 1, "fail",
        f"{len(broken)} of {len(rows)} blocks ({names}, {first['class']}) replace the residual "
        f"stream instead of adding to it: a small nudge of the input moves the output in an "
        f"unrelated direction (mean cosine {first['mean_cosine']:.2f}, a residual block gives "
        f"≥ {need:g}); {how}. Without it every layer must relearn the token and deep stacks "
        "train badly, though a tiny batch is still memorised.", metrics, threshold, rows)
