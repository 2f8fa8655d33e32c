"""Train the tiny LM with Lightning's ``ddp`` strategy on CPU (gloo): one process per rank.

    python run_ddp.py MODEL_DIR CORPUS_FILE OUT_DIR RECORD_DIR '<TrainingConfig JSON>' \
        [NAN_RANK NAN_AT_CALL]

Lightning's ``ddp`` launcher re-runs this script (``sys.argv``) for ranks 1…N-1, so every rank
executes ``main()``. Each rank writes into RECORD_DIR:

- ``rank<r>.json``: the training split's row count; every batch the rank trained on — epoch,
  position in the epoch, the dataset row indices the sampler handed out for it (recorded where
  the loader fetched it, and checked to be the batch that reached ``training_step``), a sha256
  of its ``input_ids``; and its ``train()`` summary;
- ``rank<r>.pt``: its model's final ``state_dict``.

With NAN_RANK and NAN_AT_CALL, the model on that rank alone outputs NaN for three training
calls from NAN_AT_CALL on (the other ranks' losses stay finite).
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

import utils
from utils.training.config import TrainingConfig
from utils.training.training_core import train


class RecordBatches(pl.Callback):
    """Which rows each training batch held, per rank."""

    def __init__(self) -> None:
        self.rank, self.rows = 0, 0
        self.fetched: dict[tuple[int, int], tuple[list[int], torch.Tensor]] = {}
        self.trained: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.rank = trainer.global_rank
        dataset, fetched = trainer.train_dataloader.dataset, self.fetched
        self.rows = len(dataset)
        base = type(dataset)

        class Recording(base):  # the loader indexes its dataset with each BatchKey
            def __getitem__(self, key):
                batch = base.__getitem__(self, key)
                fetched[(key.epoch, key.position)] = (list(key.indices), batch["input_ids"])
                return batch

        dataset.__class__ = Recording

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        indices, input_ids = self.fetched.pop((trainer.current_epoch, batch_idx))
        assert torch.equal(input_ids, batch["input_ids"].cpu()), "not the batch fetched"
        digest = hashlib.sha256(input_ids.numpy().tobytes()).hexdigest()
        self.trained.append({"epoch": trainer.current_epoch, "position": batch_idx,
                             "indices": indices, "sha256": digest})


def write_validation_late() -> None:
    """Rank 0 appends each validation row to metrics.csv a second late (a slow Drive), so a rank
    that took its final metrics from the file would report the previous validation's values."""
    import time

    from utils.training.callbacks import MetricsLog

    write = MetricsLog._write

    def late(self, row):
        if self._writes and "val_loss" in row:
            time.sleep(1.0)
        write(self, row)

    MetricsLog._write = late


def main() -> None:
    model_dir, corpus, out, record_dir, config_json, *nan = sys.argv[1:]
    config = TrainingConfig.from_dict({**json.loads(config_json), "out_dir": out})
    torch.manual_seed(0)  # the same initial weights on every rank (DDP broadcasts rank 0's)
    loaded = utils.load_model(model_dir, say=lambda m: None)
    # the launcher sets LOCAL_RANK in the processes it starts; rank 0 has it only once fit runs
    if nan and int(os.environ.get("LOCAL_RANK", "0")) == int(nan[0]):
        loaded.model.nan_at_call = int(nan[1])
    recorder = RecordBatches()
    write_validation_late()
    result = train(loaded, corpus, config, callbacks=[recorder], progress=False, gate=False,
                   say=lambda m: print(m, file=sys.stderr))
    record = Path(record_dir)
    record.mkdir(parents=True, exist_ok=True)
    torch.save(result.adapter.model.state_dict(), record / f"rank{recorder.rank}.pt")
    (record / f"rank{recorder.rank}.json").write_text(json.dumps({
        "rank": recorder.rank, "rows": recorder.rows, "batches": recorder.trained,
        "summary": result.summary()}))
    torch.distributed.barrier()  # rank 0 exits (and the test reads) after every rank wrote


if __name__ == "__main__":
    main()
