"""What the notebooks' cells show: the model's code and config, where it came from, what the
adapter inferred, the reports with their plots, and the link to the next notebook.

Each ``*_html`` function is pure (data in, an HTML string out) so it is tested without a
notebook; each ``show_*`` function displays it through IPython. Only what Colab ships is used
(IPython, pygments, matplotlib), each imported inside the function that needs it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

__all__ = ["code_html", "figure_png", "figures_heading_html", "human_size", "model_html",
           "next_step_html", "show_code", "show_model", "show_next_step", "show_report"]

_BOX = ("max-height:420px;overflow:auto;border:1px solid #d0d7de;border-radius:6px;"
        "padding:4px 8px;font-size:12px")


def _display_html(markup: str) -> None:
    from IPython.display import HTML, display

    display(HTML(markup))


def human_size(count: int | float, unit: str = "") -> str:
    """``1234567`` → ``'1.23 M'`` (k, M, B) followed by ``unit``."""
    for div, suffix in ((1e9, " B"), (1e6, " M"), (1e3, " k")):
        if abs(count) >= div:
            return f"{count / div:.3g}{suffix}{unit}"
    return f"{count:g}{' ' + unit if unit else ''}"


def code_html(code: str, language: str = "python") -> str:
    """``code`` syntax-highlighted with inline styles (pygments), in a scrolling box."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name

        body = highlight(code, get_lexer_by_name(language),
                         HtmlFormatter(noclasses=True, linenos="inline", nobackground=True))
    except ImportError:  # pygments ships with Colab and IPython; plain text otherwise
        body = f"<pre>{html.escape(code)}</pre>"
    return f"<div style='{_BOX}'>{body}</div>"


def _table(rows: list[tuple[Any, ...]], head: tuple[str, ...]) -> str:
    cells = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(v))}</td>"
                                    for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _provenance_rows(source: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    if source.get("gist_id"):
        owner = f" by @{source['owner']}" if source.get("owner") else ""
        rows.append(("gist", f"{source['gist_id']}{owner}"))
        rows.append(("revision", source.get("revision") or "newest"))
    elif source.get("path"):
        rows.append(("folder", source["path"]))
    rows.append(("model class", f"{source.get('model_class', '?')} in "
                                f"{source.get('model_file', 'model.py')}"))
    rows += [(f"sha256 {name}", digest) for name, digest in sorted(
        (source.get("sha256") or {}).items())]
    if source.get("weights"):
        rows.append(("weights", source["weights"].get("file", "")))
    return rows


def model_html(loaded, adapter) -> str:
    """Everything the load step learned: provenance, size, inferred facts with their evidence,
    the config and the code. ``loaded`` is a :class:`~utils.adapters.LoadedModel`, ``adapter``
    its :class:`~utils.adapters.ModelAdapter`."""
    info = adapter.describe()
    title = html.escape(f"{info['class']} — {info['task']}")
    size = (f"{info['parameters']:,} parameters ({human_size(info['parameters'])}), "
            f"{info['size_mb']:.2f} MB of weights")
    evidence = [(name, ev["value"], ev["method"], ev["detail"])
                for name, ev in info["evidence"].items()]
    notes = list(dict.fromkeys([*loaded.warnings, *info["warnings"]]))  # adapt() has both
    notes_html = ("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
                  if notes else "")
    config = json.dumps(loaded.config, indent=2, default=str)
    return (
        f"<div class='testbench-model'><h4>{title}</h4><p><b>{html.escape(size)}</b></p>"
        f"<h5>Where it came from</h5>{_table(_provenance_rows(loaded.source), ('', ''))}"
        f"<h5>What was inferred, and how</h5>"
        f"{_table(evidence, ('property', 'value', 'decided by', 'evidence'))}{notes_html}"
        f"<h5>config.json</h5>{code_html(config, 'json')}"
        f"<h5>{html.escape(loaded.source.get('model_file', 'model.py'))}</h5>"
        f"{code_html(loaded.code)}</div>")


def next_step_html(url: str, handoff: str | Path | None = None) -> str:
    """The link to training.ipynb, and where the hand-off file was written."""
    saved = (f"<p>The gist id is also saved in <code>{html.escape(str(handoff))}</code>, so "
             "training.ipynb finds it even without the link.</p>" if handoff else "")
    return (f"<div class='testbench-next'><p><a href='{html.escape(url, quote=True)}' "
            f"target='_blank'><b>Open training.ipynb in Colab with this gist</b></a></p>"
            f"<p style='font-size:smaller'>{html.escape(url)}</p>{saved}</div>")


def show_code(code: str, language: str = "python") -> None:
    """Display ``code`` syntax-highlighted."""
    _display_html(code_html(code, language))


def show_model(loaded, adapter) -> None:
    """Display what :func:`model_html` renders."""
    _display_html(model_html(loaded, adapter))


def figures_heading_html(report) -> str:
    """The heading shown above a report's figures: which tier they belong to, and how to read
    them (the verdict stays in the table; a figure shows the measurements behind it)."""
    tiers = sorted({r.tier for r in report.results})
    which = f"Tier {' and '.join(map(str, tiers))}" if tiers else "Report"
    return (f"<h4 class='testbench-figures'>{which} figures</h4>"
            "<p style='font-size:smaller'>One figure per check that has one, drawn from what the "
            "check measured; the table above holds each verdict and its threshold.</p>")


def show_report(report, plots: bool = True) -> None:
    """Display a report's table (its HTML view), a heading, and then its figures, each once.

    A figure that cannot be drawn is replaced by a one-line note; it never hides the others.
    """
    from IPython.display import display

    display(report)
    if not plots:
        return
    figures = []
    for result in report.results:
        try:
            figures += report.plots([result.name]).items()
        except Exception as exc:  # a plot bug must not cost the user the other figures
            figures.append((result.name, f"{type(exc).__name__}: {exc}"))
    if not figures:
        return
    import matplotlib.pyplot as plt

    _display_html(figures_heading_html(report))
    for name, figure in figures:
        if isinstance(figure, str):
            _display_html(f"<p><i>The figure of {html.escape(name)} could not be drawn "
                          f"({html.escape(figure)}).</i></p>")
            continue
        display(figure_png(figure))
        plt.close(figure)  # else the inline backend shows it a second time


def figure_png(figure, dpi: int = 100):
    """A matplotlib figure as an IPython PNG image, whatever the backend (Agg included)."""
    from io import BytesIO

    from IPython.display import Image

    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return Image(data=buffer.getvalue(), format="png")


def show_next_step(url: str, handoff: str | Path | None = None) -> None:
    """Display the link to training.ipynb (see :func:`next_step_html`)."""
    _display_html(next_step_html(url, handoff))
