"""Train the tiny LM in a process of its own (resume tests kill it with SIGKILL).

    python run_training.py MODEL_DIR CORPUS_FILE OUT_DIR '<TrainingConfig JSON>' [KILL_AT_STEP]

With KILL_AT_STEP, the process kills itself with SIGKILL right after the checkpoint of that
step is on disk — as a Colab VM that disconnects would.
"""

import json
import os
import signal
import sys

import lightning.pytorch as pl
import torch

import utils
from utils.training.config import TrainingConfig
from utils.training.training_core import train


class InterruptAt(pl.Callback):
    """Ctrl-C (Colab's "Interrupt execution") at a chosen step, between two batches."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class KillAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:  # RunState (earlier in the list) has saved it
            trainer.strategy.checkpoint_io.manager.drain()  # the save is written in background
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    model_dir, corpus, out, config_json, *kill = sys.argv[1:]
    config = TrainingConfig.from_dict({**json.loads(config_json), "out_dir": out})
    torch.manual_seed(0)  # the same initial weights in every process
    loaded = utils.load_model(model_dir, say=lambda m: None)
    callbacks = [KillAt(int(kill[0]))] if kill else []
    if os.environ.get("TB_INTERRUPT_AT"):
        callbacks.append(InterruptAt(int(os.environ["TB_INTERRUPT_AT"])))
    result = train(loaded, corpus, config, callbacks=callbacks, progress=False, gate=False,
                   say=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
