"""What pruning buys a hyperparameter search: the same number of trials with and without it.

A small GPT (the embedded example, narrowed to run on a CPU) on the shipped Shakespeare corpus;
the default search space for that model (lr, warm-up, weight decay, batch size, dropout); TPE
with the same seed; ``--trials`` trials of ``--steps`` steps each, from the same initial
weights: once without pruning, then once with each pruner of ``--pruners`` (Hyperband, the
default, and successive halving). Printed: each search's best validation loss and the optimizer
steps its trials trained in all (a pruned trial counts the steps it ran). The claim: a pruned
search's best is within 1% of the unpruned one's, for at most 50% of its training steps.
One seed compares one TPE path with another; run a few (``--seed``) before trusting a
difference under a percent. Writes JSON to ``benchmarks/results/hpo.json``.

    python benchmarks/hpo.py                          # 16 trials of 60 steps (≈ 4 min here)
    python benchmarks/hpo.py --trials 8 --steps 30    # a quick look
    python benchmarks/hpo.py --pruners median --seed 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import utils
from utils.adapters.gist_loader import example_path
from utils.tier3.search import hyperparameter_search
from utils.training.config import TrainingConfig
from utils.training.dataset_utilities import load_text_dataset

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"model_name": "TinyGPT", "task": "causal_lm", "vocab_size": 512, "max_seq_len": 64,
         "d_model": 64, "n_layer": 2, "n_head": 2, "dropout": 0.1}


def search(loaded, data, args, pruner: str | None, folder: Path) -> dict:
    config = TrainingConfig(max_steps=args.steps, batch_size=8, seq_len=64, val_batches=8,
                            log_every=10, precision="32", accelerator="cpu", seed=args.seed,
                            out_dir=str(folder))
    began = time.perf_counter()
    result = hyperparameter_search(loaded, data, n_trials=args.trials, pruner=pruner,
                                   config=config, study_name=f"hpo-{pruner}", progress=False,
                                   say=lambda m: None)
    seconds = time.perf_counter() - began
    states = result.trials["state"].value_counts().to_dict()
    print(f"{pruner or 'no pruning':>12}: best val loss {result.best_value:.4f} "
          f"(trial {result.best_trial}), {result.steps_trained:,} steps trained, "
          f"{states}, {seconds:.0f} s")
    return {"pruner": pruner, "best_value": result.best_value, "best_params": result.best_params,
            "steps_trained": result.steps_trained, "states": states, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per trial")
    parser.add_argument("--pruners", default="hyperband,halving",
                        help="comma-separated: hyperband, halving, median")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (a model this small gains nothing from more)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hpo.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the initial weights every trial of every search starts from
    loaded = utils.load_model(example_path("tiny_gpt"), config=MODEL, say=lambda m: None)
    data = load_text_dataset(None, max_documents=2000)
    params = sum(p.numel() for p in loaded.model.parameters())
    print(f"{params:,}-parameter GPT, {args.trials} trials of {args.steps} steps, shipped "
          "corpus")
    doc = {"trials": args.trials, "steps": args.steps, "seed": args.seed, "parameters": params}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp:
        plain = search(loaded, data, args, None, Path(tmp) / "none")
        doc["no_pruning"] = plain
        for pruner in args.pruners.split(","):
            pruned = search(loaded, data, args, pruner, Path(tmp) / pruner)
            gap = pruned["best_value"] / plain["best_value"] - 1
            share = pruned["steps_trained"] / plain["steps_trained"]
            holds = gap <= 0.01 and share <= 0.5
            print(f"{pruner:>12}: best {gap:+.2%} from the unpruned best (claim: <= +1%) at "
                  f"{share:.0%} of its training steps (claim: <= 50%): "
                  f"{'holds' if holds else 'does NOT hold'}")
            doc[pruner] = {**pruned, "best_gap": gap, "step_share": share, "claim_holds": holds}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
