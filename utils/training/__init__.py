"""Training: the Lightning trainer, checkpoints, datasets and export (Tier 3).

Every module here may import the training extras (``lightning``, ``datasets``, …) only inside the
functions that need them, and nothing here is imported by ``import utils``. The entry points
are importable from here and load their module on first use:

    >>> from utils.training import TrainingConfig, train
    >>> result = train(loaded, "my_texts/", TrainingConfig(max_steps=500))
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["TIER1_GATE", "CheckpointManager", "GateFailed", "TrainResult", "TrainingConfig",
           "load_text_dataset", "save_model_folder", "train"]

_HOME = {"TrainingConfig": "config", "train": "training_core", "TrainResult": "result",
         "GateFailed": "gate", "TIER1_GATE": "gate",
         "CheckpointManager": "checkpoint_manager", "save_model_folder": "runs",
         "load_text_dataset": "dataset_utilities"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(import_module(f"utils.training.{_HOME[name]}"), name)
    raise AttributeError(f"module 'utils.training' has no attribute {name!r}")
