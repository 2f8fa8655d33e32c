"""Load a pretrained tokenizer's ``tokenizer.json``: from a local file or folder, the Hugging Face
cache, or (when allowed) the Hub. Only the Rust ``tokenizers`` file is read — no Python code from
the Hub ever runs, so ``trust_remote_code`` never arises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.environment import hub_reachable, require

__all__ = ["PretrainedUnavailable", "hub_offline", "load_tokenizer_json"]

_FEATURE = "Loading a pretrained tokenizer"


class PretrainedUnavailable(Exception):
    """The tokenizer could not be had; the message says why (the strategy records it)."""


def hub_offline() -> bool:
    """Whether the Hub is out of reach: offline variables set, or no connection (checked once,
    in seconds: :func:`utils.environment.hub_reachable`)."""
    return not hub_reachable()[0]


def load_tokenizer_json(name_or_path: str | Path, *, allow_download: bool | None = None,
                        cache_dir: str | Path | None = None) -> tuple[Any, str]:
    """A ``tokenizers.Tokenizer`` and where it came from.

    Args:
        name_or_path: A ``tokenizer.json`` file, a folder holding one, or a Hub repository id.
        allow_download: Fetch from the Hub when not cached; default: unless offline.
        cache_dir: The Hugging Face cache to look in (default: the usual one).

    Raises:
        PretrainedUnavailable: not found locally and not downloadable.
    """
    tk = require("tokenizers", _FEATURE)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        try:
            return tk.Tokenizer.from_file(str(path)), str(path)
        except Exception as exc:
            raise PretrainedUnavailable(f"{path} is not a tokenizer.json ({exc})") from exc
    if str(name_or_path).endswith(".json") or str(name_or_path).startswith(("/", ".", "~")):
        raise PretrainedUnavailable(f"no file {path}")
    hub = require("huggingface_hub", _FEATURE)
    download = (not hub_offline()) if allow_download is None else allow_download
    try:
        file = hub.hf_hub_download(str(name_or_path), "tokenizer.json",
                                   cache_dir=str(cache_dir) if cache_dir else None,
                                   local_files_only=not download)
    except Exception as exc:  # LocalEntryNotFound, gated/401, network errors, no such repo
        where = ("the Hub" if download else
                 f"the local Hugging Face cache (offline: {hub_reachable()[1]})")
        raise PretrainedUnavailable(f"not in {where}: {type(exc).__name__}") from exc
    return tk.Tokenizer.from_file(file), f"{name_or_path} ({file})"
