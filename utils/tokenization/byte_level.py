"""Byte-level tokenizers and the layout of special tokens.

Byte-level means the 256 byte values are the base alphabet (GPT-2's mapping of bytes to printable
characters), so any text encodes without an unknown token and decodes back exactly. With no merges
this is the "byte" strategy (256 + specials rows); :mod:`bpe_trainer` adds learned merges on top.
"""

from __future__ import annotations

from typing import Any

from utils.environment import require

__all__ = ["CONFIG_FILE", "ROLES", "SPECIAL_TOKENS", "build_byte_level", "byte_level_parts",
           "special_layout", "specials_of"]

ROLES = ("pad", "bos", "eos", "unk", "mask")
SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>",
                  "mask": "<mask>"}
_FEATURE = "Building a tokenizer"
CONFIG_FILE = "tokenizer_config.json"  # Hugging Face's name for the file naming the specials
_GUESS = {"pad": ("<pad>", "[PAD]", "<|padding|>", "<|pad|>"),
          "bos": ("<bos>", "<s>", "[CLS]", "<|begin_of_text|>", "<|endoftext|>"),
          "eos": ("<eos>", "</s>", "[SEP]", "<|end_of_text|>", "<|endoftext|>"),
          "unk": ("<unk>", "[UNK]", "<|endoftext|>"), "mask": ("<mask>", "[MASK]")}


def special_layout(with_mask: bool, fixed: dict[str, int | None] | None = None,
                   ) -> tuple[list[str], list[str]]:
    """Special tokens in id order (they take ids 0..k-1), honouring ids the model declares.

    Args:
        with_mask: Reserve ``<mask>`` (masked LM).
        fixed: Role -> id the model expects (its ``pad_token_id``, ``mask_token_id``).

    Returns:
        The ordered token strings, and notes on declared ids that could not be honoured.
    """
    roles = [r for r in ROLES if r != "mask" or with_mask]
    slots: list[str | None] = [None] * len(roles)
    notes = []
    for role, wanted in (fixed or {}).items():
        if wanted is None or role not in roles:
            continue
        if 0 <= wanted < len(slots) and slots[wanted] is None:
            slots[wanted] = role
        else:
            notes.append(f"the model's {role} id {wanted} is not among the special ids "
                         f"0..{len(slots) - 1}; the tokenizer's own {role} id is used")
    rest = iter(r for r in roles if r not in slots)
    return [SPECIAL_TOKENS[s or next(rest)] for s in slots], notes


def byte_level_parts():
    """(pre_tokenizer, decoder) shared by the byte and BPE strategies: GPT-2's split of words,
    numbers and punctuation, with no prefix space so decoding is exact."""
    tk = require("tokenizers", _FEATURE)
    return (tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            tk.decoders.ByteLevel())


def build_byte_level(specials: list[str]):
    """A ``tokenizers.Tokenizer`` with the specials at ids 0..k-1 and the 256 bytes after them."""
    tk = require("tokenizers", _FEATURE)
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(tk.pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer, tokenizer.decoder = byte_level_parts()
    tokenizer.add_special_tokens(specials)
    return tokenizer


def specials_of(tokenizer: Any, config: dict | None = None) -> dict[str, str]:
    """Role -> token: from a tokenizer_config.json when there is one, else by usual names."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    found = {}
    for role in ROLES:
        named = (config or {}).get(f"{role}_token")
        named = named.get("content") if isinstance(named, dict) else named
        options = ([named] if named else []) + list(_GUESS[role])
        hit = next((t for t in options if t in vocab), None)
        if hit is not None:
            found[role] = hit
    return found
