"""``SearchResult``: what a hyperparameter search found, as data, JSON and figures."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.tier3.search_space import SearchSpace
from utils.tier3.search_trials import counted, retry_of
from utils.training.config import TrainingConfig

__all__ = ["SearchResult", "trial_rows"]


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One dict per trial of the study that counts (skipped bookkeeping trials left out)."""
    rows = []
    for t in counted(study.get_trials(deepcopy=False)):
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        row = {"number": t.number, "state": t.state.name, "value": value,
               "params": dict(t.params), "steps": t.user_attrs.get("steps"),
               "seconds": t.user_attrs.get("seconds"), "worker": t.user_attrs.get("worker")}
        if retry_of(t) is not None:
            row["retry_of"] = retry_of(t)
        if t.user_attrs.get("error"):
            row["error"] = t.user_attrs["error"]
        rows.append(row)
    return rows


@dataclass
class SearchResult:
    """A study's outcome: the best config, every trial, the figures.

    Attributes:
        best_config: The search's config with the best trial's parameters applied (None when
            no trial completed), ``out_dir``/``mirror_dir`` cleared (they named the search's
            folders); train with it, e.g. with a longer ``max_steps``.
        best_params: The best trial's parameters; best_value: its validation loss.
        best_trial: Its number; best_run_dir: its run folder (``final/`` holds the trained
            model) when it ran on this machine.
        trials: One row per trial (number, state, value, steps, seconds, retry_of, worker and a
            column per parameter) as a DataFrame.
        study: The Optuna study (``optuna.load_study`` with the same storage gives it again).
        study_name, storage: Where the study lives (the storage with its password hidden).
        search_dir: The search folder (trial run folders, the default SQLite database).
        n_trials: The study's requested total; steps_per_trial: each trial's budget.
        space: The searched space. notes: Sentences for a person.
    """

    best_config: TrainingConfig | None
    best_params: dict[str, Any]
    best_value: float | None
    best_trial: int | None
    best_run_dir: Path | None
    trials: Any
    study_name: str
    storage: str
    search_dir: Path
    n_trials: int
    steps_per_trial: int
    space: SearchSpace
    notes: list[str] = field(default_factory=list)
    study: Any = field(default=None, repr=False)

    def __repr__(self) -> str:
        best = (f"best val_loss {self.best_value:.4g} (trial {self.best_trial})"
                if self.best_value is not None else "no completed trial")
        states = self.trials["state"].value_counts().to_dict() if len(self.trials) else {}
        shown = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        return f"SearchResult({len(self.trials)} trials: {shown or 'none'}; {best})"

    @property
    def steps_trained(self) -> int:
        """Optimizer steps the trials trained in all (pruned trials count their part)."""
        import pandas as pd

        if "steps" not in self.trials:
            return 0
        return int(pd.to_numeric(self.trials["steps"], errors="coerce").fillna(0).sum())

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``testbench search --json`` (without the envelope)."""
        return {"study_name": self.study_name, "storage": self.storage,
                "search_dir": str(self.search_dir), "n_trials": self.n_trials,
                "steps_per_trial": self.steps_per_trial, "space": self.space.to_dict(),
                "best_params": self.best_params, "best_value": self.best_value,
                "best_trial": self.best_trial,
                "best_run_dir": str(self.best_run_dir) if self.best_run_dir else None,
                "best_config": self.best_config.to_dict() if self.best_config else None,
                "trials": trial_rows(self.study) if self.study is not None else [],
                "notes": self.notes}

    def plots(self) -> dict[str, Any]:
        """Figures from ``optuna.visualization.matplotlib``: ``optimization_history``, and
        with two completed trials or more ``param_importances`` and ``parallel_coordinate``."""
        import warnings

        import optuna
        from optuna.visualization import matplotlib as vis

        if self.study is None:
            return {}
        complete = [t for t in self.study.get_trials(deepcopy=False)
                    if t.state == optuna.trial.TrialState.COMPLETE]
        makers: dict[str, Callable[..., Any]] = {
            "optimization_history": vis.plot_optimization_history}
        if len(complete) >= 2:
            makers["param_importances"] = vis.plot_param_importances
            makers["parallel_coordinate"] = vis.plot_parallel_coordinate
        figures = {}
        with warnings.catch_warnings():  # optuna marks its matplotlib backend experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for name, make in makers.items():
                ax: Any = make(self.study)
                figures[name] = (ax[0] if hasattr(ax, "__len__") else ax).figure
        return figures


def build_result(study: Any, config: TrainingConfig, space: SearchSpace, *, storage: str,
                 search_dir: Path, n_trials: int, steps: int, notes: list[str]) -> SearchResult:
    """The :class:`SearchResult` of ``study`` as it stands."""
    import pandas as pd

    rows = trial_rows(study)
    frame = pd.DataFrame([{**{k: v for k, v in r.items() if k != "params"},
                           **r["params"]} for r in rows],
                         columns=None if rows else ["number", "state", "value", "steps"])
    best = min((r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None),
               key=lambda r: r["value"], default=None)
    run_dir = None
    if best is not None:
        candidate = search_dir / "trials" / f"trial-{best['number']:04d}"
        run_dir = candidate if candidate.is_dir() else None
    return SearchResult(
        best_config=config.replace(**best["params"], out_dir=None, mirror_dir=None)
        if best else None,
        best_params=dict(best["params"]) if best else {},
        best_value=best["value"] if best else None,
        best_trial=best["number"] if best else None, best_run_dir=run_dir, trials=frame,
        study_name=study.study_name, storage=storage, search_dir=search_dir,
        n_trials=n_trials, steps_per_trial=steps, space=space, notes=notes, study=study)

