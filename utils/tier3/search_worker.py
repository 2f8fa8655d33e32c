"""``SearchWorker``: one process's loop over a shared study — ask for a trial unless the
study's total is taken, train it from the initial weights, tell the result, tidy, mirror.

Trials are counted, skipped and seeded as :mod:`utils.tier3.search_trials` describes. When the
total is taken but other workers still run trials, a worker with a heartbeat storage waits for
them: one that dies leaves a trial this worker retries, so the study ends complete.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.tier3.search_space import SearchSpace
from utils.tier3.search_trials import (
    SKIPPED,
    Skipped,
    TrialFailed,
    counted,
    duplicate_of,
    pruning_callback,
    surplus,
)
from utils.tier3.study_storage import StudyStorage, retry_callback, worker_id
from utils.training.config import TrainingConfig

__all__ = ["MAX_SKIPS", "SearchWorker", "best_trial"]

MAX_SKIPS = 20  # duplicates in a row before a worker calls the space exhausted


@dataclass(eq=False)
class SearchWorker:
    """One worker's loop over a study's trials.

    Attributes:
        study: The Optuna study; opened: its :class:`StudyStorage`.
        model: What each trial hands to ``train`` (the ``LoadedModel``, or the adapter).
        adapter: The model's adapter (its module is reset before each trial).
        dataset, tokenizer: What every trial trains and validates on.
        config: The base of every trial's config; space: what varies.
        steps: Steps per trial; report_every: steps between validations (pruning reports).
        pruner: The pruner's name, or None. total: The study's total number of trials.
        search_dir: Where trial run folders go. progress, say: A bar, or lines through say.
        notes: Where sentences for the result go.
    """

    study: Any
    opened: StudyStorage
    model: Any
    adapter: Any
    dataset: Any
    tokenizer: Any
    config: TrainingConfig
    space: SearchSpace
    steps: int
    report_every: int
    pruner: str | None
    total: int
    search_dir: Path
    progress: bool = True
    say: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from torch import nn
        from tqdm.auto import tqdm

        adapter = self.adapter
        # every trial starts here: a host copy, so a model on a GPU is not held twice there
        self.initial = {k: v.detach().to("cpu", copy=True)
                        for k, v in adapter.model.state_dict().items()}
        self.dropout_p = {m: m.p for m in adapter.model.modules() if isinstance(m, nn.Dropout)}
        # a pruned trial stops inside validation, leaving modules in eval mode, and Lightning
        # keeps the modes it finds: the next trial would train with dropout off
        self.modes = {m: m.training for m in adapter.model.modules()}
        self.skips = 0
        self.bar = tqdm(total=self.total, initial=self._finished(), desc="Trials", unit="trial",
                        disable=not self.progress, dynamic_ncols=True)

    def close(self) -> None:
        self.bar.close()
        self._reset_model()  # the caller's model is left as it came; the best is in final/

    def _finished(self) -> int:
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return sum(1 for t in counted(self.study.get_trials(deepcopy=False)) if t.state in done)

    def run(self, timeout: float | None) -> None:
        import optuna
        from optuna.trial import TrialState

        began, waited = time.monotonic(), False
        while True:
            if timeout is not None and time.monotonic() - began >= timeout:
                self.notes.append(f"Stopped starting trials after the timeout ({timeout:g} s).")
                return
            if self.skips >= MAX_SKIPS:
                self.notes.append(f"The sampler proposed {MAX_SKIPS} parameter sets in a row "
                                  "that were already tried: the space looks exhausted.")
                return
            if self.opened.heartbeat:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            left = self.total - len(counted(trials))
            if left > 0 or any(t.state == TrialState.WAITING for t in trials):
                self.study.optimize(self._objective, n_trials=1, catch=(Skipped, TrialFailed),
                                    callbacks=[self._after_trial])
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if not running or not self.opened.heartbeat:
                return
            if not waited:  # a worker that dies leaves a trial this one will retry
                self.say(f"Waiting for {len(running)} trial(s) other workers are running.")
                waited = True
            time.sleep(min(5.0, self.opened.storage.get_heartbeat_interval() or 5))

    # ---- one trial -----------------------------------------------------------------------
    def _objective(self, trial: Any) -> float:
        import optuna
        import torch

        from utils.training.training_core import train

        if surplus(self.study.get_trials(deepcopy=False), trial.number, self.total):
            trial.set_user_attr(SKIPPED, "the study's total was reached")
            raise Skipped
        params = self.space.suggest(trial)
        same = duplicate_of(self.study.get_trials(deepcopy=False), trial.number, params)
        if same is not None:
            self.skips += 1
            trial.set_user_attr(SKIPPED, f"same parameters as trial {same}")
            raise Skipped
        self.skips = 0
        trial.set_user_attr("worker", worker_id())
        run_dir = self.search_dir / "trials" / f"trial-{trial.number:04d}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a number reused after a lost database
        self._reset_model()
        trial_config = self.config.replace(
            **params, max_steps=self.steps, epochs=None, val_every=self.report_every,
            checkpoint_every=0, early_stopping_patience=0, out_dir=str(run_dir),
            mirror_dir=None, resume="never")
        callbacks = [pruning_callback(trial)] if self.pruner else []
        began = time.perf_counter()
        try:
            result = train(self.model, self.dataset, trial_config, callbacks=callbacks,
                           tokenizer=self.tokenizer, gate=False, progress=False,
                           say=lambda message: None)
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.perf_counter() - began, 2))
            raise
        except torch.OutOfMemoryError:
            trial.set_user_attr("error", f"out of memory at batch_size "
                                f"{trial_config.batch_size}")
            trial.set_user_attr("steps", 0)
            raise TrialFailed from None
        except Exception:  # a bug or bad data stops the search; the trial is not lost
            self._queue_again(trial.number)
            raise
        trial.set_user_attr("seconds", round(time.perf_counter() - began, 2))
        trial.set_user_attr("steps", result.steps)
        if result.interrupted:
            self._queue_again(trial.number)
            raise KeyboardInterrupt
        value = result.metrics.get("val_loss")
        if value is None or not math.isfinite(value):
            trial.set_user_attr("error", f"validation loss is {value}")
            raise TrialFailed
        return float(value)

    def _queue_again(self, number: int) -> None:
        frozen = next(t for t in self.study.get_trials() if t.number == number)
        retry_callback()(self.study, frozen)

    def _reset_model(self) -> None:
        self.adapter.model.load_state_dict(self.initial)
        for module, p in self.dropout_p.items():
            module.p = p
        for module, training in self.modes.items():
            module.train(training)

    def _after_trial(self, study: Any, trial: Any) -> None:
        if SKIPPED in trial.user_attrs:
            return
        self._tidy()
        self.opened.sync_mirror(self.say)
        best = best_trial(study)
        self.bar.n = self._finished()
        if best is not None:
            self.bar.set_postfix_str(f"best {best.value:.4g} (trial {best.number})")
        self.bar.refresh()
        if not self.progress:
            value = f" val_loss {trial.value:.4g}" if trial.value is not None else ""
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in trial.params.items())
            tail = f"; best {best.value:.4g} (trial {best.number})" if best else ""
            self.say(f"Trial {trial.number} {trial.state.name.lower()}{value} ({shown}){tail} "
                     f"[{self.bar.n}/{self.total}]")

    def _tidy(self) -> None:
        """Finished trials keep their metrics and summary; only the best keeps ``final/``, and
        none keeps checkpoints (a trial is never resumed)."""
        from optuna.trial import TrialState

        best = best_trial(self.study)
        for t in self.study.get_trials(deepcopy=False):
            folder = self.search_dir / "trials" / f"trial-{t.number:04d}"
            if t.state in (TrialState.RUNNING, TrialState.WAITING) or not folder.is_dir():
                continue
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            if best is None or t.number != best.number:
                shutil.rmtree(folder / "final", ignore_errors=True)


def best_trial(study: Any) -> Any:
    """The study's best completed trial, or None."""
    with contextlib.suppress(ValueError):
        return study.best_trial
    return None
