"""Pretrained tokenizers the adaptive tokenizer may pick, with their size and terms.

``size`` is the number of ids the tokenizer emits (its vocab plus added tokens): a model whose
embedding has at least that many rows, and not many more, can use it. Gated tokenizers and those
needing ``trust_remote_code`` are listed so the decision can say why they were passed over; they
are never picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["KNOWN_TOKENIZERS", "KnownTokenizer", "fitting"]

_BERT = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[CLS]", "eos": "[SEP]", "mask": "[MASK]"}
_GPT2 = {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"}


@dataclass(frozen=True)
class KnownTokenizer:
    """One pretrained tokenizer on the Hugging Face Hub."""

    name: str
    """Hub repository id; its ``tokenizer.json`` is what is loaded."""
    size: int
    """Ids it emits: vocab plus added tokens."""
    license: str
    specials: dict[str, str] = field(default_factory=dict)
    """Role (pad, bos, eos, unk, mask) -> token string; a missing role is added if room."""
    gated: bool = False
    remote_code: bool = False

    @property
    def usable(self) -> bool:
        return not (self.gated or self.remote_code)


KNOWN_TOKENIZERS: tuple[KnownTokenizer, ...] = (
    KnownTokenizer("openai-community/gpt2", 50257, "MIT", _GPT2),
    KnownTokenizer("EleutherAI/gpt-neox-20b", 50277, "Apache-2.0",
                   {**_GPT2, "pad": "<|padding|>"}),
    KnownTokenizer("FacebookAI/roberta-base", 50265, "MIT",
                   {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>",
                    "mask": "<mask>"}),
    KnownTokenizer("google-bert/bert-base-uncased", 30522, "Apache-2.0", _BERT),
    KnownTokenizer("google-bert/bert-base-cased", 28996, "Apache-2.0", _BERT),
    KnownTokenizer("google-t5/t5-small", 32100, "Apache-2.0",
                   {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}),
    KnownTokenizer("meta-llama/Llama-2-7b-hf", 32000, "Llama 2 Community License",
                   {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}, gated=True),
    KnownTokenizer("google/gemma-2b", 256000, "Gemma Terms of Use",
                   {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}, gated=True),
)


def slack(vocab_size: int) -> int:
    """How many unused embedding rows still count as "close": 1% of the rows, at least 128."""
    return max(128, vocab_size // 100)


def fitting(vocab_size: int) -> list[tuple[KnownTokenizer, str | None]]:
    """Known tokenizers that fit ``vocab_size`` rows closely, best first, each with the reason it
    cannot be used (``None`` when it can)."""
    close = [k for k in KNOWN_TOKENIZERS if 0 <= vocab_size - k.size <= slack(vocab_size)]
    close.sort(key=lambda k: (not k.usable, vocab_size - k.size))
    return [(k, None if k.usable else
             "gated on the Hub" if k.gated else "needs trust_remote_code") for k in close]
