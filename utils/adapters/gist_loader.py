"""Any model source → a built model: ``load_model(source) -> LoadedModel``.

One loader for every source: a gist id or URL (fetched through the Gist API into a cache), a
Colab URL carrying ``gist_id``, a local folder holding ``model.py`` + ``config.json``, or a single
``model.py``. Code is parsed before it runs, the model class is chosen from the code's
structure, the config is mapped onto the constructor, and optional weights are loaded
strictly. Provenance (gist id, revision, sha256 of each file) travels with the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from utils.adapters.config_mapping import BuildRecord, build_model
from utils.adapters.gist_client import fetch_gist
from utils.adapters.model_source import choose_model_class, import_model_code, parse_code
from utils.adapters.sources import SourceSpec, parse_source
from utils.adapters.weights import WEIGHT_SUFFIXES, load_weights
from utils.atomic import sha256
from utils.errors import CodeLocation, UserError
from utils.report import source_label
from utils.seeding import seeded

__all__ = ["LoadedModel", "load_model"]

_EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class LoadedModel:
    """A built model and where it came from."""

    model: nn.Module
    model_class: type
    config: dict[str, Any]
    code: str
    source: dict[str, Any]  # input, kind, gist_id, revision, owner, path, sha256 {file: hex}
    build: BuildRecord
    module: ModuleType
    warnings: list[str] = field(default_factory=list)

    def __repr__(self) -> str:  # not the code, the config and the module's repr
        params = sum(p.numel() for p in self.model.parameters())
        return (f"<LoadedModel {self.model_class.__name__}: {params:,} parameters, "
                f"{len(self.config)} config keys, from {source_label(self.source)}>")


def example_path(name: str = "tiny_gpt") -> Path:
    """The folder of an example model shipped in the package (``utils/examples/<name>``)."""
    return _EXAMPLES / name


def _read_config(path: Path | None) -> tuple[dict, list[str]]:
    if path is None or not path.is_file():
        return {}, ["No config.json found: the model is built with its constructor's defaults."]
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path.name} is not UTF-8 text (byte 0x{raw[exc.start]:02x}).",
                        fix=f"Re-save {path.name} as UTF-8.") from None
    try:
        config = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        line = text.splitlines()[exc.lineno - 1] if exc.lineno <= len(text.splitlines()) else ""
        raise UserError(
            f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
            location=CodeLocation(str(path), exc.lineno, line),
            why="config.json must be one JSON object (double quotes, no trailing commas, no "
            "comments, true/false/null in lower case).",
            fix=f"Fix line {exc.lineno} of {path.name}; a JSON validator shows the exact spot.",
        ) from None
    if not isinstance(config, dict):
        raise UserError(f"{path.name} holds a JSON {type(config).__name__}, not an object.",
                        fix='Wrap the settings in { }, e.g. {"vocab_size": 512}.')
    return config, []


def _model_file(folder: Path, where: str) -> Path:
    candidate = folder / "model.py"
    if candidate.is_file():
        return candidate
    py_files = sorted(p.name for p in folder.glob("*.py"))
    if len(py_files) == 1:
        return folder / py_files[0]
    present = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    raise UserError(
        f"{where} has no model.py" + (f" and several .py files ({', '.join(py_files)})."
                                      if py_files else "."),
        why=f"Files present: {', '.join(present) or 'none'}. The testbench runs the model "
        "defined in model.py.",
        fix="Name the file that defines your model model.py (in the gist: edit, rename the file).")


def _weights_file(folder: Path, explicit: str | os.PathLike | None,
                  discover: bool) -> Path | None:
    """The weights to load: the explicit path, else the one weights file of a model folder.

    A single ``model.py`` given by path may sit in any folder, so nothing is discovered there.
    """
    if explicit:
        return Path(explicit)
    if not discover:
        return None
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if len(found) > 1:
        raise UserError(f"{folder} holds several weights files: {', '.join(p.name for p in found)}.",
                        fix="Keep one, or name the one to load with weights=PATH (--weights).")
    return found[0] if found else None


def load_model(
    source: str | os.PathLike | SourceSpec | None = None,
    *,
    config: dict | None = None,
    model_class: str | None = None,
    weights: str | os.PathLike | None = None,
    api_url: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int | None = 0,
    say: Callable[[str], None] = print,
) -> LoadedModel:
    """Fetch, parse and build the model that ``source`` names.

    Args:
        source: Gist id or URL, Colab URL with ``gist_id``, folder, or ``.py`` file; None
            loads the embedded example model.
        config: Use this dict instead of the source's ``config.json``.
        model_class: Name of the class to build (else ``config["model_name"]``, else the one
            ``nn.Module`` no other class uses).
        weights: A ``.safetensors``/``.pt`` state dict to load (else one found beside the code).
        api_url, token, cache_dir: See :func:`utils.adapters.gist_client.fetch_gist`.
        seed: Seeds the model's construction, so the same seed gives the same initial weights
            (loaded ``weights`` replace them either way); the caller's random generators are
            left as they were. ``None`` builds on the caller's generators instead (after
            ``torch.manual_seed`` of your own, say).
        say: Where notices go (which gist and revision runs, config warnings).

    Raises:
        UserError: for every problem with the source (see the messages).

    Example:
        >>> loaded = load_model("https://gist.github.com/alice/0123456789abcdef0123456789abcdef")
        >>> adapter = adapt(loaded)
    """
    spec = source if isinstance(source, SourceSpec) else parse_source(
        os.fspath(source) if source is not None else example_path())
    provenance: dict[str, Any] = {"input": spec.input, "kind": spec.kind, "gist_id": spec.gist_id,
                                  "revision": spec.revision}
    if spec.kind == "gist":
        assert spec.gist_id is not None, "parse_source gives a gist its id"
        fetched = fetch_gist(spec.gist_id, spec.revision, api_url=api_url, token=token,
                             cache_dir=cache_dir, say=say)
        folder, where = fetched.folder, f"Gist {spec.gist_id}"
        model_path = _model_file(folder, where)
        provenance.update(revision=fetched.revision, owner=fetched.owner,
                          html_url=fetched.html_url, sha256=fetched.files, path=str(folder))
        by = f" by @{fetched.owner}" if fetched.owner else ""
        cached = " (cached)" if fetched.from_cache else ""
        say(f"Running {model_path.name} from gist {spec.gist_id}{by}, revision "
            f"{fetched.revision[:7]}{cached}. Only run code you trust.")
    else:
        assert spec.path is not None, "parse_source gives a folder or file its path"
        folder = spec.path if spec.kind == "folder" else spec.path.parent
        if spec.kind == "folder" and Path(spec.input).name == "config.json":
            say(f"{spec.input} is the folder's config: loading the folder {folder}.")
        model_path = _model_file(folder, str(folder)) if spec.kind == "folder" else spec.path
        files = [model_path, folder / "config.json", *sorted(folder.glob("*.py"))]
        provenance.update(path=str(folder), sha256={
            p.name: sha256(p.read_bytes()) for p in dict.fromkeys(files) if p.is_file()})

    code = parse_code(model_path)
    warnings: list[str] = []
    if config is None:
        config, notes = _read_config(folder / "config.json")
        warnings += notes
    module = import_model_code(code)
    requested = model_class or config.get("model_name") or config.get("model_class")
    by = ("model_class" if model_class else "config.json's " +
          ("model_name" if config.get("model_name") else "model_class"))
    class_name = choose_model_class(code, module, requested, by)
    cls = getattr(module, class_name)
    with seeded(seed):
        model, record = build_model(cls, module, config)
    provenance["seed"] = seed
    warnings += record.warnings
    weights_path = _weights_file(folder, weights, discover=spec.kind != "file")
    if weights_path is not None:
        stats = load_weights(model, weights_path)
        provenance["weights"] = {"file": weights_path.name, **stats}
        say(f"Loaded {stats['tensors']} tensors from {weights_path.name}.")
    provenance.update(model_file=model_path.name, model_class=class_name)
    for warning in warnings:
        say(f"Note: {warning}")
    return LoadedModel(model=model, model_class=cls, config=config, code=code.text,
                       source=provenance, build=record, module=module, warnings=warnings)
