"""Character-level tokenizers, for vocabularies too small for the 256 bytes.

Each character is one token; the alphabet is the corpus's most frequent characters (or a default
English alphabet without a corpus), and any other character becomes ``<unk>``. Built as a
``tokenizers`` WordLevel model over single characters, so it saves and loads like the others.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable

from utils.environment import require

__all__ = ["DEFAULT_ALPHABET", "build_char_level", "char_alphabet"]

# Most useful first, so a tiny vocabulary keeps lowercase text and punctuation.
DEFAULT_ALPHABET = ("\n " + string.ascii_lowercase + ".,;:!?'\"-" + string.ascii_uppercase
                    + string.digits + "()[]&*/@#$%+<=>\\^_`{|}~\t")


def char_alphabet(size: int, corpus: Iterable[str] | None = None,
                  ) -> tuple[list[str], float | None]:
    """The ``size`` most frequent characters of ``corpus`` (streamed), and the share of the
    corpus's characters they cover; without a corpus, the start of :data:`DEFAULT_ALPHABET`."""
    if corpus is None:
        return list(DEFAULT_ALPHABET[:size]), None
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(text)
    # ties broken by the character, so the alphabet is the same on every run
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    chosen = [ch for ch, _ in ranked[:size]]
    total = sum(counts.values())
    covered = sum(counts[ch] for ch in chosen)
    return chosen, (covered / total if total else 1.0)


def build_char_level(specials: list[str], alphabet: list[str]):
    """A ``tokenizers.Tokenizer``: specials at ids 0..k-1, then one id per alphabet character."""
    tk = require("tokenizers", "Building a tokenizer")
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    unk = next((s for s in specials if "unk" in s), specials[0])
    tokenizer = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token=unk))
    # every character is its own piece; Oniguruma's `.` skips newlines, hence [\s\S]
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = tk.decoders.Fuse()
    tokenizer.add_special_tokens(specials)
    return tokenizer
