"""Run folders: where a run lives, how it is recognised again, and the folder a model leaves.

A run folder holds ``checkpoints/`` (+ ``latest.json``), ``tokenizer/``, ``config.json`` (the
``TrainingConfig``), ``fingerprint.json``, ``tier1.json``, ``metrics.csv``, ``summary.json``
and ``final/``. Its default name is the model's name plus a short hash of the source's
identity (gist id and revision, or the path and file hashes) and of the settings that shape
training, so running the same command again finds — and resumes — the same run, while another
gist or a new revision starts a new one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from utils.atomic import write_json
from utils.environment import require, testbench_home
from utils.errors import UserError

__all__ = ["check_fingerprint", "default_run_dir", "fingerprint", "save_model_folder"]

WEIGHTS_FILE = "model.safetensors"


def _identity(source: dict[str, Any]) -> dict[str, Any]:
    """What names a model's source: a gist and its revision, or a path and its files."""
    if source.get("gist_id"):
        return {"gist_id": source["gist_id"], "revision": source.get("revision")}
    return {"path": source.get("path"), "sha256": source.get("sha256") or {}}


def default_run_dir(adapter: Any, config: Any) -> Path:
    """``$TESTBENCH_HOME/runs/<model>-<hash>`` for this model's source and training settings."""
    from utils.training.config import RESUME_OVERRIDABLE

    shaping = {k: v for k, v in config.to_dict().items() if k not in RESUME_OVERRIDABLE}
    key = json.dumps({"source": _identity(adapter.source), "config": shaping,
                      "class": type(adapter.model).__name__}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    name = adapter.source.get("gist_id") or type(adapter.model).__name__
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name))[:40]
    return testbench_home() / "runs" / f"{name}-{digest}"


def fingerprint(model: nn.Module, tokenizer: Any | None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed into this model: the class, every parameter
    and buffer name with its shape, and the tokenizer's exact definition."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    tok = (hashlib.sha256(tokenizer.tokenizer.to_str().encode()).hexdigest()
           if tokenizer is not None else None)
    return {"model_class": type(model).__name__, "tensors": shapes, "tokenizer_sha256": tok}


def check_fingerprint(stored: dict[str, Any] | None, current: dict[str, Any], run_dir: Path,
                      ) -> None:
    """Refuse to resume a run whose checkpoint was made by another model or tokenizer."""
    if not stored:
        return
    problems = []
    if stored.get("model_class") != current["model_class"]:
        problems.append(f"the run trained {stored.get('model_class')}, this model is "
                        f"{current['model_class']}")
    old, new = stored.get("tensors", {}), current["tensors"]
    if old != new:
        gone, added = sorted(old.keys() - new.keys()), sorted(new.keys() - old.keys())
        changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
        for label, names in (("missing now", gone), ("new", added), ("reshaped", changed)):
            if names:
                more = f" … and {len(names) - 3} more" if len(names) > 3 else ""
                problems.append(f"{len(names)} tensor(s) {label}: {', '.join(names[:3])}{more}")
    if stored.get("tokenizer_sha256") and current.get("tokenizer_sha256") and \
            stored["tokenizer_sha256"] != current["tokenizer_sha256"]:
        problems.append("the tokenizer differs from the one the run was trained with")
    if problems:
        raise UserError(f"The checkpoints in {run_dir} do not belong to this model: "
                        + "; ".join(problems) + ".",
                        why="A checkpoint can only continue the exact architecture and "
                        "tokenizer that made it.",
                        fix="Pass out_dir=<a new folder> (--out) to start a new run, or "
                        "resume='never' after moving the old run away.")


def _source_files(loaded: Any) -> dict[str, Path]:
    """The Python files of a loaded model's source folder (a gist's files, a local folder)."""
    folder = Path(loaded.source.get("path") or "")
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.glob("*.py"))}


def save_model_folder(model: nn.Module, loaded: Any | None, out: str | Path, *,
                      tokenizer: Any | None = None, config: dict | None = None,
                      extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` + the model's code (+ the tokenizer): a
    folder :func:`utils.load_model` rebuilds.

    Tied weights are kept as one tensor (safetensors' ``save_model``); the loader restores
    the alias. ``loaded`` (the :class:`~utils.adapters.LoadedModel`) supplies the code and the
    config; for a bare module the code is taken from the file its class was defined in.

    Raises:
        UserError: the model's code cannot be found (a class defined in a notebook cell).
    """
    st = require("safetensors.torch", "Saving a model folder")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = _source_files(loaded) if loaded is not None else {}
    if not files:
        import inspect

        try:
            files = {"model.py": Path(inspect.getsourcefile(type(model)) or "")}
        except TypeError:
            files = {}
        if not files or not files["model.py"].is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"The code of {type(model).__name__} cannot be found, so the saved "
                            "folder could not rebuild it.",
                            why="Its class was defined interactively (a notebook cell), not in "
                            "a file.", fix="Put the model in a model.py and load it with "
                            "utils.load_model('folder/').")
    for name, path in files.items():
        shutil.copy2(path, tmp / name)
    cfg = dict(config if config is not None else (loaded.config if loaded is not None else {}))
    cfg.setdefault("model_name", type(model).__name__)
    write_json(tmp / "config.json", cfg)
    st.save_model(model, str(tmp / WEIGHTS_FILE))  # one copy of tied tensors, with metadata
    if tokenizer is not None:
        tokenizer.save(tmp)
    if extra:
        write_json(tmp / "testbench.json", extra)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out
