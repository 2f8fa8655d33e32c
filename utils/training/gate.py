"""The Tier 1 gate: the checks that must pass before compute is spent on training a model.

One owner for ``train()``, hyperparameter search (once per study), the benchmark (through
``train()``) and the training notebook (which shows the report before its training cell). The
gate writes its report beside the run (``tier1.json``) and stops with :class:`GateFailed`
unless ``force`` is set.

Example:
    >>> report = run_gate(adapter, run_dir, force=False, say=print)   # GateFailed if wrong
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import UserError, advice

__all__ = ["TIER1_GATE", "GateFailed", "gate_report", "run_gate"]

# The Tier 1 checks that catch bugs training would hide: a model that runs but is wrong.
TIER1_GATE: tuple[str, ...] = ("shape_robustness", "causal_masking", "batch_independence",
                               "padding_invariance", "context_use", "position_information",
                               "residual_paths", "gradient_flow", "output_stability")


class GateFailed(UserError):
    """Tier 1's gate failed: training would spend compute on a model that is wrong.

    ``report`` holds the gate's :class:`~utils.report.Report`.
    """

    def __init__(self, report: Any, run_dir: Path, doing: str = "training") -> None:
        self.report = report
        bad = [r for r in report.results if r.status in ("fail", "error")]
        lines = "\n".join(f"  - {r.name} [{r.status}]: {r.summary}" for r in bad)
        super().__init__(f"Tier 1's gate failed {len(bad)} check(s), so {doing} did not "
                         f"start:\n{lines}",
                         why="These checks catch bugs that training hides (a model that "
                         "peeks at later tokens learns fast and is useless). The report is "
                         f"in {Path(run_dir) / 'tier1.json'}.",
                         fix=f"Fix the model and run again, or pass "
                         f"{advice('force=True', '--force')} to go on anyway.")


def gate_report(adapter: Any) -> Any:
    """The gate's checks run on ``adapter``: a :class:`~utils.report.Report`."""
    from utils.tier1_critical_validation import run_tier1

    return run_tier1(adapter, checks=TIER1_GATE, progress=False)


def run_gate(adapter: Any, folder: str | Path, *, force: bool, say: Callable[[str], None],
             report: Any = None, doing: str = "training") -> Any:
    """Run the gate (or take its ``report``, already run), write ``folder/tier1.json``, and
    stop unless it passed or ``force`` is set.

    Args:
        adapter: The model's adapter.
        folder: Where the report goes: the run's or the study's folder.
        force: Go on after a failed gate (said through ``say``).
        report: The gate's report when the caller ran it already (the notebook shows it first).
        doing: What the gate guards, for the messages ("training", "the search").

    Raises:
        GateFailed: a gate check failed and ``force`` is False.
    """
    folder = Path(folder)
    report = gate_report(adapter) if report is None else report
    folder.mkdir(parents=True, exist_ok=True)
    report.to_json(str(folder / "tier1.json"))
    if not report.passed:
        if not force:
            raise GateFailed(report, folder, doing)
        say(f"Tier 1's gate failed; {doing} goes on anyway because force=True.")
    return report
