"""Fetch a gist through the GitHub Gist API into a content-addressed cache.

``GET {api}/gists/{id}[/{revision}]`` with the base URL from ``$GIST_API_URL`` (default
``https://api.github.com``), so tests point it at a loopback server that speaks the same JSON.
Files the API truncates are fetched from their ``raw_url``. A revision is immutable, so a
cached revision is served without the network, and when the network is down the newest
cached revision of a gist is used (with a notice) rather than failing.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from utils.atomic import publish_dir, sha256
from utils.environment import testbench_home
from utils.errors import UserError

__all__ = ["DEFAULT_API_URL", "FetchedGist", "fetch_gist"]

DEFAULT_API_URL = "https://api.github.com"
PROVENANCE_FILE = ".provenance.json"
_BINARY_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".npz", ".npy")
_TRANSIENT = (URLError, TimeoutError, socket.timeout, ConnectionError, HTTPException)


@dataclass
class FetchedGist:
    """A gist revision on local disk, with where it came from."""

    gist_id: str
    revision: str
    folder: Path
    owner: str | None = None
    description: str = ""
    html_url: str | None = None
    updated_at: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    from_cache: bool = False

    def to_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "folder"}
        data["folder"] = str(self.folder)
        return data


class _Transient(Exception):
    """A failure worth retrying (5xx, timeout, dropped connection)."""


def _token() -> str | None:
    return os.environ.get("GITHUB_TOKEN") or os.environ.get("GH_TOKEN") or None


def _get(url: str, *, token: str | None, timeout: float, accept: str) -> tuple[bytes, dict]:
    headers = {"Accept": accept, "X-GitHub-Api-Version": "2022-11-28",
               "User-Agent": "transformer-testbench"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urlopen(Request(url, headers=headers), timeout=timeout) as resp:
            return resp.read(), dict(resp.headers)
    except HTTPError as exc:
        if exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} from {urlsplit(url).netloc}") from exc
        raise
    except _TRANSIENT as exc:
        raise _Transient(str(getattr(exc, "reason", exc)) or type(exc).__name__) from exc


def _get_with_retries(url: str, *, token, timeout, retries, backoff, accept) -> tuple[bytes, dict]:
    for attempt in range(retries):
        try:
            return _get(url, token=token, timeout=timeout, accept=accept)
        except _Transient:
            if attempt == retries - 1:
                raise
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


def _http_error(exc: HTTPError, gist_id: str, revision: str | None, has_token: bool) -> UserError:
    headers: Any = exc.headers or {}
    try:
        message = json.loads(exc.read() or b"{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    what = f"Gist {gist_id}" + (f" at revision {revision[:7]}" if revision else "")
    if exc.code == 404:
        return UserError(f"{what} was not found (HTTP 404).",
                         why="The gist was deleted, the id is mistyped, or the revision is not "
                         "part of that gist.",
                         fix="Open https://gist.github.com/" + gist_id + " in a browser to check "
                         "the id; copy it again from the gist's URL.")
    if exc.code in (403, 429) and (headers.get("X-RateLimit-Remaining") == "0"
                                   or "rate limit" in message.lower() or exc.code == 429):
        reset = headers.get("X-RateLimit-Reset")
        if reset and reset.isdigit():
            at = datetime.fromtimestamp(int(reset), tz=timezone.utc)
            minutes = max(0, round((int(reset) - time.time()) / 60))
            when = f"It resets at {at:%H:%M} UTC (in about {minutes} min)."
        else:
            wait = headers.get("Retry-After")
            when = f"Retry after {wait} s." if wait else "It resets within the hour."
        token_advice = ("Your token's limit is used up too; wait for the reset." if has_token else
                        "Set a GitHub token (any classic or fine-grained token, no scopes needed) "
                        "in the GITHUB_TOKEN environment variable to get 5,000 requests an hour "
                        "instead of 60.")
        return UserError(f"GitHub's API rate limit was reached while fetching {what}.",
                         why=f"Anonymous requests are limited to 60 an hour per IP address "
                         f"(Colab VMs share addresses). {when}", fix=token_advice)
    if exc.code == 401:
        return UserError(f"GitHub rejected the token while fetching {what} (HTTP 401).",
                         why="The token in GITHUB_TOKEN is invalid or expired.",
                         fix="Create a new token, or unset GITHUB_TOKEN: public gists need none.")
    return UserError(f"GitHub answered HTTP {exc.code} for {what}: {message or exc.reason}.",
                     why="The Gist API refused the request.",
                     fix="Check the gist id; if it persists, try again later.")


def _cached(cache_root: Path, gist_id: str, revision: str | None) -> FetchedGist | None:
    """A complete cached revision (or, with revision None, the newest fetched one)."""
    gist_dir = cache_root / gist_id
    if revision:
        folders = [gist_dir / revision]
    else:
        folders = list(gist_dir.glob("*")) if gist_dir.is_dir() else []
    found = []
    for folder in folders:
        try:
            prov = json.loads((folder / PROVENANCE_FILE).read_text())
        except (OSError, ValueError):
            continue
        found.append((prov.get("fetched_at", ""), prov, folder))
    if not found:
        return None
    _, prov, folder = max(found, key=lambda item: item[0])
    prov.pop("fetched_at", None)
    prov.pop("folder", None)
    return FetchedGist(**{**prov, "folder": folder, "from_cache": True})


def fetch_gist(
    gist_id: str,
    revision: str | None = None,
    *,
    api_url: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 20.0,
    retries: int = 3,
    backoff: float = 0.5,
    say: Callable[[str], None] = print,
) -> FetchedGist:
    """Fetch one revision of a gist (the newest when ``revision`` is None) to local disk.

    Args:
        gist_id: The gist's id.
        revision: A 40-hex revision sha, or None for the newest.
        api_url: API base URL; default ``$GIST_API_URL`` or ``https://api.github.com``.
        token: GitHub token; default ``$GITHUB_TOKEN``/``$GH_TOKEN``. Never printed.
        cache_dir: Where revisions are kept; default ``<testbench home>/gists``.
        timeout: Seconds per HTTP request.
        retries: Attempts on 5xx, timeouts and dropped connections (with exponential backoff).
        backoff: First backoff delay in seconds.
        say: Where progress notices go.

    Raises:
        UserError: not found, rate limited, bad token, unreachable with nothing cached,
            a malformed answer.
    """
    api = (api_url or os.environ.get("GIST_API_URL") or DEFAULT_API_URL).rstrip("/")
    token = token or _token()
    cache_root = Path(cache_dir) if cache_dir else testbench_home() / "gists"
    if revision and (hit := _cached(cache_root, gist_id, revision)):
        return hit
    url = f"{api}/gists/{gist_id}" + (f"/{revision}" if revision else "")
    opts = {"token": token, "timeout": timeout, "retries": retries, "backoff": backoff}
    try:
        body, _ = _get_with_retries(url, accept="application/vnd.github+json", **opts)
    except HTTPError as exc:
        raise _http_error(exc, gist_id, revision, bool(token)) from None
    except _Transient as exc:
        stale = _cached(cache_root, gist_id, None)
        if stale is not None:
            say(f"Could not reach {urlsplit(api).netloc} ({exc}); using the cached copy of gist "
                f"{gist_id} at revision {stale.revision[:7]}.")
            return stale
        raise UserError(f"Could not reach the GitHub API at {api} to fetch gist {gist_id}: {exc}.",
                        why=f"{retries} attempts failed: no network, a proxy, or GitHub is down.",
                        fix="Check the connection and run again, or download the gist's files "
                        "and pass the local folder instead.") from None
    try:
        meta = json.loads(body)
        listed = meta["files"]
        revision = revision or meta["history"][0]["version"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"The Gist API's answer for {gist_id} is not a gist.",
                        why=f"{url} returned data without 'files'/'history'.",
                        fix="Check GIST_API_URL; unset it to use https://api.github.com.") from None

    files: dict[str, bytes] = {}
    api_origin = urlsplit(api).netloc
    for name, info in listed.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise UserError(f"Gist {gist_id} has a file name I will not write: {name!r}.",
                            why="File names with path separators or a leading dot could "
                            "escape the cache folder.", fix="Rename the file in the gist.")
        content = info.get("content")
        needs_raw = (info.get("truncated") or content is None or name.endswith(_BINARY_SUFFIXES)
                     or "\ufffd" in content)  # a lossy view of non-UTF-8 bytes
        if needs_raw:
            raw_url = info["raw_url"]
            raw_token = token if urlsplit(raw_url).netloc == api_origin else None
            try:
                files[name], _ = _get_with_retries(raw_url, accept="*/*",
                                                   **{**opts, "token": raw_token})
            except (HTTPError, _Transient) as exc:
                raise UserError(f"Could not download {name} of gist {gist_id}: {exc}.",
                                why="The file is too large for the API's answer and its raw "
                                "URL failed.", fix="Run again; if it persists, download the gist "
                                "and pass the local folder.") from None
        else:
            files[name] = content.encode("utf-8")

    owner = (meta.get("owner") or {}).get("login")
    fetched = FetchedGist(
        gist_id=gist_id, revision=revision, folder=cache_root / gist_id / revision, owner=owner,
        description=meta.get("description") or "", html_url=meta.get("html_url"),
        updated_at=meta.get("updated_at"), files={n: sha256(b) for n, b in files.items()},
    )
    record = {**fetched.to_dict(), "fetched_at": datetime.now(timezone.utc).isoformat()}
    record.pop("from_cache")
    files[PROVENANCE_FILE] = json.dumps(record, indent=2).encode()
    publish_dir(files, fetched.folder)
    return fetched
