"""The task names and the label value every layer agrees on.

One owner for both: the adapter decides a ``Task``, the data layer builds batches for it, the
trainer and the exporter drive it. ``IGNORE_INDEX`` marks label positions that carry no loss
(padding, unmasked tokens in masked LM), as ``torch.nn.functional.cross_entropy`` expects.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

__all__ = ["IGNORE_INDEX", "TASKS", "Task", "chance_loss"]

Task = Literal["causal_lm", "masked_lm", "seq2seq", "classification", "encoder"]
TASKS: tuple[str, ...] = get_args(Task)
IGNORE_INDEX = -100


def chance_loss(adapter: Any) -> tuple[float, str] | None:
    """The loss of uniform predictions and its name — ln(vocab) for LMs, ln(classes) for
    classifiers, ln(target vocab) for seq2seq — or None for a task with no task loss."""
    if adapter.task == "classification":
        return math.log(adapter.num_classes or adapter.output_size), "ln(num_classes)"
    if adapter.task in ("causal_lm", "masked_lm"):
        return math.log(min(adapter.vocab_size, adapter.output_size)), "ln(vocab)"
    if adapter.task == "seq2seq":
        return math.log(min(adapter.target_vocab_size or adapter.vocab_size,
                            adapter.output_size)), "ln(target vocab)"
    return None
