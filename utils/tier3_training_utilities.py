"""Tier 3: does the model learn on real data, which hyperparameters suit it, and is it better
than a plain transformer of the same size?

``fine_tune(model, data, ...)`` trains behind the Tier 1 gate and attaches the learning-sanity
checks (``result.report``); ``benchmark_comparison(model, data, steps=...)`` trains the model and
a baseline of matched size on the same data and budget; ``hyperparameter_search(model, data,
n_trials=...)`` runs an Optuna study. The logic lives in ``utils/tier3/``; the training extras
(lightning, optuna) are imported when a function runs, never when this module is imported.

Example:
    >>> from utils.tier3_training_utilities import benchmark_comparison, fine_tune
    >>> result = fine_tune(loaded, "texts/", max_steps=300)
    >>> result.report                      # first loss, loss decrease, train/val gap, ...
    >>> bench = benchmark_comparison(loaded, "texts/", steps=300)
    >>> bench.table, bench.verdict
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from utils.checks import available
from utils.tier3.benchmark import benchmark_comparison
from utils.tier3.benchmark_report import BenchmarkResult
from utils.tier3.fine_tune import fine_tune
from utils.tier3.learning_checks import TIER3_CHECKS, run_learning_checks

if TYPE_CHECKING:  # at run time __getattr__ imports it on first use
    from utils.tier3.search import hyperparameter_search

__all__ = ["TIER3_CHECKS", "BenchmarkResult", "benchmark_comparison", "fine_tune",
           "hyperparameter_search", "run_learning_checks"]

assert set(TIER3_CHECKS) == set(available(tier=3)), "a Tier 3 check is registered but not listed"


def __getattr__(name: str) -> Any:
    """``hyperparameter_search`` is :func:`utils.tier3.search.hyperparameter_search`, imported on
    first use (its module needs Optuna)."""
    if name == "hyperparameter_search":
        from utils.tier3.search import hyperparameter_search

        return hyperparameter_search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
