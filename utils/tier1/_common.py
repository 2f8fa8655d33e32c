"""Small pieces the Tier 1 checks share: expected output shapes and eval-mode forwards."""

from __future__ import annotations

import torch
from torch import nn

from utils.compare import rel_diff
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


def lengths(adapter, options, *, include_one: bool = True) -> list[int]:
    """Lengths to sweep: 1, 2, an odd one, half and the (capped) maximum — deduplicated."""
    top = options.max_len(adapter)
    picks = [1, 2, 7, top // 2 + 1 if top > 4 else top, top]
    return sorted({p for p in picks if 1 <= p <= top and (include_one or p > 1)})


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


def train_without_dropout(model: nn.Module) -> None:
    """Train mode with every dropout module in eval, so train-mode forwards are repeatable."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or (
                "dropout" in type(m).__name__.lower() and not any(m.children())):
            m.eval()
