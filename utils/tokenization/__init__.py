"""Tokenization: a tokenizer that fits the model's vocab, BPE training, and the data module.

``tokenizer_for`` and ``train_bpe`` need the ``data`` extra (``tokenizers``); ``TextDataModule``
also needs ``lightning``, so it is imported on first use, not with this package.
"""

from __future__ import annotations

from typing import Any

from utils.tokenization.adaptive_tokenizer import (
    AdaptiveTokenizer,
    tokenizer_for,
    tokenizer_for_model,
)
from utils.tokenization.bpe_trainer import BpeResult, train_bpe

__all__ = ["AdaptiveTokenizer", "BpeResult", "TextDataModule", "tokenizer_for",
           "tokenizer_for_model", "train_bpe"]


def __getattr__(name: str) -> Any:
    if name == "TextDataModule":  # imports lightning
        from utils.tokenization.data_module import TextDataModule

        return TextDataModule
    raise AttributeError(f"module 'utils.tokenization' has no attribute {name!r}")
