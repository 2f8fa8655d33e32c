"""Proven on the real engines: what only a CUDA GPU can show, in one run of at most 5 minutes.

Each section is one function that measures and returns a dict (its figures, each beside its
target through :func:`compare`); :func:`run_sections` times them, turns a crash into an
``"error"`` entry and skips what the time budget no longer allows. Sections:

- ``tiers``: Tier 1 and Tier 2 on the reference GPT (``reference_gpt.py``) and on a tiny
  Hugging Face GPT-2 built in code, on CUDA (``mixed_precision`` runs fp16 and bf16 for real,
  ``memory_footprint`` reads ``torch.cuda.max_memory_allocated``).
- ``memory_model``: :func:`utils.memory.estimate_train_memory` (what ``preset_for`` and the setup
  wizard size batches with) against the measured peak of a training step, at 3 batch sizes × 2
  lengths (target ±15 %).
- ``t4_batch``: the micro-batch ``preset_for`` picks for a 16 GB T4, against the largest that
  trains with the GPU capped to 15 GB (``torch.cuda.set_per_process_memory_fraction``).
- ``throughput``: ``train()`` in ``16-mixed`` and ``bf16-mixed`` against a hand-written loop
  with the same precision: tokens/s and MFU (target ≥ 0.97×).
- ``resume``: a ``testbench train`` process SIGKILLed after a checkpoint and run again, against
  the same run uninterrupted (bit-identical where CUDA allows; otherwise the largest difference).
- ``export``: export of the trained model with parity, on CUDA.
- ``compile``: ``compile=True`` training speed against eager.

On a machine without CUDA it says so, writes ``{"skipped": …}`` and exits 0.

    python benchmarks/gpu_check.py                      # ≈ 5 min on one GPU
    python benchmarks/gpu_check.py --only tiers,memory_model --json /tmp/gpu.json
    make gpu-check

Writes ``benchmarks/results/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_gpt import write_reference  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "gpu_check.json"
BUDGET_S = 300.0
MEMORY_TOLERANCE = 0.15  # |estimate - measured| / measured
THROUGHPUT_RATIO = 0.97  # train() tokens/s over the hand loop's
T4_BYTES, T4_CAP_BYTES = 16 * 2**30, 15 * 2**30
BATCHES, LENGTHS = (4, 8, 16), (128, 256)
SECTIONS = ("tiers", "memory_model", "t4_batch", "throughput", "resume", "export", "compile")
HP = {"lr": 3e-4, "warmup_steps": 10, "weight_decay": 0.1, "grad_clip": 1.0}


# ---- CPU-side logic (tests/test_gpu_check.py) ----------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--json PATH``, ``--budget SECONDS``, ``--only a,b``, ``--steps N``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the record goes")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all sections")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--steps", type=int, default=300, help="train() steps per throughput run")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if args.budget <= 0 or args.steps < 20:
        p.error(f"--budget must be > 0 and --steps >= 20 (got {args.budget:g} and {args.steps})")
    return args


def compare(measured: float | None, target: float, kind: str) -> dict[str, Any]:
    """A figure beside its target: ``kind`` is ``"within"`` (|measured| ≤ target, a relative
    error), ``"at_least"`` or ``"at_most"``. ``ok`` is None when nothing was measured."""
    if kind not in ("within", "at_least", "at_most"):
        raise ValueError(f"kind={kind!r}: one of 'within', 'at_least', 'at_most'")
    if measured is None:
        ok = None
    elif kind == "within":
        ok = abs(measured) <= target
    else:
        ok = measured >= target if kind == "at_least" else measured <= target
    return {"measured": measured, "target": target, "kind": kind, "ok": ok}


def relative_error(estimate: float, measured: float) -> float:
    """(estimate - measured) / measured: positive when the estimate is generous."""
    return (estimate - measured) / measured


def skip_reason() -> str | None:
    """Why this machine cannot run the check (no CUDA), else None."""
    if not torch.cuda.is_available():
        return (f"No CUDA GPU here (torch {torch.__version__}, "
                f"torch.cuda.is_available() is False): nothing was measured.")
    return None


def verdicts(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparison in ``record`` (nested anywhere), with where it sits."""
    found: list[dict[str, Any]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if {"measured", "target", "kind", "ok"} <= node.keys():
                found.append({"where": where, **node})
                return
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(record, "")
    return found


def run_sections(sections: dict[str, Callable[[], dict]], budget: float,
                 clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Run each section while time is left: ``{name: {"seconds", "result" | "error" |
    "skipped"}}``. A crash is recorded, never raised: the next section still runs."""
    began, out = clock(), {}
    for name, fn in sections.items():
        if clock() - began >= budget:
            out[name] = {"skipped": f"out of time (budget {budget:g} s)"}
            continue
        start = clock()
        try:
            out[name] = {"result": fn()}
        except Exception as exc:  # a failed section is a finding, not the end of the check
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out[name]["seconds"] = round(clock() - start, 2)
    return out


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write the record as JSON, atomically (a killed run leaves the previous file whole)."""
    from utils.atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


def environment() -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, memory_gb=round(props.total_memory / 2**30, 1),
                   bf16=torch.cuda.is_bf16_supported())
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    record: dict[str, Any] = {"environment": environment()}
    reason = skip_reason()
    if reason is not None:
        record["skipped"] = reason
        write_record(args.json, record)
        print(f"gpu_check: {reason} Wrote {args.json}.")
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context(Path(tmp), args.steps)
        chosen = {name: getattr(ctx, name) for name in SECTIONS if name in args.only}
        record["sections"] = run_sections(chosen, args.budget)
    record["verdicts"] = verdicts(record["sections"])
    write_record(args.json, record)
    for v in record["verdicts"]:
        mark = {True: "ok  ", False: "MISS", None: "n/a "}[v["ok"]]
        print(f"{mark} {v['where']}: {v['measured']} ({v['kind']} {v['target']})")
    for name, entry in record["sections"].items():
        if "error" in entry or "skipped" in entry:
            print(f"     {name}: {entry.get('error') or entry.get('skipped')}")
    print(f"Wrote {args.json}.")
    return 0


# ---- the GPU sections -----------------------------------------------------------------------
def quiet(_message: str) -> None:
    pass


class Context:
    """What the sections share: a scratch folder, the reference GPT's folder, the corpus."""

    def __init__(self, tmp: Path, steps: int) -> None:
        self.tmp, self.steps = tmp, steps
        self.folder = write_reference(tmp / "reference")
        self.trained: Path | None = None  # a run's final/ folder (resume makes it)

    def loaded(self):
        import utils

        return utils.load_model(self.folder, seed=0, say=quiet)

    def adapter(self):
        import utils

        return utils.adapt(self.loaded(), device="cuda")

    # -- Tier 1 and Tier 2 --
    def tiers(self) -> dict:
        from utils.tier1_critical_validation import run_tier1
        from utils.tier2_advanced_analysis import run_tier2

        out = {}
        for name, model in (("reference_gpt", self.adapter()), ("hf_gpt2", tiny_hf_model())):
            for tier, run in (("tier1", run_tier1), ("tier2", run_tier2)):
                report = run(model, progress=False)
                out[f"{name}.{tier}"] = {r.name: {"status": r.status, "summary": r.summary,
                                                  "metrics": r.metrics} for r in report.results}
            out[f"{name}.passed"] = report.passed
        return out

    # -- the memory model against the measured peak --
    def memory_model(self) -> dict:
        from utils.memory import activation_fit, estimate_train_memory

        free_cuda()
        adapter = self.adapter()
        fit = activation_fit(adapter)
        rows = []
        for precision in ("32", "16-mixed"):
            for seq in LENGTHS:
                for batch in BATCHES:
                    est = estimate_train_memory(adapter, batch, seq, precision=precision, fit=fit)
                    peak = step_peak(adapter, batch, seq, precision)
                    rows.append({"precision": precision, "batch": batch, "seq_len": seq,
                                 "estimate_bytes": est.total, "peak_bytes": peak,
                                 "error": compare(relative_error(est.total, peak),
                                                  MEMORY_TOLERANCE, "within")})
        return {"rows": rows}

    # -- the batch a T4 preset picks, against what fits in 15 GB --
    def t4_batch(self) -> dict:
        from utils.gpu_table import usable_bytes
        from utils.ui.presets import preset_for

        free_cuda()
        adapter = self.adapter()
        config = preset_for(adapter, "cuda", name="colab-t4",
                            memory_bytes=usable_bytes(T4_BYTES), precision="16-mixed")
        seq = config.seq_len_for(adapter.max_seq_len)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, T4_CAP_BYTES / total))
        try:
            fits = largest_fitting_batch(adapter, seq, "16-mixed", start=config.batch_size)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        return {"seq_len": seq, "picked": config.batch_size, "fits": fits,
                "picked_fits": compare(config.batch_size / max(fits, 1), 1.0, "at_most"),
                "picked_share": compare(config.batch_size / max(fits, 1), 0.5, "at_least")}

    # -- train() against a hand-written loop --
    def throughput(self) -> dict:
        out = {}
        for precision in ("16-mixed", "bf16-mixed"):
            if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
                out[precision] = {"skipped": "this GPU has no bf16"}
                continue
            ours = train_tokens_per_second(self, precision, compile=False)
            hand = hand_tokens_per_second(self, precision)
            out[precision] = {"train": ours, "hand": hand,
                              "mfu_train": mfu(self.loaded().model, ours, precision),
                              "mfu_hand": mfu(self.loaded().model, hand, precision),
                              "ratio": compare(ours / hand, THROUGHPUT_RATIO, "at_least")}
        return out

    # -- kill and resume --
    def resume(self) -> dict:
        steps, every = 120, 40
        args = [str(self.folder), "--max-steps", str(steps), "--checkpoint-every", str(every),
                "--val-every", "0", "--batch-size", "8", "--seq-len", "128", "--samples", "0",
                "--precision", "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed",
                "--device", "cuda", "--logger", "none"]
        straight, killed = self.tmp / "straight", self.tmp / "killed"
        run_cli([*args, "--out", str(straight)])
        proc = cli([*args, "--out", str(killed)])
        latest = killed / "checkpoints" / "latest.json"
        while proc.poll() is None and not latest.is_file():
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        run_cli([*args, "--out", str(killed)])
        from safetensors.torch import load_file

        a = load_file(straight / "final" / "model.safetensors")
        b = load_file(killed / "final" / "model.safetensors")
        gap = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        self.trained = straight / "final"
        return {"killed_at": json.loads(latest.read_text()), "bit_identical": gap == 0.0,
                "largest_difference": gap}

    # -- export with parity on CUDA --
    def export(self) -> dict:
        import utils
        from utils.training.export_utilities import export

        loaded = utils.load_model(self.trained, say=quiet) if self.trained else self.loaded()
        adapter = utils.adapt(loaded, device="cuda")  # parity runs where the model is
        result = export(adapter, formats="folder,pt2,onnx", out_dir=self.tmp / "export",
                        say=quiet)
        return {"ok": result.ok, "trained": self.trained is not None,
                "formats": {name: {"ok": r.ok, "parity": r.parity}
                            for name, r in result.formats.items()}}

    # -- torch.compile against eager --
    def compile(self) -> dict:
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        eager = train_tokens_per_second(self, precision, compile=False)
        compiled = train_tokens_per_second(self, precision, compile=True)
        return {"eager": eager, "compiled": compiled,
                "speedup": compare(compiled / eager, 1.0, "at_least")}


def free_cuda() -> None:
    """Let go of what earlier sections left on the card (their peaks must not count here)."""
    import gc

    gc.collect()
    torch.cuda.empty_cache()


def tiny_hf_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1000, n_positions=128, n_embd=64, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).cuda()


def _autocast(precision: str):
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    return torch.autocast("cuda", dtype=dtype, enabled=dtype is not None)


def step_peak(adapter, batch: int, seq: int, precision: str) -> int:
    """Peak bytes allocated by a training step (AdamW's state already there, as in training)."""
    model = adapter.model.cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "16-mixed")
    inputs = adapter.make_inputs(batch, seq, seed=0)
    for i in range(2):  # the first step creates AdamW's moments; the second is measured
        if i == 1:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with _autocast(precision):
            loss = adapter.loss(inputs)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del opt
    torch.cuda.empty_cache()
    return peak


def largest_fitting_batch(adapter, seq: int, precision: str, start: int) -> int:
    """The largest micro-batch whose step does not run out of memory (doubling, then halving
    the gap)."""
    def fits(batch: int) -> bool:
        try:
            step_peak(adapter, batch, seq, precision)
            return True
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return False

    low, high = 0, max(1, start)
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _config(ctx: Context, precision: str, **changes):
    from utils.training.config import TrainingConfig

    return TrainingConfig(max_steps=ctx.steps, batch_size=16, seq_len=256, precision=precision,
                          accelerator="gpu", val_every=0, checkpoint_every=0, log_every=50,
                          resume="never", seed=0, out_dir=str(ctx.tmp / f"t-{time.time_ns()}"),
                          **HP, **changes)


def train_tokens_per_second(ctx: Context, precision: str, *, compile: bool) -> float:
    from utils.training.training_core import train

    result = train(ctx.loaded(), None, _config(ctx, precision, compile=compile), gate=False,
                   progress=False, say=quiet)
    return float(result.tokens_per_second)


def hand_tokens_per_second(ctx: Context, precision: str) -> float:
    """The same model, data, AdamW and clipping in a plain loop; steady tokens/s."""
    import utils
    from utils.tokenization import TextDataModule, tokenizer_for_model
    from utils.training.dataset_utilities import load_text_dataset
    from utils.training.lightning_module import parameter_groups

    loaded = ctx.loaded()
    adapter = utils.adapt(loaded, device="cuda")
    dataset = load_text_dataset(None)
    dm = TextDataModule(dataset, tokenizer_for_model(adapter, dataset), adapter, seq_len=256,
                        batch_size=16, seed=0, num_workers=0)
    dm.setup("fit")
    model = adapter.model.cuda().train()
    opt = torch.optim.AdamW(parameter_groups(model, HP["weight_decay"]), lr=HP["lr"],
                            fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "16-mixed")
    ends, tokens, epoch, step = [], [], 0, 0
    while step < ctx.steps:
        dm.train_dataloader().sampler.set_epoch(epoch)
        for batch in dm.train_dataloader():
            batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
            with _autocast(precision):
                loss = adapter.loss(batch)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), HP["grad_clip"])
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            float(loss.detach())  # train() reads each loss (its guard): the same sync
            tokens.append(int(batch["attention_mask"].sum()))
            ends.append(time.perf_counter())
            step += 1
            if step == ctx.steps:
                break
        epoch += 1
    skip = 4
    return sum(tokens[skip:]) / (ends[-1] - ends[skip - 1])


def mfu(model: torch.nn.Module, tokens_per_second: float, precision: str) -> float | None:
    """6·N FLOPs a token (forward + backward) over the card's dense half-precision peak."""
    from utils.gpu_table import lookup

    gpu = lookup(torch.cuda.get_device_name(0))
    if gpu is None:
        return None
    params = sum(p.numel() for p in model.parameters())
    peak = gpu.half_tflops if precision != "32" else gpu.fp32_tflops
    return 6 * params * tokens_per_second / (peak * 1e12)


def cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "utils", "train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WANDB_MODE": "offline"})


def run_cli(args: list[str]) -> None:
    proc = cli(args)
    _, err = proc.communicate(timeout=240)
    if proc.returncode != 0:
        raise RuntimeError(f"testbench train exited {proc.returncode}: {err[-1500:]}")


if __name__ == "__main__":
    sys.exit(main())
