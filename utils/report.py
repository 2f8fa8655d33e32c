"""Typed results of checks, and the report that aggregates them.

A check returns a :class:`CheckResult` (data only: it never prints and never draws). A runner
collects results into a :class:`Report`, which renders as a pandas frame, JSON (the CLI's
contract), an HTML table for notebooks or a text table for terminals. Figures are drawn on
demand by :meth:`Report.plots` from the results' data, never during a run.
"""

from __future__ import annotations

import html
import json
import shutil
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from utils.atomic import json_safe
from utils.errors import UserError

__all__ = ["SCHEMA_VERSION", "STATUSES", "CheckResult", "Report", "envelope", "register_plot",
           "source_label"]

SCHEMA_VERSION = 1
Status = Literal["pass", "warn", "fail", "skip", "error"]
STATUSES: tuple[str, ...] = ("pass", "warn", "fail", "skip", "error")
_ICON = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "-", "error": "E"}
_COLOUR = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#6e7781",
           "error": "#8250df"}

# check name -> function drawing a matplotlib Figure from that check's result
_PLOTTERS: dict[str, Callable[[CheckResult], Any]] = {}


def source_label(source: dict[str, Any]) -> str:
    """Where a model came from, in a few words: ``gist <id> @ <rev> by @owner`` or
    ``folder <path>``."""
    if source.get("kind") == "gist":
        label = f"gist {source.get('gist_id')} @ {str(source.get('revision'))[:7]}"
        return label + (f" by @{source['owner']}" if source.get("owner") else "")
    if source.get("kind"):
        return f"{source['kind']} {source.get('path')}"
    return str(source.get("input") or "an unknown source")


def envelope(source: dict[str, Any], model: dict[str, Any] | None,
             error: dict[str, Any] | None) -> dict[str, Any]:
    """The keys every JSON document of the CLI starts with (schema_version 1): which tool wrote
    it, what was loaded, and the error that stopped it (None when nothing did)."""
    from utils import __version__

    return json_safe({"schema_version": SCHEMA_VERSION, "tool_version": __version__,
                       "source": source, "model": model, "error": error})


def register_plot(check_name: str):
    """Decorator: register the function that draws ``check_name``'s figure from its result."""

    def deco(fn):
        _PLOTTERS[check_name] = fn
        return fn

    return deco


@dataclass
class CheckResult:
    """What one check measured and concluded.

    Attributes:
        name: Bare check name, the same in JSON, ``checks=`` and ``--checks``.
        tier: 1, 2 or 3.
        status: pass | warn | fail | skip | error.
        summary: One line a person understands: what was measured, against which threshold,
            and what to do if it failed.
        metrics: Numbers measured (JSON-ready floats/ints).
        threshold: The limits the verdict was taken against, next to the measurement.
        rows: Optional table (one dict per row), e.g. per-layer statistics for a plot.
        error: For status ``error``: ``{type, message, file, line}``.
        seconds: Wall time the check took.
    """

    name: str
    tier: int
    status: Status
    summary: str
    metrics: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self, *, rows: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not rows:
            data.pop("rows")
        return json_safe(data)


@dataclass
class Report:
    """Results of a run, with the model and environment they were measured on.

    ``passed`` is True when no check failed or errored; warn and skip never change it.
    """

    results: list[CheckResult] = field(default_factory=list)
    model: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # run-wide remarks, e.g. a length cap

    @property
    def passed(self) -> bool:
        return self.error is None and not any(r.status in ("fail", "error") for r in self.results)

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r}; have {[r.name for r in self.results]}")

    @property
    def warnings(self) -> list[str]:
        """What loading and adapting the model warned about (``model.warnings`` in the JSON):
        config keys the constructor did not take, an output head that does not match the
        embedding, ... A warning never changes ``passed``."""
        return list((self.model or {}).get("warnings") or [])

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in STATUSES}

    def verdict(self) -> str:
        """One line: the outcome and the counts."""
        if self.error is not None:
            return "NOT RUN — the model could not be loaded (see the error above)."
        if not self.results:
            return "LOADED: the model was built and adapted; no checks were run."
        c = self.counts()
        parts = ", ".join(f"{n} {s}" for s, n in c.items() if n)
        word = "PASSED" if self.passed else "FAILED"
        n = len(self.results)
        return f"{word}: {n} check{'' if n == 1 else 's'} ({parts})"

    def raise_on_failure(self) -> Report:
        """Raise a :class:`UserError` listing failed and errored checks; else return self."""
        bad = [r for r in self.results if r.status in ("fail", "error")]
        if bad:
            lines = "; ".join(f"{r.name} [{r.status}]: {r.summary}" for r in bad)
            raise UserError(f"{len(bad)} check(s) did not pass: {lines}",
                            fix="Read each check's summary, fix the model, and run again.")
        return self

    # ---- renderings -------------------------------------------------------------------
    def to_dict(self, *, rows: bool = False) -> dict[str, Any]:
        """The CLI's JSON contract (schema_version 1): the :func:`envelope`, then the checks."""
        return {**envelope(self.source, self.model, self.error),
                **json_safe({"checks": [r.to_dict(rows=rows) for r in self.results],
                              "passed": self.passed, "notes": self.notes,
                              "environment": self.environment})}

    def to_json(self, path: str | None = None, *, rows: bool = False, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(rows=rows), indent=indent)
        if path is not None:
            from utils.atomic import write_atomic

            write_atomic(path, text.encode())
        return text

    def to_frame(self):
        """A pandas DataFrame, one row per check."""
        import pandas as pd

        return pd.DataFrame(
            [{"check": r.name, "tier": r.tier, "status": r.status, "summary": r.summary,
              "seconds": round(r.seconds, 3)} for r in self.results],
            columns=["check", "tier", "status", "summary", "seconds"],
        )

    def to_text(self, width: int | None = None) -> str:
        """A plain-text table for terminals, then the model's warnings and the run's notes,
        ending with the verdict.

        A passing row's summary is cut to one line; every other row prints its summary in full
        (the diagnosis and the fix), wrapped to ``width`` (default: the terminal's, 120 when
        the output is not a terminal, e.g. a CI log) with a hanging indent under the summary
        column.
        """
        width = width or shutil.get_terminal_size(fallback=(120, 24)).columns
        lines = []
        name_w = max((len(r.name) for r in self.results), default=0)
        for r in self.results:
            head = f"{_ICON[r.status]} {r.status:<5} {r.name:<{name_w}} {r.seconds:6.2f}s  "
            room = width - len(head)
            if r.status == "pass":
                short = r.summary if len(r.summary) <= max(room, 20) else \
                    r.summary[: max(room, 20) - 1] + "…"
                lines.append(head + short)
            else:  # a narrow terminal gets a short indent rather than a one-word column
                lines.append(_wrap(r.summary, width, head, len(head) if room >= 30 else 4))
        lines += [_wrap(w, width, "warning: ", 9) for w in self.warnings]
        lines += [_wrap(n, width, "note: ", 6) for n in self.notes]
        lines.append(self.verdict())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The notebook view: a table (status, check, tier, seconds, summary), the model's
        warnings, the notes and the verdict. Styles are inline and explicit, because notebook front ends right-align table
        cells by default and would wrap ``✓ pass`` onto two lines."""
        cell = "padding:3px 8px;vertical-align:top;text-align:left"
        keep = f"{cell};white-space:nowrap"
        head = "".join(f"<th style='{keep}'>{h}</th>"
                       for h in ("status", "check", "tier", "seconds", "summary"))
        body = []
        for r in self.results:
            body.append(
                f"<tr><td style='{keep};color:{_COLOUR[r.status]};font-weight:bold'>"
                f"{_ICON[r.status]}&nbsp;{r.status}</td>"
                f"<td style='{keep}'><code>{html.escape(r.name)}</code></td>"
                f"<td style='{keep}'>{r.tier}</td>"
                f"<td style='{keep};text-align:right'>{r.seconds:.2f}</td>"
                f"<td style='{cell}'>{html.escape(r.summary)}</td></tr>")
        items = [f"<li style='color:{_COLOUR['warn']}'>Warning: {html.escape(w)}</li>"
                 for w in self.warnings]
        items += [f"<li><i>Note: {html.escape(n)}</i></li>" for n in self.notes]
        notes = f"<ul style='margin:4px 0'>{''.join(items)}</ul>" if items else ""
        colour = _COLOUR["pass" if self.passed else "fail"]
        title = html.escape((self.model or {}).get("class", "model"))
        return (
            f"<div class='testbench-report'><h4>Testbench report — {title}</h4>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"{notes}<p style='color:{colour};font-weight:bold'>"
            f"{html.escape(self.verdict())}</p></div>"
        )

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        model = self.model or {}
        what = f"{model.get('class', '?')} ({model.get('task', '?')})" if model else "no model"
        return f"<Report {what} from {source_label(self.source)}: {self.verdict()}>"

    def plots(self, names: list[str] | None = None) -> dict[str, Any]:
        """Draw the figures of the checks that have one; returns ``{check name: Figure}``."""
        figures = {}
        for r in self.results:
            if (names is None or r.name in names) and r.name in _PLOTTERS and r.status != "error":
                figures[r.name] = _PLOTTERS[r.name](r)
        return figures


def _wrap(text: str, width: int, head: str, indent: int) -> str:
    """``head`` + ``text`` wrapped to ``width``, continuation lines indented by ``indent``."""
    return textwrap.fill(text, width=width, initial_indent=head, subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False)
