"""``train()``: train any adapted model with Lightning, in a run folder that survives a
disconnect.

One call does what a person would otherwise wire by hand: the Tier 1 gate (the checks that
catch silent bugs, so no GPU time goes to a model with a causal leak), the tokenizer that fits
the model (saved in the run, so a resumed run tokenizes exactly as before), the data module,
the LightningModule over the adapter, checkpoints through the one
:class:`~utils.training.checkpoint_manager.CheckpointManager` (Drive mirror included), a
bit-exact resume of the newest valid checkpoint, and at the end ``final/`` — a folder
:func:`utils.load_model` rebuilds — plus ``summary.json``.

Example:
    >>> from utils.training import TrainingConfig, train
    >>> result = train(utils.load_model("my_model/"), "my_texts/", TrainingConfig(max_steps=500))
    >>> result.metrics["val_loss"], result.plot(), result.sample("Once upon a time")
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.atomic import write_json
from utils.errors import arg
from utils.training.checkpoint_files import CheckpointInfo
from utils.training.checkpoint_manager import CheckpointManager
from utils.training.config import TrainingConfig, merge_for_resume
from utils.training.gate import TIER1_GATE, GateFailed, run_gate
from utils.training.result import TrainResult, build_result
from utils.training.run_pieces import (
    as_adapter_and_loaded,
    data_module_for,
    has_validation,
    interactive,
    lr_find,
    precision_of,
    primary_process,
    quiet_lightning,
    resume_point,
)
from utils.training.runs import (
    check_fingerprint,
    default_run_dir,
    fingerprint,
    save_model_folder,
)

__all__ = ["TIER1_GATE", "GateFailed", "TrainResult", "train"]

# What a training run imports (the train and data extras), checked before any work.
TRAINING_PACKAGES = ("lightning", "torchmetrics", "safetensors", "datasets", "tokenizers")

# ---- the entry point ---------------------------------------------------------------------
def train(model_or_adapter: Any, data: Any = None, config: TrainingConfig | None = None, *,
          callbacks: Iterable[Any] = (), tokenizer: Any = None, force: bool = False,
          gate: bool | Any = True, progress: bool | None = None,
          say: Callable[[str], None] = print) -> TrainResult:
    """Train a model, resuming its run when there is one.

    Args:
        model_or_adapter: A ``LoadedModel`` (its code and config go into ``final/``), a
            ``ModelAdapter`` or a bare ``nn.Module``.
        data: What :func:`~utils.training.dataset_utilities.load_text_dataset` takes (None:
            the shipped Shakespeare corpus), a ``TextDataset``, or a ``TextDataModule``.
        config: The run's settings (default ``TrainingConfig()``).
        callbacks: Extra Lightning callbacks (the HPO pruner, tests).
        tokenizer: An ``AdaptiveTokenizer`` to use instead of choosing one.
        force: Train even when the Tier 1 gate fails.
        gate: Run the Tier 1 gate at the start of a new run; or the gate's ``Report`` when the
            caller ran it already (training.ipynb shows it before the data is loaded).
        progress: Lightning's progress bar (default: when stderr is a terminal or a notebook).
        say: Where notices go.

    Raises:
        GateFailed: the Tier 1 gate failed (and ``force`` is False).
        UserError: bad data, a run folder that belongs to another model, a corrupt checkpoint.
    """
    from utils.environment import require_all

    require_all(TRAINING_PACKAGES, "Training")  # before any work: every missing extra at once
    config = config or TrainingConfig()
    adapter, loaded = as_adapter_and_loaded(model_or_adapter)
    run_dir = Path(config.out_dir) if config.out_dir else default_run_dir(adapter, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    # ranks >= 1 of Lightning's ddp re-run this script: they read the run folder rank 0 has
    # prepared, and only rank 0 writes it and its mirror
    mirror = config.mirror_dir if primary_process() else None
    with CheckpointManager(run_dir, mirror, keep_last=config.keep_last, say=say) as manager:
        run = Run(adapter, loaded, config, run_dir, manager, callbacks=list(callbacks),
                  tokenizer=tokenizer, force=force, gate=gate, progress=progress, say=say)
        run.prepare(data)
        run.build()
        run.fit()
        return run.finish()


@dataclass(eq=False)
class Run:
    """One call of :func:`train`, in the phases of a recipe: :meth:`prepare` (resume point,
    stored config, gate, data, fingerprint), :meth:`build` (module, callbacks, trainer),
    :meth:`fit`, :meth:`finish` (``final/``, the result, ``summary.json``). Each phase fills
    the fields the next one reads; none is called twice."""

    adapter: Any
    loaded: Any
    config: TrainingConfig
    run_dir: Path
    manager: CheckpointManager
    callbacks: list[Any] = field(default_factory=list)
    tokenizer: Any = None
    force: bool = False
    gate: bool | Any = True
    progress: bool | None = None
    say: Callable[[str], None] = print
    # what the phases find and make
    notes: list[str] = field(default_factory=list)
    start: CheckpointInfo | None = None  # the checkpoint this call resumes from
    report: Any = None  # the gate's Report (None when resuming or on ranks >= 1)
    primary: bool = True
    plain: bool = False
    dm: Any = None
    validating: bool = False
    module: Any = None
    metrics_log: Any = None
    state: Any = None
    tracker: Any = None
    trainer: Any = None
    resumed: dict[str, Any] | None = None
    complete: bool = False  # the resumed checkpoint had reached max_steps already
    interrupted: bool = False
    seconds: float = 0.0

    # ---- prepare ------------------------------------------------------------------------
    def prepare(self, data: Any) -> None:
        """Where the run starts, its settings, the gate, the data and the tokenizer."""
        config, manager, run_dir = self.config, self.manager, self.run_dir
        self.primary = primary_process()
        self.start = resume_point(config, manager, run_dir)
        if self.start is not None and self.start.location == "mirror":
            manager.restore_local()
            self.notes.append("Resumed from the mirror: the local run folder had no valid "
                              "checkpoint.")
        if self.start is not None:
            stored = self.manager.read_run_json("config.json")
            if stored:
                self.config, changes = merge_for_resume(TrainingConfig.from_dict(stored), config)
                self.notes += changes
        if self.start is None and self.gate and self.primary:
            self.report = run_gate(self.adapter, run_dir, force=self.force, say=self.say,
                                   report=None if isinstance(self.gate, bool) else self.gate)
        self.plain = self.progress is False or (self.progress is None and not interactive())
        if self.plain:  # datasets' bars become hundreds of lines in a log: one line per phase
            with contextlib.suppress(ImportError):
                import datasets

                datasets.disable_progress_bars()
        self.dm, self.tokenizer = data_module_for(self.adapter, data, self.config, run_dir,
                                               self.tokenizer, self.say)
        current = fingerprint(self.adapter.model, self.tokenizer)
        if self.start is not None:
            check_fingerprint(self.manager.read_run_json("fingerprint.json"), current, run_dir)
        elif self.primary:
            write_json(run_dir / "fingerprint.json", current)
        if self.primary and not (run_dir / "tokenizer" / "tokenizer.json").is_file():
            self.tokenizer.save(run_dir / "tokenizer")
        for name in ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                     "fingerprint.json"):
            manager.mirror_file(name)

    # ---- build --------------------------------------------------------------------------
    def build(self) -> None:
        """The model's settings, the LightningModule, the callbacks and the Trainer."""
        import lightning.pytorch as pl

        from utils.training.callbacks import ManagerIO, MetricsLog, RunState
        from utils.training.lightning_module import AdapterModule
        from utils.training.tracking import wandb_tracker

        config, run_dir, manager, dm = self.config, self.run_dir, self.manager, self.dm
        if config.dropout is not None:
            from torch import nn

            for m in self.adapter.model.modules():
                if isinstance(m, nn.Dropout):
                    m.p = config.dropout
        pl.seed_everything(config.seed, workers=True, verbose=False)
        if config.compile:
            self.adapter.model.compile()
        dm.setup("fit")
        steps_per_epoch = max(1, math.ceil(len(dm.train_dataloader()) / config.grad_accum))
        total = config.max_steps if config.max_steps > 0 else steps_per_epoch * (
            config.epochs or 1)
        self.validating = bool(config.val_every)
        if self.validating and not has_validation(dm):
            self.validating = False
            self.notes.append("No validation text (validation_fraction=0, or the source's "
                              "validation split is empty): val_loss is not measured.")
        if config.warmup_steps >= total and self.start is None:
            self.notes.append(f"warmup_steps={config.warmup_steps} is not shorter than the run "
                              f"({total} steps): the learning rate rose for "
                              f"{max(total - 1, 0)} steps and never reached its cosine decay.")
        self.module = AdapterModule(self.adapter, config, total_steps=total)
        self.metrics_log = MetricsLog(run_dir / "metrics.csv", log_every=max(1, config.log_every),
                                      plain=self.plain, say=self.say)

        def after_save() -> None:
            self.metrics_log.mark_interrupted()
            if (run_dir / "metrics.csv").is_file():  # not before the first row (log_every)
                manager.mirror_file("metrics.csv")

        self.state = RunState(manager, config, on_save=after_save, say=self.say)
        callbacks = [self.state, self.metrics_log, *self.callbacks]
        self.tracker = wandb_tracker(config, run_dir, manager=manager, say=self.say) \
            if self.primary else None
        if self.tracker is not None:  # right after MetricsLog: it logs the rows it gains
            callbacks.insert(2, self.tracker)
        if config.early_stopping_patience and config.val_every:
            from lightning.pytorch.callbacks import EarlyStopping

            callbacks.append(EarlyStopping(monitor="val_loss", mode="min",
                                           patience=config.early_stopping_patience))
        kwargs = self._trainer_kwargs()
        if config.lr == "auto" and self.start is None:
            with quiet_lightning():
                self.config = config = lr_find(kwargs, self.module, dm, config, self.say)
            self.notes.append(f"lr='auto' chose lr={config.lr:.3g} (Lightning's learning-rate "
                              "finder).")
        if self.primary:
            write_json(run_dir / "config.json", config.to_dict())
        manager.mirror_file("config.json")
        with quiet_lightning():
            self.trainer = pl.Trainer(
                **kwargs, max_steps=config.max_steps if config.max_steps > 0 else -1,
                max_epochs=config.epochs if config.max_steps <= 0 else -1,
                callbacks=callbacks, plugins=[ManagerIO(manager)],
                enable_progress_bar=not self.plain)

    def _trainer_kwargs(self) -> dict[str, Any]:
        """What the Trainer and the learning-rate finder's throwaway trainer share."""
        config = self.config
        kwargs: dict[str, Any] = dict(
            accelerator=config.accelerator, devices=config.devices, num_nodes=config.num_nodes,
            strategy=config.strategy, precision=precision_of(config),
            accumulate_grad_batches=config.grad_accum,
            gradient_clip_val=config.grad_clip or None,
            limit_val_batches=(config.val_batches if config.val_batches else 1.0)
            if self.validating else 0,
            check_val_every_n_epoch=None if self.validating else 1,
            num_sanity_val_steps=0, use_distributed_sampler=False, enable_model_summary=False,
            # Lightning itself logs nowhere: metrics.csv is MetricsLog's, the record of truth,
            # and logger='wandb' feeds W&B from it (utils.training.tracking's callback)
            default_root_dir=str(self.run_dir), logger=False,
            enable_checkpointing=False, deterministic=False)
        if self.validating:
            kwargs["val_check_interval"] = config.val_every * config.grad_accum
        return kwargs

    # ---- fit ----------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the resume point (or the start); validate the last step if the run did
        not (a short run gets its only val_loss)."""
        config, start, trainer = self.config, self.start, self.trainer
        if start is not None:
            self.resumed = {"step": start.step, "file": str(start.path)}
            self.complete = config.max_steps > 0 and (start.step or 0) >= config.max_steps
            if self.complete:
                self.resumed["complete"] = True
                done = (f"The run is already complete: its checkpoint of step {start.step} "
                        f"reached {arg('max_steps', config.max_steps)}, so nothing was trained; "
                        f"raise {arg('max_steps')} to train on.")
                self.notes.append(done)
                self.say(done)
            else:
                self.say(f"Resuming from step {start.step} ({start.path.name}).")
        began = time.perf_counter()
        with quiet_lightning():
            try:
                trainer.fit(self.module, datamodule=self.dm, weights_only=True,
                            ckpt_path=str(start.path) if start is not None else None)
            except SystemExit:  # Lightning's answer to Ctrl-C, after on_exception saved
                if not trainer.interrupted:
                    raise
                self.interrupted = True
        self.seconds = time.perf_counter() - began
        if self.validating and not self.interrupted and not self.complete and \
                self.module.last_validated != trainer.global_step:
            with quiet_lightning():
                trainer.validate(self.module, datamodule=self.dm, verbose=False)

    # ---- finish -------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """The last checkpoint, ``final/``, the result and ``summary.json`` (and the mirror)."""
        trainer, manager = self.trainer, self.manager
        self.notes += self.state.events
        if self.module.skipped_steps:
            self.notes.append(f"{self.module.skipped_steps} step(s) skipped by the loss guard "
                              "(non-finite or spiking loss).")
        if not self.interrupted:
            self.state.save(trainer)  # the last step is always a checkpoint
        final_dir = None
        if not self.interrupted and trainer.is_global_zero:
            final_dir = save_model_folder(
                self.adapter.model, self.loaded, self.run_dir / "final", tokenizer=self.tokenizer,
                extra={"source": self.adapter.source, "steps": trainer.global_step,
                       "metrics": self.metrics_log.final})
            for file in sorted(final_dir.iterdir()):
                manager.mirror_file(f"final/{file.name}")
        result = build_result(self, final_dir)
        if self.tracker is not None:
            self.tracker.finish(result)
        if trainer.is_global_zero:
            write_json(self.run_dir / "summary.json", result.summary())
            manager.mirror_file("summary.json")
            manager.mirror_file("metrics.csv")
            manager.drain()
        return result
