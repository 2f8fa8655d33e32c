"""A tokenizer that fits the model: ``tokenizer_for(vocab_size, corpus)`` picks how, and says why.

Strategies, tried in this order by ``strategy="auto"``:

* ``pretrained`` — a known tokenizer whose size is at most the model's rows and close to it
  (GPT-2's 50,257 ids in a 50,304-row embedding), found locally or downloadable; never a gated
  one or one needing ``trust_remote_code`` (:mod:`known_tokenizers`).
* ``char`` — one id per character, for vocabularies smaller than the 256 bytes plus specials.
* ``byte`` — the 256 bytes plus specials, for sizes just above that or when there is no corpus.
* ``bpe`` — byte-level BPE trained on the corpus up to the model's size (:mod:`bpe_trainer`).

Whatever the strategy, the result is one :class:`AdaptiveTokenizer` wrapping a Rust
``tokenizers.Tokenizer``: every id is below ``vocab_size``; pad/bos/eos/unk (and mask for masked
LM) are defined; special-token strings inside text are ordinary text; it saves as
``tokenizer.json`` (+ ``tokenizer_config.json`` naming the specials, as Hugging Face does).

Example:
    >>> tok = tokenizer_for(adapter.id_limit, corpus=data, with_mask=adapter.task == "masked_lm")
    >>> print(tok.strategy, tok.reason)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from utils.environment import require
from utils.errors import UserError
from utils.tokenization.byte_level import (
    CONFIG_FILE,
    ROLES,
    build_byte_level,
    special_layout,
    specials_of,
)
from utils.tokenization.char_tokenizer import build_char_level, char_alphabet
from utils.tokenization.known_tokenizers import fitting

__all__ = ["STRATEGIES", "AdaptiveTokenizer", "tokenizer_for", "tokenizer_for_model"]

STRATEGIES = ("auto", "pretrained", "bpe", "byte", "char")
MIN_MERGES = 64  # below this many merges, BPE is not worth training: plain bytes instead


class AdaptiveTokenizer:
    """A ``tokenizers.Tokenizer`` with its special ids, its strategy and the reason for it."""

    def __init__(self, tokenizer: Any, specials: dict[str, str], *, strategy: str,
                 reason: str) -> None:
        tokenizer.encode_special_tokens = True  # "<pad>" typed in text is text, not padding
        self.tokenizer = tokenizer
        self.specials = dict(specials)
        self.strategy = strategy
        self.reason = reason
        ids = {role: tokenizer.token_to_id(tok) for role, tok in specials.items()}
        missing = [f"{r}={specials[r]!r}" for r, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"special tokens not in the vocab: {', '.join(missing)}")
        self.ids = ids
        # ids run 0..max; a pretrained vocab may have holes, so count by the largest id
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    pad_id = property(lambda self: self.ids["pad"])
    bos_id = property(lambda self: self.ids["bos"])
    eos_id = property(lambda self: self.ids["eos"])
    unk_id = property(lambda self: self.ids["unk"])
    mask_id = property(lambda self: self.ids.get("mask"))

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (no specials unless asked)."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def encode_batch(self, texts: list[str], *, add_bos: bool = False,
                     add_eos: bool = False) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by the Rust tokenizer."""
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        rows = [e.ids for e in encode(texts, add_special_tokens=False)]
        if add_bos:
            rows = [[self.bos_id, *row] for row in rows]
        if add_eos:  # in place: no second copy of every row
            for row in rows:
                row.append(self.eos_id)
        return rows

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are left out unless asked for."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def check_fits(self, rows: int, what: str = "the model's token embedding") -> None:
        """Raise a :class:`UserError` when an id could reach past ``rows``."""
        if self.vocab_size > rows:
            raise UserError(
                f"The tokenizer emits ids up to {self.vocab_size - 1}, but {what} has only "
                f"{rows} rows.", why=f"Ids >= {rows} would index past the embedding "
                "(an IndexError or a CUDA device-side assert mid-training).",
                fix=f"Use tokenizer_for({rows}, corpus) for a tokenizer that fits, or raise "
                f"the model's vocab_size to at least {self.vocab_size}.")

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "reason": self.reason, "vocab_size": self.vocab_size,
                **{f"{r}_id": i for r, i in self.ids.items()}}

    def __repr__(self) -> str:
        return f"AdaptiveTokenizer({self.strategy}, vocab_size={self.vocab_size})"

    def save(self, folder: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder``."""
        from utils.atomic import write_atomic

        folder = Path(folder)
        write_atomic(folder / "tokenizer.json", self.tokenizer.to_str(pretty=True))
        config: dict[str, Any] = {f"{r}_token": t for r, t in self.specials.items()}
        config["testbench"] = {"strategy": self.strategy, "reason": self.reason}
        write_atomic(folder / CONFIG_FILE, json.dumps(config, indent=1))
        return folder / "tokenizer.json"

    @classmethod
    def load(cls, folder: str | Path) -> AdaptiveTokenizer:
        """Read what :meth:`save` wrote (or any folder with a ``tokenizer.json``)."""
        tk = require("tokenizers", "Loading a tokenizer")
        path = Path(folder)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"No tokenizer.json at {path}.", why="Tokenizers are saved as "
                            "tokenizer.json.", fix="Pass the folder given to tokenizer.save().")
        tokenizer = tk.Tokenizer.from_file(str(file))
        config_file = file.with_name(CONFIG_FILE)
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        meta = config.get("testbench", {})
        specials = specials_of(tokenizer, config)
        return cls(tokenizer, specials, strategy=meta.get("strategy", "pretrained"),
                   reason=meta.get("reason", f"loaded from {file}"))


def tokenizer_for(vocab_size: int, corpus: Any = None, *, strategy: str = "auto",
                  pretrained: str | Path | None = None, with_mask: bool = False,
                  pad_id: int | None = None, mask_id: int | None = None,
                  min_frequency: int = 2, min_fill: float = 0.9,
                  allow_download: bool | None = None) -> AdaptiveTokenizer:
    """A tokenizer whose ids all fit ``vocab_size`` embedding rows; ``.reason`` says why this one.

    Args:
        vocab_size: The model's rows (use ``adapter.id_limit``): a maximum, never exceeded.
        corpus: Text to learn from: strings, a ``TextDataset`` or a ``datasets.Dataset``.
        strategy: ``auto`` or one of ``pretrained``, ``bpe``, ``byte``, ``char``.
        pretrained: A Hub id or a local ``tokenizer.json``/folder to try first.
        with_mask: Reserve a ``<mask>`` token (masked LM).
        pad_id, mask_id: Ids the model declares; the specials are laid out to match them.
        min_frequency: BPE's minimum pair count.
        min_fill: Below this share of ``vocab_size`` a trained BPE vocabulary is still used,
            with a warning and the count of unused rows in ``reason``.
        allow_download: Let pretrained tokenizers come from the Hub (default: unless offline).

    Raises:
        UserError: no strategy fits, BPE without a corpus, or a tokenizer too large.
    """
    if strategy not in STRATEGIES or vocab_size < 2 or not 0 <= min_fill <= 1:
        raise UserError(f"tokenizer_for(vocab_size={vocab_size}, strategy={strategy!r}, "
                        f"min_fill={min_fill}) is not a valid request.",
                        why=f"vocab_size is at least 2, strategy one of {', '.join(STRATEGIES)}, "
                        "min_fill in [0, 1].", fix="Correct the arguments.")
    specials, notes = special_layout(with_mask, {"pad": pad_id, "mask": mask_id})
    byte_floor = 256 + len(specials)
    tried: list[str] = []
    if strategy == "pretrained" or (strategy == "auto" and (pretrained or fitting(vocab_size))):
        from utils.tokenization.pretrained_choice import choose_pretrained

        found = choose_pretrained(vocab_size, pretrained, with_mask, allow_download, tried)
        if found is not None:
            tok, specials_found, origin = found
            result = AdaptiveTokenizer(tok, specials_found, strategy="pretrained", reason="")
            result.reason = "; ".join([f"pretrained {origin[0]}: {result.vocab_size:,} ids in "
                                       f"{vocab_size:,} rows ({vocab_size - result.vocab_size} "
                                       f"unused), from {origin[1]}", *tried])
            return result
        if strategy == "pretrained":
            raise UserError(f"No pretrained tokenizer fits vocab_size={vocab_size}.",
                            why="; ".join(tried) or "None of the known ones is close in size.",
                            fix="Pass pretrained='<path to tokenizer.json>', or strategy='auto' "
                            "to train one on your corpus.")
    if strategy == "auto":
        strategy = ("char" if vocab_size < byte_floor else
                    "byte" if corpus is None or vocab_size < byte_floor + MIN_MERGES else "bpe")
    notes = [*tried, *notes]
    if strategy == "char":
        if vocab_size <= len(specials):
            raise UserError(f"vocab_size={vocab_size} leaves no room for text.",
                            why=f"{len(specials)} ids go to the special tokens {specials}.",
                            fix=f"Give the model at least {len(specials) + 27} rows.")
        alphabet, coverage = char_alphabet(vocab_size - len(specials), _texts(corpus))
        why = (f"{vocab_size} rows are fewer than the 256 bytes + {len(specials)} specials: one "
               f"id per character, {len(alphabet)} characters"
               + (f" covering {coverage:.2%} of the corpus" if coverage is not None
                  else " (default alphabet: no corpus given)"))
        tok = build_char_level(specials, alphabet)
    elif strategy == "byte":
        if vocab_size < byte_floor:
            raise UserError(f"The byte strategy needs {byte_floor} ids; the model has "
                            f"{vocab_size}.", why=f"256 bytes + {len(specials)} specials.",
                            fix="Use strategy='char' (or 'auto') for small vocabularies.")
        tok = build_byte_level(specials)
        why = (f"256 bytes + {len(specials)} specials = {byte_floor} of {vocab_size} rows; "
               + ("no corpus to train BPE on" if corpus is None else
                  f"fewer than {MIN_MERGES} rows left for BPE merges"))
    else:
        tok, why = _train(vocab_size, corpus, specials, min_frequency, min_fill)
    reason = "; ".join([why, *notes])
    roles = [r for r in ROLES if r != "mask" or with_mask]
    result = AdaptiveTokenizer(tok, {r: f"<{r}>" for r in roles}, strategy=strategy,
                               reason=reason)
    result.check_fits(vocab_size)
    return result


def tokenizer_for_model(adapter: Any, corpus: Any = None, **options: Any) -> AdaptiveTokenizer:
    """:func:`tokenizer_for` sized and laid out for ``adapter`` (rows, task, pad and mask ids)."""
    options.setdefault("with_mask", adapter.task == "masked_lm")
    options.setdefault("pad_id", adapter.pad_token_id)
    options.setdefault("mask_id", adapter.mask_token_id)
    return tokenizer_for(adapter.id_limit, corpus, **options)


def _train(vocab_size: int, corpus: Any, specials: list[str], min_frequency: int,
           min_fill: float) -> tuple[Any, str]:
    from utils.tokenization.bpe_trainer import train_bpe

    if corpus is None:
        raise UserError("BPE training needs a corpus, and none was given.",
                        why="BPE learns its merges from text.",
                        fix="Pass corpus= (e.g. the TextDataset from load_text_dataset), or "
                        "strategy='byte'.")
    result = train_bpe(_texts(corpus) or iter(()), vocab_size, specials,
                       min_frequency=min_frequency)
    why = f"byte-level BPE trained on the corpus: {result.describe()}"
    if result.reached < min_fill * vocab_size:
        # Smaller than the embedding is still valid (every id stays below the rows): use it,
        # and say what it costs.
        unused = vocab_size - result.reached
        short = (f"the corpus ({result.documents:,} documents, {result.characters:,} "
                 f"characters) ran out of pairs seen {min_frequency}+ times at "
                 f"{result.reached:,} tokens, so {unused:,} of the model's {vocab_size:,} rows "
                 "stay unused (untrained); more text would fill them")
        why = f"{why}; {short}"  # said with the tokenizer (train()'s notes), not a warning
    return result.tokenizer, why


def _texts(corpus: Any) -> Iterator[str] | None:
    """Stream the strings of ``corpus``: an iterable of str, a TextDataset or a Dataset."""
    if corpus is None:
        return None
    if isinstance(corpus, str):
        return iter([corpus])
    if hasattr(corpus, "train") and hasattr(corpus, "text_column"):  # a TextDataset
        cols = [c for c in (corpus.text_column, corpus.target_column) if c]
        return _dataset_texts(corpus.train, cols)
    if hasattr(corpus, "column_names") and hasattr(corpus, "features"):  # datasets.Dataset
        cols = ["text"] if "text" in corpus.column_names else corpus.column_names[:1]
        return _dataset_texts(corpus, cols)
    return iter(corpus)


def _dataset_texts(ds: Any, cols: list[str], batch: int = 1000) -> Iterator[str]:
    for rows in ds.select_columns(cols).iter(batch_size=batch):
        for col in cols:
            yield from rows[col]
