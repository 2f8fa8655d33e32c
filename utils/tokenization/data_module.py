"""``TextDataModule``: a Lightning data module from a :class:`TextDataset` and a tokenizer.

Tokenization runs once per split with ``datasets.map(batched=True)`` into an Arrow cache file
named by the fingerprint of (documents, tokenizer, task, length), so a second run — or a new
process — loads the cache instead of tokenizing again. Training batches come in a seeded order
that can be saved and restored mid-epoch (:mod:`utils.tokenization.sampler`).

Example:
    >>> data = load_text_dataset("corpus/")
    >>> tok = tokenizer_for_model(adapter, data)
    >>> dm = TextDataModule(data, tok, adapter, batch_size=16)
    >>> trainer.fit(module, datamodule=dm)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from utils.environment import require, testbench_home
from utils.errors import UserError
from utils.tokenization.batching import BatchBuilder, row_maker
from utils.tokenization.sampler import BatchKey, ResumableBatchSampler, ResumableDataLoader

__all__ = ["TextDataModule"]

if TYPE_CHECKING:  # the type checker reads the real classes; at run time a missing extra
    import lightning as L  # is a MissingExtraError naming it
else:
    L = require("lightning", "The training data module")

CACHE_VERSION = "1"  # bump when the row format changes


class _Batches(Dataset):
    """Map-style dataset whose items are whole batches, addressed by :class:`BatchKey`."""

    def __init__(self, rows: Any, build: BatchBuilder) -> None:
        self.rows, self.build = rows.with_format("numpy"), build

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        return self.build(self.rows[key.indices], key)


class TextDataModule(L.LightningDataModule):
    """Tokenized, packed, batched text for one model.

    Args:
        data: The documents (:func:`~utils.training.dataset_utilities.load_text_dataset`).
        tokenizer: An :class:`~utils.tokenization.AdaptiveTokenizer` that fits the model.
        adapter: The model's adapter: task, ``id_limit``, ``max_seq_len``, ``num_classes``.
        seq_len: Tokens per row; default the model's ``max_seq_len`` (at most 512 when unknown).
        batch_size: Rows per batch.
        seed: Fixes the shuffling (and masked-LM masking) of every epoch.
        mlm_probability: Share of tokens masked for masked LM.
        num_workers: DataLoader worker processes; default 1 on a 2-core machine like Colab's
            (batches are cheap slices of a memory-mapped cache, so more buys nothing).
        cache_dir: Where tokenized Arrow files go; default ``$TESTBENCH_HOME/tokenized``.

    Raises:
        UserError: a tokenizer larger than the embedding, a length above the model's maximum,
            more classes than the model has, a masked LM without a mask token.
    """

    def __init__(self, data: Any, tokenizer: Any, adapter: Any, *, seq_len: int | None = None,
                 batch_size: int = 8, seed: int = 0, mlm_probability: float = 0.15,
                 num_workers: int | None = None, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        self.data, self.tokenizer, self.task = data, tokenizer, adapter.task
        self.seq_len = seq_len or min(adapter.max_seq_len or 512, 512)
        self.batch_size, self.seed = batch_size, seed
        self.num_workers = (min(1, (os.cpu_count() or 1) - 1) if num_workers is None
                            else num_workers)
        self.cache_dir = Path(cache_dir) if cache_dir else testbench_home() / "tokenized"
        self._check(adapter, mlm_probability)
        tokenizer.check_fits(adapter.id_limit)
        mask_id = tokenizer.mask_id if tokenizer.mask_id is not None else adapter.mask_token_id
        if self.task == "masked_lm" and mask_id is None:
            raise UserError("Masked-LM training needs a mask token, and neither the tokenizer "
                            "nor the model declares one.", why="15% of tokens are replaced by "
                            "the mask token.", fix="Build the tokenizer with "
                            "tokenizer_for(..., with_mask=True) (tokenizer_for_model does).")
        self.builder = BatchBuilder(
            task=self.task, pad_id=tokenizer.pad_id, seed=seed, mask_id=mask_id,
            mlm_probability=mlm_probability, random_limit=tokenizer.vocab_size,
            special_ids=tuple(sorted(set(tokenizer.ids.values()))), start_id=tokenizer.bos_id)
        self.rows: dict[str, Any] = {}
        self.cache_hits: dict[str, bool] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._pending_state: dict | None = None

    def _check(self, adapter: Any, mlm_probability: float) -> None:
        problems = []
        if adapter.max_seq_len and self.seq_len > adapter.max_seq_len:
            problems.append(f"seq_len={self.seq_len} is above the model's max_seq_len="
                            f"{adapter.max_seq_len} (position table or mask size)")
        if self.seq_len < 2:
            problems.append(f"seq_len={self.seq_len} (at least 2)")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size} (at least 1)")
        if not 0 < mlm_probability < 1:
            problems.append(f"mlm_probability={mlm_probability} (between 0 and 1)")
        if self.num_workers < 0:
            problems.append(f"num_workers={self.num_workers} (0 or more)")
        if self.task == "classification":
            if not self.data.label_column:
                problems.append("the model is a classifier but the dataset has no label "
                                "column (load it with task='classification')")
            elif adapter.num_classes and (self.data.num_classes or 0) > adapter.num_classes:
                problems.append(f"the dataset has {self.data.num_classes} classes, the model "
                                f"{adapter.num_classes}")
        if self.task == "seq2seq" and not self.data.target_column:
            problems.append("the model is seq2seq but the dataset has no target column "
                            "(load it with task='seq2seq')")
        if problems:
            raise UserError("The data does not fit the model: " + "; ".join(problems) + ".",
                            fix="Lower seq_len to the model's maximum (or leave it unset), and "
                            "load the dataset with the model's task.")

    # ---- tokenizing once ---------------------------------------------------------------
    def prepare_data(self) -> None:
        """Tokenize both splits (or find them in the cache)."""
        for split in ("train", "validation"):
            if split not in self.rows:
                self.rows[split] = self._tokenized(split)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    def cache_file(self, split: str) -> Path:
        """The Arrow file holding ``split``'s token rows, named by what determines them."""
        ds = getattr(self.data, split)
        key = hashlib.sha256("\x00".join([
            CACHE_VERSION, ds._fingerprint, self.tokenizer.tokenizer.to_str(), self.task,
            str(self.seq_len), str(self.data.text_column), str(self.data.label_column),
            str(self.data.target_column)]).encode()).hexdigest()[:24]
        return self.cache_dir / f"{split}-{key}.arrow"

    def _tokenized(self, split: str) -> Any:
        datasets = require("datasets", "Tokenizing a dataset")
        ds, file = getattr(self.data, split), self.cache_file(split)
        self.cache_hits[split] = file.is_file()
        if file.is_file():  # a finished map: written to a temp file, renamed at the end
            return datasets.Dataset.from_file(str(file))
        file.parent.mkdir(parents=True, exist_ok=True)
        make = row_maker(self.tokenizer, self.task, self.seq_len, self.data.text_column,
                         self.data.label_column, self.data.target_column)
        return ds.map(make, batched=True, batch_size=10_000, remove_columns=ds.column_names,
                      cache_file_name=str(file), desc=f"Tokenizing {split}")

    # ---- loaders -----------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> ResumableDataLoader:
        self.prepare_data()
        rows = self.rows[split]
        trainer = getattr(self, "trainer", None)
        rank, world = ((trainer.global_rank, trainer.world_size) if trainer is not None
                       else (0, 1))
        sampler = ResumableBatchSampler(len(rows), self.batch_size, shuffle=shuffle,
                                        seed=self.seed, rank=rank, world_size=world)
        workers = self.num_workers
        # its own generator: iter() must not draw from the global RNG (dropout's)
        generator = torch.Generator().manual_seed(self.seed + (split == "validation"))
        return ResumableDataLoader(_Batches(rows, self.builder), sampler, num_workers=workers,
                                   persistent_workers=workers > 0, generator=generator,
                                   pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> ResumableDataLoader:
        self._train_loader = self._loader("train", shuffle=True)
        if self._pending_state is not None:
            self._train_loader.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._train_loader

    def val_dataloader(self) -> ResumableDataLoader:
        return self._loader("validation", shuffle=False)

    # ---- resuming ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The training sampler's position (saved in Lightning checkpoints)."""
        if self._train_loader is not None:
            return {"train_sampler": self._train_loader.state_dict()}
        return {"train_sampler": self._pending_state} if self._pending_state else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position: the next training pass starts with the next batch."""
        sampler_state = state.get("train_sampler")
        if not sampler_state:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(sampler_state)
        else:
            self._pending_state = dict(sampler_state)

    def describe(self) -> dict[str, Any]:
        """Rows, tokens and cache use per split, for a report."""
        out: dict[str, Any] = {"task": self.task, "seq_len": self.seq_len,
                               "batch_size": self.batch_size, "tokenizer":
                               self.tokenizer.describe()}
        for split, rows in self.rows.items():
            out[split] = {"rows": len(rows), "from_cache": self.cache_hits.get(split, False)}
        return out
