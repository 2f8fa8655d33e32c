"""``hyperparameter_search``: Optuna over the training core, surviving disconnects and sharing a
study across many workers.

Each trial trains the model from the same initial weights with its own
:class:`~utils.training.config.TrainingConfig` (the search's config with the trial's parameters
from the :class:`~utils.tier3.search_space.SearchSpace`) in its own run folder, and is scored by
its final validation loss — never the training loss. Pruning stops a trial whose validation
loss lags (Hyperband by default). The study lives in a storage (:mod:`~utils.tier3.study_storage`):
calling again with the same storage and study name continues it, and several processes or
machines pointed at one storage cooperate on it, with ``n_trials`` the study's exact total
(:mod:`~utils.tier3.search_trials`).

Example:
    >>> result = hyperparameter_search(utils.load_model("my_model/"), "my_texts/", n_trials=20,
    ...                                config=TrainingConfig(max_steps=300, val_batches=20))
    >>> result.best_config, result.best_value, result.trials, result.plots()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.errors import UserError
from utils.tier3.search_result import SearchResult, build_result
from utils.tier3.search_space import SearchSpace
from utils.tier3.search_trials import counted, make_pruner, make_sampler
from utils.tier3.search_worker import SearchWorker
from utils.tier3.study_storage import check_storage, dead_local_workers, open_storage
from utils.training.config import TrainingConfig
from utils.training.gate import run_gate

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


__all__ = ["PRUNERS", "SearchResult", "SearchSpace", "hyperparameter_search"]

PRUNERS = ("hyperband", "halving", "median", None)
SIGNATURE = "testbench_search"  # study user attribute: what makes trials comparable
REPORTS = 8  # validations per trial when pruning
# TrainingConfig fields that do not change what a trial's validation loss means
_NOT_SHAPING = ("out_dir", "mirror_dir", "resume", "logger", "devices", "num_nodes", "strategy",
                "accelerator", "num_workers", "precision", "log_every", "checkpoint_every",
                "keep_last", "compile", "max_steps", "epochs", "val_every",
                "early_stopping_patience")


def hyperparameter_search(model: Any, data: Any = None, space: SearchSpace | dict | None = None,
                          *, n_trials: int, storage: Any = None, study_name: str | None = None,
                          pruner: str | None = "hyperband", timeout: float | None = None,
                          config: TrainingConfig | None = None,
                          steps_per_trial: int | None = None, heartbeat: int = 60,
                          force: bool = False, progress: bool = True,
                          say: Callable[[str], None] = print) -> SearchResult:
    """Search hyperparameters with Optuna's TPE, scoring each trial by validation loss.

    Args:
        model: A ``LoadedModel``, a ``ModelAdapter`` or an ``nn.Module``.
        data: What ``train`` takes (None: the shipped Shakespeare corpus).
        space: A :class:`SearchSpace` or a dict of its fields; None = the defaults for this
            model (:meth:`SearchSpace.for_model`), or the study's own when joining one.
        n_trials: The study's total number of trials, shared by all its workers (>= 1).
        storage: None (a SQLite file in the search folder, copied to ``config.mirror_dir``
            after each trial), ``"journal:PATH"``, or a database URL (``sqlite:///…``,
            ``postgresql://…``) that many machines can share.
        study_name: The study to create or continue (default: named after the model and the
            config, so the same call continues it).
        pruner: ``"hyperband"``, ``"halving"`` (successive halving: Hyperband's most aggressive
            bracket alone), ``"median"`` or None (``"none"``); see
            :func:`~utils.tier3.search_trials.make_pruner`.
        timeout: Seconds after which no new trial starts (a running one finishes).
        config: The base of every trial's config (default ``TrainingConfig()``); its
            ``out_dir`` is the search folder (default ``$TESTBENCH_HOME/searches/<study>``).
        steps_per_trial: Optimizer steps per trial (default: ``config.max_steps``, or the
            study's when joining one).
        heartbeat: Seconds between a running trial's heartbeats with a database storage; a
            trial silent for twice as long is marked FAIL and queued again.
        force: Search even when the Tier 1 gate fails.
        progress: A progress bar over trials (else one line per trial through ``say``).
        say: Where notices go.

    Raises:
        UserError: bad arguments, a storage that cannot be opened, a study made for another
            model or settings. GateFailed: the Tier 1 gate failed (and ``force`` is False).
        KeyboardInterrupt: after an interrupt; the interrupted trial is queued again, so
            calling again continues the study.
    """
    from utils.environment import require_all, testbench_home
    from utils.training.training_core import TRAINING_PACKAGES

    pruner = _check_arguments(n_trials, pruner, timeout, heartbeat, steps_per_trial)
    check_storage(storage)
    require_all(("optuna", "optuna_integration", *TRAINING_PACKAGES), "Hyperparameter search")
    import optuna

    adapter, model_arg = _as_adapter(model)
    config = config or TrainingConfig()
    if isinstance(space, dict):
        space = SearchSpace.from_dict(space)
    name = study_name or _default_name(adapter, config)
    search_dir = Path(config.out_dir) if config.out_dir else \
        testbench_home() / "searches" / re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:80]
    search_dir.mkdir(parents=True, exist_ok=True)
    opened = open_storage(storage, search_dir, config.mirror_dir, heartbeat, say)
    dataset, tokenizer = _data(adapter, data, search_dir, say)
    notes: list[str] = []
    with _quiet_optuna():
        probe = optuna.create_study(storage=opened.storage, study_name=name, load_if_exists=True,
                                    direction="minimize")
        stored = probe.user_attrs.get(SIGNATURE)
        if stored is not None:  # join the study on its own terms
            steps_per_trial = steps_per_trial or stored["steps_per_trial"]
            space = space or SearchSpace.from_dict(stored["space"])
        steps, report_every = _budget(config, steps_per_trial, pruner, notes)
        space = space or SearchSpace.for_model(adapter, config, steps)
        total = _total(n_trials, space, notes)
        study = optuna.create_study(
            storage=opened.storage, study_name=name, load_if_exists=True, direction="minimize",
            sampler=make_sampler(config.seed, total),
            pruner=make_pruner(pruner, steps, report_every, total))
        signature = _signature(adapter, tokenizer, config, space, steps, report_every)
        _claim(study, stored, signature, opened.label)
        existing = counted(study.get_trials(deepcopy=False))
        if existing:
            say(f"Continuing study {name!r}: {len(existing)} of {total} trial(s) are there "
                f"({opened.label}).")
        else:
            run_gate(adapter, search_dir, force=force, say=say, doing="the search")
            say(f"Study {name!r} in {opened.label}: {total} trial(s) of {steps} steps, "
                f"searching {', '.join(space.names)}.")
        if opened.kind == "journal":
            _journal_notice(study, opened.label, say)
        worker = SearchWorker(study=study, opened=opened, model=model_arg, adapter=adapter,
                              dataset=dataset, tokenizer=tokenizer, config=config, space=space,
                              steps=steps, report_every=report_every, pruner=pruner,
                              total=total, search_dir=search_dir, progress=progress, say=say,
                              notes=notes)
        try:
            worker.run(timeout)
        except KeyboardInterrupt:
            opened.sync_mirror(say)
            say("Interrupted: the trial that was running is queued again; call again with the "
                "same storage and study name to continue.")
            raise
        finally:
            worker.close()
    return build_result(study, config, space, storage=opened.label, search_dir=search_dir,
                        n_trials=total, steps=steps, notes=notes)


# ---- pieces ------------------------------------------------------------------------------
def _check_arguments(n_trials, pruner, timeout, heartbeat, steps_per_trial) -> str | None:
    """The pruner (``"none"`` → None); every bad argument at once in one UserError."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    problems = []
    if not is_int(n_trials) or n_trials < 1:
        problems.append(f"n_trials={n_trials!r}: the study's total, an integer >= 1")
    pruner = None if pruner in (None, "none") else pruner
    if pruner not in PRUNERS:
        problems.append(f"pruner={pruner!r}: one of 'hyperband', 'halving', 'median' or None "
                        "('none')")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(
            timeout, (int, float)) or not timeout > 0):
        problems.append(f"timeout={timeout!r}: seconds > 0, or None")
    if not is_int(heartbeat) or heartbeat < 1:
        problems.append(f"heartbeat={heartbeat!r}: whole seconds >= 1")
    if steps_per_trial is not None and (not is_int(steps_per_trial) or steps_per_trial < 1):
        problems.append(f"steps_per_trial={steps_per_trial!r}: an integer >= 1, or None")
    if problems:
        raise UserError("Invalid hyperparameter search arguments:\n    " + "\n    ".join(problems),
                        fix="Change the arguments listed above.")
    return pruner


def _as_adapter(model: Any) -> tuple[Any, Any]:
    """The adapter, and what each trial hands to ``train``: the adapter itself, which keeps its
    ``LoadedModel`` (so each trial's ``final/`` folder carries the model's code) and the
    overrides it was made with."""
    from utils.checks import as_adapter

    adapter = as_adapter(model)
    return adapter, adapter


def _default_name(adapter: Any, config: TrainingConfig) -> str:
    from utils.training.runs import default_run_dir

    return f"{default_run_dir(adapter, config).name}-search"


def _budget(config: TrainingConfig, steps: int | None, pruner: str | None, notes: list[str],
            ) -> tuple[int, int]:
    """``(steps per trial, steps between validations)``; the last step always validates."""
    steps = steps or config.max_steps
    if steps < 1:
        raise UserError(f"config.max_steps={config.max_steps} gives no step budget per trial.",
                        fix="Pass steps_per_trial=N (--steps-per-trial N).")
    if pruner is None or steps < 4:
        return steps, steps if pruner is None else 1
    divisors = [d for d in range(1, steps + 1) if steps % d == 0 and 4 <= steps // d <= 16]
    if divisors:
        return steps, min(divisors, key=lambda d: (abs(d - steps / REPORTS), -d))
    every = math.ceil(steps / REPORTS)
    rounded = every * math.ceil(steps / every)
    notes.append(f"steps_per_trial={steps} became {rounded}, so that validations every {every} "
                 "steps end on the last step.")
    return rounded, every


def _total(n_trials: int, space: SearchSpace, notes: list[str]) -> int:
    size = space.size()
    if size is not None and size < n_trials:
        notes.append(f"The space holds {size} distinct parameter set(s), fewer than the "
                     f"{n_trials} trials asked for: the study's total is {size}.")
        return size
    return n_trials


def _data(adapter: Any, data: Any, search_dir: Path, say: Callable[[str], None]):
    """The dataset and the tokenizer every trial uses (the search folder keeps the tokenizer)."""
    from utils.tokenization import AdaptiveTokenizer, TextDataModule, tokenizer_for_model
    from utils.training.dataset_utilities import load_text_dataset

    if isinstance(data, TextDataModule):  # its dataset: each trial batches at its own size
        data = data.data
    dataset = data if hasattr(data, "train") and hasattr(data, "validation") else \
        load_text_dataset(data, task=adapter.task)
    folder = search_dir / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return dataset, AdaptiveTokenizer.load(folder)
    tokenizer = tokenizer_for_model(adapter, dataset)
    tokenizer.save(folder)
    say(f"Tokenizer: {tokenizer.strategy}, {tokenizer.vocab_size:,} ids.")
    return dataset, tokenizer


def _signature(adapter: Adapter, tokenizer, config, space, steps, report_every) -> dict[str, Any]:
    from utils.training.runs import fingerprint

    print_ = fingerprint(adapter.model, tokenizer)
    model = hashlib.sha256(json.dumps([print_["model_class"], print_["tensors"]],
                                      sort_keys=True).encode()).hexdigest()[:16]
    shaping = {k: v for k, v in config.to_dict().items()
               if k not in _NOT_SHAPING and k not in space.names}
    shaping["seq_len"] = config.seq_len_for(adapter.max_seq_len)
    return {"model": model, "tokenizer": print_["tokenizer_sha256"], "steps_per_trial": steps,
            "report_every": report_every, "space": space.to_dict(), "config": shaping}


def _claim(study: Any, stored: dict | None, signature: dict, label: str) -> None:
    """Record what the study's trials mean, or refuse to mix in trials that mean something else."""
    if stored is None:
        study.set_user_attr(SIGNATURE, signature)
        return
    stored = json.loads(json.dumps(stored))
    mine = json.loads(json.dumps(signature))
    diffs = [f"{k}: the study's {stored.get(k)!r}, here {mine[k]!r}" for k in mine
             if k != "config" and stored.get(k) != mine[k]]
    old, new = stored.get("config", {}), mine["config"]
    diffs += [f"{k}: the study's {old.get(k)!r}, here {new.get(k)!r}"
              for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if diffs:
        raise UserError(f"Study {study.study_name!r} in {label} belongs to another search:\n    "
                        + "\n    ".join(diffs),
                        why="Trials of another model, tokenizer, budget or space are not "
                        "comparable, so the best of them would mean nothing.",
                        fix="Pass another study_name (--study-name), or the study's settings.")


def _journal_notice(study: Any, label: str, say: Callable[[str], None]) -> None:
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return
    numbers = ", ".join(str(t.number) for t in running)
    say(f"Trial(s) {numbers} are RUNNING in {label}. Journal storage has no heartbeat, so a "
        "trial whose worker was killed stays RUNNING (and holds a place in the total).")
    if len(dead_local_workers(running)) == len(running):
        say("Their workers ran on this machine and are gone. If no other worker is running "
            "this study, queue them again with: from utils.tier3.study_storage import "
            f"recover_running_trials; recover_running_trials({label!r}, {study.study_name!r})")


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna logs every trial at INFO and each skipped one as a failure: the search says
    what matters itself."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
