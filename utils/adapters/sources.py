"""What the user typed → which model source it names. Pure functions, no I/O but ``stat``.

Accepted: a gist id; a gist URL (``gist.github.com/<user>/<id>[/<revision>]``, raw and API
URLs); any URL carrying ``gist_id=`` in its query or ``#`` fragment (the Colab badge link); a
local folder holding ``model.py``; a single ``.py`` file (a folder's ``config.json`` stands for
the folder; any other file is refused with the folder to pass instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from utils.errors import UserError

__all__ = ["SourceSpec", "gist_id_from_url", "parse_source"]

# Gist ids are 32 hex digits (20 on older gists, digits only on the oldest); revisions are
# git commit shas.
_GIST_ID = re.compile(r"^(?:[0-9a-f]{20}|[0-9a-f]{32}|\d{1,10})$", re.IGNORECASE)
_REVISION = re.compile(r"^[0-9a-f]{40}$", re.IGNORECASE)
_GIST_HOSTS = ("gist.github.com", "gist.githubusercontent.com")
_QUERY_KEYS = ("gist_id", "gist", "gistid")

ACCEPTED_FORMS = (
    "a gist id (32 hex digits, e.g. 9f2c4b...), a gist URL "
    "(https://gist.github.com/<user>/<id>), a Colab URL ending in ?gist_id=<id>, "
    "a folder holding model.py and config.json, or a path to a model.py file"
)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source. ``kind`` is ``gist``, ``folder`` or ``file``."""

    kind: Literal["gist", "folder", "file"]
    input: str
    gist_id: str | None = None
    revision: str | None = None
    path: Path | None = None


def _is_gist_id(text: str) -> bool:
    return bool(_GIST_ID.match(text))


def _from_path_parts(parts: list[str]) -> tuple[str, str | None] | None:
    """Find ``<id>[/<revision>]`` among URL path segments (``user/id/rev``, ``raw/rev/...``)."""
    parts = [p.removesuffix(".git") for p in parts if p]
    for i, part in enumerate(parts):
        if _is_gist_id(part) and not (part.isdigit() and i == 0 and len(parts) > 1):
            rest = parts[i + 1 :]
            if rest and rest[0] == "raw":  # gist.githubusercontent.com/<u>/<id>/raw/<rev>/<f>
                rest = rest[1:]
            revision = rest[0].lower() if rest and _REVISION.match(rest[0]) else None
            return part.lower(), revision
    return None


def gist_id_from_url(url: str) -> tuple[str, str | None] | None:
    """``(gist_id, revision or None)`` from any URL that names a gist, else None.

    Reads ``gist_id=`` from the query string and from the ``#`` fragment (Colab keeps its own
    state there, e.g. ``#scrollTo=abc&gist_id=...``), and gist, raw and API URLs' paths.

    Example:
        >>> gist_id_from_url("https://colab.research.google.com/github/o/r/blob/main/"
        ...                  "template.ipynb?gist_id=0123456789abcdef0123456789abcdef")
        ('0123456789abcdef0123456789abcdef', None)
    """
    url = url.strip()
    if "://" not in url and url.split("/")[0] in (*_GIST_HOSTS, "api.github.com"):
        url = "https://" + url
    parts = urlsplit(url)
    for blob in (parts.query, parts.fragment.lstrip("!")):
        params = parse_qs(blob, keep_blank_values=False)
        for key in _QUERY_KEYS:
            for value in params.get(key, []):
                value = unquote(value).strip()
                if _is_gist_id(value):
                    return value.lower(), None
                nested = gist_id_from_url(value) if "/" in value else None
                if nested:
                    return nested
    host = (parts.hostname or "").lower()
    segments = parts.path.split("/")
    if host in _GIST_HOSTS:
        return _from_path_parts(segments)
    if host == "api.github.com" and len(segments) > 2 and segments[1] == "gists":
        return _from_path_parts(segments[2:])
    return None


def _exists(path: Path) -> bool:
    """``path.exists()``, False for text that cannot be a path (too long, NUL bytes)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _non_python_file(raw: str, path: Path) -> SourceSpec:
    """A file that is not Python: its folder's ``config.json`` stands for the folder (what the
    user meant), anything else is refused with the folder to pass instead, if it has a model."""
    folder = path.parent
    models = sorted(p.name for p in folder.glob("*.py"))
    if path.name == "config.json" and models:
        return SourceSpec("folder", raw, path=folder)
    kind = {".json": "a JSON file", ".ipynb": "a notebook", ".txt": "a text file",
            ".md": "a text file"}.get(path.suffix.lower(), f"a '{path.suffix or 'no'}' file")
    instead = (f"Pass the folder instead: {folder} (it holds {', '.join(models)}"
               + (" and config.json)." if (folder / "config.json").is_file() else ").")
               if models else "Save the model's code as model.py, with its config.json beside "
               "it, and pass that folder or file.")
    if path.suffix.lower() == ".ipynb":
        instead += " A notebook's model class must be copied into a model.py first."
    raise UserError(f"{raw} is {kind}, not Python model code.",
                    why=f"A model source is {ACCEPTED_FORMS}; the testbench runs the model "
                    "class defined in a .py file.", fix=instead)


def parse_source(text: str | Path) -> SourceSpec:
    """Decide what ``text`` names.

    ``<folder>/config.json`` names its folder when a ``.py`` file sits beside it (the model and
    that config, as the folder would load them).

    Raises:
        UserError: empty input, a path that does not exist, a file that is not Python, or text
            that is none of the accepted forms.
    """
    raw = str(text).strip() if text is not None else ""
    if not raw:
        raise UserError("No model source was given.", why=f"Expected {ACCEPTED_FORMS}.",
                        fix="Paste your gist id or URL, or pass a local folder.")
    path = Path(raw).expanduser()
    exists = "://" not in raw and _exists(path)
    if exists:
        if path.is_dir():
            return SourceSpec("folder", raw, path=path.resolve())
        if path.suffix == ".py":
            return SourceSpec("file", raw, path=path.resolve())
        return _non_python_file(raw, path.resolve())
    if _is_gist_id(raw):
        return SourceSpec("gist", raw, gist_id=raw.lower())
    found = gist_id_from_url(raw)
    if found:
        return SourceSpec("gist", raw, gist_id=found[0], revision=found[1])
    looks_local = raw.startswith((".", "~", "/")) or raw.endswith((".py", ".json")) or (
        "\\" in raw)
    if looks_local or ("/" in raw and "://" not in raw and "." not in raw.split("/")[0]):
        raise UserError(f"No file or folder at '{raw}'.",
                        why=f"It looks like a local path, but nothing exists there "
                        f"(working directory: {Path.cwd()}).",
                        fix="Check the path, or give a gist id or URL instead.")
    raise UserError(f"'{raw}' is not a model source I can read.",
                    why=f"Expected {ACCEPTED_FORMS}.",
                    fix="Copy the id from your gist's URL (the long hex string after your user "
                    "name) and paste it.")
