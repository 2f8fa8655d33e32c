"""The pieces of a training run that :class:`~utils.training.training_core.Run` puts together:
what the caller passed (a model, a loaded folder or an adapter), the data module and tokenizer,
the precision, where the run resumes from, the learning-rate finder, and facts about the process
(its rank, whether a progress bar can redraw)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import UserError, arg
from utils.training.checkpoint_files import CheckpointInfo, step_of
from utils.training.checkpoint_manager import CheckpointManager
from utils.training.config import TrainingConfig

__all__ = ["as_adapter_and_loaded", "data_module_for", "has_validation", "interactive",
           "lr_find", "precision_of", "primary_process", "quiet_lightning", "resume_point"]


def as_adapter_and_loaded(model_or_adapter: Any):
    from utils.adapters import LoadedModel
    from utils.checks import as_adapter

    loaded = model_or_adapter if isinstance(model_or_adapter, LoadedModel) else None
    adapter = as_adapter(model_or_adapter)
    # an adapter made from a LoadedModel (with overrides) keeps it: its code and config
    return adapter, loaded if loaded is not None else getattr(adapter, "loaded", None)


def data_module_for(adapter: Any, data: Any, config: TrainingConfig, run_dir: Path,
                 tokenizer: Any, say: Callable[[str], None]):
    from utils.tokenization import AdaptiveTokenizer, TextDataModule, tokenizer_for_model
    from utils.training.dataset_utilities import load_text_dataset

    if isinstance(data, TextDataModule):
        return data, data.tokenizer
    dataset = data if hasattr(data, "train") and hasattr(data, "validation") else \
        load_text_dataset(data, task=adapter.task)
    if getattr(dataset, "cut", None):
        say(f"Data: {dataset.source}: {dataset.cut}; validation: {dataset.split_by}.")
    tok_dir = run_dir / "tokenizer"
    if tokenizer is None and (tok_dir / "tokenizer.json").is_file():
        tokenizer = AdaptiveTokenizer.load(tok_dir)  # the run's own: tokenize as before
        say(f"Tokenizer: the run's own ({tokenizer.strategy}, {tokenizer.vocab_size:,} ids).")
    elif tokenizer is None:
        tokenizer = tokenizer_for_model(adapter, dataset)
        first, *more = [part.strip() for part in tokenizer.reason.split(";") if part.strip()]
        say(f"Tokenizer: {tokenizer.strategy}, {tokenizer.vocab_size:,} ids — {first}.")
        for part in more:  # a pretrained tokenizer passed over or unavailable offline, …
            say(f"  note: {part}.")
    dm = TextDataModule(dataset, tokenizer, adapter, seq_len=config.seq_len_for(
                        adapter.max_seq_len),
                        batch_size=config.batch_size, seed=config.seed,
                        num_workers=config.num_workers)
    return dm, tokenizer


def precision_of(config: TrainingConfig) -> str:
    import torch

    cuda = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    return config.effective_precision("cuda" if cuda else "cpu",
                                      cuda and torch.cuda.is_bf16_supported())


def resume_point(config: TrainingConfig, manager: CheckpointManager,
                  run_dir: Path) -> CheckpointInfo | None:
    """The checkpoint to continue from, or None."""
    if config.resume == "never":
        found = manager.latest_valid()
        if found is not None:
            raise UserError(f"{run_dir} already holds a run (checkpoint of step {found.step}), "
                            f"and {arg('resume', 'never')} would overwrite it.",
                            why="Starting from scratch in a folder with checkpoints would mix "
                            "two runs.", fix=f"Pass {arg('resume', 'auto')} to continue it, or "
                            f"{arg('out_dir', '<another folder>')} to start a new run beside it.")
        return None
    if config.resume == "auto":
        return manager.latest_valid()
    path = Path(config.resume)
    if path.is_dir():
        with CheckpointManager(path, keep_last=config.keep_last) as other:
            found = other.latest_valid()
        if found is None:
            raise UserError(f"{arg('resume', config.resume)}: no valid checkpoint in that "
                            "folder.", fix=f"Point {arg('resume')} at a run folder with "
                            "checkpoints/, or a .ckpt.")
        return found
    if not path.is_file():
        raise UserError(f"{arg('resume', config.resume)}: no such checkpoint file or run "
                        "folder.", fix=f"Use {arg('resume', 'auto')} (the newest valid checkpoint "
                        f"of the run), {arg('resume', 'never')}, or an existing path.")
    # a file the user names: no manifest to verify it against; torch.load judges it (memory-
    # mapped: only the step is read here, the tensors when Lightning restores it)
    step = step_of(path)
    if step is None:
        state = manager.load(path, mmap=True)
        step = state.get("global_step") if isinstance(state, dict) else None
        if not isinstance(step, int):
            raise UserError(f"{arg('resume', config.resume)} is not a checkpoint of a "
                            "Lightning run: it holds no global_step.",
                            fix="Point it at a step-*.ckpt of a run folder, or at the run "
                            "folder itself.")
    return CheckpointInfo(path, step, sha256="", size=path.stat().st_size, val_loss=None,
                          location="given")


def lr_find(trainer_kwargs: dict, module: Any, dm: Any, config: TrainingConfig,
             say: Callable[[str], None]) -> TrainingConfig:
    """Lightning's learning-rate finder on a throwaway trainer; the config stays the single
    source of truth (the finder's own attribute update is off)."""
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    finder_kwargs = {k: v for k, v in trainer_kwargs.items()
                     if k not in ("callbacks", "plugins", "max_steps", "max_epochs", "logger",
                                  "enable_checkpointing")}
    module.config = config.replace(lr=1e-3)
    trainer = pl.Trainer(**finder_kwargs, max_steps=100, enable_progress_bar=False,
                         enable_checkpointing=False, logger=False)
    found = Tuner(trainer).lr_find(module, datamodule=dm, min_lr=1e-6, max_lr=1.0,
                                   num_training=min(100, max(20, config.max_steps)),
                                   update_attr=False)
    suggestion = found.suggestion() if found is not None else None
    if suggestion is None or not math.isfinite(suggestion):
        suggestion = 3e-4
        say("lr='auto': the finder found no clear slope; using lr=3e-4.")
    else:
        say(f"lr='auto': the learning-rate finder suggests {suggestion:.2e}.")
    config = config.replace(lr=float(suggestion))
    module.config = config
    return config


@contextlib.contextmanager
def quiet_lightning():
    """Lightning's start-up banners ("GPU available…", "Trainer already configured…") are
    noise in a notebook: keep warnings and errors only."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def has_validation(dm: Any) -> bool:
    """Whether the data module has validation rows (True when it cannot tell)."""
    rows = getattr(dm, "rows", None)
    return not isinstance(rows, dict) or "validation" not in rows or \
        len(rows["validation"]) > 0



def primary_process() -> bool:
    """False in the processes Lightning's ``ddp`` launcher starts for ranks 1…N-1 (and on
    nodes after the first): they run the whole script again, from before ``fit``."""
    return all(os.environ.get(k, "0") == "0"
               for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def interactive() -> bool:
    """A terminal or a notebook: somewhere a progress bar redraws instead of scrolling."""
    try:
        from IPython import get_ipython

        if get_ipython() is not None and "IPKernelApp" in get_ipython().config:
            return True
    except ImportError:
        pass
    return sys.stderr.isatty()
