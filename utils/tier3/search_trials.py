"""The bookkeeping that lets several workers share one study exactly.

- **The total.** ``n_trials`` is the study's total, not each worker's. A trial *counts* unless
  it was skipped (a duplicate, or created after the total was reached) or it failed and was
  queued again (its retry counts instead). A trial runs only if fewer than ``n_trials``
  counted trials have a lower number — trial numbers are handed out one at a time by the
  storage, so every worker reaches the same verdict and the total is exact (no overshoot).
- **No duplicates.** Each trial's sampler is seeded from the search's seed and the trial's
  number, so two workers never draw the same random sequence, and a trial whose parameters
  equal those of a counted trial with a lower number is skipped.
- **Pruning** reports the validation loss at the optimizer step (the stock Lightning callback
  reports at the epoch, and a run of ``max_steps`` validates many times per epoch).
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["SKIPPED", "Skipped", "TrialFailed", "counted", "duplicate_of", "make_pruner",
           "make_sampler", "pruning_callback", "retry_of", "surplus"]

SKIPPED = "skipped"  # user attribute: why a trial was skipped (it then does not count)
SEED_STRIDE = 1_000_003  # a prime: seeds of (seed, trial) pairs do not collide for small seeds


class Skipped(Exception):
    """Raised inside the objective for a trial that must not train (recorded as FAIL)."""


class TrialFailed(Exception):
    """A trial that trained but gave no usable value (out of memory, a non-finite loss)."""


def retry_of(trial: Any) -> int | None:
    """The number of the trial this one retries (a killed or interrupted one), or None."""
    return trial.system_attrs.get("failed_trial")


def counted(trials: list[Any]) -> list[Any]:
    """The trials that take a place in the study's total (see the module docstring)."""
    from optuna.trial import TrialState

    retried = {retry_of(t) for t in trials}
    retried |= {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if SKIPPED not in t.user_attrs
            and not (t.state == TrialState.FAIL and t.number in retried)]


def surplus(trials: list[Any], number: int, n_trials: int) -> bool:
    """Whether trial ``number`` comes after the study's total is already taken."""
    return sum(1 for t in counted(trials) if t.number < number) >= n_trials


def duplicate_of(trials: list[Any], number: int, params: dict[str, Any]) -> int | None:
    """The counted trial before ``number`` whose parameters equal ``params``, if any."""
    return next((t.number for t in counted(trials) if t.number < number and t.params == params),
                None)


def make_sampler(seed: int, n_trials: int) -> Any:
    """TPE whose random stream is a function of (``seed``, trial number)."""
    return _seeded_tpe_class()(seed, n_startup_trials=max(2, min(10, n_trials // 3)))


@functools.cache
def _seeded_tpe_class() -> type:
    from optuna.samplers import BaseSampler, TPESampler

    class TrialSeededTPE(BaseSampler):
        """Optuna's TPE, built afresh for each trial with the seed ``seed·p + number``.

        TPE keeps no state besides its random generator (what it learns is in the study's
        trials), so this is TPE itself — reproducible for one worker, and different for every
        trial across workers that share the study.
        """

        def __init__(self, seed: int, **tpe: Any) -> None:
            self._seed, self._tpe_options = seed, tpe
            self._tpe = TPESampler(seed=seed, multivariate=True, **tpe)

        def before_trial(self, study, trial) -> None:
            seed = (self._seed * SEED_STRIDE + trial.number) % 2**32
            self._tpe = TPESampler(seed=seed, multivariate=True, **self._tpe_options)
            self._tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._tpe.after_trial(study, trial, state, values)

    return TrialSeededTPE


def make_pruner(kind: str | None, steps: int, report_every: int, n_trials: int) -> Any:
    """Optuna's pruner for ``kind``.

    None judges a trial before the first validation at or past a fifth of its steps: before
    that, the warm-up (up to a tenth of the steps by default) and the lead a high learning rate
    takes early rank trials differently from how they end.

    - ``"hyperband"``: Hyperband (reduction factor 3) from that first rung to the full trial —
      brackets from aggressive to cautious, each successive halving.
    - ``"halving"``: successive halving alone (Hyperband's most aggressive bracket, as in
      ASHA): at each rung only the best third of the trials that reached it go on.
    - ``"median"``: stop a trial worse than the median of earlier trials at the same step.
    """
    import optuna

    first = -(-max(report_every, steps // 5) // report_every) * report_every  # a report step
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=steps,
                                              reduction_factor=3)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, n_trials // 4)),
                                           n_warmup_steps=first - 1)
    return optuna.pruners.NopPruner()


def pruning_callback(trial: Any, monitor: str = "val_loss") -> Any:
    """A Lightning callback that reports ``monitor`` to ``trial`` after each validation and
    stops the trial when the pruner says so."""
    return _step_pruning_class()(trial, monitor=monitor)


@functools.cache
def _step_pruning_class() -> type:
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    class StepPruning(PyTorchLightningPruningCallback):
        """``PyTorchLightningPruningCallback`` reporting at ``trainer.global_step``.

        Under DDP the stock (epoch-keyed) behaviour is kept.
        """

        def on_validation_end(self, trainer, pl_module) -> None:
            score = trainer.callback_metrics.get(self.monitor)
            if self.is_ddp_backend or trainer.sanity_checking or score is None:
                return super().on_validation_end(trainer, pl_module)
            step = trainer.global_step
            self._trial.report(float(score), step=step)
            if self._trial.should_prune():
                self._trial.set_user_attr("steps", step)
                raise optuna.TrialPruned(f"pruned at step {step} ({self.monitor} "
                                         f"{float(score):.4g})")

    return StepPruning
