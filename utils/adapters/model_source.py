"""Read the user's model code: parse it, pick the model class, import it safely.

Code is parsed with ``ast`` before it runs, so a syntax error is reported with file, line and
the line's text, and the model class is chosen from the code's structure: the one
``nn.Module`` subclass that no other module class uses (builders define helper blocks first).
Each source is imported under a unique module name with its real path, so tracebacks point at
the user's lines and two models never share ``sys.modules`` entries — sibling files included.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import itertools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from utils.errors import CodeLocation, UserError, locate_in_files

__all__ = ["ModelCode", "choose_model_class", "class_source", "import_model_code", "parse_code",
           "parse_python"]

_counter = itertools.count()
# import name -> pip package, where they differ
_PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "cv2": "opencv-python",
              "yaml": "pyyaml", "flash_attn": "flash-attn", "bs4": "beautifulsoup4"}


@dataclass
class ModelCode:
    """A parsed model file: its text, tree, and which top-level definitions use which."""

    path: Path
    text: str
    tree: ast.Module
    classes: list[str]  # top-level classes, in file order
    refs: dict[str, set[str]]  # top-level def -> top-level defs it names (bases included)

    def module_classes(self, module: ModuleType) -> list[str]:
        """The file's classes that are nn.Module subclasses once imported (file order)."""
        import torch.nn as nn

        return [c for c in self.classes
                if isinstance(cls := getattr(module, c, None), type) and issubclass(cls, nn.Module)]

    def roots(self, module_classes: list[str]) -> list[str]:
        """Module classes that no other module class reaches (directly or through functions).

        ``Block`` used inside ``GPT.__init__`` is a helper; so is one built by a module-level
        ``make_block()`` that ``GPT`` calls. A class used only as a base is not a root either.
        """
        used: set[str] = set()
        for start in module_classes:
            stack = list(self.refs.get(start, ()))
            while stack:
                cur = stack.pop()
                if cur not in used and cur != start:
                    used.add(cur)
                    stack.extend(self.refs.get(cur, ()))
        return [c for c in module_classes if c not in used]


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path.name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}).",
            why="Python source files and config.json must be UTF-8.",
            fix=f"Re-save {path.name} as UTF-8 in your editor (File > Save with Encoding).",
        ) from None


def _retrying_ast_race(build):
    """``build()``, once more if CPython 3.11.0–3.11.7 raised its spurious AST SystemError.

    Those versions keep the AST builder's recursion counter per interpreter (gh-106905, fixed
    in 3.11.8): an ``ast.parse`` while another thread parses — a traceback printed from any
    thread parses its line to place the ``^^^`` markers — can fail with "AST constructor
    recursion depth mismatch". The next parse starts from a fresh counter.
    """
    for attempt in (1, 2, 3):
        try:
            return build()
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == 3:
                raise


def parse_python(text: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``, safe from the 3.11 threading race above."""
    return _retrying_ast_race(lambda: ast.parse(text, filename=filename))


def class_source(cls: type) -> str:
    """``inspect.getsource(cls)`` (which parses the whole file on 3.11), safe likewise."""
    return _retrying_ast_race(lambda: inspect.getsource(cls))


def parse_code(path: Path, data: bytes | None = None) -> ModelCode:
    """Parse ``path`` (or ``data``) without running it; a syntax error is a ``UserError``."""
    text = _decode(path, path.read_bytes() if data is None else data)
    try:
        tree = parse_python(text, filename=str(path))
    except SyntaxError as exc:
        caret = " " * max(0, (exc.offset or 1) - 1) + "^"
        line_text = (exc.text or "").rstrip("\n")
        raise UserError(
            f"{path.name} has a syntax error at line {exc.lineno}: {exc.msg}.\n"
            f"    {line_text}\n    {caret}",
            location=CodeLocation(str(path), exc.lineno or 0, line_text),
            why="Python could not parse the file, so nothing in it can run.",
            fix=f"Fix line {exc.lineno} of {path.name} (a missing colon, bracket or quote is "
            "often reported on the line after the real mistake).",
        ) from None
    defs = {n.name: n for n in tree.body
            if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}
    refs: dict[str, set[str]] = {}
    for name, node in defs.items():
        body = [*node.bases, *node.body] if isinstance(node, ast.ClassDef) else [node]
        refs[name] = {n.id for stmt in body for n in ast.walk(stmt)
                      if isinstance(n, ast.Name) and n.id in defs and n.id != name}
    classes = [n for n, node in defs.items() if isinstance(node, ast.ClassDef)]
    return ModelCode(path, text, tree, classes, refs)


def choose_model_class(code: ModelCode, module: ModuleType, requested: str | None,
                       requested_by: str) -> str:
    """The model class's name: the requested one, else the single root module class."""
    where = code.path.name
    module_classes = code.module_classes(module)
    if requested:
        if requested in module_classes:
            return requested
        raise UserError(
            f"{requested_by} names the model class '{requested}', but {where} has no "
            f"nn.Module class of that name.",
            why=f"nn.Module classes in {where}: {', '.join(module_classes) or 'none'}.",
            fix=f"Use one of those names in {requested_by}, or remove it to choose automatically.")
    if not module_classes:
        raise UserError(
            f"{where} defines no nn.Module subclass, so there is no model to build.",
            why="The testbench builds the class that derives from torch.nn.Module.",
            fix="Define your model as `class MyModel(nn.Module):` with `__init__` and `forward`.")
    roots = code.roots(module_classes)
    if len(roots) == 1:
        return roots[0]
    candidates = roots or module_classes
    raise UserError(
        f"{where} has {len(candidates)} candidate model classes: {', '.join(candidates)}.",
        why="Each is an nn.Module that no other class uses, so any could be the model.",
        fix='Add "model_name": "<ClassName>" to config.json (or pass --model-class NAME).')


@contextmanager
def _isolated_siblings(folder: Path, package: str) -> Iterator[dict[str, ModuleType]]:
    """Let the model import sibling files by plain name without touching other models.

    Sibling names (even ``utils``) are hidden from ``sys.modules`` while the model's code runs,
    found in ``folder`` by a temporary finder, then moved under ``package`` afterwards.
    """
    siblings = {p.stem for p in folder.glob("*.py")}
    saved = {k: sys.modules.pop(k) for k in list(sys.modules)
             if k.split(".")[0] in siblings}
    loaded: dict[str, ModuleType] = {}

    class Finder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name in siblings:
                return importlib.util.spec_from_file_location(name, folder / f"{name}.py")
            return None

    sys.meta_path.insert(0, Finder)
    try:
        yield loaded
    finally:
        sys.meta_path.remove(Finder)
        for key in [k for k in sys.modules if k.split(".")[0] in siblings]:
            module = sys.modules.pop(key)
            loaded[key] = module
            sys.modules[f"{package}.{key}"] = module
        sys.modules.update(saved)


def _ensure_package(name: str, path: list[str]) -> None:
    if name not in sys.modules:
        package = ModuleType(name)
        package.__path__ = path
        sys.modules[name] = package


def import_model_code(code: ModelCode) -> ModuleType:
    """Run the model file as a fresh module in a package of its own, and return it.

    The package's ``__path__`` is the model's folder, so relative imports between the gist's
    files (``from .layers import Block``) work as well as plain ones (``from layers import``).
    """
    package = f"testbench_models.m{next(_counter)}"
    _ensure_package("testbench_models", [])
    _ensure_package(package, [str(code.path.parent)])
    name = f"{package}.{code.path.stem}"
    spec = importlib.util.spec_from_file_location(name, code.path)
    if spec is None or spec.loader is None:  # not a .py name: Python has no loader for it
        raise UserError(f"{code.path.name} is not a Python file, so it cannot be imported.",
                        why="Model code must be in a file ending in .py.",
                        fix=f"Rename it to model.py, or pass the folder {code.path.parent}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = code.path.parent
    user_files = {str(p) for p in folder.glob("*.py")}
    try:
        with _isolated_siblings(folder, package):
            spec.loader.exec_module(module)
    except ModuleNotFoundError as exc:
        sys.modules.pop(name, None)
        missing = (exc.name or "").split(".")[0]
        loc = locate_in_files(exc.__traceback__, user_files)
        pip_name = _PIP_NAMES.get(missing, missing)
        raise UserError(
            f"{code.path.name} imports '{missing}', which is not installed here.",
            location=loc,
            why="The model's code needs a package this Python environment does not have.",
            fix=f"Install it (pip install {pip_name}; in a notebook: %pip install {pip_name}), "
            f"or rewrite that part with torch only.",
        ) from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UserError(
            f"Running {code.path.name} failed: {type(exc).__name__}: {exc}",
            location=locate_in_files(exc.__traceback__, user_files),
            why="The file raised an error at import time, before any model was built.",
            fix="Fix the line shown; run `python model.py` locally to reproduce.",
        ) from None
    return module
