"""What the model's own code says it is meant to be: the signs of a causal LM in its source.

A model whose causal mask is missing or misapplied leaks the future, and a probe alone then
takes it for a bidirectional model — the defect would decide the task, and the check that
catches it would be skipped. So what the author wrote outranks what the forward does: a
triangular mask built (even one never applied, or built by a function beside the classes),
``is_causal`` / ``causal=True``, a ``generate``/sampling method, a next-token loss (logits
``[:, :-1]`` against labels ``[:, 1:]``). Only the user's own code is read: library classes
(transformers, torch) carry causal code paths for every model they serve.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import textwrap
from pathlib import Path

from torch import nn

from utils.adapters.model_source import class_source, parse_python

__all__ = ["causal_intent"]

_CAUSAL_CALLS = {"tril", "triu", "tril_", "triu_", "generate_square_subsequent_mask",
                 "causal_mask"}
# A function that builds a causal mask, by its name: make_causal_mask, subsequent_mask,
# create_look_ahead_mask (TensorFlow's tutorial), _build_causal_attention_mask, ...
_MASK_BUILDER = re.compile(r"(causal|subsequent|look_?ahead|future|triangular)\w*mask$", re.I)
# generate(), sample_tokens(), ...; not generate_mask() or sample_noise() (an MLM's helpers)
_SAMPLER = re.compile(r"^_?(generate|sample)(_(text|tokens?|sequences?|ids|next\w*|greedy|"
                      r"stream|autoregressive\w*))?$")
_LOSSES = {"cross_entropy", "CrossEntropyLoss", "nll_loss", "NLLLoss"}


def _is_library(cls: type) -> bool:
    module = cls.__module__ or ""
    if module.split(".")[0] in ("torch", "transformers", "torchvision", "torchtune"):
        return True
    try:
        file = inspect.getsourcefile(cls) or ""
    except (OSError, TypeError):
        return True
    return "site-packages" in file or "dist-packages" in file


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _slices(node: ast.Subscript) -> list[ast.Slice]:
    inner = node.slice
    items = inner.elts if isinstance(inner, ast.Tuple) else [inner]
    return [s for s in items if isinstance(s, ast.Slice)]


def _shifted_loss(func: ast.AST) -> bool:
    """A loss on logits ``[..., :-1]`` against targets ``[..., 1:]`` in one function."""
    calls = {_call_name(n) for n in ast.walk(func) if isinstance(n, ast.Call)}
    if not calls & _LOSSES:
        return False
    drop_last = drop_first = False
    for node in ast.walk(func):
        if isinstance(node, ast.Subscript):
            for s in _slices(node):
                upper, lower = s.upper, s.lower
                if s.lower is None and isinstance(upper, ast.UnaryOp) and isinstance(
                        upper.op, ast.USub) and getattr(upper.operand, "value", None) == 1:
                    drop_last = True
                if s.upper is None and getattr(lower, "value", None) == 1:
                    drop_first = True
    return drop_last and drop_first


def _position_axis(node: ast.AST) -> str | None:
    """What ``pos[:, None]`` / ``pos.unsqueeze(1)`` / ``torch.arange(T)[None, :]`` broadcasts:
    the variable's name ('arange' for an arange call), or None."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple) and any(
            isinstance(e, ast.Constant) and e.value is None for e in node.slice.elts):
        inner = node.value
    elif isinstance(node, ast.Call) and _call_name(node) in ("unsqueeze", "view", "reshape") \
            and isinstance(node.func, ast.Attribute):
        inner = node.func.value
    else:
        return None
    if isinstance(inner, ast.Name):
        return inner.id
    return "arange" if isinstance(inner, ast.Call) and _call_name(inner) == "arange" else None


def _compares_positions(node: ast.Compare) -> bool:
    """``pos[:, None] >= pos[None, :]``: a causal mask built by comparing a position vector
    with itself (not ``lengths[:, None] > pos``, a padding mask)."""
    if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.GtE, ast.LtE, ast.Gt, ast.Lt)):
        return False
    left, right = _position_axis(node.left), _position_axis(node.comparators[0])
    return left is not None and left == right


def _class_signs(cls: type) -> list[str]:
    try:
        tree = parse_python(textwrap.dedent(class_source(cls)))
    except (OSError, TypeError, SyntaxError):
        return []
    name, found = cls.__name__, []
    library = _is_library(cls)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            call = _call_name(node)
            if call in _CAUSAL_CALLS:
                found.append(f"{name} calls {call}()")
            elif not library and _MASK_BUILDER.search(call):
                found.append(f"{name} builds a causal mask ({call}())")
            elif not library and call == "multinomial":
                found.append(f"{name} samples tokens (torch.multinomial)")
        elif isinstance(node, ast.keyword) and _is_true(node.value) and (
                node.arg == "is_causal" or (node.arg == "causal" and not library)):
            found.append(f"{name} passes {node.arg}=True")
        elif isinstance(node, ast.Assign) and _is_true(node.value) and any(
                getattr(t, "attr", getattr(t, "id", None)) == "is_causal"
                for t in node.targets):
            found.append(f"{name} sets is_causal = True")
        if library:
            continue
        if isinstance(node, ast.Compare) and _compares_positions(node):
            found.append(f"{name} builds a causal mask (comparing positions)")
        elif isinstance(node, ast.AnnAssign) and _is_true(node.value) and getattr(
                node.target, "attr", getattr(node.target, "id", None)) in ("is_causal",
                                                                           "causal"):
            found.append(f"{name} sets is_causal = True")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if _SAMPLER.match(node.name):
                found.append(f"{name} has a {node.name}() method")
            elif _MASK_BUILDER.search(node.name):
                found.append(f"{name} builds a causal mask ({node.name}())")
            if _shifted_loss(node):
                found.append(f"{name}.{node.name}() computes a next-token loss "
                             "(logits[:, :-1] against the tokens [:, 1:])")
            args = node.args
            defaults = dict(zip([a.arg for a in args.args][::-1], args.defaults[::-1],
                                strict=False))
            defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults,
                                                      strict=True) if d is not None})
            for arg in ("is_causal", "causal"):  # not __init__'s: the instance may differ
                if node.name != "__init__" and _is_true(defaults.get(arg)):
                    found.append(f"{name}.{node.name}() defaults to {arg}=True")
    return found


def _file_signs(classes: set[type]) -> list[str]:
    """Causal-mask builders defined at the top level of the user's model files: the
    tutorial's ``generate_square_subsequent_mask(sz)`` that only the training loop calls."""
    files = set()
    for cls in classes:
        if not _is_library(cls):
            with contextlib.suppress(OSError, TypeError):
                files.add(inspect.getsourcefile(cls))
    found = []
    for file in sorted(f for f in files if f):
        try:
            tree = parse_python(Path(file).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and _MASK_BUILDER.search(node.name) and \
                    not node.name.startswith("test"):
                found.append(f"{node.name}() beside the model builds a causal mask")
    return found


def causal_intent(model: nn.Module) -> list[str]:
    """Each sign, in the model's own code, that it is meant to be causal (sorted, unique)."""
    classes = {type(m) for m in model.modules() if not type(m).__module__.startswith("torch.nn")}
    found = [s for cls in classes for s in _class_signs(cls)] + _file_signs(classes)
    return sorted(set(found))
