"""Which lengths a model runs at: the grid of lengths the checks try, the shortest that runs,
the first that fails (bisected), and where an exception was raised."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from utils.tier1.outputs import eval_logits

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



@dataclass(frozen=True)
class Shortest:
    """The shortest input a model takes: ``length`` (1 for most), and ``refused``, where the
    model's own code turns shorter ones away (``assert T > 1`` on a no-cache path), or None."""

    length: int
    refused: str | None = None


_SHORTEST: weakref.WeakKeyDictionary[nn.Module, Shortest] = weakref.WeakKeyDictionary()
_MIN_LEN_BY_DESIGN = 8  # a refusal of longer inputs than this is not a minimum, it is a bug


def grid_batch(adapter: Adapter, options) -> int:
    """The larger batch of shape_robustness's grid. output_stability's random probes use it
    too, so the summaries of those forwards are remembered instead of run twice."""
    return options.batch(adapter, 4)


def lengths(adapter: Adapter, options, *, include_one: bool = True) -> list[int]:
    """Lengths to sweep: 1, 2, an odd one, half and the (capped) maximum — deduplicated."""
    top = options.max_len(adapter)
    picks = [1, 2, 7, top // 2 + 1 if top > 4 else top, top]
    return sorted({p for p in picks if 1 <= p <= top and (include_one or p > 1)})


def _deliberate(exc: BaseException, files: set[str]) -> str | None:
    """``file, line N: code`` when ``exc`` comes from an ``assert`` or ``raise`` of the
    model's own code (a length it refuses on purpose), else None (an operation that failed)."""
    import traceback
    from pathlib import Path

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in files]
    if not frames:
        return None
    last = frames[-1]
    code = (last.line or "").strip()
    innermost = traceback.extract_tb(exc.__traceback__)[-1]
    if not (isinstance(exc, AssertionError) or (innermost.filename == last.filename and
                                                innermost.lineno == last.lineno and
                                                code.startswith("raise"))):
        return None
    return f"{type(exc).__name__} at {Path(last.filename).name}, line {last.lineno}: {code[:80]}"


def shortest_length(adapter: Adapter, options) -> Shortest:
    """The shortest length the model runs at (batch 1, eval): 1, or — when its own code
    refuses shorter inputs with an ``assert`` or ``raise`` (a prompt of at least two tokens) —
    the first length up to 8 that runs. A crash of an operation at length 1 is not a minimum:
    the length is then 1 and shape_robustness reports the crash. Remembered per model."""
    known = _SHORTEST.get(adapter.model)
    if known is not None:
        return known
    found, refused = Shortest(1), None
    for t in range(1, min(_MIN_LEN_BY_DESIGN, options.max_len(adapter)) + 1):
        try:
            eval_logits(adapter, adapter.make_inputs(1, t, seed=options.seed))
        except Exception as exc:
            why = _deliberate(exc, adapter.model_files)
            if why is None:
                break
            refused = refused or why
            continue
        if t > 1:
            found = Shortest(t, refused)
        break
    _SHORTEST[adapter.model] = found
    return found


def first_failing_length(ok, good: int, bad: int) -> int:
    """The shortest length in ``(good, bad]`` where ``ok(length)`` is False, by bisection.

    ``ok(good)`` is known True (or ``good`` is 0) and ``ok(bad)`` known False.
    """
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return bad
