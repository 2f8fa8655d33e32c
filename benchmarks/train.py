"""Training throughput of ``train()`` against a hand-written PyTorch loop and Hugging Face's
``Trainer``, and what checkpointing into a slow Drive folder costs a ``train()`` run.

**Throughput.** The reference GPT (~7M parameters, ``reference_gpt.py``) on the shipped
Shakespeare corpus, fp32 on CPU. All three systems train the same model (the same initial
weights), on the same batches (a ``TextDataModule`` with the same seed: the hand loop and the
``Trainer`` iterate its ``train_dataloader()``), with the same AdamW (no decay on biases, norms
and embeddings), warmup + cosine schedule and gradient clipping. Throughput is measured the way
``TrainResult.tokens_per_second`` is: tokens over seconds between the ends of consecutive
optimizer steps, the first few steps left out. The machine may be shared, so the systems run
interleaved (the order rotates each round); the ratios are taken within each round and their
median is the figure. Torch runs with its default intra-op threads (all cores), as a user's
``train()`` does: train() sets no thread count, so this is the setting users get (Colab: 2).
``--threads 1`` measures one thread, steadier on a busy shared machine, where two OpenMP threads
spin against the other processes.

**Checkpoints.** A ~17M-parameter GPT (a checkpoint of ~200 MB: weights and Adam's two
moments) trained by ``train()`` with ``checkpoint_every=50`` and ``mirror_dir`` in a folder that
behaves like Google Drive (0.3 s latency + 40 MB/s for every file written there: the simulation
of ``checkpoint.py``), against the same run without checkpoints; the two run interleaved,
``--ckpt-rounds`` times (the order rotates), and the overhead is the training time's ratio
within a round, minus one (median over rounds). Load drifts by several percent between runs
a minute apart on this shared machine, so two more figures are printed that do not depend on
it: the seconds the step holding a save waits, and the CPU seconds the checkpoint threads use
per save — with every core busy training, that CPU is taken from training, so ``estimated``
= (wait + CPU / threads) / interval is what a save costs a loop that keeps all cores busy.
``--ckpt-modes shipped save`` adds a run with ``ManagerIO`` patched to ``CheckpointManager.save``
(the local write inline) for comparison.

    python benchmarks/train.py                          # ≈ 6.5 min here (2 cores)
    python benchmarks/train.py --rounds 5 --steps 60 --ckpt-rounds 3   # steadier
    python benchmarks/train.py --skip-throughput --ckpt-modes shipped save
    python benchmarks/train.py --batch-size 8 --seq-len 256 --ckpt-batch-size 8   # bigger steps

Writes ``benchmarks/results/train.json`` and prints each figure against its target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from checkpoint import BYTES_PER_S, LATENCY_S, background_cpu_by_thread, slow_folder
from reference_gpt import CONFIG as REFERENCE
from reference_gpt import ROOT, write_reference

TARGET_VS_HAND, TARGET_VS_HF, TARGET_CKPT = 0.97, 1.0, 0.03
SKIP = 4  # steps left out at the start, as MetricsLog does (no interval for step 1, then 3)
# ~17M parameters: 8192×384 embedding (tied) + 8 blocks of 12·384² → ~208 MB with Adam's moments
BIG = {**REFERENCE, "d_model": 384, "n_layer": 8, "n_head": 8}
HP = {"lr": 3e-4, "warmup_steps": 5, "min_lr_ratio": 0.1, "weight_decay": 0.1,
      "betas": (0.9, 0.95), "eps": 1e-8, "grad_clip": 1.0}


def quiet(_message: str) -> None:
    pass


class Setup:
    """One model folder, its tokenizer and corpus; fresh models and data modules on demand."""

    def __init__(self, folder: Path, config: dict, batch_size: int, seq_len: int) -> None:
        import utils
        from utils.tokenization import tokenizer_for_model
        from utils.training.dataset_utilities import load_text_dataset

        self.folder = write_reference(folder)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        self.batch_size, self.seq_len = batch_size, seq_len
        self.dataset = load_text_dataset(None)
        self.tokenizer = tokenizer_for_model(utils.adapt(self.loaded()), self.dataset)

    def loaded(self):
        import utils

        torch.manual_seed(0)  # the same initial weights for every system
        return utils.load_model(self.folder, say=quiet)

    def data(self, adapter):
        from utils.tokenization import TextDataModule

        return TextDataModule(self.dataset, self.tokenizer, adapter, seq_len=self.seq_len,
                              batch_size=self.batch_size, seed=0, num_workers=0)

    def config(self, steps: int, out: Path, **changes):
        from utils.training.config import TrainingConfig

        fields = dict(max_steps=steps, batch_size=self.batch_size, seq_len=self.seq_len,
                      precision="32", accelerator="cpu", val_every=0, checkpoint_every=0,
                      log_every=max(steps, 1), out_dir=str(out), resume="never", seed=0, **HP)
        return TrainingConfig(**{**fields, **changes})


def steady(ends: list[float], tokens: list[int]) -> float:
    """Tokens/s over the steps after the first SKIP (``ends[i]``: the end of step i+1;
    ``tokens[i]``: its tokens)."""
    seconds = ends[-1] - ends[SKIP - 1]
    return sum(tokens[SKIP:]) / seconds


def lm_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Shifted next-token cross-entropy, padding targets ignored (the adapter's causal loss)."""
    labels = batch["labels"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
    logits = logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=-100)


def optimizer_and_schedule(model: torch.nn.Module, steps: int):
    """train()'s AdamW groups and warmup + cosine, built by the same functions."""
    from utils.training.lightning_module import cosine_with_warmup, parameter_groups

    opt = torch.optim.AdamW(parameter_groups(model, HP["weight_decay"]), lr=HP["lr"],
                            betas=HP["betas"], eps=HP["eps"], fused=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(
        s, warmup=HP["warmup_steps"], total=steps, min_ratio=HP["min_lr_ratio"]))
    return opt, sched


def batches(loader):
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


# ---- the three systems -------------------------------------------------------------------
def run_train(setup: Setup, steps: int, tmp: Path) -> dict:
    import utils
    from utils.training.training_core import train

    loaded = setup.loaded()
    dm = setup.data(utils.adapt(loaded))
    result = train(loaded, dm, setup.config(steps, tmp / f"train-{time.monotonic_ns()}"),
                   tokenizer=setup.tokenizer, gate=False, progress=False, say=quiet)
    assert result.steps == steps, result
    return {"tokens_per_second": result.tokens_per_second}


def run_hand(setup: Setup, steps: int, tmp: Path) -> dict:
    import utils

    model = setup.loaded().model
    dm = setup.data(utils.adapt(model))
    dm.setup("fit")
    model.train()
    opt, sched = optimizer_and_schedule(model, steps)
    ends, tokens, data = [], [], batches(dm.train_dataloader())
    for _ in range(steps):
        batch = next(data)
        loss = lm_loss(model(batch["input_ids"]), batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), HP["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # as train() reads each loss (its guard and log); free on CPU
        tokens.append(int(batch["attention_mask"].sum()))
        ends.append(time.perf_counter())
    return {"tokens_per_second": steady(ends, tokens)}


def run_hf(setup: Setup, steps: int, tmp: Path) -> dict:
    import transformers

    import utils

    model = setup.loaded().model
    dm = setup.data(utils.adapt(model))
    dm.setup("fit")
    loader = dm.train_dataloader()

    class WithLoss(torch.nn.Module):  # the Trainer wants a model that returns its loss
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.tokens = inner, 0

        def forward(self, input_ids, attention_mask, labels):
            self.tokens += int(attention_mask.sum())
            logits = self.inner(input_ids)
            batch = {"labels": labels, "attention_mask": attention_mask}
            return {"loss": lm_loss(logits, batch), "logits": logits}

    class SameBatches(transformers.Trainer):
        def get_train_dataloader(self):
            return loader

    wrapped = WithLoss(model)
    ends, tokens = [], []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            tokens.append(wrapped.tokens - sum(tokens))

    args = transformers.TrainingArguments(
        output_dir=str(tmp / f"hf-{time.monotonic_ns()}"), max_steps=steps,
        per_device_train_batch_size=setup.batch_size, max_grad_norm=HP["grad_clip"],
        logging_strategy="no", save_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = SameBatches(model=wrapped, args=args, optimizers=optimizer_and_schedule(
        model, steps), callbacks=[Clock()])
    trainer.remove_callback(transformers.PrinterCallback)  # its end-of-run dict
    trainer.train()
    assert len(ends) == steps, len(ends)
    return {"tokens_per_second": steady(ends, tokens)}


SYSTEMS = {"train": run_train, "hand": run_hand, "hf_trainer": run_hf}


def throughput(args, tmp: Path) -> dict:
    setup = Setup(tmp / "reference", REFERENCE, args.batch_size, args.seq_len)
    params = sum(p.numel() for p in setup.loaded().model.parameters())
    per_round: list[dict[str, float]] = []
    names = list(SYSTEMS)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        figures = {}
        for name in order:
            figures[name] = SYSTEMS[name](setup, args.steps, tmp)["tokens_per_second"]
        per_round.append(figures)
        print(f"  round {r + 1}: " + ", ".join(f"{n} {figures[n]:,.0f}" for n in names)
              + " tokens/s", flush=True)
    tps = {n: [f[n] for f in per_round] for n in names}
    ratio = {"vs_hand": [f["train"] / f["hand"] for f in per_round],
             "vs_hf_trainer": [f["train"] / f["hf_trainer"] for f in per_round]}
    return {"model": f"reference GPT {REFERENCE} ({params / 1e6:.1f}M parameters)",
            "batch": [args.batch_size, args.seq_len], "steps_per_run": args.steps,
            "steps_left_out": SKIP, "rounds": args.rounds, "tokens_per_second": tps,
            "median_tokens_per_second": {n: statistics.median(v) for n, v in tps.items()},
            "ratio_per_round": ratio,
            "ratio_vs_hand": statistics.median(ratio["vs_hand"]),
            "ratio_vs_hf_trainer": statistics.median(ratio["vs_hf_trainer"]),
            "target_vs_hand": TARGET_VS_HAND, "target_vs_hf_trainer": TARGET_VS_HF}


# ---- checkpoints -------------------------------------------------------------------------
@contextlib.contextmanager
def saving(mode: str):
    """``shipped``: train() as it is (``ManagerIO`` → ``CheckpointManager.save_async``: a host
    copy inline, the local write and the mirror in background threads). ``save``: ``ManagerIO``
    patched to ``CheckpointManager.save`` (the local write inline, the mirror in the background),
    for comparison. ``none``: no checkpoints, the baseline."""
    from utils.training.callbacks import ManagerIO

    real = ManagerIO.save_checkpoint

    def save(self, checkpoint, path, storage_options=None):
        self.manager.save(checkpoint, int(checkpoint["global_step"]),
                          val_loss=(storage_options or {}).get("val_loss"))

    if mode == "save":
        ManagerIO.save_checkpoint = save
    try:
        yield
    finally:
        ManagerIO.save_checkpoint = real


def checkpoint_overhead(args, tmp: Path) -> dict:
    """Each mode and the baseline without checkpoints, interleaved round by round (the order
    rotates); a mode's overhead in a round is its training time over the baseline's of the same
    round, minus one; the figure is the median over rounds."""
    setup = Setup(tmp / "big", BIG, args.ckpt_batch_size, args.seq_len)
    drive = (tmp / "drive").resolve()
    drive.mkdir()
    slow_folder(drive)
    order = ["none", *args.ckpt_modes]
    runs: dict[str, list[dict]] = {mode: [] for mode in order}
    for r in range(args.ckpt_rounds):
        for mode in order[r % len(order):] + order[:r % len(order)]:
            print(f"  round {r + 1}: {mode} …", flush=True)
            with saving(mode):
                runs[mode].append(checkpoint_run(setup, args, tmp / f"ckpt-{mode}-{r}",
                                                 drive / f"{mode}-{r}", mode != "none"))
    interval = statistics.median(run["median_step_s"] for run in runs["none"]) * args.every
    modes = {}
    for mode in args.ckpt_modes:
        per_round = [run["train_s"] / base["train_s"] - 1
                     for run, base in zip(runs[mode], runs["none"], strict=True)]
        blocked = [b for run in runs[mode] for b in run["blocked_s_per_save"]]
        cpu = statistics.median(run["background_cpu_s_per_save"] for run in runs[mode])
        cores = torch.get_num_threads()
        modes[mode] = {"overhead": statistics.median(per_round), "overhead_per_round": per_round,
                       "blocked_s_per_save": blocked, "interval_s": interval,
                       "blocked_overhead": statistics.median(blocked) / interval,
                       "background_cpu_s_per_save": cpu,
                       # what the save costs a loop that keeps every core busy: its wait, and
                       # its threads' CPU taken from the training threads' share of the cores
                       "estimated_overhead": (statistics.median(blocked) + cpu / cores)
                       / interval,
                       "runs": runs[mode]}
    first = runs[args.ckpt_modes[0]][0]
    return {"model": f"GPT {BIG}", "parameters": first["parameters"],
            "checkpoint_mb": first["checkpoint_mb"], "saves": first["saves"],
            "batch": [args.ckpt_batch_size, args.seq_len], "steps": args.ckpt_steps,
            "every": args.every, "rounds": args.ckpt_rounds, "target_overhead": TARGET_CKPT,
            "slow_folder": {"latency_s": LATENCY_S, "mb_per_s": BYTES_PER_S / 1e6},
            "baseline": runs["none"], "modes": modes}


def checkpoint_run(setup: Setup, args, out: Path, mirror: Path, checkpoints: bool) -> dict:
    import lightning.pytorch as pl

    import utils
    from utils.training.training_core import train

    times: list[float] = []  # times[g]: seconds of optimizer step g (a save counts in its step)
    cpu: dict[int, float] = {}  # the checkpoint threads' CPU seconds, as last seen

    class Clock(pl.Callback):  # after RunState in the callback list: a save lands in its step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.perf_counter()
            times.append(now - self.last)
            cpu.update(background_cpu_by_thread())  # read while the threads live
            self.last = time.perf_counter()  # the reading is not the step's

        def on_train_start(self, trainer, pl_module):
            times.append(0.0)
            self.last = time.perf_counter()

    config = (setup.config(args.ckpt_steps, out, checkpoint_every=args.every, keep_last=2,
                           mirror_dir=str(mirror)) if checkpoints
              else setup.config(args.ckpt_steps, out))
    loaded = setup.loaded()
    start = time.perf_counter()
    train(loaded, setup.data(utils.adapt(loaded)), config, tokenizer=setup.tokenizer,
          gate=False, progress=False, say=quiet, callbacks=[Clock()])
    wall = time.perf_counter() - start
    saves = list(range(args.every, args.ckpt_steps + 1, args.every)) if checkpoints else []
    step = statistics.median(times[2:])
    figures = {"parameters": sum(p.numel() for p in loaded.model.parameters()),
               "train_s": sum(times[2:]),  # from the end of step 1 (its start is not timed)
               "median_step_s": step, "saves": saves, "train_wall_s": wall,
               "blocked_s_per_save": [times[s] - step for s in saves],
               "background_cpu_s_per_save": sum(cpu.values()) / max(1, len(saves))}
    if checkpoints:
        size = next((out / "checkpoints").glob("step-*.ckpt")).stat().st_size
        figures["checkpoint_mb"] = size / 1e6
        figures["mirrored"] = sorted(p.name for p in (mirror / "checkpoints").glob("step-*.ckpt"))
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=20, help="steps per throughput run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--ckpt-steps", type=int, default=349, help="steps of each checkpoint "
                        "run (saves every --every steps; the default makes 6 saves and lets "
                        "the last one finish inside the run)")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--ckpt-batch-size", type=int, default=1)
    parser.add_argument("--ckpt-rounds", type=int, default=2, help="interleaved rounds of the "
                        "checkpoint runs and the baseline without checkpoints (default 2)")
    parser.add_argument("--ckpt-modes", nargs="+", default=["shipped"],
                        choices=["shipped", "save"], help="shipped: train() as it is "
                        "(save_async); save: ManagerIO patched to the inline local write")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads "
                        "(default 0 = torch's default, what train() users get; 1 is steadier on "
                        "a busy shared machine, where two OpenMP threads spin against other "
                        "processes)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-checkpoint", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "train.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("TESTBENCH_HOME", str(Path(tmp) / "home"))
        if not args.skip_throughput:
            print(f"throughput: {args.rounds} interleaved rounds of {args.steps} steps at "
                  f"{args.batch_size}×{args.seq_len}", flush=True)
            result["throughput"] = throughput(args, Path(tmp))
        if not args.skip_checkpoint:
            print(f"checkpoints: {args.ckpt_steps} steps, every {args.every}, into a slow "
                  "folder", flush=True)
            result["checkpoint"] = checkpoint_overhead(args, Path(tmp))
    result["load_average"] = os.getloadavg()
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")
    return result


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "MISSES the target"


def report(result: dict) -> None:
    t = result.get("throughput")
    if t:
        m = t["median_tokens_per_second"]
        print(f"{t['model']}, batch {t['batch'][0]}×{t['batch'][1]}, fp32, "
              f"{result['torch_threads']} torch thread(s) on {result['cpus']} CPUs; medians "
              f"of {t['rounds']} rounds:")
        for name in ("train", "hand", "hf_trainer"):
            print(f"  {name:<11} {m[name]:>9,.0f} tokens/s")
        for key, target in (("vs_hand", TARGET_VS_HAND), ("vs_hf_trainer", TARGET_VS_HF)):
            value = t[f"ratio_{key}"]
            per = ", ".join(f"{x:.3f}" for x in t["ratio_per_round"][key])
            print(f"  train() {key.replace('_', ' ')}: {value:.3f}× (rounds {per}; target "
                  f"≥ {target:.2f}×) — {verdict(value >= target)}")
            rounds = t["ratio_per_round"][key]
            if value < target and max(rounds) >= target:
                print(f"    why: the rounds spread {min(rounds):.2f}–{max(rounds):.2f}×, the "
                      "target inside it: this machine's load moves more between runs than the "
                      "gap; run more rounds (--rounds 5 --steps 60) before reading it as real")
            elif value < target:
                print("    why: every round is below the target, so train() costs more per "
                      "step here: profile a run (python -m cProfile) against the hand loop")
    c = result.get("checkpoint")
    if c:
        base = statistics.median(run["median_step_s"] for run in c["baseline"])
        print(f"{c['model']} ({c['parameters'] / 1e6:.1f}M parameters), checkpoint "
              f"{c['checkpoint_mb']:.0f} MB every {c['every']} steps ({len(c['saves'])} saves in "
              f"{c['steps']} steps), mirrored into a {c['slow_folder']['latency_s']} s + "
              f"{c['slow_folder']['mb_per_s']:.0f} MB/s folder; without checkpoints a step takes "
              f"{base:.3f} s:")
        for mode, m in c["modes"].items():
            label = ("train() as shipped (save_async)" if mode == "shipped" else
                     "ManagerIO patched to save (local write inline)")
            per = ", ".join(f"{x:+.1%}" for x in m["overhead_per_round"])
            print(f"  {label}: overhead {m['overhead']:+.1%} of training time (rounds {per}; "
                  f"target ≤ {TARGET_CKPT:.0%}) — {verdict(m['overhead'] <= TARGET_CKPT)}")
            print(f"    the step holding a save waits {m['blocked_overhead']:+.1%} of a "
                  f"checkpoint interval (median {statistics.median(m['blocked_s_per_save']):+.2f}"
                  f" s a save: " + ", ".join(f"{b:+.2f}" for b in m["blocked_s_per_save"]) + ")")
            threads = result["torch_threads"]
            if threads < result["cpus"]:
                print(f"    the checkpoint threads use {m['background_cpu_s_per_save']:.2f} CPU s "
                      f"a save, on a core training leaves free ({threads} torch thread(s) on "
                      f"{result['cpus']} CPUs): the wait is what a save costs")
            else:
                print(f"    the checkpoint threads use {m['background_cpu_s_per_save']:.2f} CPU s "
                      f"a save; with every core training, estimated "
                      f"{m['estimated_overhead']:+.1%} of training time (wait + CPU / "
                      f"{threads} threads, over {m['interval_s']:.1f} s)")
            if m["overhead"] > TARGET_CKPT and mode == "save":
                print("    why: the local write holds the step it is taken in")
            elif m["overhead"] > TARGET_CKPT and threads >= result["cpus"]:
                print("    why: the background threads (torch.save, fsync and sha256 of the "
                      "checkpoint, the mirror's copy and its verifying sha256) take CPU from "
                      "training on a machine whose cores are all busy; on a GPU the training "
                      "thread mostly waits for the device, which leaves them a core")
    print(f"load average {result['load_average'][0]:.1f} on {result['cpus']} CPUs "
          "(shared machine: figures are medians of interleaved runs)")


if __name__ == "__main__":
    main()
