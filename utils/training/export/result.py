"""What an export produced: per format its file, size, parity figures and status.

A format whose artifact does not match the eager model is ``failed``: its file is kept for
inspection, marked by a ``PARITY_FAILED.txt`` note beside it (inside the folder for the folder
format) and by its status in ``export.json``; it is never presented as good.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ExportResult", "FormatResult", "marker_of"]

MARKER = "PARITY_FAILED.txt"


def marker_of(path: Path) -> Path:
    """Where the note that marks ``path`` as failed lives."""
    return path / MARKER if path.is_dir() else path.with_name(f"{path.name}.{MARKER}")


def _size(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    data = path.with_name(path.name + ".data")  # ONNX external data
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


@dataclass
class FormatResult:
    """One format: the artifact, how it compares with eager, and whether it can be shipped.

    Attributes:
        name: folder | pt2 | onnx | int8 | int8_torch.
        path: The artifact (None when exporting raised before writing it).
        status: ``ok`` (parity passed) or ``failed`` (parity failed, or the export raised).
        parity: :meth:`Parity.to_dict` figures (mismatched elements, greatest absolute and
            relative difference with their index, the tolerance, top-1 agreement).
        metrics: Size in bytes, seconds per parity batch of the artifact and of eager, their
            ratio, and for int8 the size and speed against fp32.
        error: The exception text when exporting or loading the artifact raised.
    """

    name: str
    path: Path | None
    status: str
    parity: dict[str, Any] | None = None
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def size_bytes(self) -> int | None:
        return _size(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": str(self.path) if self.path else None,
                "size_bytes": self.size_bytes, "status": self.status, "summary": self.summary,
                "parity": self.parity, "metrics": self.metrics, "error": self.error,
                "marker": str(marker_of(self.path)) if self.path and not self.ok else None,
                "seconds": round(self.seconds, 3)}


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MB"


@dataclass
class ExportResult:
    """Every format of one export, in the order they were made.

    ``ok`` is True when every format passed parity. ``to_dict()`` is ``export.json`` (and the
    CLI's ``--json``); ``to_text()`` a table for terminals.
    """

    out_dir: Path
    formats: dict[str, FormatResult]
    model: dict[str, Any]
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    dims: dict[str, list[int | None]] = field(default_factory=dict)  # dynamic [min, max]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.formats.values())

    @property
    def failed(self) -> list[str]:
        return [n for n, f in self.formats.items() if not f.ok]

    def __getitem__(self, name: str) -> FormatResult:
        return self.formats[name]

    def __repr__(self) -> str:
        parts = ", ".join(f"{n} {f.status}" for n, f in self.formats.items())
        return f"ExportResult({parts}; out_dir='{self.out_dir}')"

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "ok": self.ok, "failed": self.failed,
                "dynamic_dims": self.dims,
                "formats": {n: f.to_dict() for n, f in self.formats.items()},
                "notes": list(self.notes)}

    def _repr_html_(self) -> str:  # the notebook's view
        from html import escape

        rows = "".join(
            f"<tr><td>{escape(n)}</td><td style='color:{'green' if f.ok else 'red'}'>"
            f"{f.status}</td><td>{_mb(f.size_bytes)}</td>"
            f"<td>{escape(f.path.name if f.path else '-')}</td><td>{escape(f'{f.summary}: {f.error}' if f.error else f.summary)}</td></tr>"
            for n, f in self.formats.items())
        notes = "".join(f"<li>{escape(n)}</li>" for n in self.notes)
        return (f"<p>Export in <code>{escape(str(self.out_dir))}</code></p><table><tr>"
                "<th>format</th><th>status</th><th>size</th><th>file</th><th>parity</th></tr>"
                f"{rows}</table>" + (f"<ul>{notes}</ul>" if notes else ""))

    def to_text(self) -> str:
        dims = ", ".join(f"{k} {lo}..{hi or ''}" for k, (lo, hi) in self.dims.items())
        lines = [f"Export   {self.out_dir}   (dynamic: {dims})",
                 f"{'format':<11} {'status':<7} {'size':>10}  {'file':<22} parity"]
        for name, f in self.formats.items():
            file = f.path.name if f.path else "-"
            lines.append(f"{name:<11} {f.status:<7} {_mb(f.size_bytes):>10}  {file:<22} "
                         f"{f'{f.summary}: {f.error}' if f.error else f.summary}")
        lines += [f"  note: {n}" for n in self.notes]
        if not self.ok:
            lines.append(f"FAILED: {', '.join(self.failed)} — do not ship; what was written is "
                         f"kept for inspection, marked with {MARKER}.")
        return "\n".join(lines)
