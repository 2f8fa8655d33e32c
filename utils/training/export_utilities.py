"""Export: a model leaves the notebook as artifacts that are each proven to match it.

``export(model_or_run, formats, out_dir)`` writes, into ``out_dir``:

- ``folder/`` — ``model.safetensors`` + ``config.json`` + the model's code (+ tokenizer) and
  the model card ``README.md``: what :func:`utils.load_model` rebuilds anywhere;
- ``model.pt2`` — ``torch.export`` with a dynamic batch and length;
- ``model.onnx`` — the dynamo ONNX exporter, opset 18, for onnxruntime;
- ``model.int8.onnx`` — onnxruntime's dynamic int8 of ``model.onnx`` (format ``int8``);
- ``model.int8.pt`` — torchao's dynamic int8 state dict (format ``int8_torch``, on request);
- ``export.json`` — every format's file, size, parity figures and status; under ``earlier``,
  artifacts an earlier export into the same folder left that this one did not remake.

Each artifact is loaded back from disk in the runtime that serves it and compared with the
eager model on fresh inputs of another batch and length (a padded row where the model takes a
mask). One that does not match is ``failed``: kept for inspection, marked with a
``PARITY_FAILED.txt`` note beside it, never shipped as good. Every task exports in every
format, seq2seq included: the graph is the teacher-forced forward (encoder ids and decoder ids
in, logits for every decoder position out); a generation loop with a key/value cache is not
part of any artifact.

Example:
    >>> from utils.training.export_utilities import export
    >>> result = export("runs/my-gpt-1a2b3c", out_dir="exported/")
    >>> print(result.to_text())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from utils.errors import MissingExtraError, UserError
from utils.training.export import folder, int8, int8_torch, onnx, pt2
from utils.training.export.origin import Origin, resolve
from utils.training.export.result import ExportResult, FormatResult, marker_of

__all__ = ["DEFAULT_FORMATS", "FORMATS", "ExportResult", "FormatResult", "export",
           "export_origin", "parse_formats"]

FORMATS: dict[str, ModuleType] = {m.NAME: m for m in (folder, pt2, onnx, int8, int8_torch)}
DEFAULT_FORMATS = ("folder", "pt2", "onnx", "int8")
EXPORT_JSON = "export.json"


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """The formats asked for, in the order they are made (``"all"`` is every one; ``int8``
    brings ``onnx``, which it is quantized from).

    Raises:
        UserError: an unknown format name, or none at all.
    """
    names = [n.strip() for n in (formats.split(",") if isinstance(formats, str) else formats)
             if n and n.strip()]
    if "all" in names:
        names = list(FORMATS)
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise UserError(f"Unknown export format(s): {', '.join(unknown) or '(none given)'}.",
                        why=f"The formats are {', '.join(FORMATS)} (or all).",
                        fix="Pass e.g. formats=('folder', 'onnx') (CLI: --formats folder,onnx).")
    if "int8" in names and "onnx" not in names:
        names.append("onnx")
    return [n for n in FORMATS if n in names]


def _require(names: list[str]) -> None:
    """Every extra the formats need, before any work: a missing one is a clear error."""
    from utils.environment import require

    for name in names:
        for module in FORMATS[name].REQUIRES:
            require(module, f"Exporting the {name} format")


def _error_text(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {' '.join(lines[:3])[:800] or '(no message)'}"


def _mark(path: Path | None, result: FormatResult) -> None:
    """Write (failed) or remove (ok) the note that marks ``path`` as not to be shipped."""
    from utils.atomic import write_atomic

    if path is None or not path.exists():
        return
    marker = marker_of(path)
    if result.ok:
        marker.unlink(missing_ok=True)
        return
    write_atomic(marker, f"{result.name} FAILED parity against the eager model: do not ship "
                 f"this artifact.\n\n{result.error or result.summary}\n\nFigures: "
                 f"{result.parity}\n")


def _one(fmt: ModuleType, job: Any, feed: tuple, inputs: dict, expected: Any,
         eager: Callable) -> FormatResult:
    """Write one format, load it back from disk, compare it with eager, time it."""
    from utils.training.export.parity import check, time_pair

    start = time.perf_counter()
    path = job.out_dir / fmt.FILE
    try:
        path = fmt.write(job)
    except MissingExtraError:
        raise
    except Exception as exc:  # the model cannot be exported this way: a result, not a crash
        failed = FormatResult(fmt.NAME, None, "failed", summary="exporting raised",
                              error=_error_text(exc), seconds=time.perf_counter() - start)
        if path.exists():  # an earlier export's file: not this model's, so marked as well
            from utils.atomic import write_atomic

            write_atomic(marker_of(path), f"{path.name} is left from an earlier export; "
                         f"exporting the model again failed, so do not ship it.\n\n"
                         f"{failed.error}\n")
        return failed
    job.artifacts[fmt.NAME] = path
    try:
        run = fmt.runner(path, job)
        parity = check(run(feed), expected, inputs, kind=fmt.KIND)
        seconds, eager_s = time_pair(run, eager, feed)
        metrics: dict[str, Any] = {"seconds_per_batch": seconds,
                                   "eager_seconds_per_batch": eager_s,
                                   "speedup_vs_eager": eager_s / seconds if seconds else None}
        if hasattr(fmt, "extra_metrics"):
            metrics.update(fmt.extra_metrics(path, job, feed))
        result = FormatResult(fmt.NAME, path, "ok" if parity.ok else "failed",
                              parity.to_dict(), parity.summary(), metrics)
    except MissingExtraError:
        raise
    except Exception as exc:
        result = FormatResult(fmt.NAME, path, "failed", summary="loading it back raised",
                              error=_error_text(exc))
    result.seconds = time.perf_counter() - start
    _mark(path, result)
    return result


def _tied(model: Any) -> bool:
    seen = [p.data_ptr() for _, p in model.named_parameters(remove_duplicate=False)]
    return len(seen) != len(set(seen))


def export_origin(origin: Origin, formats: str | Iterable[str] = DEFAULT_FORMATS,
                  out_dir: str | Path | None = None, *, seed: int = 0) -> ExportResult:
    """:func:`export` for an already resolved :class:`~utils.training.export.origin.Origin`
    (the CLI builds the adapter with its override flags, then calls this)."""
    from utils.atomic import write_json
    from utils.checks import LibraryWarnings
    from utils.report import envelope
    from utils.training.export.card import model_card
    from utils.training.export.parity import eager_runner, parity_inputs
    from utils.training.export.program import Job, Program, eval_mode

    names = parse_formats(formats)
    _require(names)
    out = Path(out_dir) if out_dir is not None else _default_out(origin)
    if out.exists() and not out.is_dir():
        raise UserError(f"The export folder {out} is a file.", why="Exports write a folder of "
                        "artifacts.", fix="Pass out_dir=<a folder> (CLI: --out DIR).")
    adapter = origin.adapter
    notes: list[str] = []
    asked = formats.split(",") if isinstance(formats, str) else list(formats)
    if "int8" in names and not {"onnx", "all"} & {n.strip() for n in asked}:
        notes.append("model.onnx was exported too: int8 is quantized from it.")
    with eval_mode(adapter.model):
        program = Program.of(adapter, seed=seed)
        job = Job(program, origin, out)
        inputs = parity_inputs(program, seed=seed + 1)
        feed = program.feed(inputs)
        eager = eager_runner(program)
        expected = eager(feed)
        said = LibraryWarnings()  # exporters' deprecation chatter becomes notes, not stderr
        results = {}
        for n in names:
            with said.capture(n):
                results[n] = _one(FORMATS[n], job, feed, inputs, expected, eager)
        notes += said.notes()
    if "int8_torch" in names and _tied(adapter.model):
        notes.append("torchao's int8 unties tied weights: model.int8.pt holds the embedding in "
                     "fp32 and the output head in int8.")
    earlier = _earlier_artifacts(out, results)
    if earlier:
        notes.append("Left from an earlier export, not checked by this one: " + ", ".join(
            f"{Path(e['file']).name} ({n})" for n, e in earlier.items()) + ". Export those "
            "formats again, or delete the files, so the folder holds one model's artifacts.")
    result = ExportResult(out, results, adapter.describe(), origin.provenance,
                          [*program.notes, *notes], program.dims)
    examples = {n: FORMATS[n].example(program.names) for n in names}
    folder_path = results.get("folder") and results["folder"].path
    if folder_path:
        from utils.atomic import write_atomic

        write_atomic(folder_path / "README.md", model_card(result, origin, examples))
    write_json(out / EXPORT_JSON, {**envelope(origin.provenance, result.model, None),
                                   **result.to_dict(), "earlier": earlier})
    return result


def _earlier_artifacts(out: Path, now: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The formats an earlier ``export.json`` in ``out`` listed, this export did not make, and
    whose files are still there — so a re-export with fewer formats does not leave them
    unaccounted for. Each keeps its old entry, marked ``stale``."""
    import json

    try:
        doc = json.loads((out / EXPORT_JSON).read_text())
        old = {**(doc.get("earlier") or {}), **(doc.get("formats") or {})}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}
    mine = {f.path for f in now.values() if f.path}
    kept = {}
    for name, entry in old.items():
        file = isinstance(entry, dict) and entry.get("file")
        if name not in now and file and Path(file).exists() and Path(file) not in mine:
            kept[name] = {**entry, "stale": True}
    return kept


def _default_out(origin: Origin) -> Path:
    from utils.environment import testbench_home

    if origin.run_dir is not None:
        return origin.run_dir / "export"
    return testbench_home() / "exports" / type(origin.adapter.model).__name__


def export(model_or_run: Any, formats: str | Iterable[str] = DEFAULT_FORMATS,
           out_dir: str | Path | None = None, *, seed: int = 0,
           say: Callable[[str], None] = print) -> ExportResult:
    """Export a model in each of ``formats``, each artifact checked against eager.

    Args:
        model_or_run: An ``nn.Module``, a ``LoadedModel`` or ``ModelAdapter``, any source
            ``utils.load_model`` takes (gist id or URL, folder, model.py), or a training run
            folder (its ``final/`` is exported, its Tier 1 report and metrics go on the card).
        formats: Names among ``folder``, ``pt2``, ``onnx``, ``int8`` (onnxruntime),
            ``int8_torch`` (torchao), or ``"all"``; a comma-separated string works too.
        out_dir: Where the artifacts go (default: the run's ``export/``, else
            ``$TESTBENCH_HOME/exports/<class>``).
        seed: Seed of the example and parity inputs.
        say: Where loading notices go.

    Returns:
        An :class:`ExportResult`; ``result.ok`` is False when any format failed parity (its
        artifact is kept and marked). A model that cannot be exported in a format is a
        failed format with the exporter's error, not an exception.

    Raises:
        UserError: an unknown format, a missing extra (names the pip extra), a source that
            cannot be loaded, a run with no ``final/``, an ``out_dir`` that is a file.

    Example:
        >>> result = export(utils.load_model("my_model/"), formats="folder,onnx", out_dir="x")
        >>> result["onnx"].parity["max_abs_diff"]
    """
    _require(parse_formats(formats))  # a missing extra is reported before loading anything
    return export_origin(resolve(model_or_run, say=say), formats, out_dir, seed=seed)
