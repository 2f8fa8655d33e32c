"""The seam between a model and everything that drives it: the :class:`Adapter` Protocol and the
:class:`Batch` TypedDict.

Checks, training and export are written against these, not against
:class:`~utils.adapters.model_adapter.ModelAdapter`'s internals (its ``spec``): what they may ask
of an adapted model is what is listed here. Importing this module costs nothing beyond ``typing``
and ``torch`` (already imported), and the tiers import it under ``TYPE_CHECKING`` only.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, TypedDict, runtime_checkable

import torch
from torch import nn

from utils.tasks import Task

__all__ = ["Adapter", "Batch"]


class Batch(TypedDict, total=False):
    """One batch, the same dict everywhere (tiers, training, export).

    ``input_ids`` [B, T]; ``attention_mask`` [B, T], 1 = a real token; ``labels`` unshifted
    [B, T] (-100 ignored) or [B] for classification; ``decoder_input_ids`` for seq2seq.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    decoder_input_ids: torch.Tensor


@runtime_checkable
class Adapter(Protocol):
    """What checks, training and export may use of an adapted model."""

    model: nn.Module
    task: Task
    vocab_size: int
    max_seq_len: int | None
    output_size: int
    num_classes: int | None
    pad_token_id: int | None
    mask_token_id: int | None
    bos_token_id: int | None
    target_vocab_size: int | None
    token_embedding: str | None
    config: dict[str, Any]
    evidence: dict[str, Any]
    warnings: list[str]
    source: dict[str, Any]

    @property
    def device(self) -> torch.device: ...

    @property
    def is_causal(self) -> bool: ...

    @property
    def id_limit(self) -> int: ...

    @property
    def num_parameters(self) -> int: ...

    @property
    def model_files(self) -> set[str]: ...

    # how forward is called (named, so no caller reads the call spec itself)
    @property
    def takes_mask(self) -> bool: ...

    @property
    def mask_param(self) -> str | None: ...

    @property
    def token_param(self) -> str | None: ...

    @property
    def targets_param(self) -> str | None: ...

    def takes_by_name(self, param: str) -> bool: ...

    def unfed_params(self) -> list[str]: ...

    def call_args(self, batch: dict[str, torch.Tensor], *, feed_targets: bool = False,
                  ) -> tuple[list[Any], dict[str, Any]]: ...

    def mask_flipped(self) -> AbstractContextManager[bool]: ...

    # inputs, outputs, loss
    def make_inputs(self, batch: int = 2, seq_len: int | None = None, seed: int = 0,
                    device: Any = None) -> dict[str, torch.Tensor]: ...

    def forward(self, batch: dict[str, torch.Tensor]) -> Any: ...

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               **extra: torch.Tensor) -> torch.Tensor: ...

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def loss_from_logits(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                         ) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...

    def to(self, device: str | torch.device) -> Adapter: ...
