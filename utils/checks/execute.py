"""Running one check: timed, seeded, the model's mode and gradients restored after it, and a
crash turned into an ``error`` result that names the model file's line. Also the length probe
a run asks before its first check."""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING

import torch

from utils.checks.options import CheckOptions
from utils.checks.registry import REGISTRY
from utils.errors import locate_in_files
from utils.report import CheckResult

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


__all__ = ["mode_at_raise", "probe_lengths", "run_one"]


def mode_at_raise(exc: BaseException, adapter) -> str:
    """'training' or 'eval': the model's mode when it raised ``exc``.

    :meth:`ModelAdapter.forward` marks what passes through it (a check's ``finally`` — a
    snapshot restored, ``train(was_training)`` — has put the model back in its earlier mode by
    the time the exception reaches the runner); otherwise the mode the model is in now.
    """
    from utils.adapters.model_adapter import RAISED_IN_MODE

    marked = getattr(exc, RAISED_IN_MODE, None)
    if marked is not None:
        return marked
    return "training" if adapter.model.training else "eval"


def run_one(name: str, adapter, options: CheckOptions) -> CheckResult:
    tier, fn = REGISTRY[name].tier, REGISTRY[name].fn
    start = time.perf_counter()
    was_training = adapter.model.training
    torch.manual_seed(options.seed)
    try:
        result = fn(adapter, options)
    except Exception as exc:
        loc = locate_in_files(exc.__traceback__, adapter.model_files)
        frames = traceback.extract_tb(exc.__traceback__)
        result = CheckResult(
            name=name, tier=tier, status="error",
            summary=f"The check crashed: {type(exc).__name__}: {exc}"
            + (f" (at {loc})" if loc else ""),
            error={"type": type(exc).__name__, "message": str(exc),
                   "file": loc.file if loc else (frames[-1].filename if frames else None),
                   "line": loc.line if loc else (frames[-1].lineno if frames else None),
                   "in_model": loc is not None, "code": loc.text.strip() if loc else "",
                   "mode": mode_at_raise(exc, adapter)})
    finally:
        adapter.model.train(was_training)
        adapter.model.zero_grad(set_to_none=True)
    result.seconds = time.perf_counter() - start
    return result


def probe_lengths(adapter: Adapter, names: list[str], options: CheckOptions,
                   ) -> tuple[int | None, str | None]:
    """The longest runnable length and the check whose probe found it, when the run does not
    start with a check that measures it itself."""
    if not names or REGISTRY[names[0]].length_probe is not None:
        return None, None
    for spec in REGISTRY.values():
        if spec.length_probe is None:
            continue
        was_training = adapter.model.training
        try:
            runnable = spec.length_probe(adapter, options)
        finally:
            adapter.model.train(was_training)
        if runnable is not None:
            return runnable, spec.name
    return None, None
