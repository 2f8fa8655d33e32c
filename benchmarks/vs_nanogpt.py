"""``train()`` against nanoGPT's own ``train.py``: same model, same text, same budget.

nanoGPT (https://github.com/karpathy/nanoGPT, MIT) is run from the user's checkout, unmodified,
with its README's CPU recipe (``config/train_shakespeare_char.py`` + 4 layers, 4 heads, 128 wide,
block 64, batch 12, lr 1e-3 cosine to 1e-4 over the run, warmup 100, betas (0.9, 0.99), decay
0.1, clip 1.0, dropout 0). ``train()`` trains the checkout's ``model.py`` — loaded the way a user
loads a folder (``utils.load_model`` + ``adapt``) — with the same settings. Both train on the
train split of ``load_text_dataset(document="file")`` over 16 of the 18 shipped plays:
nanoGPT's ``train.bin`` is that split's text, ``val.bin`` the validation split's, ``meta.pkl``
the characters of all 18 plays; the worker checks that ``train()`` gets the same text (sha256).
Both are scored on the 2 plays left out: every non-overlapping window of 64 characters of each
play (inputs ``c[i:i+64]``, targets ``c[i+1:i+65]``), in nats per predicted character.

nanoGPT runs through a two-line wrapper (``runpy``) in its own folder: it adds the seed to
``torch.manual_seed(1337)`` and sets the thread count; ``--dataset`` is an absolute path, so
nothing is written into the checkout. Its checkpoint after the last step (``ckpt.pt``) is
scored with the checkout's ``model.py``. ``train()`` runs in a worker process of this script.

Step time is the mean of the per-step times from step 100 on, leaving out the steps that
include an evaluation (nanoGPT's ``eval_interval``, ``train()``'s ``val_every``): wall time, or
with ``--clock cpu`` the training thread's CPU time, which waiting for a core on a shared
machine does not inflate. Compare ms/step only within one invocation (the systems alternate).

``--ablate`` trains with one suspect changed, to measure what it costs alone (see ABLATIONS).

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python benchmarks/vs_nanogpt.py --nanogpt /tmp/nanoGPT                    # 3 seeds, 2000 steps
    python benchmarks/vs_nanogpt.py --nanogpt /tmp/nanoGPT --max-iters 400 --clock cpu
    python benchmarks/vs_nanogpt.py --nanogpt /tmp/nanoGPT --jobs 2 --systems train \\
        --ablate paragraph                               # losses only: timings then compete

Writes ``benchmarks/results/vs_nanogpt.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "utils" / "examples" / "corpus" / "shakespeare"
# README's "I only have a macbook" line, on top of config/train_shakespeare_char.py
README_CPU = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
              "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
              "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
MODEL = {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0,
         "bias": True}  # nanoGPT's GPTConfig default bias
HP = {"batch_size": 12, "seq_len": 64, "lr": 1e-3, "min_lr_ratio": 0.1, "warmup_steps": 100,
      "betas": (0.9, 0.99), "weight_decay": 0.1, "grad_clip": 1.0}
EVAL_INTERVAL, VAL_EVERY, STEADY_FROM = 250, 500, 100
TARGET_LOSS, TARGET_TIME = 1.01, 1.05
# One suspect changed at a time; each is a diagnostic, never the shipped behaviour.
ABLATIONS = {
    "paragraph": ("train", "documents cut at blank lines (the old .txt default) instead of "
                           "whole files"),
    "no-eos": ("train", "the training documents joined into one: no eos between files"),
    "nanogpt-decay": ("train", "weight decay on every >=2-D tensor, as nanoGPT: the tied "
                               "head/embedding and the position table too"),
    "random-windows": ("train", "nanoGPT's sampling: each row a window at a random token "
                                "offset, with replacement"),
    "63-targets": ("nanogpt", "nanoGPT ignores the last target of each window: 63 "
                              "predictions per block, as train()"),
}


# ---- data ----------------------------------------------------------------------------------
def prepare(work: Path, heldout: list[str]) -> dict:
    """The 16 training plays (a folder of links), their split, nanoGPT's data folder, and the
    held-out plays' text."""
    from utils.training.dataset_utilities import load_text_dataset

    files = sorted(CORPUS.glob("*.txt"))
    unknown = [h for h in heldout if not (CORPUS / h).is_file()]
    if unknown:
        sys.exit(f"--heldout {unknown}: not in {CORPUS}")
    plays = work / "plays"
    plays.mkdir(parents=True, exist_ok=True)
    for f in files:
        if f.name not in heldout and not (plays / f.name).exists():
            (plays / f.name).symlink_to(f)
    data = load_text_dataset(str(plays), document="file", cache_dir=work / "datasets")
    train_text = "".join(data.train["text"])  # each play ends with "\n"
    val_text = "".join(data.validation["text"])
    every = "".join(f.read_text() for f in files)
    chars = sorted(set(every))
    stoi = {c: i for i, c in enumerate(chars)}
    ng = work / "nanogpt_data"
    ng.mkdir(exist_ok=True)
    with (ng / "meta.pkl").open("wb") as fh:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, fh)
    import numpy as np

    for name, text in (("train", train_text), ("val", val_text)):
        np.array([stoi[c] for c in text], dtype=np.uint16).tofile(ng / f"{name}.bin")
    return {"work": str(work), "plays": str(plays), "nanogpt_data": str(ng),
            "heldout": [str(CORPUS / h) for h in heldout], "train_chars": len(train_text),
            "train_sha256": hashlib.sha256(train_text.encode()).hexdigest(),
            "val_chars": len(val_text), "train_docs": len(data.train),
            "nanogpt_vocab": len(chars), "split": data.split_by}


def windows(ids: list[int], block: int):
    """Every non-overlapping window: (inputs ids[i:i+block], targets ids[i+1:i+1+block])."""
    import torch

    t = torch.tensor(ids, dtype=torch.long)
    for i in range(0, len(t) - 1, block):
        y = t[i + 1:i + 1 + block]
        yield t[i:i + len(y)], y


def held_out_loss(forward, texts: list[str], encode, block: int) -> tuple[float, int]:
    """Mean nats per predicted character over every window of every text; ``forward`` maps
    [B, T] ids to [B, T, V] logits."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            pairs = list(windows(encode(text), block))
            full = [p for p in pairs if len(p[1]) == block]
            groups = [full[i:i + 64] for i in range(0, len(full), 64)]
            groups += [[p] for p in pairs if len(p[1]) < block]
            for group in groups:
                x = torch.stack([p[0] for p in group])
                y = torch.stack([p[1] for p in group])
                logits = forward(x).float()
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               y.reshape(-1), reduction="sum"))
                count += y.numel()
    return total / count, count


def steady_ms(times: list[tuple[int, float, bool]], last: int) -> float | None:
    """Mean ms of steps STEADY_FROM..last-1 whose interval holds no evaluation."""
    kept = [ms for step, ms, dirty in times if STEADY_FROM <= step < last and not dirty]
    return statistics.fmean(kept) if kept else None


# ---- nanoGPT ----------------------------------------------------------------------------
def run_nanogpt(checkout: Path, prep: dict, seed: int, ablate: str | None, opts: dict) -> dict:
    iters, threads = opts["iters"], opts["threads"]
    out = Path(prep["work"]) / f"nanogpt-s{seed}-{ablate or 'base'}"
    shutil.rmtree(out, ignore_errors=True)
    interval = EVAL_INTERVAL if iters % EVAL_INTERVAL == 0 else iters
    args = [*README_CPU, f"--max_iters={iters}", f"--lr_decay_iters={iters}",
            f"--eval_interval={interval}", "--always_save_checkpoint=True", "--dtype=float32",
            "--wandb_log=False", f"--dataset={prep['nanogpt_data']}", f"--out_dir={out}"]
    patch = ""
    if ablate == "63-targets":  # targets[:, -1] = -1: nanoGPT's cross_entropy ignore_index
        patch = ("import model; f = model.GPT.forward\n"
                 "def g(self, idx, targets=None):\n"
                 "    if targets is not None: targets = targets.clone(); targets[:, -1] = -1\n"
                 "    return f(self, idx, targets)\n"
                 "model.GPT.forward = g\n")
    if opts["clock"] == "cpu":  # train.py times its steps with time.time()
        patch += "import time; time.time = time.thread_time\n"
    wrapper = (f"import runpy, sys, torch\ntorch.set_num_threads({threads})\n"
               f"_seed = torch.manual_seed\ntorch.manual_seed = lambda s: _seed(s + {seed})\n"
               f"{patch}sys.argv = ['train.py', *{args!r}]\n"
               "runpy.run_path('train.py', run_name='__main__')\n")
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper], cwd=checkout, capture_output=True,
                          text=True)
    wall = time.perf_counter() - began
    (out / "stdout.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "stdout.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"nanoGPT seed {seed} failed:\n{proc.stderr[-3000:]}")
    times = [(int(m[1]), float(m[2]), int(m[1]) % interval == 0) for m in
             re.finditer(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", proc.stdout)]
    loss, predicted = score_nanogpt(checkout, out / "ckpt.pt", prep, threads)
    return {"system": "nanogpt", "seed": seed, "ablate": ablate, "held_out": loss,
            "predicted_chars": predicted, "ms_per_step": steady_ms(times, iters),
            "tokens": iters * HP["batch_size"] * HP["seq_len"],
            "predictions": iters * HP["batch_size"] * (HP["seq_len"] - (ablate == "63-targets")),
            "wall_s": wall, "vocab": prep["nanogpt_vocab"]}


def score_nanogpt(checkout: Path, ckpt_path: Path, prep: dict, threads: int):
    import torch

    torch.set_num_threads(threads)
    spec = importlib.util.spec_from_file_location("nanogpt_model", checkout / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    with contextlib.redirect_stdout(io.StringIO()):  # its "number of parameters" line
        model = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    with open(Path(prep["nanogpt_data"]) / "meta.pkl", "rb") as fh:
        stoi = pickle.load(fh)["stoi"]
    texts = [Path(p).read_text() for p in prep["heldout"]]
    # targets=x only so that forward returns every position's logits (its loss is unused)
    return held_out_loss(lambda x: model(x, x)[0], texts, lambda s: [stoi[c] for c in s],
                         MODEL["block_size"])


# ---- train() ----------------------------------------------------------------------------
def run_train(checkout: Path, prep: dict, seed: int, ablate: str | None, opts: dict) -> dict:
    spec = {"checkout": str(checkout), "prep": prep, "seed": seed, "ablate": ablate, **opts}
    out = Path(prep["work"]) / f"train-s{seed}-{ablate or 'base'}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume of the last one
    out.mkdir(parents=True)
    (out / "spec.json").write_text(json.dumps(spec))
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", str(out / "spec.json")],
                          capture_output=True, text=True, cwd=ROOT)
    (out / "stdout.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"train() seed {seed} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((out / "result.json").read_text())
    return {**result, "wall_s": time.perf_counter() - began}


def train_worker(spec_file: Path) -> None:
    """One ``train()`` run (in its own process), scored on the held-out plays."""
    spec = json.loads(spec_file.read_text())
    out, prep, seed, ablate = spec_file.parent, spec["prep"], spec["seed"], spec["ablate"]
    os.environ["TESTBENCH_HOME"] = str(Path(prep["work"]) / "home")
    import torch

    torch.set_num_threads(spec["threads"])
    import utils
    from utils.adapters import adapt
    from utils.tokenization import AdaptiveTokenizer, tokenizer_for
    from utils.training import TrainingConfig, train
    from utils.training.dataset_utilities import load_text_dataset

    data = load_text_dataset(prep["plays"], document="paragraph" if ablate == "paragraph"
                             else "file", cache_dir=Path(prep["work"]) / "datasets")
    joined = "".join(data.train["text"])
    if ablate != "paragraph" and hashlib.sha256(joined.encode()).hexdigest() != \
            prep["train_sha256"]:
        raise RuntimeError("train() would train on other text than nanoGPT's train.bin "
                           "(load_text_dataset changed since the data was prepared)")
    if ablate == "no-eos":
        import datasets

        data.train = datasets.Dataset.from_dict({"text": [joined]})
    # rows: one per character of the training text + the specials (pad, bos, eos, unk)
    rows = tokenizer_for(255, data, strategy="char").vocab_size
    folder = out / "model"
    folder.mkdir(exist_ok=True)
    shutil.copy(Path(spec["checkout"]) / "model.py", folder / "model.py")
    (folder / "config.json").write_text(json.dumps({**MODEL, "vocab_size": rows}))
    adapter = adapt(utils.load_model(str(folder), seed=seed, say=lambda _: None))
    m = adapter.model
    tied = m.lm_head.weight is m.transformer.wte.weight
    _apply_ablation(ablate, seed)
    clock = _step_clock(time.thread_time if spec.get("clock") == "cpu" else time.perf_counter)
    config = TrainingConfig(max_steps=spec["iters"], **HP, seed=seed, val_every=VAL_EVERY,
                            checkpoint_every=0, log_every=50, out_dir=str(out / "run"),
                            resume="never", logger="none")
    result = train(adapter, data, config, callbacks=[clock], gate=spec["gate"],
                   progress=False, say=lambda _: None)
    tok = AdaptiveTokenizer.load(out / "run" / "tokenizer")
    texts = [Path(p).read_text() for p in prep["heldout"]]
    assert all(len(tok.encode(t)) == len(t) for t in texts), "one token per character"
    unk = sum(tok.encode(t).count(tok.unk_id) for t in texts)
    adapter.model.eval()
    loss, predicted = held_out_loss(lambda x: adapter.logits(x), texts, tok.encode,
                                    MODEL["block_size"])
    (out / "result.json").write_text(json.dumps({
        "system": "train", "seed": seed, "ablate": ablate, "held_out": loss,
        "predicted_chars": predicted, "ms_per_step": steady_ms(clock.times, spec["iters"]),
        "tokens": result.tokens, "predictions": clock.predictions,
        "val_loss": result.metrics.get("val_loss"), "vocab": rows, "held_out_unk": unk,
        "tied": tied, "steps": result.steps}))


def _apply_ablation(ablate: str | None, seed: int) -> None:
    import torch

    from utils.training import lightning_module

    if ablate == "nanogpt-decay":
        def groups(model, weight_decay):
            params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
            return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                    {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        lightning_module.parameter_groups = groups
    elif ablate == "random-windows":
        import numpy as np

        from utils.tokenization import data_module

        shipped = data_module.TextDataModule.train_dataloader

        def loader(self):
            dl = shipped(self)
            rows = self.rows["train"].with_format("numpy")[:]
            flat = torch.as_tensor(np.concatenate([r[:n] for r, n in zip(
                rows["input_ids"], rows["length"], strict=True)]).astype("int64"))
            t = self.seq_len

            def windows(_dataset, key):  # seeded by (seed, epoch, position), as masking is
                gen = torch.Generator().manual_seed((seed * 1_000_003 + key.epoch) * 1_000_003
                                                    + key.position)
                starts = torch.randint(len(flat) - t, (len(key.indices),), generator=gen)
                x = torch.stack([flat[s:s + t] for s in starts.tolist()])
                return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x}

            dl.dataset.__class__ = type("Windows", (type(dl.dataset),), {"__getitem__": windows})
            return dl
        data_module.TextDataModule.train_dataloader = loader


def _step_clock(now):
    import lightning.pytorch as pl

    class StepClock(pl.Callback):
        """(step, ms since the previous step's end, whether a validation ran in between)."""

        def __init__(self) -> None:
            self.times: list[tuple[int, float, bool]] = []
            self.last, self.dirty, self.predictions = None, False, 0
            self.now = now

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = self.now()
            self.predictions += int(batch["attention_mask"][:, 1:].sum())
            if self.last is not None:
                self.times.append((trainer.global_step - 1, (now - self.last) * 1000,
                                   self.dirty))
            self.last, self.dirty = now, False

        def on_validation_start(self, trainer, pl_module) -> None:
            self.dirty = True

    return StepClock()


# ---- the comparison ----------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, help="a checkout of github.com/karpathy/nanoGPT")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="time steps by "
                   "wall clock, or by the training thread's CPU time (steadier on a shared "
                   "machine; with --threads 1 every op runs in that thread)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (timings then compete)")
    p.add_argument("--systems", nargs="+", default=["nanogpt", "train"],
                   choices=["nanogpt", "train"])
    p.add_argument("--ablate", choices=sorted(ABLATIONS), help="change one suspect (its "
                   "system only): " + "; ".join(f"{k}: {v[1]}" for k, v in ABLATIONS.items()))
    p.add_argument("--gate", action="store_true", help="run train()'s Tier 1 gate")
    p.add_argument("--heldout", nargs=2, default=["twelfth-night.txt",
                                                  "two-gentlemen-of-verona.txt"])
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temp folder)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/vs_nanogpt.json")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return train_worker(args.worker)
    if not args.nanogpt or not (args.nanogpt / "train.py").is_file():
        sys.exit("--nanogpt PATH: a checkout of https://github.com/karpathy/nanoGPT "
                 f"(train.py, model.py); got {args.nanogpt}")
    checkout = args.nanogpt.resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="vs_nanogpt-"))
    prep = prepare(work.resolve(), args.heldout)
    print(f"train split: {prep['train_docs']} documents, {prep['train_chars']:,} chars "
          f"({prep['split']}); held out: {', '.join(args.heldout)}; work: {work}")
    opts = {"iters": args.max_iters, "threads": args.threads, "clock": args.clock,
            "gate": args.gate}
    jobs = []
    for seed in args.seeds:  # the systems alternate, so drifting load hits both alike
        for system in args.systems:
            ablate = args.ablate if args.ablate and ABLATIONS[args.ablate][0] == system else None
            run = run_nanogpt if system == "nanogpt" else run_train
            jobs.append((run, (checkout, prep, seed, ablate, opts)))
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = []
        for row in pool.map(lambda job: job[0](*job[1]), jobs):
            rows.append(row)
            ms = f"{row['ms_per_step']:.1f}" if row["ms_per_step"] else "-"
            print(f"{row['system']:<8} {row['ablate'] or '':<15} seed {row['seed']:<3} "
                  f"held-out {row['held_out']:.4f} nats/char  {ms:>6} ms/step ({args.clock})  "
                  f"{row['tokens']:,} tokens  {row['predictions']:,} predictions  "
                  f"({row['wall_s']:.0f} s)", flush=True)
    summary = {}
    for system in args.systems:
        mine = [r for r in rows if r["system"] == system]
        times = [r["ms_per_step"] for r in mine if r["ms_per_step"]]
        summary[system] = {"held_out_mean": statistics.fmean(r["held_out"] for r in mine),
                           "held_out_sd": statistics.stdev([r["held_out"] for r in mine])
                           if len(mine) > 1 else 0.0,
                           "ms_per_step_mean": statistics.fmean(times) if times else None}
        print(f"{system:<8} mean held-out {summary[system]['held_out_mean']:.4f} "
              f"(sd {summary[system]['held_out_sd']:.4f}) nats/char, "
              + (f"{summary[system]['ms_per_step_mean']:.1f} ms/step" if times else ""))
    if len(summary) == 2:
        ng, tr = summary["nanogpt"], summary["train"]
        loss_ratio = tr["held_out_mean"] / ng["held_out_mean"]
        time_ratio = (tr["ms_per_step_mean"] / ng["ms_per_step_mean"]
                      if tr["ms_per_step_mean"] and ng["ms_per_step_mean"] else None)
        summary["ratios"] = {"held_out": loss_ratio, "ms_per_step": time_ratio}
        print(f"train()/nanoGPT: held-out {loss_ratio:.4f} (target <= {TARGET_LOSS}), "
              + (f"ms/step {time_ratio:.3f} (target <= {TARGET_TIME})" if time_ratio else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                     "data": prep, "runs": rows, "summary": summary}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
