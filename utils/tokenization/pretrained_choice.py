"""The ``pretrained`` strategy: find a known (or given) tokenizer that fits the model's rows,
complete its missing special tokens if there is room, and say why each candidate was or was not
used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from utils.tokenization.byte_level import CONFIG_FILE, ROLES, specials_of
from utils.tokenization.known_tokenizers import fitting
from utils.tokenization.pretrained import PretrainedUnavailable, load_tokenizer_json

__all__ = ["choose_pretrained"]

_ALIAS = {"pad": "eos", "bos": "eos", "unk": "eos", "eos": "bos"}


def choose_pretrained(vocab_size: int, pretrained: str | Path | None, with_mask: bool,
                      allow_download: bool | None, tried: list[str],
                      ) -> tuple[Any, dict[str, str], tuple[str, str]] | None:
    """The first candidate that loads and fits, as ``(tokenizer, specials, (name, origin))``,
    or ``None``; ``tried`` collects the reasons the others were passed over."""
    candidates: list[tuple[str, dict | None]] = []
    if pretrained is not None:
        candidates.append((str(pretrained), None))
    for known, blocked in fitting(vocab_size):
        if blocked:
            tried.append(f"{known.name} ({known.size:,} ids) passed over: {blocked}")
        elif known.name != str(pretrained):
            candidates.append((known.name, known.specials))
    for name, specials in candidates:
        try:
            tok, origin = load_tokenizer_json(name, allow_download=allow_download)
        except PretrainedUnavailable as exc:
            tried.append(f"{name} unavailable: {exc}")
            continue
        if specials is None:
            specials = specials_of(tok, _config_beside(name))
        specials, problem = _complete(tok, dict(specials), vocab_size, with_mask)
        if problem:
            tried.append(f"{name} does not fit: {problem}")
            continue
        return tok, specials, (name, origin)
    return None


def _config_beside(name: str) -> dict:
    path = Path(name).expanduser()
    file = (path if path.is_dir() else path.parent) / CONFIG_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def _complete(tok: Any, specials: dict[str, str], vocab_size: int, with_mask: bool,
              ) -> tuple[dict[str, str], str | None]:
    """Add missing specials while there are spare rows, else alias them (pad -> eos, ...)."""
    size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    if size > vocab_size:
        return specials, f"it has {size:,} ids, more than the model's {vocab_size:,} rows"
    for role in [r for r in ROLES if r != "mask" or with_mask]:
        if role in specials:
            continue
        if size < vocab_size:
            tok.add_special_tokens([f"<{role}>"])
            specials[role] = f"<{role}>"
            size = max(size, tok.token_to_id(f"<{role}>") + 1)
        elif role in _ALIAS and _ALIAS[role] in specials:
            specials[role] = specials[_ALIAS[role]]
        else:
            return specials, f"no {role} token and no spare row to add one"
    return specials, None
