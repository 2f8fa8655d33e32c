"""A background copier for a slow folder that drops (Google Drive's FUSE mount in Colab).

One thread runs queued jobs in order. Every job has a key, and a newer job for a key replaces
the one still waiting (only the newest checkpoint copy, the newest ``metrics.csv`` … is worth
copying; the replaced job keeps its place in the line, so nothing starves). A job calls
:meth:`MirrorQueue.retry` around each step that touches the slow folder: an ``OSError``
(Drive's ``Errno 107 Transport endpoint is not connected``, ``EIO``) is retried with exponential
backoff. A job that still fails is recorded in ``errors`` and reported; it is never raised into
the training loop.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["GaveUp", "MirrorQueue", "background_priority"]

T = TypeVar("T")
THREAD_NAME = "checkpoint-mirror"


class GaveUp(Exception):
    """A mirror step failed on every attempt (or the queue was closed while it waited)."""


@dataclass
class _Job:
    label: str
    run: Callable[[], None]
    tag: object = None


class MirrorQueue:
    """Jobs keyed by what they copy, newest per key, run by one daemon thread.

    Args:
        retries: How many times a failing step is tried again (``retries + 1`` attempts).
        backoff: Seconds before the first retry; each next wait doubles.
        say: Where failures are reported (they are also warned and kept in ``errors``).
    """

    def __init__(self, *, retries: int = 6, backoff: float = 0.5,
                 say: Callable[[str], None] | None = None) -> None:
        self.retries = retries
        self.backoff = backoff
        self.errors: list[str] = []
        self._say = say or (lambda _message: None)
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._active: _Job | None = None
        self._cond = threading.Condition()
        self._abort = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, key: str, label: str, run: Callable[[], None], tag: object = None) -> None:
        """Queue ``run``; a job still waiting under ``key`` is dropped in its favour."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the mirror queue is closed")
            self._jobs[key] = _Job(label, run, tag)  # an existing key keeps its position
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._jobs) + (self._active is not None)

    def tags(self) -> set:
        """The tags of the jobs queued or running (the checkpoint steps still being read)."""
        with self._cond:
            jobs = [*self._jobs.values(), *([self._active] if self._active else [])]
            return {job.tag for job in jobs if job.tag is not None}

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried on ``OSError`` with exponential backoff; ``GaveUp`` at the end."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except OSError as exc:
                if attempt == self.retries:
                    raise GaveUp(f"{what} failed after {attempt + 1} attempts: {exc}") from exc
                if self._abort.wait(self.backoff * 2**attempt):
                    raise GaveUp(f"{what} was abandoned: the mirror was closed") from exc
        raise AssertionError("unreachable")

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or running; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and self._active is None,
                                       timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Drain (up to ``timeout``), then stop the thread; jobs still left are abandoned."""
        done = self.drain(timeout)
        with self._cond:
            self._closed = True
            left = [job.label for job in self._jobs.values()]
            self._jobs.clear()
            if not done:
                self._abort.set()
            self._cond.notify_all()
        for label in left:
            self._fail(f"{label} was abandoned: the mirror was closed before it ran")
        if self._thread is not None:
            self._thread.join(None if done else 5.0)
        return done

    def _fail(self, message: str) -> None:
        self.errors.append(message)
        self._say(f"Mirror: {message}")
        warnings.warn(f"Mirror: {message}", RuntimeWarning, stacklevel=2)

    def _loop(self) -> None:
        background_priority()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._closed)
                if not self._jobs:
                    return
                _key, job = self._jobs.popitem(last=False)
                self._active = job
            try:
                job.run()
            except GaveUp as exc:
                self._fail(str(exc))
            except Exception as exc:  # a bug must not kill the thread and hang drain()
                self._fail(f"{job.label} failed: {type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self._active = None
                    self._cond.notify_all()


def background_priority() -> None:
    """Run the calling thread at the lowest CPU priority (Linux: a thread's own nice value, 19),
    so a checkpoint's serialisation, hashing and mirror copy use the time training leaves idle
    instead of taking a core from it — on a 2-core Colab VM or CPU run they cost a training
    step 15 % of its speed otherwise. Lowering needs no permission; elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or a sandbox refusing it
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
