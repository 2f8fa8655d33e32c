"""Tier 2: understand the model — what its heads attend to, which tokens drive a prediction,
how fragile it is, and whether it decodes consistently.

``run_tier2(model_or_adapter)`` runs every Tier 2 analysis and returns a
:class:`~utils.report.Report`; ``report.plots()`` draws attention heatmaps, attribution bars and
robustness curves from the results. Everything runs on what Colab ships (torch, numpy; figures
use matplotlib) — no captum, no bertviz. Each analysis is a function in ``utils/tier2/`` that
records how many forward and backward passes it spent (``forward_passes``,
``backward_passes`` in its metrics).

Example:
    >>> from utils.tier2_advanced_analysis import run_tier2
    >>> report = run_tier2(model, config)      # a bare nn.Module, a LoadedModel or an adapter
    >>> report.to_frame(); figures = report.plots()
"""

from __future__ import annotations

from collections.abc import Iterable

from utils.checks import CheckOptions, available, run_tier
from utils.report import Report
from utils.tier2 import (  # noqa: F401  (importing registers the checks and plots)
    attention,
    attribution,
    generation,
    plots,
    robustness,
)

__all__ = ["TIER2_CHECKS", "run_tier2"]

TIER2_CHECKS: tuple[str, ...] = ("attention_patterns", "attribution_analysis", "robustness",
                                 "generation_consistency")
assert set(TIER2_CHECKS) == set(available(tier=2)), "a Tier 2 check is registered but not listed"


def run_tier2(model_or_adapter, config: dict | None = None, *,
              checks: Iterable[str] | None = None, skip: Iterable[str] | None = None,
              options: CheckOptions | None = None, progress: bool = True) -> Report:
    """Run the Tier 2 analyses (all, or ``checks`` minus ``skip``) and return the report.

    Raises:
        UserError: the model cannot be adapted, or a check name is unknown.
    """
    return run_tier(TIER2_CHECKS, model_or_adapter, config, checks=checks, skip=skip,
                    options=options, progress=progress)
