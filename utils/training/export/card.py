"""The model card (``README.md`` in the exported folder): what the model is, where it came from,
how it was checked, how it was trained, how each artifact compares with eager, and how to run
each one."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["model_card"]


def _cell(value: Any) -> str:
    text = "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _model(model: dict[str, Any], config: dict[str, Any]) -> list[str]:
    rows = [[k, model.get(k)] for k in ("class", "task", "parameters", "size_mb", "vocab_size",
                                         "max_seq_len", "num_classes", "forward")
            if model.get(k) is not None]
    lines = ["## Model", "", *_table(["", ""], rows)]
    if config:
        lines += ["", "config.json:", "", "```json", json.dumps(config, indent=1, default=str),
                  "```"]
    return lines


def _provenance(source: dict[str, Any]) -> list[str]:
    # not the local path: the card is published with the model, and a folder on this machine
    # (/home/alice/…, /content/drive/…) says nothing to a reader and something about the user
    rows = [[k, source.get(k)] for k in ("kind", "gist_id", "revision", "owner", "html_url",
                                         "model_file", "model_class", "seed")
            if source.get(k) is not None and source.get(k) != ""]
    rows += [[f"sha256 {name}", f"`{digest}`"] for name, digest in
             sorted((source.get("sha256") or {}).items())]
    return ["## Provenance", "", *(_table(["", ""], rows) if rows else ["Not recorded."])]


def _tier1(report: dict[str, Any] | None) -> list[str]:
    if not report or not report.get("checks"):
        return ["## Tier 1", "", "No Tier 1 report came with this model; run "
                "`testbench validate folder/` to check it."]
    verdict = "passed" if report.get("passed") else "FAILED"
    rows = [[c.get("name"), c.get("status"), c.get("summary")] for c in report["checks"]]
    return ["## Tier 1", "", f"Verdict: **{verdict}**.", "",
            *_table(["check", "status", "summary"], rows)]


def _training(run: dict[str, Any]) -> list[str]:
    summary, final = run.get("summary") or {}, run.get("final") or {}
    if not summary and not final:
        return ["## Training", "", "Not trained by the testbench (exported as loaded)."]
    metrics = {**(final.get("metrics") or {}),
               **{k: summary[k] for k in ("train_loss", "val_loss", "val_perplexity",
                                          "val_accuracy") if summary.get(k) is not None}}
    config = summary.get("config") or {}
    rows = [["steps", summary.get("steps", final.get("steps"))],
            ["tokens", summary.get("tokens")],
            ["data", summary.get("data") or config.get("data") or "not recorded in the run"],
            *[[f"{k} (setting)", config.get(k)] for k in ("seq_len", "batch_size", "grad_accum",
                                                          "lr", "precision")
              if config.get(k) is not None],
            *[[k, v] for k, v in sorted(metrics.items())]]
    return ["## Training", "", *_table(["", ""], rows)]


def _parity(result: Any) -> list[str]:
    rows = []
    for name, f in result.formats.items():
        p, m = f.parity or {}, f.metrics
        rows.append([name, f.path.name if f.path else "-", f.size_bytes, f.status,
                     f"{p.get('mismatched')} / {p.get('total')}" if p else "-",
                     p.get("max_abs_diff"), p.get("max_rel_diff"),
                     f"rtol {p['rtol']:g}, atol {p['atol']:g}" if p else "-",
                     p.get("top1_agreement"), m.get("speedup_vs_eager"),
                     f.error or ("" if f.ok else "artifact kept, marked PARITY_FAILED")])
    shapes: Any = next((f.parity["inputs"] for f in result.formats.values() if f.parity), None)
    where = f" on fresh inputs {shapes}" if shapes else ""
    dims = ", ".join(f"{k} from {lo} to {hi or 'any'}" for k, (lo, hi) in result.dims.items())
    return ["## Parity", "", f"Inputs: {', '.join(f'`{n}`' for n in _names(result))} "
            f"(int64; dynamic {dims}).", "", f"Each artifact was loaded back from disk in its runtime and "
            f"compared with the eager model{where} (a batch and length other than the "
            "exported example's; a padded row where the model takes a mask).", "",
            *_table(["format", "file", "bytes", "status", "mismatched", "max abs diff",
                     "max rel diff", "tolerance", "top-1 agreement", "speed vs eager (x)",
                     "note"],
                    rows)]


def _names(result: Any) -> list[str]:
    shapes: Any = next((f.parity["inputs"] for f in result.formats.values() if f.parity), {})
    return list(shapes)


def _usage(result: Any, examples: dict[str, str]) -> list[str]:
    lines = ["## Use it", "", "Paths are relative to the export folder that holds `folder/`, "
             "`model.pt2`, `model.onnx` and the int8 files."]
    for name, f in result.formats.items():
        if name in examples:
            warn = "" if f.ok else " (FAILED parity — do not use)"
            lines += ["", f"{name}{warn}:", "", "```python", examples[name], "```"]
    return lines


def model_card(result: Any, origin: Any, examples: dict[str, str]) -> str:
    """The markdown of ``README.md`` for an export's folder."""
    from utils import __version__

    model = result.model
    head = (f"All {len(result.formats)} formats passed parity." if result.ok else
            f"**Warning: {', '.join(result.failed)} failed parity; do not use them.**")
    parts = [[f"# {model.get('class', 'Model')}", "",
              f"Exported by Transformer Testbench {__version__}. {head}"],
             _model(model, dict(origin.adapter.config)), _provenance(origin.provenance),
             _tier1(origin.run.get("tier1")), _training(origin.run), _parity(result),
             _usage(result, examples)]
    if result.notes:
        parts.append(["## Notes", "", *[f"- {n}" for n in result.notes]])
    return "\n\n".join("\n".join(p) for p in parts) + "\n"
