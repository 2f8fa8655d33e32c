"""Which gist a notebook runs, and how that id travels from template.ipynb to training.ipynb.

The id is taken from, first found wins: the notebook's ``GIST_ID`` form field (an id or any
gist/Colab URL), the page URL's ``gist_id`` (query or ``#`` fragment), the ``GIST_ID``
environment variable (headless runs and tests). After loading, template.ipynb writes a small
hand-off file on the VM's disk (``$TESTBENCH_HOME/handoff.json``; it survives "Restart
runtime") and links to training.ipynb with the same id in the URL. Pure functions but the
file's read and write; URL parsing is :mod:`utils.adapters.sources`'.

Example:
    >>> gist_id, found_in = resolve_gist_id("", env={"GIST_ID": "0123456789abcdef0123456789abcdef"})
    >>> found_in
    'GIST_ID environment variable'
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from utils.adapters.sources import gist_id_from_url, parse_source
from utils.environment import testbench_home
from utils.errors import UserError

__all__ = ["ENV_VAR", "FORM_FIELD", "HANDOFF_FILE", "PAGE_URL", "gist_id_of", "handoff_path",
           "read_handoff", "resolve_gist_id", "training_notebook_url", "write_handoff"]

FORM_FIELD = "form field"
PAGE_URL = "page URL"
ENV_VAR = "GIST_ID environment variable"
HANDOFF_FILE = "handoff.json"
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_PASTE = "Paste your gist id or URL into the GIST_ID field at the top of this cell and run again."


def gist_id_of(text: str) -> str | None:
    """The gist id that ``text`` names — an id, a gist URL or a URL carrying ``gist_id`` — or
    None. A folder or file path is not a gist, so it gives None too."""
    text = (text or "").strip()
    if not text:
        return None
    found = gist_id_from_url(text)
    if found:
        return found[0]
    try:
        spec = parse_source(text)
    except UserError:
        return None
    return spec.gist_id if spec.kind == "gist" else None


def _required_id(text: str, where: str) -> str:
    gist_id = gist_id_of(text)
    if gist_id is None:
        shown = text.strip() if len(text.strip()) <= 120 else text.strip()[:117] + "..."
        raise UserError(
            f"The {where} holds '{shown}', which is not a gist id or a gist URL.",
            why="A gist id is the long hex string in your gist's URL "
            "(https://gist.github.com/<user>/<id>); a Colab link must end in ?gist_id=<id>.",
            fix="Copy the id (or the whole gist URL) from your browser's address bar and paste "
            "it into the GIST_ID field at the top of this cell, then run again.")
    return gist_id


def resolve_gist_id(form_value: str = "", *, page_url: str | None = None,
                    env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """``(gist id, where it was found)``: the form field, else the page URL, else ``GIST_ID``.

    ``where`` is ``"form field"``, ``"page URL"`` or ``"GIST_ID environment variable"``. A page
    URL without a ``gist_id`` is passed over; a non-empty form field or environment variable
    that names no gist is an error (it was meant as one).

    Raises:
        UserError: nothing names a gist, or the form field / environment variable holds
            something that is not a gist id or URL.

    Example:
        >>> resolve_gist_id("https://gist.github.com/alice/0123456789abcdef0123456789abcdef")
        ('0123456789abcdef0123456789abcdef', 'form field')
    """
    if (form_value or "").strip():
        return _required_id(form_value, "GIST_ID form field"), FORM_FIELD
    found = gist_id_from_url(page_url) if page_url else None
    if found:
        return found[0], PAGE_URL
    if (env.get("GIST_ID") or "").strip():
        return _required_id(env["GIST_ID"], "GIST_ID environment variable"), ENV_VAR
    raise UserError(
        "No gist id was given, so there is no model to check yet.",
        why="The notebook looks in the GIST_ID form field, then in the page URL (?gist_id=<id>), "
        "then in the GIST_ID environment variable, and all were empty"
        + (" (the page URL could not be read)." if not page_url else "."),
        fix=_PASTE)


def handoff_path() -> Path:
    """Where the hand-off file lives: ``$TESTBENCH_HOME/handoff.json``."""
    return testbench_home() / HANDOFF_FILE


def write_handoff(gist_id: str, revision: str | None) -> Path:
    """Record the gist (and the revision that was checked) for training.ipynb; atomic write.

    The file holds ``{gist_id, revision, written_at, tool_version}`` as JSON.
    """
    from utils import __version__
    from utils.atomic import write_atomic

    data = {"gist_id": gist_id, "revision": revision,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tool_version": __version__}
    return write_atomic(handoff_path(), (json.dumps(data, indent=2) + "\n").encode())


def read_handoff() -> dict[str, Any] | None:
    """The hand-off that template.ipynb wrote, or None when there is none.

    A file that is unreadable, not JSON, or has no valid ``gist_id`` gives None and a warning:
    a stale hand-off must never stop a notebook.
    """
    path = handoff_path()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"Ignoring the hand-off file {path}: it cannot be read ({exc}).",
                      stacklevel=2)
        return None
    if not isinstance(data, dict) or not gist_id_of(str(data.get("gist_id") or "")):
        warnings.warn(f"Ignoring the hand-off file {path}: it holds no valid gist_id.",
                      stacklevel=2)
        return None
    return data


def training_notebook_url(gist_id: str, repo: str, ref: str = "main") -> str:
    """The Colab link that opens training.ipynb of ``repo`` at ``ref`` with the same gist id.

    Raises:
        UserError: ``repo`` is not ``owner/name``, or ``gist_id`` is not a gist id.

    Example:
        >>> training_notebook_url("0123456789abcdef0123456789abcdef", "org/repo")
        'https://colab.research.google.com/github/org/repo/blob/main/training.ipynb?gist_id=0123456789abcdef0123456789abcdef'
    """
    if not _REPO.match(repo or ""):
        raise UserError(f"REPO is '{repo}', which is not a GitHub repository name.",
                        why="It must be 'owner/name', as in github.com/owner/name.",
                        fix="Set REPO in the setup cell to the repository this notebook came "
                        "from, e.g. REPO, REF = \"owner/transformer-testbench\", \"main\".")
    if not (ref or "").strip():
        raise UserError("REF is empty.", why="It names the branch, tag or commit to open.",
                        fix='Set REF in the setup cell, e.g. "main".')
    clean = _required_id(gist_id, "gist id for the training link")
    return (f"https://colab.research.google.com/github/{repo}/blob/{quote(ref.strip(), safe='/')}"
            f"/training.ipynb?gist_id={clean}")
