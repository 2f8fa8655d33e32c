"""Small pieces the Tier 1 checks share: expected output shapes and eval-mode forwards."""

from __future__ import annotations

import hashlib
import math
import tempfile
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch
from torch import nn

from utils.compare import rel_diff
from utils.environment import free_memory_bytes
from utils.errors import locate_in_files
from utils.report import CheckResult


def expected_shape(adapter, batch: int, seq_len: int) -> tuple[int, ...]:
    """The output shape a healthy model of this task returns for ``batch × seq_len``."""
    if adapter.task == "classification":
        return (batch, adapter.num_classes or adapter.output_size)
    return (batch, seq_len, adapter.output_size)


@torch.no_grad()
def eval_logits(adapter, batch: dict[str, torch.Tensor], seed: int | None = None,
                ) -> torch.Tensor:
    """Eval-mode outputs. With ``seed``, the forward draws from a fresh generator seeded so,
    and the global RNG is left as it was: two forwards of the same shapes then see the same
    random numbers, so randomness a model keeps on in eval cannot pose as a difference."""
    adapter.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if seed is None:
        return adapter.logits(**inputs)
    cuda = [adapter.device] if adapter.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return adapter.logits(**inputs)


@dataclass(frozen=True)
class OutputStats:
    """What output_stability needs from one eval-mode forward, small enough to keep.

    Attributes:
        finite: Every output is finite.
        max_abs: Largest finite |output| (inf when none is finite).
        std: Standard deviation of the outputs when all are finite, else None.
        loss_finite: The task loss on the batch's labels is finite; None when the batch has
            no target (no labels, or a causal LM at length 1).
    """

    finite: bool
    max_abs: float
    std: float | None
    loss_finite: bool | None


# Summaries of eval forwards already run, per model: one check's forwards (shape_robustness's
# grid) serve a later one (output_stability) instead of being run again. A key holds the
# model's state (each parameter's and buffer's storage and in-place version counter, which
# every optimizer step and load_state_dict bumps) and the batch's bytes, so a hit is the same
# forward of the same weights on the same inputs.
_SEEN: weakref.WeakKeyDictionary[nn.Module, dict[tuple, OutputStats]] = \
    weakref.WeakKeyDictionary()
_SEEN_PER_MODEL = 64


def _forward_key(adapter, batch: dict[str, torch.Tensor]) -> tuple:
    model = adapter.model
    state = tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(batch):
        v = batch[name]
        digest.update(f"{name}{v.dtype}{tuple(v.shape)}".encode())
        digest.update(v.detach().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return id(adapter), adapter.task, state, digest.digest()


def summarise(adapter, batch: dict[str, torch.Tensor], out: torch.Tensor) -> OutputStats:
    """The :class:`OutputStats` of ``out``, the eval-mode outputs for ``batch``."""
    out = out.float()
    if not out.numel():
        finite, max_abs, std = True, math.inf, None
    else:  # one pass: NaN propagates to both ends, ±inf shows at one
        low, high = (float(v) for v in torch.aminmax(out))
        finite = math.isfinite(low) and math.isfinite(high)
        if finite:
            max_abs, std = max(-low, high), float(out.std())
        else:  # the rare case: a masked copy of the finite values
            kept = out[torch.isfinite(out)]
            max_abs, std = (float(kept.abs().max()) if kept.numel() else math.inf), None
    t = batch["input_ids"].shape[1]
    # a causal LM at length 1 has no next-token target: no loss to compute
    has_targets = "labels" in batch and not (adapter.task == "causal_lm" and t < 2)
    loss_finite = bool(torch.isfinite(adapter.loss_from_logits(out, batch))) if has_targets \
        else None
    return OutputStats(finite, max_abs, std, loss_finite)


def eval_logits_remembered(adapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`eval_logits`, keeping a summary of the outputs for :func:`output_stats`.

    For a check whose own forwards a later check would otherwise repeat. A summary that cannot
    be made (the loss does not fit these outputs) is left for the check that needs it to meet.
    """
    try:
        key = _forward_key(adapter, batch)
    except Exception:  # e.g. tensors without storage: nothing to remember them by
        return eval_logits(adapter, batch)
    out = eval_logits(adapter, batch)
    try:
        stats = summarise(adapter, batch, out)
    except Exception:
        return out
    seen = _SEEN.setdefault(adapter.model, {})
    if len(seen) >= _SEEN_PER_MODEL:
        seen.pop(next(iter(seen)))
    seen[key] = stats
    return out


def output_stats(adapter, batch: dict[str, torch.Tensor]) -> OutputStats:
    """The summary of the eval-mode forward on ``batch``: remembered, or run now."""
    try:
        hit = _SEEN.get(adapter.model, {}).get(_forward_key(adapter, batch))
    except Exception:
        hit = None
    return hit if hit is not None else summarise(adapter, batch, eval_logits(adapter, batch))


def eval_randomness(adapter, batch: dict[str, torch.Tensor], seed: int,
                    first: torch.Tensor) -> float:
    """Relative difference between ``first`` (``eval_logits(adapter, batch, seed)``, which the
    caller has already run) and one more eval forward under ``seed + 1``: 0 for a
    deterministic model."""
    return rel_diff(first.float(), eval_logits(adapter, batch, seed + 1).float())


def random_in_eval(name: str, noise: float) -> CheckResult:
    """The verdict of a comparison that randomness in eval mode would make meaningless."""
    return CheckResult(name, 1, "skip", f"Eval-mode outputs change from run to run (relative "
                       f"{noise:.1e}), so comparing forwards would measure that randomness "
                       "instead; determinism reports its cause.")


def where(exc: BaseException, adapter) -> str:
    """``model.py, line 53: <text>`` for the user's line that raised, or ''."""
    loc = locate_in_files(exc.__traceback__, adapter.model_files)
    return f" at {loc}" if loc else ""


def grid_batch(adapter, options) -> int:
    """The larger batch of shape_robustness's grid. output_stability's random probes use it
    too, so the summaries of those forwards are remembered instead of run twice."""
    return options.batch(adapter, 4)


def lengths(adapter, options, *, include_one: bool = True) -> list[int]:
    """Lengths to sweep: 1, 2, an odd one, half and the (capped) maximum — deduplicated."""
    top = options.max_len(adapter)
    picks = [1, 2, 7, top // 2 + 1 if top > 4 else top, top]
    return sorted({p for p in picks if 1 <= p <= top and (include_one or p > 1)})


@dataclass(frozen=True)
class Shortest:
    """The shortest input a model takes: ``length`` (1 for most), and ``refused``, where the
    model's own code turns shorter ones away (``assert T > 1`` on a no-cache path), or None."""

    length: int
    refused: str | None = None


_SHORTEST: weakref.WeakKeyDictionary[nn.Module, Shortest] = weakref.WeakKeyDictionary()
_MIN_LEN_BY_DESIGN = 8  # a refusal of longer inputs than this is not a minimum, it is a bug


def _deliberate(exc: BaseException, files: set[str]) -> str | None:
    """``file, line N: code`` when ``exc`` comes from an ``assert`` or ``raise`` of the
    model's own code (a length it refuses on purpose), else None (an operation that failed)."""
    import traceback
    from pathlib import Path

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in files]
    if not frames:
        return None
    last = frames[-1]
    code = (last.line or "").strip()
    innermost = traceback.extract_tb(exc.__traceback__)[-1]
    if not (isinstance(exc, AssertionError) or (innermost.filename == last.filename and
                                                innermost.lineno == last.lineno and
                                                code.startswith("raise"))):
        return None
    return f"{type(exc).__name__} at {Path(last.filename).name}, line {last.lineno}: {code[:80]}"


def shortest_length(adapter, options) -> Shortest:
    """The shortest length the model runs at (batch 1, eval): 1, or — when its own code
    refuses shorter inputs with an ``assert`` or ``raise`` (a prompt of at least two tokens) —
    the first length up to 8 that runs. A crash of an operation at length 1 is not a minimum:
    the length is then 1 and shape_robustness reports the crash. Remembered per model."""
    known = _SHORTEST.get(adapter.model)
    if known is not None:
        return known
    found, refused = Shortest(1), None
    for t in range(1, min(_MIN_LEN_BY_DESIGN, options.max_len(adapter)) + 1):
        try:
            eval_logits(adapter, adapter.make_inputs(1, t, seed=options.seed))
        except Exception as exc:
            why = _deliberate(exc, adapter.model_files)
            if why is None:
                break
            refused = refused or why
            continue
        if t > 1:
            found = Shortest(t, refused)
        break
    _SHORTEST[adapter.model] = found
    return found


def first_failing_length(ok, good: int, bad: int) -> int:
    """The shortest length in ``(good, bad]`` where ``ok(length)`` is False, by bisection.

    ``ok(good)`` is known True (or ``good`` is 0) and ``ok(bad)`` known False.
    """
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return bad


def token_key(adapter) -> str:
    """The batch key whose tokens the outputs are aligned with (the decoder's for seq2seq)."""
    return "decoder_input_ids" if adapter.task == "seq2seq" else "input_ids"


def token_limit(adapter, key: str) -> int:
    """Ids fed under ``key`` stay below this."""
    if key == "decoder_input_ids":
        return min(adapter.target_vocab_size or adapter.vocab_size, adapter.output_size)
    return adapter.id_limit


def different_ids(adapter, ids: torch.Tensor, key: str, seed: int) -> torch.Tensor:
    """``ids`` with every token replaced by another valid one (never itself, never padding)."""
    limit = token_limit(adapter, key)
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, max(limit, 2), ids.shape, generator=gen).to(ids.device)
    out = (ids + shift) % max(limit, 1)
    pad = adapter.pad_token_id
    if pad is not None and limit > 2:
        clash = out == pad
        out[clash] = (pad + 1 + (ids[clash] == (pad + 1) % limit).long()) % limit
    return out


# Where a check that cannot measure NaN outputs sends the reader.
NAN_SOURCES = ("output_stability says from which length they are not finite; "
               "padding_invariance whether the padding mask is what makes them NaN.")


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


@dataclass(frozen=True)
class Mixing:
    """Where a change elsewhere in the sequence (later tokens, padding) enters the first
    positions: ``first`` is ``(name, module)`` of the first module whose inputs there are the
    same and whose output is not (None when no module's is); ``touched`` whether any
    submodule's inputs or outputs there differ at all."""

    first: tuple[str, nn.Module] | None
    touched: bool


def where_positions_mix(adapter, before: dict[str, torch.Tensor],
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


def _module_calls(adapter, batch: dict[str, torch.Tensor], seed: int,
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


def where_samples_mix(adapter, batch: dict[str, torch.Tensor], seed: int,
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


def softmax_off_the_keys(adapter, batch: dict[str, torch.Tensor], seed: int) -> str | None:
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


def train_without_dropout(model: nn.Module) -> None:
    """Train mode with every dropout module in eval, so train-mode forwards are repeatable."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or (
                "dropout" in type(m).__name__.lower() and not any(m.children())):
            m.eval()


class Snapshot:
    """The model's state, restorable; kept in host memory only when it fits comfortably."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        state = model.state_dict()
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        free = free_memory_bytes("cpu")
        self.in_memory = free is None or nbytes < 0.25 * free
        self.copy: dict[str, torch.Tensor] | None = None
        self.file: BinaryIO | None = None
        if self.in_memory:  # one host copy (off the GPU for a CUDA model)
            self.copy = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        else:  # a big model: through the disk, never a second copy in memory
            self.file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by restore)
            torch.save(state, self.file)

    def restore(self) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.copy = torch.load(self.file, map_location="cpu", weights_only=True)
            self.file.close()
        self.model.load_state_dict(self.copy)
        self.copy = None


# Optimizer steps after which a branch closed by design must have opened: two, because two
# zero matrices in series (modded-nanogpt zero-initialises both lm_head and each c_proj) give
# the inner one a gradient only once the outer one has moved.
OPENING_STEPS = 2


@contextmanager
def after_first_steps(adapter, options, lr: float = 1e-3,
                      touched: set[str] | None = None) -> Iterator[None]:
    """The model as after its first :data:`OPENING_STEPS` optimizer steps on random batches,
    while inside; its weights (and train/eval mode) as before afterwards.

    Each step is Adam's first, ``lr · sign(grad)``: every parameter with a gradient moves by
    the same amount whatever its scale. What starts closed by design — a zero-initialised
    output projection or head (modded-nanogpt), a layer scale or ReZero gain at 0 — opens
    after them, as in training; a real cut (``.detach()``, a diagonal-only mask) does not.
    A zero gate whose two steps are equal and opposite lands back on 0, closed again, though
    its branch had a gradient at the second step: ``touched``, when given, collects the names
    of the parameters that got a nonzero finite gradient at any of the steps.
    """
    model = adapter.model
    was_training = model.training
    snapshot = Snapshot(model)
    try:
        train_without_dropout(model)
        t = min(options.max_len(adapter), 16)
        for step in range(OPENING_STEPS):
            model.zero_grad(set_to_none=True)
            loss = adapter.loss(adapter.make_inputs(2, t, seed=options.seed + 97 + step))
            if not loss.requires_grad:
                break
            loss.backward()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.grad is not None and bool(torch.isfinite(p.grad).all()):
                        p.add_(p.grad.sign(), alpha=-lr)
                        if touched is not None and bool(p.grad.any()):
                            touched.add(name)
        model.zero_grad(set_to_none=True)
        model.eval()
        yield
    finally:
        model.zero_grad(set_to_none=True)
        snapshot.restore()
        model.train(was_training)


def without_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without labels and with nothing padded."""
    out = {k: v for k, v in batch.items() if k != "labels"}
    if "attention_mask" in out:
        out["attention_mask"] = torch.ones_like(out["attention_mask"])
    return out


def moved_by_changing(adapter, batch: dict[str, torch.Tensor], key: str, where: slice,
                      seed: int, ref: torch.Tensor, look: slice | None) -> float:
    """Largest relative change of the outputs (at positions ``look``, or all of a pooled
    output) when the tokens of ``key`` at ``where`` are replaced by others."""
    ids = batch[key].clone()
    ids[:, where] = different_ids(adapter, ids[:, where], key, seed)
    out = eval_logits(adapter, {**batch, key: ids}, seed).float()
    # Centred over the last axis: a constant added to every logit changes nothing (softmax),
    # and one that dwarfs the rest (modded-nanogpt's 30·sigmoid(z / 7.5) soft cap sits at 15)
    # must not hide a change as a tiny relative one.
    if ref.shape[-1] > 1:
        ref, out = ref - ref.mean(-1, keepdim=True), out - out.mean(-1, keepdim=True)
    if look is not None:
        return rel_diff(ref[:, look], out[:, look], scale=float(ref.abs().max()))
    return rel_diff(ref, out)
