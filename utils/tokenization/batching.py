"""Documents to token rows (one cached ``datasets.map``), and rows to batches, per task.

* causal LM / masked LM / encoder: documents are tokenized, each followed by ``eos`` as a
  separator, and packed into blocks of ``seq_len`` (a map batch's last block is padded, never
  dropped). Masked LM masks 15% of the real tokens per batch (80% mask, 10% random, 10% kept),
  seeded by (seed, epoch, position) so a resumed run masks the same way.
* classification: one row per document, truncated; padded per batch with an attention mask.
* seq2seq: source and target rows; ``decoder_input_ids`` are the labels shifted right behind a
  start token.

Batches use the adapter's format: ``input_ids`` and ``attention_mask`` ``[B, T]``, ``labels``
(unshifted, -100 ignored; ``[B]`` for classification), ``decoder_input_ids`` for seq2seq.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

from utils.tasks import IGNORE_INDEX
from utils.tokenization.sampler import BatchKey

__all__ = ["BatchBuilder", "row_maker"]

PACKED_TASKS = ("causal_lm", "masked_lm", "encoder")


def row_maker(tokenizer: Any, task: str, seq_len: int, text: str, label: str | None,
              target: str | None):
    """The batched ``map`` function that turns documents into token rows for ``task``."""
    pad = tokenizer.pad_id

    def packed(batch: dict[str, list]) -> dict[str, Any]:
        docs = tokenizer.encode_batch(batch[text], add_eos=True)  # eos separates documents
        flat = np.fromiter(chain.from_iterable(docs), dtype=np.int32)
        blocks = -(-len(flat) // seq_len)
        out = np.full(blocks * seq_len, pad, dtype=np.int32)
        out[:len(flat)] = flat
        lengths = np.full(blocks, seq_len, dtype=np.int32)
        if blocks:
            lengths[-1] = len(flat) - (blocks - 1) * seq_len
        return {"input_ids": out.reshape(blocks, seq_len), "length": lengths}

    def single(batch: dict[str, list]) -> dict[str, Any]:
        ids = [row[:seq_len] for row in tokenizer.encode_batch(batch[text])]
        out: dict[str, Any] = {"input_ids": ids}
        if label:
            out["label"] = batch[label]
        if target:
            out["target_ids"] = [row[:seq_len] for row in
                                 tokenizer.encode_batch(batch[target], add_eos=True)]
        return out

    return packed if task in PACKED_TASKS else single


@dataclass
class BatchBuilder:
    """Builds one batch from rows of the tokenized dataset (numpy format)."""

    task: str
    pad_id: int
    seed: int = 0
    mask_id: int | None = None
    mlm_probability: float = 0.15
    random_limit: int = 0  # masked LM's random replacements are drawn below this
    special_ids: tuple[int, ...] = ()
    start_id: int = 0

    def __call__(self, rows: dict[str, Any], key: BatchKey) -> dict[str, torch.Tensor]:
        if self.task in PACKED_TASKS:
            ids = torch.as_tensor(np.array(rows["input_ids"], dtype=np.int64))  # [B, T]
            lengths = torch.as_tensor(np.array(rows["length"], dtype=np.int64))
            mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        else:
            ids, mask = _pad(rows["input_ids"], self.pad_id)
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.task == "causal_lm":
            batch["labels"] = ids.masked_fill(mask == 0, IGNORE_INDEX)
        elif self.task == "masked_lm":
            batch["input_ids"], batch["labels"] = self._mask(ids, mask, key)
        elif self.task == "classification":
            batch["labels"] = torch.as_tensor(np.array(rows["label"], dtype=np.int64))
        elif self.task == "seq2seq":
            labels, tmask = _pad(rows["target_ids"], self.pad_id)
            labels = labels.masked_fill(tmask == 0, IGNORE_INDEX)
            start = torch.full((labels.shape[0], 1), self.start_id, dtype=torch.long)
            shifted = torch.cat([start, labels[:, :-1]], dim=1)
            batch["labels"] = labels
            batch["decoder_input_ids"] = shifted.masked_fill(shifted == IGNORE_INDEX, self.pad_id)
        return batch

    def _mask(self, ids: torch.Tensor, mask: torch.Tensor, key: BatchKey):
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + key.epoch) * 1_000_003 + key.position)
        can = mask.bool()
        for sid in self.special_ids:
            can &= ids != sid
        chosen = (torch.rand(ids.shape, generator=gen) < self.mlm_probability) & can
        labels = ids.masked_fill(~chosen, IGNORE_INDEX)
        roll = torch.rand(ids.shape, generator=gen)
        inputs = ids.clone()
        inputs[chosen & (roll < 0.8)] = self.mask_id  # type: ignore[assignment]
        randomised = chosen & (roll >= 0.8) & (roll < 0.9)
        drawn = torch.randint(0, self.random_limit, ids.shape, generator=gen)
        for sid in self.special_ids:  # a random *word*: a drawn special id keeps the original
            drawn = torch.where(drawn == sid, ids, drawn)
        inputs[randomised] = drawn[randomised]
        return inputs, labels


def _pad(rows: Any, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length rows -> ([B, T_max] ids padded with pad_id, [B, T_max] 1/0 mask)."""
    rows = [np.array(r, dtype=np.int64) for r in rows]
    width = max((len(r) for r in rows), default=0) or 1
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.from_numpy(r)
        mask[i, :len(r)] = 1
    return ids, mask
