"""What libraries and the model's code say while checks run, collected into the report's notes
instead of stderr."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LIBRARY_LOGGERS", "LibraryWarnings"]

# Loggers whose WARNING records are collected into the report's notes while checks run (their
# handlers print to stderr, which a notebook shows as red boxes that look like errors).
LIBRARY_LOGGERS = ("transformers", "torch", "huggingface_hub")
_NOTE_CHARS = 200


class LibraryWarnings:
    """What is said while checks run — ``warnings.warn`` calls (from a library or the model's
    code) and WARNING records of the :data:`LIBRARY_LOGGERS` — kept as short report notes
    instead of being printed.

    One note per distinct message, naming the checks during which it came; a message a
    library repeats in every check is noted once.
    """

    def __init__(self) -> None:
        self._seen: dict[str, list[str]] = {}  # message -> labels of the checks that raised it

    def add(self, label: str, message: str) -> None:
        text = " ".join(str(message).split())
        if len(text) > _NOTE_CHARS:
            text = text[: _NOTE_CHARS - 1] + "…"
        labels = self._seen.setdefault(text, [])
        if label not in labels:
            labels.append(label)

    def notes(self) -> list[str]:
        out = []
        for text, labels in self._seen.items():
            during = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3
                                               else "")
            out.append(f"Warned during {during}: {text}")
        return out

    @contextmanager
    def capture(self, label: str) -> Iterator[None]:
        """Collect, and do not print, what libraries warn inside the block."""
        handler = _Collect(self, label)
        quiet = _LibraryRecords()
        # a library's root logger, plus its child loggers that do not propagate to it (torch
        # gives many of its own loggers a stderr handler and propagate=False)
        targets = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
        targets += [lg for name, lg in list(logging.Logger.manager.loggerDict.items())
                    if isinstance(lg, logging.Logger) and not lg.propagate
                    and name.split(".")[0] in LIBRARY_LOGGERS and lg not in targets]
        printers = {h for lg in [*targets, logging.getLogger()] for h in lg.handlers}
        for h in printers:
            h.addFilter(quiet)
        for lg in targets:
            lg.addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                try:
                    yield
                finally:
                    for w in caught:
                        if not _library_deprecation(w):
                            self.add(label, f"{w.category.__name__}: {w.message}")
        finally:
            for lg in targets:
                lg.removeHandler(handler)
            for h in printers:
                h.removeFilter(quiet)


_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _library_deprecation(w: warnings.WarningMessage) -> bool:
    """A library's deprecation notice about its own internals (torch.export's ``LeafSpec``…):
    nothing the user wrote or can change, so not a note. One that points at the user's code
    (a deprecated call in model.py) stays."""
    where = str(w.filename).replace("\\", "/")
    return issubclass(w.category, _DEPRECATIONS) and ("/site-packages/" in where
                                                      or "/dist-packages/" in where
                                                      or "/lib/python3" in where)


class _LibraryRecords(logging.Filter):
    """Rejects a library's WARNING-or-worse records (collected instead); passes the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.WARNING
                    and record.name.split(".")[0] in LIBRARY_LOGGERS)


class _Collect(logging.Handler):
    def __init__(self, sink: LibraryWarnings, label: str) -> None:
        super().__init__(logging.WARNING)
        self.sink, self.label = sink, label

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.add(self.label, f"{record.name}: {record.getMessage()}")
        except Exception:  # a malformed log call must not break a check
            self.handleError(record)
