"""Tier 1: fast correctness checks — does the model run, at every shape, with sane numbers?

``run_tier1(model_or_adapter)`` runs every Tier 1 check and returns a
:class:`~utils.report.Report`. Each check is a function in ``utils/tier1/`` returning a
:class:`~utils.report.CheckResult`; it never prints and never raises on a broken model.

Example:
    >>> from utils.tier1_critical_validation import run_tier1
    >>> report = run_tier1(model, config)      # a bare nn.Module, a LoadedModel or an adapter
    >>> report.passed, report.to_frame()
"""

from __future__ import annotations

from collections.abc import Iterable

from utils.checks import CheckOptions, available, run_tier
from utils.report import Report
from utils.tier1 import (  # noqa: F401  (importing registers the checks and plots)
    causal,
    context,
    gradients,
    initialization,
    invariances,
    learning,
    model_loss,
    numerics,
    plots,
    positions,
    precision,
    residuals,
    resources,
    shapes,
)

__all__ = ["TIER1_CHECKS", "run_tier1"]

# The order a person reads them in: does it run; does it keep the invariances a transformer
# must (no peeking ahead, no mixing samples, padding ignored); are the numbers sane; can it
# learn; is it reproducible; what does it cost.
TIER1_CHECKS: tuple[str, ...] = ("shape_robustness", "causal_masking", "batch_independence",
                                 "padding_invariance", "context_use", "position_information",
                                 "position_shift",
                                 "residual_paths", "gradient_flow", "output_stability",
                                 "parameter_initialization", "initial_loss", "model_loss",
                                 "overfit_one_batch",
                                 "mixed_precision", "determinism", "memory_footprint",
                                 "inference_speed")
assert set(TIER1_CHECKS) == set(available(tier=1)), "a Tier 1 check is registered but not listed"


def run_tier1(model_or_adapter, config: dict | None = None, *,
              checks: Iterable[str] | None = None, skip: Iterable[str] | None = None,
              options: CheckOptions | None = None, progress: bool = True) -> Report:
    """Run the Tier 1 checks (all, or ``checks`` minus ``skip``) and return the report.

    Raises:
        UserError: the model cannot be adapted, or a check name is unknown.
    """
    return run_tier(TIER1_CHECKS, model_or_adapter, config, checks=checks, skip=skip,
                    options=options, progress=progress)
