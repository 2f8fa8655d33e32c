"""``shape_robustness``: the model runs, with the right output shape, across batch × length."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from utils.checks import register
from utils.report import CheckResult
from utils.tier1.lengths import first_failing_length, grid_batch, lengths, shortest_length
from utils.tier1.outputs import eval_logits, eval_logits_remembered, expected_shape, where

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



def _runs(adapter: Adapter, options, t: int) -> bool:
    batch = adapter.make_inputs(1, t, seed=options.seed)
    try:
        return tuple(eval_logits(adapter, batch).shape) == expected_shape(adapter, 1, t)
    except Exception:
        return False


def runnable_max_len(adapter: Adapter, options) -> int | None:
    """The longest length that runs when it is below the (capped) maximum, else None.

    One forward at the maximum when the model is healthy; a bisection when it is not. Used by
    runs that do not start with ``shape_robustness`` (Tier 2 alone), so one length bug is not
    reported as a crash by every analysis.
    """
    top = options.max_len(adapter)
    if _runs(adapter, options, top):
        return None
    longest = first_failing_length(lambda t: _runs(adapter, options, t), 0, top) - 1
    return longest if longest >= 1 else None


@register("shape_robustness", tier=1, length_probe=runnable_max_len)
def check_shape_robustness(adapter: Adapter, options) -> CheckResult:
    top = options.max_len(adapter)
    wide = grid_batch(adapter, options)
    batches = sorted({1, wide})
    grid = [(b, t) for t in lengths(adapter, options) for b in batches]
    grid += [(1, top)] if (1, top) not in grid else []
    shortest = shortest_length(adapter, options)
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for b, t in grid:
        batch = adapter.make_inputs(b, t, seed=options.seed)
        want = expected_shape(adapter, b, t)
        if t < shortest.length:  # refused by the model's own check: a minimum, by design
            rows.append({"batch": b, "seq_len": t, "ok": None, "output_shape": None,
                         "problem": f"below the model's minimum length ({shortest.refused})"})
            continue
        # output_stability reads the wide forwards' summaries instead of running them again
        forward = eval_logits_remembered if b == wide else eval_logits
        try:
            got = tuple(forward(adapter, batch).shape)
        except Exception as exc:
            rows.append({"batch": b, "seq_len": t, "ok": False, "output_shape": None,
                         "problem": f"{type(exc).__name__}: {exc}{where(exc, adapter)}"})
            failures.append(rows[-1])
            continue
        ok = got == want
        rows.append({"batch": b, "seq_len": t, "ok": ok, "output_shape": list(got),
                     "problem": None if ok else f"expected {list(want)}"})
        if not ok:
            failures.append(rows[-1])
    lo = max(grid[0][1], shortest.length)
    span = f"batch {batches[0]}–{batches[-1]} × length {lo}–{top}"
    full = adapter.max_seq_len
    if full is not None and top < full:
        # why the cap is there (a time budget, or a length the model fails past) is the
        # runner's to say: in the report's notes, or after this summary
        span += (f"; lengths {top + 1}–{full} of max_seq_len {full} not tested "
                 f"(max_len_cap={options.max_len_cap})")
    tested = [r for r in rows if r["ok"] is not None]
    metrics = {"shapes_tested": len(tested), "shapes_failed": len(failures),
               "max_len_tested": top, "max_len_cap": options.max_len_cap,
               "runnable_min_len": shortest.length}
    if failures:
        # the exact longest length that runs: reported, and later checks stay within it
        shortest_bad = min(r["seq_len"] for r in failures)
        good = max((r["seq_len"] for r in tested if r["ok"] and r["seq_len"] < shortest_bad),
                   default=shortest.length - 1)
        metrics["runnable_max_len"] = first_failing_length(
            lambda t: _runs(adapter, options, t), good, shortest_bad) - 1
    minimum = ""
    if shortest.length > 1:
        minimum = (f" Lengths below {shortest.length} are refused by the model's own check "
                   f"({shortest.refused}): its shortest input is {shortest.length} tokens, by "
                   "design.")
    threshold = {"shapes_failed": 0}
    if not failures:
        return CheckResult("shape_robustness", 1, "pass", f"All {len(tested)} input shapes ran "
                           f"with the right output shape ({span}).{minimum}", metrics, threshold,
                           rows)
    first = failures[0]
    problem = first["problem"] if first["output_shape"] is None else (
        f"output {first['output_shape']}, {first['problem']}")
    return CheckResult(
        "shape_robustness", 1, "fail",
        f"{len(failures)}/{len(tested)} shapes failed; the model runs "
        + (f"up to length {metrics['runnable_max_len']}" if shortest.length == 1 else
           f"at lengths {shortest.length}–{metrics['runnable_max_len']}")
        + f" of max_seq_len {top}. First failure at batch "
        f"{first['batch']} × length {first['seq_len']}: {problem}. Every length up to "
        "max_seq_len must work — check position tables and masks against max_seq_len."
        + minimum, metrics, threshold, rows)
