"""Checkpoints: where they live, which are valid, and their copy on Google Drive.

A run folder's ``checkpoints/`` holds ``step-XXXXXXXX.ckpt`` files, a manifest beside each and
``latest.json`` (the layout: ``checkpoint_files``); the mirror gets the same relative layout.
A save goes to the local folder first (temp → fsync → ``os.replace``: ``utils.atomic``), then
its manifest, then ``latest.json`` — which so only ever names a complete checkpoint; nothing
half-written has a final name. A background thread then copies it to the mirror the same way
and verifies what landed (``mirror``: retries, newest copy wins). Rotation keeps the last
``keep_last`` plus the best by validation loss, in both places. Resuming never trusts a name:
:meth:`CheckpointManager.latest_valid` checks size and sha256 against the manifest, locally
and in the mirror, and falls back past a damaged file with a warning naming it. No lightning
here; the trainer wraps this in a CheckpointIO.

Example:
    >>> manager = CheckpointManager("runs/gpt", "/content/drive/MyDrive/runs/gpt")
    >>> manager.save_async(state, step=50, val_loss=3.2)   # returns after a copy in memory
    >>> info = manager.latest_valid(); manager.restore_local(); state = manager.load(info)
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import json
import operator
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import torch

from utils import atomic
from utils.atomic import read_json
from utils.errors import UserError, arg
from utils.training.checkpoint_files import (
    LATEST,
    SPARE,
    CheckpointInfo,
    ckpt_name,
    keep_set,
    make_manifest,
    manifest_name,
    read_manifests,
    step_of,
    verify,
)
from utils.training.mirror import GaveUp, MirrorQueue, background_priority
from utils.training.snapshot import snapshot_state

__all__ = ["CheckpointInfo", "CheckpointManager"]


class CheckpointManager:
    """The one owner of where checkpoints live and which are valid.

    Args:
        run_dir: The run folder; checkpoints go to ``run_dir/checkpoints``.
        mirror_dir: A folder that receives the same layout (Google Drive), or None.
        keep_last: How many of the newest checkpoints are kept (at least 1).
        keep_best: Also keep the one with the lowest validation loss.
        retries: Attempts after the first for each mirror step that raises ``OSError``.
        backoff: Seconds before the first retry; each next wait doubles.
        say: Where notices go (skipped checkpoints, mirror failures).
    """

    def __init__(self, run_dir: str | Path, mirror_dir: str | Path | None = None, *,
                 keep_last: int = 2, keep_best: bool = True, retries: int = 6,
                 backoff: float = 0.5, say: Callable[[str], None] | None = None) -> None:
        bad = []
        if not isinstance(keep_last, int) or keep_last < 1:
            bad.append(f"keep_last={keep_last!r} (an int ≥ 1)")
        if not isinstance(retries, int) or retries < 0:
            bad.append(f"retries={retries!r} (an int ≥ 0)")
        if not isinstance(backoff, (int, float)) or backoff < 0:
            bad.append(f"backoff={backoff!r} (seconds ≥ 0)")
        self.run_dir = Path(run_dir)
        self.mirror_dir = Path(mirror_dir) if mirror_dir is not None else None
        if self.mirror_dir is not None and self.mirror_dir.resolve() == self.run_dir.resolve():
            bad.append(f"mirror_dir={str(mirror_dir)!r} (a folder other than the run folder)")
        if bad:
            raise UserError(f"CheckpointManager got {'; '.join(bad)}.",
                            why="These values are outside what the checkpoint manager allows.",
                            fix="Pass the values shown in brackets.")
        self.checkpoints_dir = self.run_dir / "checkpoints"
        self.keep_last, self.keep_best = keep_last, keep_best
        self.retries, self.backoff = retries, backoff
        self._say = say or (lambda _message: None)
        self._lock = threading.RLock()  # one local write or rotation at a time
        self._mirror = (MirrorQueue(retries=retries, backoff=backoff, say=self._say)
                        if self.mirror_dir is not None else None)
        self._executor: ThreadPoolExecutor | None = None
        self._saving: tuple[int, Future] | None = None  # the background save, until waited
        self._buffers: dict = {}  # the last snapshot's tensors, reused by the next one
        self._failed: tuple[int, BaseException] | None = None
        self._local_errors: list[str] = []
        self._closed = False
        atexit.register(self.close)

    @property
    def mirror_checkpoints_dir(self) -> Path | None:
        return self.mirror_dir / "checkpoints" if self.mirror_dir is not None else None

    @property
    def pending(self) -> int:
        """Work not done yet: a background local save, plus mirror copies queued or running."""
        saving = self._saving is not None and not self._saving[1].done()
        return int(saving) + (self._mirror.pending if self._mirror else 0)

    @property
    def errors(self) -> list[str]:
        """Background failures: local saves, and mirror copies that exhausted their retries."""
        self._wait_local(0, raise_failure=False)  # collect a background save that failed
        return [*self._local_errors, *(self._mirror.errors if self._mirror else [])]

    # -- saving ---------------------------------------------------------------------------

    def save(self, state: dict, step: int, *, val_loss: float | None = None) -> CheckpointInfo:
        """Write ``state`` now (local disk), then queue its mirror copy; returns the verified info.

        Costs one ``torch.save`` + fsync of the state; :meth:`save_async` costs only a copy in
        memory. ``val_loss`` may be a float or a 0-d tensor; a non-finite one is stored as None.
        """
        self._check_open()
        self._wait_local()
        return self._write(state, operator.index(step), val_loss)

    def save_async(self, state: dict, step: int, *,
                   val_loss: float | None = None) -> Future[CheckpointInfo]:
        """Copy ``state``'s tensors to CPU and write it in a background thread.

        Returns at once with a future of the :class:`CheckpointInfo`; training may change its
        tensors right away. Host memory keeps one extra copy of the state's tensors (reused by
        every save, freed by :meth:`close`); a save while the previous one is still writing
        waits for it first.
        """
        self._check_open()
        self._wait_local()
        snapshot = snapshot_state(state, self._buffers)
        step = operator.index(step)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-save",
                                                initializer=background_priority)
        future = self._executor.submit(self._write, snapshot, step, val_loss)
        self._saving = (step, future)
        return future

    def _write(self, state: dict, step: int, val_loss) -> CheckpointInfo:
        with self._lock:
            started, folder = time.time(), self.checkpoints_dir
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / ckpt_name(step)
            sha, size = atomic.write_atomic_stream(path, lambda fh: torch.save(state, fh),
                                                   reuse=folder / SPARE)
            manifest = make_manifest(step, sha, size, val_loss)
            atomic.write_atomic(folder / manifest_name(step), json.dumps(manifest, indent=2))
            atomic.write_atomic(folder / LATEST, json.dumps({"step": step, "file": path.name}))
            info = CheckpointInfo(path, step, sha, size, manifest["val_loss"], "local")
            if self._mirror is not None:
                self._mirror.submit("checkpoint", f"mirror of {path.name}",
                                    lambda: self._mirror_checkpoint(info, manifest), tag=step)
            self._rotate(folder, {step, *(self._mirror.tags() if self._mirror else ())},
                         self._retire, started)
            return info

    def _retire(self, path: Path) -> None:
        """Remove a rotated-out file of the local folder — except one checkpoint, kept as
        ``.spare.ckpt`` for the next save to write over in place (a new 200 MB file costs its
        page and block allocation: most of a save's CPU, taken from training on a 2-core
        machine). Not in the mirror: Drive's FUSE mount may fetch a file to write into it."""
        if path.suffix == ".ckpt" and not (path.parent / SPARE).exists():
            with contextlib.suppress(FileNotFoundError):  # gone already: nothing to keep
                path.replace(path.parent / SPARE)
            return
        path.unlink(missing_ok=True)

    def _wait_local(self, timeout: float | None = None, *, raise_failure: bool = True) -> bool:
        """Wait for the background save; a failed one is raised (once) as a UserError by the
        first wait that may raise."""
        if self._saving is not None:
            step, future = self._saving
            try:
                exc = future.exception(timeout)
            except FutureTimeout:  # TimeoutError itself only from Python 3.11
                return False
            self._saving = None
            if exc is not None:
                self._failed = (step, exc)
                self._local_errors.append(f"saving step {step} failed: "
                                          f"{type(exc).__name__}: {exc}")
                self._say(f"Checkpoint: saving step {step} failed: {exc}")
        if raise_failure and self._failed is not None:
            (step, exc), self._failed = self._failed, None
            raise UserError(
                f"The checkpoint for step {step} could not be written to "
                f"{self.checkpoints_dir}: {type(exc).__name__}: {exc}",
                why="The background save failed (a full disk, a removed folder, no "
                "permission); the earlier checkpoints are untouched.",
                fix="Free disk space or fix the folder; latest_valid() finds the newest "
                "complete checkpoint.") from exc
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this CheckpointManager is closed")

    def _rotate(self, folder: Path, protect: set[int], remove: Callable[[Path], object],
                started: float) -> None:
        """Delete what keep_last + keep_best do not keep, never a step in ``protect`` or the one
        ``latest.json`` names, then temp files untouched since ``started`` (this manager is the
        folder's only writer, so they were left by a dropped or killed write)."""
        manifests = read_manifests(folder)
        keep = keep_set(manifests, self.keep_last, self.keep_best) | protect
        pointer = read_json(folder / LATEST)
        if isinstance(pointer, dict) and isinstance(pointer.get("step"), int):
            keep.add(pointer["step"])  # never delete what latest.json names
        newest = max(manifests, default=-1)
        for step in sorted(manifests):
            if step not in keep:  # the manifest goes first: no manifest, never resumed from
                remove(folder / manifest_name(step))
                remove(folder / ckpt_name(step))
        for path in folder.glob("step-*.ckpt"):  # interrupted saves older than a complete one
            at = step_of(path)
            if at is not None and at not in manifests and at < newest and at not in keep:
                remove(path)
        atomic.sweep_temps(folder, older_than=started)

    # -- the mirror -----------------------------------------------------------------------

    def mirror_file(self, relpath: str | Path) -> None:
        """Queue a copy of ``run_dir/relpath`` (a file, or every file of a folder such as
        ``final``) to ``mirror_dir/relpath``; the newest request per file wins. No-op without a
        mirror."""
        if self._mirror is None:
            return
        rel = Path(relpath)
        if rel.is_absolute():
            rel = rel.relative_to(self.run_dir)
        if ".." in rel.parts:
            raise ValueError(f"{relpath!r} is outside the run folder {self.run_dir}")
        src = self.run_dir / rel
        files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
        for path in files:
            if not atomic.is_temp(path):
                name = path.relative_to(self.run_dir).as_posix()
                self._mirror.submit(f"file:{name}", f"mirror of {name}",
                                    functools.partial(self._mirror_plain, name))

    def _mirror_checkpoint(self, info: CheckpointInfo, manifest: dict) -> None:
        mirror, folder, started = self._mirror, self.mirror_checkpoints_dir, time.time()
        assert mirror is not None and folder is not None

        def copy() -> bool:
            local = read_json(info.path.with_suffix(".json")) or {}
            if local.get("sha256") != info.sha256:
                return False  # saved again under the same step since: that newer job copies it
            _copy_verified(info.path, folder / info.path.name, info.sha256)
            return True

        if not mirror.retry(f"copying {info.path.name} to {folder}", copy):
            return
        mirror.retry(f"writing {manifest_name(info.step)} in {folder}",
                     lambda: atomic.write_atomic(folder / manifest_name(info.step),
                                                 json.dumps(manifest, indent=2)))
        mirror.retry(f"writing {LATEST} in {folder}",
                     lambda: atomic.write_atomic(folder / LATEST, json.dumps(
                         {"step": info.step, "file": info.path.name})))
        self._rotate(folder, {info.step},
                     lambda p: mirror.retry(f"removing {p}", lambda: p.unlink(missing_ok=True)),
                     started)

    def _mirror_plain(self, name: str) -> None:
        assert self._mirror is not None and self.mirror_dir is not None, "mirroring"
        src, dst = self.run_dir / name, Path(self.mirror_dir) / name
        if not src.is_file():
            raise GaveUp(f"mirror of {name}: {src} does not exist")
        self._mirror.retry(f"copying {name} to {self.mirror_dir}",
                           lambda: _copy_verified(src, dst, None))

    def read_run_json(self, name: str) -> Any:
        """A JSON file of the run folder (``config.json``, ``fingerprint.json``…), else the
        mirror's copy (a new VM: the local folder is gone, Drive kept it); None if neither."""
        found = read_json(self.run_dir / name)
        if found is None and self.mirror_dir is not None:
            found = read_json(Path(self.mirror_dir) / name)
        return found

    # -- resuming -------------------------------------------------------------------------

    def latest_valid(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies (size and sha256 against its manifest), locally
        or in the mirror; newer ones that do not verify are skipped with a warning naming them.
        ``latest.json`` is for readers outside; the scan of the manifests decides."""
        self._wait_local(raise_failure=False)
        busy = self._mirror.tags() if self._mirror else set()  # being copied: not final yet
        places = [("local", self.checkpoints_dir)]
        if self.mirror_checkpoints_dir is not None:
            places.append(("mirror", self.mirror_checkpoints_dir))
        candidates, notes = [], []
        for rank, (location, folder) in enumerate(places):
            try:
                steps = {s for p in folder.iterdir() if (s := step_of(p)) is not None} \
                    if folder.is_dir() else set()
            except OSError as exc:  # Drive not mounted or dropped: search the other place
                notes.append(f"Cannot search {folder} for checkpoints ({exc}).")
                continue
            candidates += [(-step, rank, location, folder) for step in steps
                           if not (location == "mirror" and step in busy)]
        found = None
        for neg_step, _rank, location, folder in sorted(candidates):  # newest first, local first
            result = verify(folder, -neg_step, location)
            if isinstance(result, CheckpointInfo):
                found = result
                break
            notes.append(f"Skipping checkpoint {folder / ckpt_name(-neg_step)}: {result}.")
        for message in notes:
            self._say(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return found

    def load(self, info: CheckpointInfo | str | Path, map_location="cpu", *,
             mmap: bool = False) -> dict:
        """``torch.load(weights_only=True)`` of a checkpoint (``mmap``: tensors read only when
        touched); a file that will not load is a ``UserError``."""
        path = info.path if isinstance(info, CheckpointInfo) else Path(info)
        self._wait_local(raise_failure=False)
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except FileNotFoundError as exc:
            raise UserError(f"Checkpoint {path} does not exist.",
                            why="It was deleted or moved, or the path is wrong.",
                            fix=f"Pass {arg('resume', 'auto')} to use the newest valid "
                            "checkpoint, or a path to an existing one.") from exc
        except Exception as exc:
            refused = "Weights only load failed" in str(exc)
            raise UserError(
                f"Checkpoint {path} could not be loaded: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}",
                why="It holds objects that torch.load(weights_only=True) refuses to unpickle."
                if refused else "The file is truncated or corrupt (an interrupted copy or a "
                "full disk) or was not written by torch.save.",
                fix="Store only tensors, numbers, strings and containers in the state."
                if refused else f"Resume with {arg('resume', 'auto')}, which falls back to "
                "the previous valid checkpoint, or delete the file.") from exc

    def restore_local(self, info: CheckpointInfo | None = None) -> CheckpointInfo | None:
        """Make the run folder complete again from the mirror (a recycled Colab VM): copy the
        checkpoint to resume from (``info``, default :meth:`latest_valid`) and its manifest if
        only the mirror has it, write ``latest.json``, and copy every other mirrored file the
        run folder lacks (tokenizer, metrics). Returns the local checkpoint, or None."""
        info = info if info is not None else self.latest_valid()
        if self._mirror is None:
            return info
        mirror, root = self._mirror, self.mirror_dir
        assert root is not None, "a mirror queue has a mirror folder"
        try:
            for src in sorted(root.rglob("*")):
                rel = src.relative_to(root)
                if (src.is_file() and not atomic.is_temp(src) and rel.parts[0] != "checkpoints"
                        and not (self.run_dir / rel).exists()):
                    mirror.retry(f"restoring {rel}", functools.partial(
                        atomic.copy_atomic, src, self.run_dir / rel))
            if info is None or info.location == "local":
                return info
            with self._lock:
                local = self.checkpoints_dir / info.path.name
                mirror.retry(f"restoring {info.path.name}", lambda: atomic.copy_atomic(
                    info.path, local, expect_sha256=info.sha256))
                manifest = (info.path.parent / manifest_name(info.step)).read_bytes()
                atomic.write_atomic(self.checkpoints_dir / manifest_name(info.step), manifest)
                atomic.write_atomic(self.checkpoints_dir / LATEST,
                                    json.dumps({"step": info.step, "file": local.name}))
        except (GaveUp, OSError) as exc:
            raise UserError(f"Could not copy the run back from the mirror {root}: {exc}",
                            why="The mirror folder (Google Drive) could not be read.",
                            fix="Check that Drive is mounted (drive.mount) and run again.") from exc
        return CheckpointInfo(local, info.step, info.sha256, info.size, info.val_loss, "local")

    # -- lifetime -------------------------------------------------------------------------

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the background save and the mirror queue; False if ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._wait_local(timeout):
            return False
        if self._mirror is None:
            return True
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._mirror.drain(left)

    def close(self, timeout: float | None = None) -> None:
        """Drain, then stop the threads (also run at exit). Safe to call twice; a failed
        background save is not raised here (it is in ``errors``; :meth:`drain` raises it)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            self._wait_local(timeout, raise_failure=False)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._buffers.clear()
            (self.checkpoints_dir / SPARE).unlink(missing_ok=True)
            if self._mirror is not None:
                self._mirror.close(timeout)

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _copy_verified(src: Path, dst: Path, sha: str | None) -> None:
    """Copy through a temp name, then read back what landed; a mismatch is removed (and the
    caller retries). With the manifest's ``sha`` the copy itself is hashed only when it would
    replace an existing file (hashing is most of a copy's CPU, and the read-back checks it)."""
    replacing = sha is not None and dst.exists()  # never swap a good copy for wrong bytes
    sent = atomic.copy_atomic(src, dst, expect_sha256=sha if replacing else None,
                              digest=sha is None)
    if atomic.sha256_file(dst) != (sha or sent):
        dst.unlink(missing_ok=True)
        raise OSError(errno.EIO, f"the copy of {src.name} in {dst.parent} does not match what "
                      "was sent")
