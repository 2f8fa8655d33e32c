"""The one error type for problems caused by input, and how it renders.

Everything a user can cause — a bad gist id, no network, a model that will not build, a config
key the constructor does not take — raises :class:`UserError`. Its message says what happened,
why, and what to do next, in the user's terms. In IPython/Jupyter it renders as that message
only (no traceback wall) while still stopping "Run all" like any exception.
"""

from __future__ import annotations

import contextlib
import linecache
import traceback
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["REPOSITORY", "CodeLocation", "MissingExtraError", "UserError", "advice", "arg",
           "cli_surface", "in_cli", "install_command", "locate_in_files"]

# Where a message will be read: "python" (a notebook, a script) or "cli" (testbench …). Set by
# the command line's main() around each command, read when a message is built: one place
# decides whether a setting is spelled `resume='auto'` or `--resume auto`.
_SURFACE: ContextVar[str] = ContextVar("testbench_surface", default="python")
# A setting whose command-line flag is not its name with dashes.
_FLAGS = {"out_dir": "--out", "mirror_dir": "--mirror", "validation_fraction": "--val-fraction",
          "n_trials": "--trials", "max_steps": "--max-steps"}


@contextlib.contextmanager
def cli_surface() -> Iterator[None]:
    """Messages built inside this block speak in command-line flags."""
    token = _SURFACE.set("cli")
    try:
        yield
    finally:
        _SURFACE.reset(token)


def in_cli() -> bool:
    """Whether messages are being built for a terminal user of ``testbench``."""
    return _SURFACE.get() == "cli"


def arg(name: str, value: Any = ..., *, flag: str | None = None) -> str:
    """A setting as the reader gives it: ``resume='auto'`` in Python, ``--resume auto`` on the
    command line (``flag`` when its flag is not ``--`` + the name with dashes)."""
    if in_cli():
        spelled = flag or _FLAGS.get(name) or "--" + name.replace("_", "-")
        return spelled if value is ... else f"{spelled} {value}"
    return name if value is ... else f"{name}={value!r}"


def advice(python: str, cli: str) -> str:
    """The one of two wordings that fits where the message will be read."""
    return cli if in_cli() else python

# Where the package comes from: it is not on PyPI. template.ipynb's REPO names the same one.
REPOSITORY = "https://github.com/transformer-testbench/transformer-testbench"


@dataclass(frozen=True)
class CodeLocation:
    """A line in the user's code: where an error happened."""

    file: str
    line: int
    text: str = ""

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}"
        return f"{where}: {self.text.strip()}" if self.text.strip() else where


class UserError(Exception):
    """An error caused by input, with what happened, why, and the fix.

    Args:
        what: One sentence: what happened, naming what was received.
        why: Why it is a problem, or what is allowed.
        fix: What to do next.
        location: The line of the user's code involved, if any.

    Example:
        >>> raise UserError("Gist 'abc' was not found.", why="It was deleted or the id is wrong.",
        ...                 fix="Check the id in the gist's URL.")
    """

    def __init__(
        self,
        what: str,
        *,
        why: str | None = None,
        fix: str | None = None,
        location: CodeLocation | None = None,
    ) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        self.location = location
        super().__init__(self.message)

    @property
    def message(self) -> str:
        lines = [self.what]
        if self.location is not None:
            lines.append(f"  Where: {self.location}")
        if self.why:
            lines.append(f"  Why: {self.why}")
        if self.fix:
            lines.append(f"  Fix: {self.fix}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The error as JSON-ready data (the CLI's ``"error"`` field)."""
        loc = self.location
        return {
            "type": type(self).__name__,
            "message": self.message,
            "what": self.what,
            "why": self.why,
            "fix": self.fix,
            "file": loc.file if loc else None,
            "line": loc.line if loc else None,
        }

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of formatting a traceback: the notebook shows the message.
        return [f"\x1b[1;31m{type(self).__name__}\x1b[0m: {self.message}"]


def _checkout() -> Path | None:
    """The clone this ``utils`` was imported from (run from source or installed with -e)."""
    root = Path(__file__).resolve().parent.parent
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "transformer-testbench"' in pyproject else None


def install_command(extra: str, *, colab: bool = False) -> str:
    """How to install ``extra`` given where this copy of the package came from.

    The package is not on PyPI: a clone installs itself in editable mode, anything else
    installs from the repository; in Colab, training.ipynb installs the extras.
    """
    if colab:
        return ("In Colab, run training.ipynb: it installs the extras without touching Colab's "
                "torch or numpy.")
    clone = _checkout()
    if clone is not None:
        return f'pip install -e "{clone}[{extra}]"  (from your clone of the repository)'
    return f'pip install "transformer-testbench[{extra}] @ git+{REPOSITORY}"'


class MissingExtraError(UserError):
    """An optional dependency is not installed; names the pip extra and the command that
    installs it here (see :func:`install_command`)."""

    def __init__(self, module: str, extra: str, feature: str, *, colab: bool = False) -> None:
        self.module = module  # "lightning", or several: "lightning, datasets"
        self.extra = extra  # "train", or several: "train,data"
        modules, extras = module.split(", "), extra.split(",")
        named = ", ".join(f"'{m}'" for m in modules)
        belong = (f"'{extras[0]}' extra" if len(extras) == 1 else
                  " and ".join(f"'{e}'" for e in extras) + " extras")
        super().__init__(
            f"{feature} needs the package{'s' if len(modules) > 1 else ''} {named}, which "
            f"{'are' if len(modules) > 1 else 'is'} not installed.",
            why=f"{'They belong' if len(modules) > 1 else 'It belongs'} to the optional "
            f"{belong}, which the zero-install path (loading, Tier 1, Tier 2) does not need.",
            fix=install_command(extra, colab=colab),
        )


def locate_in_files(tb: TracebackType | None, files: set[str]) -> CodeLocation | None:
    """The innermost frame of ``tb`` that lies in one of ``files`` (the user's model sources).

    Errors are reported at the user's line, not ours or torch's.
    """
    found = None
    for frame in traceback.extract_tb(tb):
        if frame.filename in files:
            text = frame.line or linecache.getline(frame.filename, frame.lineno or 0)
            found = CodeLocation(frame.filename, frame.lineno or 0, text or "")
    return found
