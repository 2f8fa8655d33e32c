"""The task names and the label value every layer agrees on.

One owner for both: the adapter decides a ``Task``, the data layer builds batches for it, the
trainer and the exporter drive it. ``IGNORE_INDEX`` marks label positions that carry no loss
(padding, unmasked tokens in masked LM), as ``torch.nn.functional.cross_entropy`` expects.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["IGNORE_INDEX", "TASKS", "Task"]

Task = Literal["causal_lm", "masked_lm", "seq2seq", "classification", "encoder"]
TASKS: tuple[str, ...] = get_args(Task)
IGNORE_INDEX = -100
