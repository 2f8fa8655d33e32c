"""Where the exported model comes from: a model, an adapter, any source ``validate`` takes, or
a training run folder (its ``final/``), with the provenance and the run's facts the model card
shows (the original gist, the Tier 1 verdict, the training data and metrics)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from torch import nn

from utils.atomic import read_json
from utils.errors import UserError

__all__ = ["Origin", "find_run", "resolve"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class Origin:
    """The adapter to export and what is known about it.

    Attributes:
        adapter: The model behind the uniform interface.
        loaded: What :func:`~utils.training.runs.save_model_folder` takes for the code and
            config (a ``LoadedModel``, or an object with ``source`` and ``config``); None for
            a bare module, whose code is found from its class.
        provenance: The model's source: gist id, revision, sha256 of each file (for a run, the
            source it was trained from, not the ``final/`` folder).
        run_dir: The training run folder, when exporting one.
        run: The run's facts: ``summary`` (summary.json), ``final`` (final/testbench.json) and
            ``tier1`` (tier1.json), each None when missing.
        tokenizer_files: Tokenizer files beside the model, copied into the exported folder.
    """

    adapter: Any
    loaded: Any | None
    provenance: dict[str, Any]
    run_dir: Path | None = None
    run: dict[str, Any] = field(default_factory=dict)
    tokenizer_files: list[Path] = field(default_factory=list)


def find_run(path: str | os.PathLike) -> tuple[Path, Path] | None:
    """``(run_dir, run_dir/final)`` when ``path`` is a training run folder, else None.

    Raises:
        UserError: a run folder with no ``final/`` (the run was interrupted or is running).
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    if (folder / "final").is_dir():
        return folder, folder / "final"
    if (folder / "summary.json").is_file() or (folder / "checkpoints").is_dir():
        raise UserError(f"{folder} is a training run with no final/ folder, so there is no "
                        "finished model to export.",
                        why="final/ is written when training ends; the run was interrupted or "
                        "is still running.",
                        fix=f"Run the same train command again to finish it, or export a "
                        f"checkpoint's model: testbench export {folder}/final after training.")
    return None


def _tokenizer_files(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]


def _run_facts(run_dir: Path | None, final: Path | None) -> dict[str, Any]:
    if final is None:
        return {}
    facts = {"final": read_json(final / "testbench.json")}
    if run_dir is not None:
        facts.update(summary=read_json(run_dir / "summary.json"),
                     tier1=read_json(run_dir / "tier1.json"))
    return facts


def from_adapter(adapter: Any, loaded: Any | None = None, *, run_dir: Path | None = None,
                 ) -> Origin:
    """The origin of an adapter already built (by the CLI's shared loader, or the caller)."""
    source = dict(adapter.source or {})
    if loaded is None and source.get("path"):
        loaded = SimpleNamespace(source=source, config=dict(adapter.config))
    folder = Path(source["path"]) if source.get("path") else None
    final = folder if folder is not None and (folder / "testbench.json").is_file() else None
    if run_dir is not None and final is None:
        final = run_dir / "final"
    run = _run_facts(run_dir, final)
    provenance = (run.get("final") or {}).get("source") or source
    return Origin(adapter, loaded, dict(provenance), run_dir, run, _tokenizer_files(folder))


def resolve(model_or_run: Any, *, say=lambda message: None) -> Origin:
    """An :class:`Origin` from whatever :func:`utils.training.export_utilities.export` takes.

    Raises:
        UserError: a source that cannot be loaded or adapted, a run with no ``final/``, or an
            object that is not a model.
    """
    from utils.adapters import ModelAdapter, adapt, load_model

    if isinstance(model_or_run, ModelAdapter):
        return from_adapter(model_or_run)
    if isinstance(model_or_run, nn.Module):
        return from_adapter(adapt(model_or_run))
    if hasattr(model_or_run, "model") and hasattr(model_or_run, "source"):  # a LoadedModel
        return from_adapter(adapt(model_or_run), model_or_run)
    if isinstance(model_or_run, (str, os.PathLike)):
        run = find_run(model_or_run)
        loaded = load_model(run[1] if run else model_or_run, say=say)
        return from_adapter(adapt(loaded), loaded, run_dir=run[0] if run else None)
    raise UserError(f"export() cannot export a {type(model_or_run).__name__}.",
                    why="It takes a model (nn.Module), a LoadedModel or ModelAdapter, a source "
                    "(gist id or URL, folder, model.py) or a training run folder.",
                    fix="Pass utils.load_model(...) or the run folder's path.")
