"""Small pieces the Tier 1 checks share: expected output shapes and eval-mode forwards."""

from __future__ import annotations

import torch

from utils.errors import locate_in_files


def expected_shape(adapter, batch: int, seq_len: int) -> tuple[int, ...]:
    """The output shape a healthy model of this task returns for ``batch × seq_len``."""
    if adapter.task == "classification":
        return (batch, adapter.num_classes or adapter.output_size)
    return (batch, seq_len, adapter.output_size)


@torch.no_grad()
def eval_logits(adapter, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    adapter.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return adapter.logits(**inputs)


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
