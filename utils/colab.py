"""The one edge module for calls that exist only in Google Colab (``google.colab``).

Everything here imports ``google.colab`` inside the function, so importing this module costs
nothing anywhere. Outside Colab, :func:`page_url` returns None (it is best effort even inside
Colab), :func:`secret` returns None, and :func:`mount_drive` / :func:`upload_files` raise a
:class:`UserError` saying they need Colab. Tests fake ``google.colab`` by putting a module into ``sys.modules`` — only here.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType

from utils.errors import UserError

__all__ = ["PAGE_URL_SCRIPTS", "mount_drive", "page_url", "secret", "upload_files"]

# JavaScript read through Colab's frontend, first useful answer wins. Cell output runs in a
# sandboxed iframe on another origin, so the notebook page's own URL may be unreadable; the
# referrer or the ancestor origins sometimes carry it. The form field is the reliable path.
PAGE_URL_SCRIPTS: tuple[str, ...] = (
    "window.location.href",
    "document.referrer",
    "(function(){try{return window.top.location.href}catch(e){return ''}})()",
)


def _colab(submodule: str, feature: str, why: str, fix: str) -> ModuleType:
    """``google.colab.<submodule>``, or a UserError saying ``feature`` needs Colab."""
    try:
        colab = import_module("google.colab")
        found = getattr(colab, submodule, None)
        return found if found is not None else import_module(f"google.colab.{submodule}")
    except ImportError:
        raise UserError(f"{feature} works only in Google Colab.", why=why, fix=fix) from None


def page_url(timeout: float = 5.0) -> str | None:
    """The notebook page's URL as Colab's frontend reports it, or None (best effort).

    Returns the first answer that carries a ``gist_id``, else the first non-empty answer, else
    None — outside Colab, when the frontend does not answer, or when any call fails.
    """
    from utils.adapters.sources import gist_id_from_url

    try:
        output = _colab("output", "Reading the page URL", "", "")
    except UserError:
        return None
    answers: list[str] = []
    for script in PAGE_URL_SCRIPTS:
        try:
            value = output.eval_js(script, timeout_sec=timeout)
        except Exception:  # the frontend may refuse, time out or be absent: best effort
            continue
        if isinstance(value, str) and value.strip():
            if gist_id_from_url(value):
                return value.strip()
            answers.append(value.strip())
    return answers[0] if answers else None


def mount_drive(mountpoint: str = "/content/drive", *, force_remount: bool = False) -> Path:
    """Mount Google Drive at ``mountpoint`` (asks for permission in Colab) and return it.

    Raises:
        UserError: not a Colab runtime.
    """
    drive = _colab("drive", "Mounting Google Drive", "It uses Colab's Drive connector, and this "
                   "is not a Colab runtime.", "Keep checkpoints on the local disk (the default "
                   "outside Colab), or copy them to your drive yourself.")
    drive.mount(mountpoint, force_remount=force_remount)
    return Path(mountpoint)


def upload_files(feature: str = "Uploading files",
                 fix: str = "Pass the path of a local file or folder instead.") -> dict[str, bytes]:
    """Open Colab's file picker; returns ``{file name: bytes}`` (empty if the picker closed).

    Raises:
        UserError: not a Colab runtime (the message names ``feature``).
    """
    files = _colab("files", feature, "It opens Colab's file picker, and this is not a Colab "
                   "runtime.", fix)
    return dict(files.upload() or {})


def secret(name: str) -> str | None:
    """The Colab secret ``name`` (the key icon in Colab's sidebar), or None.

    None outside Colab, when no such secret exists, or when this notebook was not granted
    access to it. Never prints or logs the value.
    """
    try:
        userdata = _colab("userdata", "Reading a secret", "", "")
    except UserError:
        return None
    try:
        value = userdata.get(name)
    except Exception:  # SecretNotFoundError, NotebookAccessError, a frontend timeout
        return None
    return value.strip() if isinstance(value, str) and value.strip() else None
