"""Push an exported model folder to the Hugging Face Hub, and the ``testbench push`` command.

:func:`push_to_hub` creates the repository (``create_repo(exist_ok=True)``, private by default)
and commits the folder (``upload_folder``): the model card ``README.md``, ``model.safetensors``,
``config.json``, ``model.py`` and the tokenizer files. The token comes from the argument,
``$HF_TOKEN``, Colab's secret ``HF_TOKEN``, or the one ``hf auth login`` saved — and is never
printed, logged or written: it is not in the result, its repr, an error or the JSON.

``huggingface_hub`` reads ``HF_ENDPOINT`` (and ``HF_HUB_OFFLINE``) once, when it is first
imported; the endpoint is read from the environment again at every push and handed to
``HfApi(endpoint=...)``, so setting it later in a notebook still takes effect.

Example:
    >>> from utils.training.hub import push_to_hub
    >>> push_to_hub("exports/tiny/", "alice/tiny-lm").url
    'https://huggingface.co/alice/tiny-lm'
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import UserError, advice

__all__ = ["PushResult", "find_token", "push_to_hub", "resolve_folder"]

DEFAULT_ENDPOINT = "https://huggingface.co"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FAILED = {"fail", "failed", "error", "mismatch"}
PARITY_MARKER = "PARITY_FAILED.txt"  # the export's note beside an artifact that failed parity
# the Hub's rule for a repo id: namespace/name, letters, digits, '-', '_', '.', at most 96
_REPO_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")


@dataclass(frozen=True)
class PushResult:
    """What a push made: the repository, its URL, the commit and the files it holds."""

    repo_id: str
    url: str
    commit_url: str | None
    files: list[str] = field(default_factory=list)
    private: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo_id, "url": self.url, "commit_url": self.commit_url,
                "files": list(self.files), "private": self.private, "notes": list(self.notes)}


def find_token(token: str | None = None) -> tuple[str | None, str]:
    """``(token, where it came from)``: the argument, ``$HF_TOKEN``, Colab's secret
    ``HF_TOKEN``, then the token ``hf auth login`` saved (``$HF_HOME/token``)."""
    from utils import colab

    if token:
        return token.strip(), "the token argument"
    if os.environ.get("HF_TOKEN", "").strip():
        return os.environ["HF_TOKEN"].strip(), "$HF_TOKEN"
    found = colab.secret("HF_TOKEN")
    if found:
        return found, "Colab's secret HF_TOKEN"
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME")
                                             or Path.home() / ".cache") / "huggingface"
    saved = Path(os.environ.get("HF_TOKEN_PATH") or Path(home) / "token")
    try:
        text = saved.read_text().strip()
    except OSError:
        text = ""
    return (text, "the token saved by `hf auth login`") if text else (None, "")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it is ``user/name`` in the Hub's spelling, else a UserError."""
    parts = str(repo_id).strip().split("/")
    if len(parts) != 2 or not all(_REPO_ID.fullmatch(p) for p in parts) or any(
            "--" in p or ".." in p for p in parts):
        raise UserError(f"{repo_id!r} is not a Hub repository id.",
                        why="A model repository is named 'user/name' (or 'organization/name'): "
                        "letters, digits, '-', '_' and '.', at most 96 characters each, no "
                        "'--' or '..'.", fix="Pass repo='your-user-name/model-name'.")
    return "/".join(parts)


def resolve_folder(path: str | Path, *, force: bool = False) -> tuple[Path, list[str]]:
    """The model folder to upload from ``path`` (the folder itself, or an export output
    holding ``folder/``), and notes; refuses a folder whose export failed parity unless
    ``force``."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{path} is not a folder.", why="push uploads an exported model folder.",
                        fix="Pass the --out folder of `testbench export` (or its folder/), or "
                        "a training run's final/.")
    folder = path / "folder" if (path / "folder").is_dir() else path
    weights = [p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    if not (folder / "config.json").is_file() or not weights:
        missing = [n for n, ok in (("config.json", (folder / "config.json").is_file()),
                                   ("model.safetensors", bool(weights))) if not ok]
        raise UserError(f"{folder} is not an exported model folder: it has no "
                        f"{' and no '.join(missing)}.",
                        why="The Hub repository is the folder utils.load_model rebuilds: "
                        "weights, config.json and model.py, with its model card.",
                        fix="Export first: `testbench export RUN_DIR --formats folder --out "
                        "DIR`, then push DIR.")
    notes = []
    if not (folder / "README.md").is_file():
        notes.append("The folder has no model card (README.md); the repository will have none.")
    failed = _failed_formats(path, folder)
    if failed and not force:
        raise UserError(f"The export in {folder.parent} failed parity: "
                        f"{', '.join(failed)}.",
                        why="An artifact that does not match the eager model must not be shared "
                        "as good (export.json records each format's status).",
                        fix="Look at the parity figures (testbench export … --json), fix the "
                        "model or drop the format, or pass force=True (--force) to push anyway.")
    if failed:
        notes.append(f"Pushed although the export failed parity ({', '.join(failed)}): "
                     "force=True.")
    return folder, notes


def _failed_formats(path: Path, folder: Path) -> list[str]:
    """Formats ``export.json`` (beside ``folder/``) marks as failed — ``{"formats": {name:
    {"status": "ok"|"failed"}}, "failed": [...]}`` — read defensively (a missing or unreadable
    file marks nothing), plus ``folder/`` itself when it holds the parity-failure note."""
    from utils.atomic import read_json

    record = None
    for candidate in (path / "export.json", folder / "export.json",
                      folder.parent / "export.json"):
        record = read_json(candidate)
        if isinstance(record, dict):
            break
    marked = ["folder"] if (folder / PARITY_MARKER).is_file() else []
    if not isinstance(record, dict):
        return marked
    formats = record.get("formats", record.get("results", {}))
    if isinstance(formats, list):
        formats = {str(f.get("format") or f.get("name") or i): f
                   for i, f in enumerate(formats) if isinstance(f, dict)}
    failed = list(marked)
    for name, info in (formats.items() if isinstance(formats, dict) else ()):
        if not isinstance(info, dict):
            info = {"status": info}
        parity = info.get("parity")
        if (str(info.get("status", "")).lower() in FAILED or info.get("passed") is False
                or info.get("ok") is False or (isinstance(parity, dict)
                                               and parity.get("passed") is False)):
            failed.append(str(name))
    listed = record.get("failed")
    if isinstance(listed, list):
        failed += [str(n) for n in listed if str(n) not in failed]
    if not failed and (record.get("passed") is False or record.get("ok") is False or
                       str(record.get("status", "")).lower() in FAILED):
        failed.append("(the export as a whole)")
    return failed


def _hidden(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = True,
                token: str | None = None, commit_message: str | None = None,
                force: bool = False) -> PushResult:
    """Create ``repo_id`` on the Hub (if needed) and commit the exported model folder to it.

    Args:
        folder: An export output (holding ``folder/``) or the model folder itself.
        repo_id: ``user/name`` (or ``organization/name``).
        private: Create the repository private (the default); an existing repository keeps
            its visibility.
        token: A Hub access token with write permission (default: ``$HF_TOKEN``, Colab's
            secret ``HF_TOKEN``, or the saved login).
        commit_message: Default "Upload <name> from Transformer Testbench".
        force: Push even when ``export.json`` marks a format as having failed parity.

    Raises:
        UserError: no token, a rejected token (401) or missing write access (403), a repo id
            that is not ``user/name``, no network or offline mode, a folder that is not an
            export, an export that failed parity.
    """
    from utils.environment import require

    repo_id = check_repo_id(repo_id)
    path, notes = resolve_folder(folder, force=force)
    hub = require("huggingface_hub", "Pushing to the Hugging Face Hub")  # the extra, then a token
    token, _where = find_token(token)
    if not token:
        raise UserError("No Hugging Face token was found, so nothing can be pushed.",
                        why="Creating a repository and committing to it needs a token with "
                        "write permission.",
                        fix="Create one at https://huggingface.co/settings/tokens (type: "
                        f"Write), then {advice('pass token=...', 'set HF_TOKEN')}, "
                        f"{advice('set HF_TOKEN', 'or run `hf auth login`')}, or in Colab add "
                        "it as the "
                        "secret HF_TOKEN (the key icon) and allow this notebook to read it.")
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    api = hub.HfApi(endpoint=endpoint, token=token, library_name="transformer-testbench")
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in
                                              p.relative_to(path).parts))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(path),
                                 commit_message=commit_message or
                                 f"Upload {path.name} from Transformer Testbench")
    except Exception as exc:  # every way the Hub or the network can refuse
        raise _push_error(exc, repo_id, endpoint, token) from None
    return PushResult(repo_id=repo_id, url=str(url), files=files, private=private, notes=notes,
                      commit_url=getattr(info, "commit_url", None))


def _push_error(exc: Exception, repo_id: str, endpoint: str, token: str) -> UserError:
    """The UserError for a failed create_repo/upload_folder (the token never in it)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) if isinstance(exc, HfHubHTTPError) else None
    said = _hidden(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, token)
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError("The Hub cannot be reached: offline mode is on (HF_HUB_OFFLINE=1).",
                         why="huggingface_hub refuses every request in offline mode, and reads "
                         "HF_HUB_OFFLINE once, when it is first imported.",
                         fix="Unset HF_HUB_OFFLINE and restart the process (in Colab: "
                         "Runtime → Restart session), then push again.")
    if status == 401:
        return UserError(f"The Hub at {endpoint} rejected the token (401 Unauthorized).",
                         why="The token is wrong, expired or was revoked.",
                         fix="Create a new token at https://huggingface.co/settings/tokens and "
                         + advice("pass it as token=... / HF_TOKEN / Colab's secret HF_TOKEN.",
                                  "set it as HF_TOKEN (or run `hf auth login`)."))
    if status == 403:
        return UserError(f"The token may not write to {repo_id} (403 Forbidden).",
                         why=f"The Hub said: {said}. A read-only or fine-grained token without "
                         f"write access to '{repo_id.split('/')[0]}', or a namespace that is "
                         "not yours.",
                         fix="Use a token of type Write (or grant this one write access to the "
                         "namespace), or push to a repo under your own user name.")
    if status is not None:
        return UserError(f"The Hub answered {status} while pushing to {repo_id}.",
                         why=f"The Hub said: {said}.",
                         fix="Try again later; if it persists, check the repository on the Hub.")
    if isinstance(exc, (ConnectionError, OSError, TimeoutError)) or \
            type(exc).__module__.startswith(("httpx", "httpcore")):
        return UserError(f"The Hub at {endpoint} could not be reached ({said}).",
                         why="There is no network connection, or the endpoint is wrong "
                         "(HF_ENDPOINT).",
                         fix="Check the connection (and HF_ENDPOINT if you set it) and push "
                         "again; nothing was committed.")
    return UserError(f"Pushing to {repo_id} failed: {type(exc).__name__}: {said}.",
                     fix="Check the folder and the repository, then push again.")
