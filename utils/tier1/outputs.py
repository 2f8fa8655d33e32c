"""Running the model in eval mode and reading its outputs: expected shapes, logits (remembered
per batch), their statistics, and how much an output moves when part of the input changes."""

from __future__ import annotations

import hashlib
import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from utils.compare import rel_diff
from utils.errors import locate_in_files
from utils.report import CheckResult
from utils.tier1.inputs import different_ids

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



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
# Where a check that cannot measure NaN outputs sends the reader.
NAN_SOURCES = ("output_stability says from which length they are not finite; "
               "padding_invariance whether the padding mask is what makes them NaN.")


def where(exc: BaseException, adapter) -> str:
    """``model.py, line 53: <text>`` for the user's line that raised, or ''."""
    loc = locate_in_files(exc.__traceback__, adapter.model_files)
    return f" at {loc}" if loc else ""


def expected_shape(adapter: Adapter, batch: int, seq_len: int) -> tuple[int, ...]:
    """The output shape a healthy model of this task returns for ``batch × seq_len``."""
    if adapter.task == "classification":
        return (batch, adapter.num_classes or adapter.output_size)
    return (batch, seq_len, adapter.output_size)


@torch.no_grad()
def eval_logits(adapter: Adapter, batch: dict[str, torch.Tensor], seed: int | None = None,
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


def _forward_key(adapter: Adapter, batch: dict[str, torch.Tensor]) -> tuple:
    model = adapter.model
    state = tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(batch):
        v = batch[name]
        digest.update(f"{name}{v.dtype}{tuple(v.shape)}".encode())
        digest.update(v.detach().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return id(adapter), adapter.task, state, digest.digest()


def summarise(adapter: Adapter, batch: dict[str, torch.Tensor], out: torch.Tensor) -> OutputStats:
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


def eval_logits_remembered(adapter: Adapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
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


def output_stats(adapter: Adapter, batch: dict[str, torch.Tensor]) -> OutputStats:
    """The summary of the eval-mode forward on ``batch``: remembered, or run now."""
    try:
        hit = _SEEN.get(adapter.model, {}).get(_forward_key(adapter, batch))
    except Exception:
        hit = None
    return hit if hit is not None else summarise(adapter, batch, eval_logits(adapter, batch))


def eval_randomness(adapter: Adapter, batch: dict[str, torch.Tensor], seed: int,
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


def without_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without labels and with nothing padded."""
    out = {k: v for k, v in batch.items() if k != "labels"}
    if "attention_mask" in out:
        out["attention_mask"] = torch.ones_like(out["attention_mask"])
    return out


def moved_by_changing(adapter: Adapter, batch: dict[str, torch.Tensor], key: str, where: slice,
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
