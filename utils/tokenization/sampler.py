"""Seeded batch order that can stop mid-epoch and resume exactly where it stopped.

:class:`ResumableBatchSampler` yields :class:`BatchKey` s — (epoch, position, row indices) — in
an order fixed by (seed, epoch). :class:`ResumableDataLoader` counts the batches it has handed
out, so its ``state_dict()`` (saved by Lightning in checkpoints, because it has one) holds the
epoch and position, and ``load_state_dict()`` makes the next pass start at that batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["BatchKey", "ResumableBatchSampler", "ResumableDataLoader"]


class BatchKey(NamedTuple):
    """Which batch: the dataset builds it from these (masking is seeded by epoch and position)."""

    epoch: int
    position: int
    indices: list[int]


class ResumableBatchSampler(Sampler[BatchKey]):
    """Batches of row indices, shuffled per epoch by ``seed + epoch``, optionally sharded.

    Args:
        num_rows: Rows in the dataset.
        batch_size: Rows per batch.
        shuffle: Permute the rows each epoch (training) or keep their order (validation).
        seed: Fixes every epoch's order.
        drop_last: Leave out a last, smaller batch.
        rank, world_size: This process's shard when training on several devices.
    """

    def __init__(self, num_rows: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.num_rows, self.batch_size, self.shuffle = num_rows, batch_size, shuffle
        self.seed, self.drop_last, self.rank, self.world_size = seed, drop_last, rank, world_size
        self.epoch = 0
        self.start = 0  # batch to begin the next pass at (set by load_state_dict)

    def _rows(self) -> list[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_rows, generator=gen).tolist()
        else:
            order = list(range(self.num_rows))
        per_rank = len(order) // self.world_size if self.world_size > 1 else len(order)
        return order[self.rank::self.world_size][:per_rank]  # equal shards for DDP

    def __len__(self) -> int:
        rows = self.num_rows // self.world_size if self.world_size > 1 else self.num_rows
        full, rest = divmod(rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[BatchKey]:
        rows, start, self.start = self._rows(), self.start, 0
        for position in range(start, len(self)):
            chunk = rows[position * self.batch_size:(position + 1) * self.batch_size]
            yield BatchKey(self.epoch, position, chunk)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; a new epoch starts at its first batch."""
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0


def _as_batch(batch: Any) -> Any:
    return batch  # the dataset already returns a whole batch of tensors


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableBatchSampler` with ``state_dict``/``load_state_dict``.

    The position counts batches *handed out by this loader*. A loop that fetches ahead (Lightning
    prefetches one batch) has trained on one batch fewer than that when it saves, so the trainer
    calls :meth:`mark_trained` after each batch and the state then holds the position of the
    batch last trained. A state taken after an epoch's last batch points at the next epoch's
    first batch, so a resume never runs an empty epoch.

    Give it a ``generator``: ``iter()`` of a DataLoader without one draws its base seed from
    the global RNG, which would shift every random number the model draws afterwards.
    """

    def __init__(self, dataset: Any, sampler: ResumableBatchSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, batch_size=None, collate_fn=_as_batch,
                         **kwargs)
        self._position = 0
        self._trained: int | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler: ResumableBatchSampler = self.sampler  # type: ignore[assignment]
        self._position = sampler.start
        self._trained = None
        for batch in super().__iter__():
            self._position += 1
            yield batch

    def mark_trained(self, batches_in_epoch: int) -> None:
        """Record that the model has trained on the first ``batches_in_epoch`` batches of
        the current epoch (the saved position follows this, not the prefetching)."""
        self._trained = batches_in_epoch

    def state_dict(self) -> dict[str, int]:
        """Where training continues: ``{"epoch", "position", "seed"}``."""
        sampler: ResumableBatchSampler = self.sampler  # type: ignore[assignment]
        position = self._trained if self._trained is not None else self._position
        epoch = sampler.epoch
        if position >= len(sampler):  # the epoch is done: continue at the next one
            epoch, position = epoch + 1, 0
        return {"epoch": epoch, "position": position, "seed": sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Make the next pass start at ``state["position"]`` of epoch ``state["epoch"]``."""
        sampler: ResumableBatchSampler = self.sampler  # type: ignore[assignment]
        sampler.epoch, sampler.start = int(state["epoch"]), int(state["position"])
        sampler.seed = int(state.get("seed", sampler.seed))
        self._position = sampler.start
