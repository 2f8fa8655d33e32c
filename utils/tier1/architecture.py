"""``residual_paths``, ``position_information`` and ``context_use``: does the structure carry
what a transformer must — the residual stream through every block, where each token sits, and
what the other tokens say?

Two one-line slips train without an error, keep every invariance Tier 1 tests, and still
memorise a batch: a block that replaces the stream instead of adding to it
(``x = self.mlp(self.ln_2(x))`` for ``x = x + self.mlp(…)``), and positions that never reach
the output (``torch.zeros`` where ``torch.arange`` belongs, an encoding added along the batch
axis, RoPE fed one position for all). Learning cannot tell them apart in Tier 1's budget: a
fixed batch is memorised with the residual or the positions gone, and a task that needs
attention to earlier positions (a repeated random block) is not learnt in 40 steps even by
healthy models. So both are probed directly, in a few eval forwards, with answers that are
exact rather than statistical:

- A residual block's output moves with its input: nudging the block's input by a small random
  ``δ`` moves the output along ``δ`` (the identity path) plus whatever the sublayers add. With
  the residual missing, the response is a random direction (mean cosine with ``δ`` near 0).
  The sublayer that carries everything — zeroing its output leaves the block's output fixed —
  is named, with the line that calls it.
- With positions reaching the output, a bidirectional model's outputs do not simply shuffle
  when its tokens are shuffled, and a causal model with absolute positions gives different
  outputs at different positions of a sequence of one repeated token. A relative encoding
  (RoPE, ALiBi, a bias table) gives the same outputs on such a sequence by design; there, its
  frequencies, slopes or table are perturbed and the outputs must move.
- What only attention can give: outputs that move when the *other* tokens change — the later
  positions when the earlier tokens change (a mask that keeps only the diagonal fails), the
  earlier ones when the later tokens change in a bidirectional model (a causal mask in an
  encoder fails), a classifier's prediction, and a seq2seq decoder when the encoder's tokens
  change (a decoder given its own input as memory fails).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from utils.checks import register
from utils.compare import rel_diff
from utils.report import CheckResult
from utils.tier1._common import (
    after_one_step,
    different_ids,
    eval_logits,
    token_key,
)
from utils.tier1.positions import position_family

_BLOCKISH = re.compile(r"block|layer", re.I)


# ---- the blocks --------------------------------------------------------------------------
def block_stacks(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """The model's stacks of blocks: runs of consecutive same-class, non-leaf modules with a
    normalisation inside, in a ModuleList or Sequential (a single one when its class says
    block/layer), outermost only — what is inside a block (heads, experts) is the block's
    business, and a stack of plain MLP layers (no norm) is not a transformer's."""
    stacks: list[tuple[str, list[tuple[str, nn.Module]]]] = []
    claimed: list[str] = []
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in claimed) or \
                not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        run: list[tuple[str, nn.Module]] = []
        for key, child in [*module.named_children(), ("", None)]:
            if run and (child is None or type(child) is not type(run[0][1])):
                single_ok = isinstance(module, nn.ModuleList) and \
                    _BLOCKISH.search(type(run[0][1]).__name__)
                if len(run) >= 2 or single_ok:
                    stacks.append((name, run))
                    claimed += [n for n, _ in run]
                run = []
            if child is not None and next(child.children(), None) is not None and \
                    any(True for _ in child.parameters()) and _has_norm(child):
                run.append((f"{name}.{key}" if name else key, child))
    return stacks


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
        self.slot, self.hidden = slot if slot else (None, None)

    @torch.no_grad()
    def __call__(self, hidden: torch.Tensor) -> torch.Tensor | None:
        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(self.slot, int):
            args[self.slot] = hidden
        else:
            kwargs[self.slot] = hidden
        return _first_tensor(self.block(*args, **kwargs))


def _record_calls(adapter, batch, blocks: list[nn.Module], seed: int) -> dict[int, _Call]:
    calls: dict[int, _Call] = {}

    def hook(module, args, kwargs):
        calls.setdefault(id(module), _Call(module, args, kwargs))

    handles = [b.register_forward_pre_hook(hook, with_kwargs=True) for b in blocks]
    try:
        eval_logits(adapter, batch, seed)
    finally:
        for h in handles:
            h.remove()
    return calls


def _mean_cosine(delta_out: torch.Tensor, delta_in: torch.Tensor) -> float:
    a = delta_out.float().reshape(-1, delta_out.shape[-1])
    b = delta_in.float().reshape(-1, delta_in.shape[-1])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-30).mean())


@contextmanager
def _zeroed(module: nn.Module) -> Iterator[None]:
    """``module`` returns zeros (of its first output tensor) while inside."""
    handle = module.register_forward_hook(
        lambda _m, _a, out: _replace_first(out, torch.zeros_like(_first_tensor(out)))
        if _first_tensor(out) is not None else out)
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
    seen: dict[int, _Call] = {}

    def record(module, args, kwargs) -> None:
        seen.setdefault(0, _Call(module, args, kwargs))

    handle = child.register_forward_pre_hook(record, with_kwargs=True)
    try:
        call(x)
    except Exception:
        return None
    finally:
        handle.remove()
    inner = seen.get(0)
    if inner is None or inner.hidden is None:
        return None
    h = inner.hidden
    delta = torch.randn(h.shape, generator=gen).to(h.device, h.dtype) * \
        (1e-2 * float(h.float().std()) or 1e-3)
    try:
        base, moved = inner(h), inner(h + delta)
    except Exception:
        return None
    if base is None or moved is None or base.shape != h.shape:
        return None
    return _mean_cosine(moved.float() - base.float(), delta) >= need


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
        return f" ({path.rsplit('/', 1)[-1]}, line {start + offset}: {text.strip()})"
    return ""


@register("residual_paths", tier=1, thresholds=("min_cosine",))
def check_residual_paths(adapter, options) -> CheckResult:
    name = "residual_paths"
    stacks = block_stacks(adapter.model)
    if not stacks:
        return CheckResult(name, 1, "skip", "No stack of blocks found (a ModuleList or "
                           "Sequential of same-class layers), so there is no residual stream "
                           "to follow.")
    blocks = [(n, b) for _, run in stacks for n, b in run]
    batch = adapter.make_inputs(2, min(options.max_len(adapter), 16), seed=options.seed)
    calls = _record_calls(adapter, batch, [b for _, b in blocks], options.seed)
    need = options.threshold(f"{name}.min_cosine", 0.2)
    gen = torch.Generator().manual_seed(options.seed)
    rows, broken, swamped, skipped = [], [], [], []
    for label, block in blocks:
        call = calls.get(id(block))
        if call is None or call.hidden is None:
            skipped.append(f"{label} (not called with hidden states)")
            continue
        x = call.hidden
        noise = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
        delta = noise * (1e-2 * float(x.float().std()) or 1e-3)
        try:
            base, moved_out = call(x), call(x + delta)
        except Exception as exc:
            skipped.append(f"{label} (replaying it raised {type(exc).__name__})")
            continue
        if base is None or moved_out is None or base.shape != x.shape:
            skipped.append(f"{label} (its output is not shaped like its input)")
            continue
        response = moved_out.float() - base.float()
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


# ---- the positions -----------------------------------------------------------------------
_FREQUENCIES = re.compile(r"inv_freq|(^|[._])freqs?($|[._])|freqs_cis|theta", re.I)
_SLOPES = re.compile(r"alibi|slopes", re.I)
_TABLES = re.compile(r"relative_attention_bias|rel_pos|relative_position|relpos", re.I)
_CACHES = re.compile(r"(cos|sin)_cached|cos_cache|sin_cache|_cos\b|_sin\b", re.I)


def _relative_knobs(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Tensors a relative encoding reads (frequencies, slopes, bias tables), to perturb."""
    knobs = []
    for name, t in [*model.named_buffers(), *model.named_parameters()]:
        if t.numel() and (t.is_floating_point() or t.is_complex()) and \
                (_FREQUENCIES.search(name) or _SLOPES.search(name) or _TABLES.search(name)):
            knobs.append((name, t))
    return knobs


@contextmanager
def _perturbed(knobs: list[tuple[str, torch.Tensor]], seed: int) -> Iterator[None]:
    saved = [t.detach().clone() for _, t in knobs]
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for name, t in knobs:
                if t.is_complex():  # freqs_cis = polar(1, angle): turn every angle further
                    t.copy_(torch.polar(t.abs(), t.angle() * 1.37))
                elif _TABLES.search(name):  # a different bias per distance bucket
                    t.add_(torch.randn(t.shape, generator=gen).to(t) *
                           (float(t.float().std()) or 1.0))
                else:  # frequencies and slopes: positions count for more
                    t.mul_(1.37)
        yield
    finally:
        with torch.no_grad():
            for (_, t), old in zip(knobs, saved, strict=True):
                t.copy_(old)


def _spread_over_positions(out: torch.Tensor) -> float:
    """How much the outputs differ across positions, relative to their size."""
    return rel_diff(out, out[:, :1].expand_as(out)) if out.shape[1] > 1 else math.inf


def _without_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in batch.items() if k != "labels"}
    if "attention_mask" in out:
        out["attention_mask"] = torch.ones_like(out["attention_mask"])
    return out


@register("position_information", tier=1, thresholds=("rtol",))
def check_position_information(adapter, options) -> CheckResult:
    name = "position_information"
    family, evidence = position_family(adapter)
    metrics: dict[str, Any] = {"family": family, "evidence": evidence}
    tol = options.threshold(f"{name}.rtol", 1e-5)
    threshold = {"order_blind_at_or_below": tol}
    top = options.max_len(adapter)
    t = min(11, top)  # odd: unlikely to be the size of another axis (heads, widths, batch)
    if t < 3:
        return CheckResult(name, 1, "skip", f"max_seq_len {top} is too short to move tokens "
                           "around.", metrics)
    batch = _without_padding(adapter.make_inputs(2, t, seed=options.seed))
    where = f"Positions: {family} ({evidence})."
    if adapter.task != "causal_lm":  # bidirectional, pooled or seq2seq: shuffle the tokens
        perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(t - 1, 0, -1)])
        shuffled = {**batch, "input_ids": batch["input_ids"][:, perm]}
        clean = eval_logits(adapter, batch, options.seed).float()
        moved = eval_logits(adapter, shuffled, options.seed).float()
        pooled = adapter.task in ("classification", "seq2seq")
        change = rel_diff(clean if pooled else clean[:, perm], moved)
        metrics["max_rel_change"] = change
        side = "encoder's " if adapter.task == "seq2seq" else ""
        what = ("the prediction" if adapter.task == "classification" else
                "the decoder's outputs" if adapter.task == "seq2seq" else "the outputs")
        order = (f"Reversing the {side}tokens after the first changes {what} (max relative "
                 f"change {change:.1e})")
        if change > tol and (adapter.task != "seq2seq" or
                             family not in ("absolute", "none found")):
            return CheckResult(name, 1, "pass", f"{where} {order}: the model sees word order.",
                               metrics, threshold)
        if change <= tol and _moved(adapter, batch, "input_ids", slice(1, t), options.seed + 3,
                                    clean, None if pooled else slice(1, t)) <= tol:
            return CheckResult(name, 1, "skip", f"{where} The {side}tokens after the first do "
                               f"not move {what} even when replaced, so their order cannot "
                               "matter either; context_use reports why.", metrics)
        if change <= tol:
            return CheckResult(
                name, 1, "fail", f"{where} Reversing the {side}tokens after the first "
                f"{'leaves ' + what + ' unchanged' if pooled else 'only reverses the outputs'} "
                f"(max relative change {change:.1e} ≤ {tol:g}): the model is order-blind — "
                "'dog bites man' and 'man bites dog' look the same to it. No position "
                "information reaches the output: the positions fed are constant (torch.zeros "
                "or arange(1) where arange(T) belongs), the encoding is added along the batch "
                "axis, or its sum is discarded. (If the inputs are sets by design, skip this "
                "check.)", metrics, threshold)
        where = f"{where} {order};"  # its positions are tested below
    key = token_key(adapter)
    if family in ("absolute", "none found"):
        ids = batch[key]
        same = ids[:, t // 2: t // 2 + 1].expand_as(ids).contiguous()
        out = eval_logits(adapter, {**batch, key: same}, options.seed).float()
        spread = _spread_over_positions(out)
        metrics["spread_over_positions"] = spread
        what = f"{where} On a sequence of one repeated token" if adapter.task != "seq2seq" \
            else f"{where} on a decoder input of one repeated token"
        if spread > tol:
            return CheckResult(name, 1, "pass", f"{what} the outputs differ from position to "
                               f"position (relative spread {spread:.1e}): positions reach the "
                               "output.", metrics, threshold)
        if family == "none found":
            return CheckResult(
                name, 1, "warn", f"{what} every position gives the same output (relative "
                f"spread {spread:.1e}): the model has no position information and tells "
                "positions apart only through the causal mask (NoPE). If you meant it to have "
                "positions, they do not reach the output.", metrics, threshold)
        return CheckResult(
            name, 1, "fail", f"{what} every position gives the same output (relative spread "
            f"{spread:.1e} ≤ {tol:g}): the position encoding never reaches the output, so the "
            "model cannot tell where a token sits. Feed torch.arange(T) as the positions (not "
            "zeros or arange(1)), add the encoding along the time axis (x + pe[:T], not "
            "pe[:batch]), and keep its sum (x = tok + pos).", metrics, threshold)
    knobs = _relative_knobs(adapter.model)
    metrics["perturbed"] = [n for n, _ in knobs]
    if not knobs:
        return CheckResult(name, 1, "skip", f"{where} On one repeated token a relative "
                           "encoding gives the same output everywhere by design, and no "
                           "frequencies, slopes or bias table were found to perturb instead.",
                           metrics)
    owners = _knob_owners(adapter.model, knobs)
    with _recording(owners) as tables:
        clean = eval_logits(adapter, batch, options.seed).float()
    with _perturbed(knobs, options.seed):
        moved = eval_logits(adapter, batch, options.seed).float()
    change = rel_diff(clean, moved)
    metrics["max_rel_change"] = change
    listed = ", ".join(f"'{n}'" for n, _ in knobs[:3]) + ("…" if len(knobs) > 3 else "")
    if change > tol:
        return CheckResult(name, 1, "pass", f"{where} Perturbing {listed} changes the outputs "
                           f"(max relative change {change:.1e}): the encoding reaches them.",
                           metrics, threshold)
    unchanged = f"{where} Perturbing {listed} leaves the outputs unchanged (max relative " \
                f"change {change:.1e} ≤ {tol:g})"
    varies = {n: _varies_along(out, t) for n, out in tables.items()}
    metrics["tables_vary_by_position"] = varies
    if varies and not any(v for v in varies.values() if v is not None) and \
            any(v is False for v in varies.values()):
        module = next(n for n, v in varies.items() if v is False)
        return CheckResult(
            name, 1, "fail", f"{unchanged}: '{module}' returns the same rotation (or bias) at "
            f"every one of the {t} positions, so it cancels in q · k — the model has no "
            "positions. Feed the real positions (torch.arange(T), not zeros or a constant).",
            metrics, threshold)
    if any(varies.values()):
        module = next(n for n, v in varies.items() if v)
        if _library_code(dict(adapter.model.named_modules())[module]):
            return CheckResult(name, 1, "skip", f"{unchanged}, though '{module}' computes a "
                               "different table per position: this configuration of the "
                               "library's model does not use it (Falcon with alibi=True "
                               "computes rotary tables it never applies).", metrics)
        return CheckResult(
            name, 1, "fail", f"{unchanged}, though '{module}' computes a different table per "
            "position: the tables are never applied to the queries and keys that attention "
            "uses (q, k = apply_rotary(q, k, cos, sin) before the scores), so the model has no "
            "positions.", metrics, threshold)
    cached = [n for n, _ in adapter.model.named_buffers() if _CACHES.search(n)]
    if cached:
        return CheckResult(name, 1, "skip", f"{where} Perturbing {listed} left the outputs "
                           f"unchanged, but the model reads precomputed tables ({cached[0]}), "
                           "which this probe does not alter.", metrics)
    return CheckResult(
        name, 1, "fail", f"{unchanged}: the {family} encoding has no effect — every query and "
        "key is rotated (or biased) as if at one position. Feed the real positions "
        "(torch.arange(T), not zeros) and apply the encoding to the queries and keys that "
        "attention uses.", metrics, threshold)


def _knob_owners(model: nn.Module, knobs: list[tuple[str, torch.Tensor]]) -> dict[str, nn.Module]:
    """The submodules holding the perturbed tensors (not the model itself, whose output is the
    logits), by name."""
    modules = dict(model.named_modules())
    owners = {}
    for name, _ in knobs:
        owner = name.rpartition(".")[0]
        if owner and owner in modules:
            owners[owner] = modules[owner]
    return owners


@contextmanager
def _recording(owners: dict[str, nn.Module]) -> Iterator[dict[str, Any]]:
    """What each owner module returned on its first call inside the block."""
    seen: dict[str, Any] = {}

    def hook(name: str):
        def record(_module, _args, out) -> None:  # returning None keeps the output as it is
            seen.setdefault(name, out)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in owners.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _varies_along(out: Any, t: int) -> bool | None:
    """Whether the tensors in ``out`` differ along an axis of length ``t`` (the positions);
    None when no tensor has such an axis."""
    tensors = [out] if torch.is_tensor(out) else [v for v in (
        out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list))
        else ()) if torch.is_tensor(v)]
    verdict = None
    for x in tensors:
        x = torch.view_as_real(x) if x.is_complex() else x
        for dim, size in enumerate(x.shape):
            if size == t and x.is_floating_point():
                first = x.narrow(dim, 0, 1).expand_as(x)
                if rel_diff(x, first) > 1e-6:
                    return True
                verdict = False
    return verdict


def _library_code(module: nn.Module) -> bool:
    """The module's class comes from an installed package, not the user's files."""
    import sys

    file = getattr(sys.modules.get(type(module).__module__), "__file__", "") or ""
    return "site-packages" in file or "dist-packages" in file



# ---- the context ---------------------------------------------------------------------------
def _moved(adapter, batch: dict[str, torch.Tensor], key: str, where: slice, seed: int,
           ref: torch.Tensor, look: slice | None) -> float:
    """Largest relative change of the outputs (at positions ``look``, or all of a pooled
    output) when the tokens of ``key`` at ``where`` are replaced by others."""
    ids = batch[key].clone()
    ids[:, where] = different_ids(adapter, ids[:, where], key, seed)
    out = eval_logits(adapter, {**batch, key: ids}, seed).float()
    if look is not None:
        return rel_diff(ref[:, look], out[:, look], scale=float(ref.abs().max()))
    return rel_diff(ref, out)


def _probes(adapter, options, t: int) -> list[tuple[str, float, str]]:
    """``(what was changed, relative change of the outputs, the diagnosis if none)`` for
    each way the other tokens must matter to this task."""
    # two samples: a model that normalises over the batch is not blanked out at batch 1
    batch = _without_padding(adapter.make_inputs(2, t, seed=options.seed))
    ref = eval_logits(adapter, batch, options.seed).float()
    key, half, seed = token_key(adapter), t // 2, options.seed + 11
    probes: list[tuple[str, float, str]] = []  # (what was changed, relative change, diagnosis)
    if adapter.task == "classification":
        probes.append((f"every token but the last of {t}",
                       _moved(adapter, batch, key, slice(0, t - 1), seed, ref, None),
                       "the prediction reads the last position only, and that position sees "
                       "only itself"))
        probes.append((f"every token but the first of {t}",
                       _moved(adapter, batch, key, slice(1, t), seed + 1, ref, None),
                       "the prediction reads the first position only (a [CLS]-style pooling), "
                       "and that position sees only itself"))
    else:
        side = "decoder " if key == "decoder_input_ids" else ""
        probes.append((f"the first {half} {side}tokens (outputs at positions {half}–{t - 1})",
                       _moved(adapter, batch, key, slice(0, half), seed, ref, slice(half, t)),
                       "every position sees only itself — the attention mask keeps only the "
                       "diagonal (tril(…).triu(), torch.eye) or the attention's output never "
                       "reaches the residual stream"))
        if not adapter.is_causal:
            probes.append((f"the last {t - half} tokens (outputs at positions 0–{half - 1})",
                           _moved(adapter, batch, key, slice(half, t), seed + 1, ref,
                                  slice(0, half)),
                           "no position sees the tokens after it — the encoder applies a causal "
                           "mask (is_causal=True, a tril mask), so a bidirectional model "
                           "cannot use its right context"))
        if adapter.task == "seq2seq":
            probes.append((f"every encoder token ({t})",
                           _moved(adapter, batch, "input_ids", slice(0, t), seed + 2, ref, None),
                           "the decoder never reads the encoder — its cross-attention is given "
                           "something else as memory (the decoder's own input?) or its output "
                           "is dropped. It would train as a language model of the targets that "
                           "never reads the source"))
    return probes


def _context_probes(adapter, options, t: int, tol: float) -> list[tuple[str, float, str]]:
    """The probes under which the outputs did not move."""
    return [p for p in _probes(adapter, options, t) if p[1] <= tol]


@register("context_use", tier=1, thresholds=("rtol",))
def check_context_use(adapter, options) -> CheckResult:
    """Outputs must depend on the other tokens — what only attention can give a transformer."""
    name = "context_use"
    t = min(options.max_len(adapter), 16)
    if t < 4:
        return CheckResult(name, 1, "skip", f"max_seq_len {t} leaves too little context to "
                           "change.")
    tol = options.threshold(f"{name}.rtol", 1e-5)
    threshold = {"no_dependence_at_or_below": tol}
    probes = _probes(adapter, options, t)
    rows = [{"changed": what, "max_rel_change": change} for what, change, _ in probes]
    metrics = {"seq_len": t, "min_rel_change": min(r["max_rel_change"] for r in rows)}
    dead = [(what, change, why) for what, change, why in probes if change <= tol]
    if dead:  # closed at initialisation by design (a zero-initialised projection or gain)?
        with after_one_step(adapter, options):
            still = _context_probes(adapter, options, t, tol)
        metrics["dead_after_one_step"] = len(still)
        if not still:
            return CheckResult(name, 1, "pass", f"At initialisation changing {dead[0][0]} "
                               f"leaves the outputs unchanged (max relative change "
                               f"{dead[0][1]:.1e}) — a branch starts closed by design (a zero-"
                               "initialised output projection, a layer scale or ReZero gain at "
                               "0); after one optimizer step every probe moves the outputs, so "
                               "the context path is there.", metrics, threshold, rows)
    if not dead:
        said = "; ".join(f"changing {what} moved the outputs by {change:.1e}"
                         for what, change, _ in probes)
        return CheckResult(name, 1, "pass", f"Outputs depend on the other tokens: {said} "
                           "(relative).", metrics, threshold, rows)
    what, change, why = dead[0]
    return CheckResult(
        name, 1, "fail", f"Changing {what} leaves the outputs unchanged (max relative change "
        f"{change:.1e} ≤ {tol:g}): {why}." + ("" if "train" in why else " A model that "
                                                "cannot use its context trains to a "
                                                "unigram/bigram model and stalls there.") +
        (f" Also unchanged: {'; '.join(w for w, _, _ in dead[1:])}." if len(dead) > 1 else ""),
        metrics, threshold, rows)
