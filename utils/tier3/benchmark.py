"""``benchmark_comparison``: is the model better than a plain transformer of the same size?

The user's model and a baseline from :mod:`utils.tier3.baselines` (width and depth chosen so
its parameter count is within ±10%, same vocab and length) train on the same data, with the
same tokenizer, token budget (steps × batch × length), seed and optimizer settings. The
baseline trains twice, with two seeds, so the verdict can say whether a difference is more
than the noise of training itself.

Each model trains in its own run folder under the benchmark's folder; running the same
benchmark again resumes an interrupted run and reuses the finished ones (``arm.json``).

Example:
    >>> from utils.tier3_training_utilities import benchmark_comparison
    >>> bench = benchmark_comparison(utils.load_model("my_model/"), "texts/", steps=300)
    >>> bench.table, bench.verdict, bench.plot()
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import UserError
from utils.tier3.baselines import baseline_for, baseline_kind
from utils.tier3.benchmark_report import Arm, BenchmarkResult, verdict

__all__ = ["benchmark_comparison", "validation_interval"]

_MB = 2**20


def validation_interval(steps: int, wanted: int = 0) -> int:
    """Steps between validations such that the last one falls on the final step: ``wanted``
    when it divides ``steps`` (at most 20 validations), else the divisor giving about 5."""
    if wanted and steps % wanted == 0 and steps // wanted <= 20:
        return wanted
    divisors = [d for d in range(1, steps + 1) if steps % d == 0]
    return min(divisors, key=lambda d: (abs(steps // d - 5), d))


def _dataset(data: Any, task: str, progress: bool | None):
    """Load the data once for every arm (a TextDataset or a TextDataModule passes through)."""
    if hasattr(data, "train_dataloader") or (hasattr(data, "train")
                                              and hasattr(data, "validation")):
        return data
    from utils.training.dataset_utilities import load_text_dataset

    if progress is False or (progress is None and not sys.stderr.isatty()):
        with contextlib.suppress(ImportError):  # a log gets one line per phase, as in train()
            import datasets

            datasets.disable_progress_bars()
    return load_text_dataset(data, task=task)


def _peak_memory(adapter: Any, config: Any, measured: int | None) -> tuple[float | None, bool]:
    """MB of the training step's peak: measured on a GPU, else the memory model's estimate."""
    if measured is not None:
        return measured / _MB, True
    from utils.memory import estimate_train_memory

    try:
        est = estimate_train_memory(adapter, config.batch_size,
                                    config.seq_len_for(adapter.max_seq_len),
                                    precision=config.effective_precision("cpu", False))
    except Exception:  # an estimate is a nicety; a model it cannot measure gets none
        return None, False
    return est.total / _MB, False


def _reuse(run_dir: Path, config: Any, parameters: int, model_class: str) -> Arm | None:
    """The finished arm recorded in ``run_dir/arm.json``, when it is this model and config."""
    import pandas as pd

    from utils.atomic import read_json

    record = read_json(run_dir / "arm.json")
    csv = run_dir / "metrics.csv"
    if not record or not csv.is_file() or record.get("config") != config.to_dict() or \
            record.get("parameters") != parameters or record.get("model_class") != model_class:
        return None
    fields = {f.name for f in dataclasses.fields(Arm)} - {"history"}
    return Arm(**{k: v for k, v in record.items() if k in fields}, history=pd.read_csv(csv))


def _train_arm(name: str, role: str, model: Any, adapter: Any, data: Any, config: Any, *,
               tokenizer: Any, gate: bool, force: bool, progress: bool | None,
               say: Callable[[str], None]) -> tuple[Arm, Any, bool]:
    """Train one arm (or reuse its finished run); returns it, its tokenizer, and whether it
    was reused."""
    import torch

    from utils.atomic import write_json
    from utils.training.training_core import train

    run_dir = Path(config.out_dir)
    model_class = type(adapter.model).__name__
    reused = _reuse(run_dir, config, adapter.num_parameters, model_class)
    if reused is not None:
        if tokenizer is None:
            from utils.tokenization import AdaptiveTokenizer

            tokenizer = AdaptiveTokenizer.load(run_dir / "tokenizer")
        return reused, tokenizer, True
    say(f"Benchmark: training {name} ({adapter.num_parameters:,} parameters, "
        f"{config.max_steps} steps).")
    cuda = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    result = train(model, data, config, tokenizer=tokenizer, force=force, gate=gate,
                   progress=progress, say=say)
    wall = result.metrics.get("seconds", time.perf_counter() - began)
    memory, measured = _peak_memory(result.adapter, config,
                                    torch.cuda.max_memory_allocated() if cuda else None)
    arm = Arm(name=name, role=role, seed=config.seed, parameters=adapter.num_parameters,
              metrics={k: v for k, v in result.metrics.items() if k != "seconds"},
              tokens_per_second=result.tokens_per_second, peak_memory_mb=memory,
              memory_measured=measured, wall_seconds=wall, steps=result.steps,
              run_dir=str(result.run_dir), model_class=model_class, history=result.history)
    if result.resumed_from:
        say(f"{name}: resumed from step {result.resumed_from['step']}; its wall time covers "
            "only this call.")
    if not result.interrupted:
        write_json(run_dir / "arm.json", {**arm.to_record(), "config": config.to_dict()})
    return arm, result.tokenizer, False


def _benchmark_dir(adapter: Any, config: Any) -> Path:
    if config.out_dir:
        return Path(config.out_dir)
    from utils.training.runs import default_run_dir

    folder = default_run_dir(adapter, config)
    return folder.with_name(folder.name + "-benchmark")


def benchmark_comparison(model: Any, data: Any = None, baseline: str = "gpt", *, steps: int,
                         config: Any = None, seeds: int = 2, force: bool = False,
                         tokenizer: Any = None, progress: bool | None = None,
                         say: Callable[[str], None] = print) -> BenchmarkResult:
    """Train ``model`` and a baseline of matched size on the same data and budget; compare.

    Args:
        model: A ``LoadedModel``, ``ModelAdapter`` or ``nn.Module`` (trained in place, after
            the Tier 1 gate).
        data: What ``train`` takes (None: the shipped Shakespeare corpus); loaded once.
        baseline: ``"gpt"``: the plain pre-LN transformer for the task — a GPT for a causal LM,
            the matched pre-LN encoder for masked LM and classification. No baseline is
            offered for seq2seq.
        steps: Optimizer steps per model: the token budget is steps × batch × length.
        config: The ``TrainingConfig`` every model trains with (its ``max_steps`` becomes
            ``steps``; validation is placed so the last one is on the final step; early
            stopping is off); None = the preset sized to this device. ``out_dir`` is the
            benchmark's folder (default: beside the model's training run, ``…-benchmark``).
        seeds: Baseline runs, seeds ``config.seed``, ``config.seed + 1``, …; two or more
            measure the noise level the verdict is judged against.
        force: Train the model even when the Tier 1 gate fails.
        tokenizer: One tokenizer for every model (default: the one chosen for your model).
        progress, say: Passed to ``train``.

    Returns:
        A :class:`~utils.tier3.benchmark_report.BenchmarkResult`: ``table`` (a DataFrame),
        ``verdict`` (words), ``plot()``, ``to_dict()``.

    Raises:
        UserError: seq2seq (no baseline), ``steps`` or ``seeds`` below 1, bad data.
        GateFailed: your model failed the Tier 1 gate (and ``force`` is False).
    """
    from utils.atomic import write_json
    from utils.checks import as_adapter
    from utils.environment import require_all
    from utils.training.training_core import TRAINING_PACKAGES

    require_all(TRAINING_PACKAGES, "The benchmark")
    problems = [f"{name}={value!r} (need an integer >= 1)" for name, value in
                (("steps", steps), ("seeds", seeds))
                if not isinstance(value, int) or isinstance(value, bool) or value < 1]
    if problems:
        raise UserError(f"benchmark_comparison got {' and '.join(problems)}.",
                        fix="Pass steps=300 (optimizer steps per model) and seeds=2.")
    adapter = as_adapter(model)
    baseline_kind(adapter.task, baseline)  # seq2seq has none: say so before anything runs
    if config is None:
        from utils.ui.presets import preset_for

        config = preset_for(adapter)
    config = config.replace(max_steps=steps, epochs=None, early_stopping_patience=0,
                            seq_len=config.seq_len_for(adapter.max_seq_len),
                            val_every=validation_interval(steps, config.val_every))
    spec = baseline_for(adapter, baseline, max_seq_len=config.seq_len)  # fails before training
    root = _benchmark_dir(adapter, config)
    data = _dataset(data, adapter.task, progress)

    def arm_config(name: str, seed: int):
        mirror = str(Path(config.mirror_dir) / name) if config.mirror_dir else None
        return config.replace(out_dir=str(root / name), mirror_dir=mirror, seed=seed)

    mine, tokenizer, reused = _train_arm(
        f"your model ({type(adapter.model).__name__})", "model", model, adapter, data,
        arm_config("model", config.seed), tokenizer=tokenizer, gate=True, force=force,
        progress=progress, say=say)
    arms, notes = [mine], []
    any_reused = reused
    for i in range(seeds):
        seed = config.seed + i
        base = spec.adapter_for(adapter, seed=seed)
        arm, _, reused = _train_arm(f"baseline (seed {seed})", "baseline", base, base, data,
                                    arm_config(f"baseline-seed{seed}", seed),
                                    tokenizer=tokenizer, gate=False, force=False,
                                    progress=progress, say=say)
        arms.append(arm)
        any_reused |= reused
    words, diff, noise = verdict(mine, arms[1:])
    if any_reused:
        notes.append("Some runs had finished in an earlier call and were reused, not trained "
                     "again (delete their folders under the benchmark's folder to rerun).")
    if not all(a.memory_measured for a in arms):
        notes.append("Peak memory on the CPU is the memory model's estimate (weights, "
                     "gradients, AdamW state and saved activations), not a measurement.")
    if seeds == 1:
        notes.append("One baseline seed: the noise level is not measured.")
    result = BenchmarkResult(arms=arms, baseline=spec, verdict=words, difference=diff,
                             noise=noise, config=config, run_dir=root, notes=notes)
    write_json(root / "benchmark.json", result.to_dict())
    return result
