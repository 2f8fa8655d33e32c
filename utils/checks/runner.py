"""The runner: the checks asked for, in order, each result passed through the findings
(:mod:`utils.checks.findings`), into one :class:`~utils.report.Report`. It knows no check by
name: what it does differently for a check comes from the check's spec or its metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from utils.checks.execute import probe_lengths, run_one
from utils.checks.findings import FINDINGS, CheckRun
from utils.checks.library_warnings import LibraryWarnings
from utils.checks.options import CheckOptions
from utils.checks.registry import REGISTRY, select
from utils.report import Report

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


__all__ = ["as_adapter", "run_checks", "run_tier"]


def _progress(names: list[str], enabled: bool):
    if not enabled:
        return names
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm ships with Colab, but a bare install may lack it
        return names
    return tqdm(names, desc="checks", unit="check", leave=False)


def run_checks(adapter: Adapter, names: list[str], options: CheckOptions | None = None, *,
               progress: bool = True, model_info: dict[str, Any] | None = None) -> Report:
    """Run the named checks on ``adapter``; a crash is an ``error`` result, never a stop.

    Warnings raised while the checks run (see :class:`LibraryWarnings`) become the report's
    notes, once each, instead of stderr output.

    Raises:
        UserError: a threshold key in ``options`` that no check declares.
    """
    from utils.environment import versions

    options = options or CheckOptions()
    options.validate_thresholds()
    if options.device is not None:
        adapter.to(options.device)
    report = Report(model=model_info or adapter.describe(), source=dict(adapter.source),
                    environment={**versions(), "device": str(adapter.device)})
    bar = _progress(names, progress)
    said = LibraryWarnings()
    with said.capture("the length probe"):
        runnable, prober = probe_lengths(adapter, names, options)
    top = options.max_len(adapter)
    if runnable is None and adapter.max_seq_len is not None and top < adapter.max_seq_len:
        report.notes.append(
            f"Checks use sequences of at most {top} tokens (max_len_cap={options.max_len_cap}), "
            f"below the model's max_seq_len {adapter.max_seq_len}, so each check stays within "
            f"its time budget: lengths {top + 1}–{adapter.max_seq_len} are not tested. "
            f"CheckOptions(max_len_cap={adapter.max_seq_len}) tests them.")
    run = CheckRun(adapter, options, report)
    if runnable is not None:
        assert prober is not None, "a runnable length comes from the check that probed it"
        run.options = dataclasses.replace(options, max_len_cap=runnable)
        run.capped_by = f"Tier {REGISTRY[prober].tier}'s {prober}"
        report.notes.append(f"The model fails beyond length {runnable} (a length probe found "
                            f"it); every check stays within it. Run {prober} for the cause.")
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        with said.capture(name):
            result = run_one(name, adapter, run.options)
        for finding in FINDINGS:
            finding(result, run)
        report.results.append(result)
    report.notes += said.notes()
    return report


def as_adapter(model_or_adapter, config: dict | None = None):
    """An adapter for whatever the caller has: an adapter, a LoadedModel or an nn.Module."""
    from utils.adapters import ModelAdapter, adapt

    if isinstance(model_or_adapter, ModelAdapter):
        return model_or_adapter
    return adapt(model_or_adapter, config)


def run_tier(tier_checks: Iterable[str], model_or_adapter, config: dict | None = None, *,
             checks: Iterable[str] | None = None, skip: Iterable[str] | None = None,
             options: CheckOptions | None = None, progress: bool = True) -> Report:
    """Run ``tier_checks`` (or ``checks`` among them, minus ``skip``) and return the report."""
    names = select(list(tier_checks), checks, skip)
    return run_checks(as_adapter(model_or_adapter, config), names, options, progress=progress)
