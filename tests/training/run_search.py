"""``testbench search`` in a process of its own (the HPO tests start several, and kill some).

    python run_search.py <testbench search arguments>

With ``TB_KILL_IN_TRIAL=K:S`` in the environment, the process kills itself with SIGKILL at
optimizer step S of the K-th trial it trains — a worker whose VM disconnects mid-trial.
"""

import os
import signal
import sys

import lightning.pytorch as pl
import torch

import utils.training.training_core as core
from utils.__main__ import main


class KillAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def kill_in_trial(k: int, step: int) -> None:
    real, calls = core.train, [0]

    def train(*args, callbacks=(), **kwargs):
        calls[0] += 1
        if calls[0] == k:
            callbacks = [*callbacks, KillAt(step)]
        return real(*args, callbacks=callbacks, **kwargs)

    core.train = train  # the search imports train from the module when a trial starts


if __name__ == "__main__":
    torch.set_num_threads(1)  # two workers on two cores
    if os.environ.get("TB_KILL_IN_TRIAL"):
        kill_in_trial(*map(int, os.environ["TB_KILL_IN_TRIAL"].split(":")))
    sys.exit(main(["search", *sys.argv[1:]]))
