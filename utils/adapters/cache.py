"""Atomic files on disk: a reader never sees a half-written file or folder.

Downloads and reports are written to a temporary name beside the target and renamed into
place (``os.replace`` is atomic on one filesystem), so an interrupted run leaves either the
old file or the new one — never a torn one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["publish_dir", "sha256", "write_atomic"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def publish_dir(files: dict[str, bytes], target: str | os.PathLike) -> Path:
    """Write a folder of files so that ``target`` appears complete or not at all.

    The files go into a temporary sibling folder that is renamed to ``target``. When
    ``target`` already exists (content-addressed caches: the same revision fetched twice), the
    existing folder is kept and the new copy dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for name, data in files.items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # a real failure, not "someone published it first"
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
