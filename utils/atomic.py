"""Atomic files on disk: a reader never sees a half-written file or folder.

The one owner of "write it so an interruption leaves the old file or the new one, never a torn
one": caches, reports, the notebook hand-off file and checkpoints all go through here. Each
write goes to a temporary name beside the target, is flushed and fsynced, then renamed into
place with ``os.replace`` (atomic on one filesystem — Google Drive's FUSE mount included, where
it is the only safe way to publish a file, since Drive has no symlinks). JSON files go through
here too: :func:`write_json`, the one reader :func:`read_json`, and :func:`json_safe` for
values JSON has no word for (tensors, numpy scalars, NaN).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["copy_atomic", "is_temp", "json_safe", "publish_dir", "read_json", "sha256",
           "sha256_file", "sweep_temps", "write_atomic", "write_atomic_stream", "write_json"]

CHUNK = 8 << 20  # 8 MiB: a streamed copy or hash never holds a checkpoint whole in memory


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _temp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some filesystems refuse to open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one of this module's temporary names (``.<name>.<random>.tmp``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def sweep_temps(folder: str | os.PathLike, older_than: float | None = None) -> list[Path]:
    """Remove temporary files an interrupted write left in ``folder`` (not recursive).

    Only files not modified since ``older_than`` (a ``time.time()``; default: ten minutes ago)
    go: a write in progress keeps touching its temporary file. Returns what was removed; a file
    that cannot be removed (Drive dropped) is left for the next sweep.
    """
    cutoff = time.time() - 600 if older_than is None else older_than
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += memoryview(data).nbytes
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


def _publish(path: Path, fill: Callable[[BinaryIO], object], reuse: Path | None = None) -> None:
    """The one write path: ``fill(fh)`` writes a temporary file beside ``path``, which is
    flushed, fsynced and renamed into place. ``fill`` may raise to refuse the rename; on any
    failure the previous ``path`` is left as it was and no temporary file remains.

    ``reuse``: a file no longer needed, on the same filesystem (a checkpoint rotation retired),
    that becomes the temporary file and is written over in place, then cut to the new size —
    its pages and disk blocks are reused instead of allocated (for a 200 MB checkpoint the
    allocation is most of the write's CPU). A ``reuse`` that is missing, not a regular file or
    has another hard link is left alone and a new file is written."""
    fd, tmp = _temp_beside(path)
    try:
        reused = False
        if reuse is not None and _only_name_of_a_file(reuse):
            try:
                os.replace(reuse, tmp)  # atomically: the old bytes now have the temp's name
                reused = True
            except OSError:  # gone meanwhile, or not ours to move: write a new file
                pass
        if reused:
            os.close(fd)
            fd = os.open(tmp, os.O_RDWR)  # no O_TRUNC: the existing pages are overwritten
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            if reused:
                fh.truncate()  # at the end of what fill wrote
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _only_name_of_a_file(path: Path) -> bool:
    """Whether ``path`` is a regular file with no other name: writing over a file that is also
    linked elsewhere (a ``cp -al`` backup of the run) would change the other copy too."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def write_atomic_stream(path: str | os.PathLike, fill: Callable[[BinaryIO], object], *,
                        reuse: str | os.PathLike | None = None) -> tuple[str, int]:
    """Let ``fill(fh)`` write ``path`` through a temporary file, fsync and an atomic rename.

    ``fh`` has ``write`` and ``flush`` only (``torch.save(state, fh)`` works); what is written
    is hashed on the way, so no second read is needed. Returns ``(sha256, size)``. On any
    failure the previous ``path`` is left as it was and no temporary file remains (a ``reuse``
    file that was written over included). ``reuse``: a retired file to write over in place.
    """
    writers: list[_HashingWriter] = []

    def hashed(fh: BinaryIO) -> None:
        writers.append(_HashingWriter(fh))
        fill(writers[-1])  # type: ignore[arg-type]  # write and flush are all torch.save uses

    _publish(Path(path), hashed, Path(reuse) if reuse is not None else None)
    return writers[-1].digest.hexdigest(), writers[-1].size


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temporary file, fsync and
    an atomic rename; on any failure the previous ``path`` is left as it was."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    _publish(path, lambda fh: fh.write(payload))
    return path


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike, *,
                expect_sha256: str | None = None, digest: bool = True) -> str | None:
    """Copy ``src`` to ``dst`` atomically, streaming in chunks; returns the copy's sha256.

    The bytes are hashed as they are written, so a caller can compare the digest with a
    manifest without reading the file again. With ``expect_sha256``, bytes that hash
    differently (the source changed or is corrupt) raise ``OSError(EIO)`` before the rename.
    ``digest=False`` skips the hash (returns None) for a caller that verifies the landed copy
    itself: hashing is most of a copy's CPU time. A failure (Drive's ``Errno 107``, ``EIO``)
    leaves no file under ``dst``'s name other than the previous one.
    """
    hasher = hashlib.sha256() if digest or expect_sha256 is not None else None

    def copy(fout: BinaryIO) -> None:
        with open(src, "rb") as fin:
            if hasher is None and _sendfile(fin.fileno(), fout):
                return
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
        if expect_sha256 is not None and hasher is not None and \
                hasher.hexdigest() != expect_sha256:
            raise OSError(errno.EIO, f"{src} does not match its expected sha256 "
                          f"{expect_sha256[:12]}… (it changed or is corrupt)")

    _publish(Path(dst), copy)
    return hasher.hexdigest() if hasher is not None else None


# what a kernel says when it cannot sendfile between these two files (macOS: only to a socket)
_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV,
                errno.ENOTSOCK}


def _sendfile(src_fd: int, fout: BinaryIO) -> bool:
    """Copy all of ``src_fd`` into ``fout`` inside the kernel, not through Python's buffers
    (measured on a run's first saves, before a rotated-out checkpoint can be written over: a
    222 MB save and its mirror copy took 0.44–0.86 s of CPU, 0.91–1.67 s copied by reading);
    False, with nothing written, where the filesystems refuse it, so the caller reads."""
    if not hasattr(os, "sendfile"):  # Windows
        return False
    fout.flush()
    offset = 0
    while True:
        try:
            sent = os.sendfile(fout.fileno(), src_fd, offset, CHUNK)
        except OSError as exc:
            if offset == 0 and exc.errno in _NO_SENDFILE:
                return False
            raise
        if sent == 0:
            return True
        offset += sent


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


# ---- JSON ---------------------------------------------------------------------------------
def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON, written atomically (what JSON cannot hold, as its ``str``)."""
    return write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON in ``path``, or None when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def json_safe(value: Any) -> Any:
    """Numbers, tensors and numpy scalars as plain JSON values (keys as strings); NaN and
    infinities as strings, which strict JSON readers accept."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # torch/numpy scalar
        return json_safe(value.item())
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    return str(value)
