"""Train a byte-level BPE tokenizer on a corpus with the Rust ``tokenizers`` trainer.

The corpus is streamed: an iterator of strings (or of lists of strings) is handed to
``train_from_iterator`` as it comes, so no copy of the corpus is held in memory. The requested
size is a maximum — a small corpus runs out of merges first — so the result says what was reached.

Example:
    >>> result = train_bpe(open("corpus.txt"), vocab_size=8192)
    >>> result.tokenizer.get_vocab_size(), result.seconds
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from utils.environment import require
from utils.errors import UserError
from utils.tokenization.byte_level import SPECIAL_TOKENS, byte_level_parts

__all__ = ["BpeResult", "train_bpe"]

BYTE_ALPHABET = 256


@dataclass
class BpeResult:
    """A trained tokenizer and what the training saw."""

    tokenizer: Any
    """The ``tokenizers.Tokenizer``; special tokens have ids 0..k-1 in the order given."""
    requested: int
    reached: int
    """Ids the tokenizer emits; at most ``requested``."""
    documents: int
    characters: int
    seconds: float

    @property
    def megabytes_per_second(self) -> float:
        return self.characters / 1e6 / max(self.seconds, 1e-9)

    def describe(self) -> str:
        return (f"BPE trained to {self.reached:,} of {self.requested:,} tokens on "
                f"{self.documents:,} documents ({self.characters / 1e6:.1f} M chars) in "
                f"{self.seconds:.1f} s")


def train_bpe(texts: Iterable[str] | Iterable[list[str]], vocab_size: int,
              special_tokens: list[str] | None = None, *, min_frequency: int = 2,
              show_progress: bool = False) -> BpeResult:
    """Train byte-level BPE on ``texts`` up to ``vocab_size`` ids (specials included).

    Args:
        texts: Documents, or batches (lists) of documents; consumed once, streamed.
        vocab_size: The most ids the tokenizer may emit: the model's embedding rows.
        special_tokens: Tokens given ids 0..k-1; default ``<pad> <bos> <eos> <unk>``.
        min_frequency: A pair must occur this often to be merged.
        show_progress: The trainer's progress bar.

    Raises:
        UserError: ``vocab_size`` leaves no room for the 256 bytes and the specials.
    """
    tk = require("tokenizers", "Training a BPE tokenizer")
    specials = list(special_tokens) if special_tokens is not None else [
        SPECIAL_TOKENS[r] for r in ("pad", "bos", "eos", "unk")]
    floor = BYTE_ALPHABET + len(specials)
    if vocab_size < floor:
        raise UserError(f"BPE cannot fit in vocab_size={vocab_size}.",
                        why=f"Byte-level BPE needs the {BYTE_ALPHABET} bytes plus "
                        f"{len(specials)} special tokens = {floor} ids before any merge.",
                        fix="Use the char-level strategy for small vocabularies "
                        "(tokenizer_for picks it by itself).")
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer, tokenizer.decoder = byte_level_parts()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    seen = {"documents": 0, "characters": 0}

    def stream() -> Iterator[str]:
        for item in texts:
            for text in ([item] if isinstance(item, str) else item):
                seen["documents"] += 1
                seen["characters"] += len(text)
                yield text

    start = time.perf_counter()
    tokenizer.train_from_iterator(stream(), trainer=trainer)
    seconds = time.perf_counter() - start
    tokenizer.add_special_tokens(specials)  # mark them special (never split, skippable)
    return BpeResult(tokenizer, vocab_size, tokenizer.get_vocab_size(with_added_tokens=True),
                     seen["documents"], seen["characters"], seconds)
