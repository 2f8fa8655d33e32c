"""``memory_footprint`` and ``inference_speed``: what the model costs to train and to run.

Memory for one training step = parameters + gradients + AdamW state (two fp32 moments) +
activations. Activations are what autograd saves for backward, measured exactly with
``saved_tensors_hooks`` at two lengths and fitted as ``αT + βT²`` per sample (attention maps
grow with T²), so the answer extends to the model's full length and any batch (the model is
``utils.memory``, which ``preset_for`` uses too). On CUDA the forward+backward peak is measured
with the allocator's peak statistics instead.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from typing import TYPE_CHECKING

import torch

from utils.checks import register
from utils.gpu_table import COLAB_FREE, RESERVED_GB, lookup
from utils.memory import activation_fit, estimate_train_memory, max_batch_size
from utils.report import CheckResult

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_MB = 2**20
_GB = 2**30
# The one way the card is named: its size and the share a training step may use (gpu_table).
_T4 = f"{COLAB_FREE.memory_gb:g} GB card, {COLAB_FREE.memory_gb - RESERVED_GB:g} GB usable"


def trained_length(adapter: Adapter, options) -> tuple[int, str]:
    """The length a training step runs at, and why: the model's max_seq_len (a config key, a
    learned table, a causal mask); but where that number is only the rows of a fixed table
    (PyTorch's sinusoidal PositionalEncoding keeps max_len=5000 by default) — a capacity, not
    a length anyone trains at — the length training uses by default: max_seq_len capped at
    ``options.max_len_cap``, as the trainer caps it."""
    seq = adapter.max_seq_len or options.max_len_cap
    ev = adapter.evidence.get("max_seq_len")
    named = re.search(r"'([^']+)'", ev.detail) if ev is not None and ev.method in (
        "structure", "probe") else None
    table = dict(adapter.model.named_buffers()).get(named.group(1)) if named else None
    fixed = table is not None and table.is_floating_point() and \
        not bool(((table == 0) | (table == 1)).all())  # a causal 0/1 mask is a real limit
    capped = min(seq, options.max_len_cap)
    if fixed and named is not None and capped < seq:
        return capped, (f"length {capped}, the length training uses by default: max_seq_len "
                        f"{seq} is the rows of the fixed table '{named.group(1)}', a capacity "
                        "rather than a trained length")
    return seq, f"length {seq}"


@register("memory_footprint", tier=1)
def check_memory_footprint(adapter: Adapter, options) -> CheckResult:
    model = adapter.model
    fitted = activation_fit(adapter, seed=options.seed, max_len=options.max_len(adapter))
    seq, at = trained_length(adapter, options)
    budget = (COLAB_FREE.memory_gb - RESERVED_GB) * _GB
    rows = []
    for b in sorted({1, 8, 32, options.batch_size}):  # memory answers any batch
        est = estimate_train_memory(adapter, b, seq, fit=fitted)
        half = estimate_train_memory(adapter, b, seq, precision="16-mixed", fit=fitted)
        rows.append({"batch": b, "seq_len": seq, "params_mb": est.params / _MB,
                     "grads_mb": est.grads / _MB, "optimizer_mb": est.optimizer / _MB,
                     "activations_mb": est.activations / _MB, "train_total_mb": est.total / _MB,
                     "train_total_fp16_mb": half.total / _MB,
                     "fits_colab_t4": est.fits(budget)})
    single = estimate_train_memory(adapter, 1, seq, fit=fitted)
    params, per_sample, (alpha, beta) = single.params, single.activations, fitted
    fit = max_batch_size(adapter, seq, budget, fit=fitted)
    fit16 = max_batch_size(adapter, seq, budget, precision="16-mixed", fit=fitted)
    how = "estimated from autograd's saved tensors"
    if torch.cuda.is_available() and adapter.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(adapter.device)
        start = torch.cuda.memory_allocated(adapter.device)
        adapter.loss(adapter.make_inputs(1, seq, seed=options.seed)).backward()
        measured = torch.cuda.max_memory_allocated(adapter.device) - start
        model.zero_grad(set_to_none=True)
        how = f"measured on {torch.cuda.get_device_name(adapter.device)}"
        rows[0]["measured_fwd_bwd_mb"] = measured / _MB
    metrics = {"params_mb": params / _MB, "activation_mb_per_sample_at_max_len": per_sample / _MB,
               "activation_bytes_per_token": alpha, "activation_bytes_per_token_sq": beta,
               "max_batch_colab_t4_fp32": fit, "max_batch_colab_t4_fp16": fit16}
    threshold = {"colab_t4_usable_gb": COLAB_FREE.memory_gb - RESERVED_GB}
    one = rows[0]["train_total_mb"]
    if fit < 1:
        return CheckResult(
            "memory_footprint", 1, "warn",
            f"Training even at batch 1 × {seq} needs ≈ {one / 1024:.1f} GB ({how}): more than a "
            f"Colab T4 offers ({_T4}). Shorten sequences, shrink the model, or use gradient "
            "checkpointing.", metrics, threshold, rows)
    return CheckResult(
        "memory_footprint", 1, "pass",
        f"Training at {at}: batch 1 needs ≈ {one:.0f} MB (weights {params / _MB:.1f} MB "
        f"+ grads + AdamW + activations, {how}); a Colab T4 ({_T4}) fits batch ≈ {fit} in fp32, "
        f"≈ {fit16} with fp16 autocast.", metrics, threshold, rows)


# The stopping rule: at least _MIN_RUNS timed runs; stop once each of the last _CALM runs moved
# the running median by at most _P50_RTOL (relative), or after _MAX_RUNS, or when the timed
# runs have used the time allowed (a slow model is not timed for long).
_MIN_RUNS, _MAX_RUNS, _P50_RTOL, _CALM = 5, 30, 0.02, 2


def _until_stable(once, seconds: float) -> tuple[list[float], str]:
    """Durations of ``once()`` calls until their median is stable, and why it stopped."""
    times, medians = [], []
    while True:
        times.append(once())
        medians.append(statistics.median(times))
        calm = len(medians) > _CALM and all(
            abs(medians[-i] - medians[-i - 1]) <= _P50_RTOL * medians[-i]
            for i in range(1, _CALM + 1))
        if len(times) >= _MIN_RUNS and calm:
            return times, f"p50 stable to {_P50_RTOL:.0%}"
        if len(times) >= _MAX_RUNS:
            return times, f"at most {_MAX_RUNS} runs"
        if len(times) >= _MIN_RUNS and sum(times) >= seconds:
            return times, f"{seconds:g} s of runs"


@register("inference_speed", tier=1)
def check_inference_speed(adapter: Adapter, options) -> CheckResult:
    seq, size = min(options.max_len(adapter), 128), options.batch(adapter)
    batch = adapter.make_inputs(size, seq, seed=options.seed)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    cuda = adapter.device.type == "cuda"
    adapter.model.eval()

    def once() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            adapter.logits(**inputs)
        if cuda:
            torch.cuda.synchronize(adapter.device)
        return time.perf_counter() - start

    once()  # warm-up: allocations, lazy initialisation at this shape
    times, reason = _until_stable(once, min(options.time_budget, 1.0))
    runs, p50 = len(times), statistics.median(times)
    ordered = sorted(times)
    pct = {q: ordered[min(runs - 1, math.ceil(q / 100 * runs) - 1)] for q in (90, 99)}
    tokens = size * seq
    params = sum(p.numel() for p in adapter.model.parameters())
    metrics = {"batch": size, "seq_len": seq, "runs": runs, "stopped": reason,
               "p50_ms": p50 * 1e3, "p90_ms": pct[90] * 1e3, "p99_ms": pct[99] * 1e3,
               "tokens_per_s": tokens / p50, "approx_gflop_per_forward": 2 * params * tokens / 1e9}
    where = "CPU"
    if cuda:
        name = torch.cuda.get_device_name(adapter.device)
        gpu, where = lookup(name), name
        if gpu is not None:
            achieved = 2 * params * tokens / p50 / 1e12
            metrics["utilisation_of_fp32_peak"] = achieved / gpu.fp32_tflops
    rows = [{"run": i, "ms": t * 1e3} for i, t in enumerate(times)]  # in the order run
    share = (f"; {metrics['utilisation_of_fp32_peak']:.0%} of the card's fp32 peak"
             if "utilisation_of_fp32_peak" in metrics else "")
    return CheckResult(
        "inference_speed", 1, "pass",
        f"Forward at batch {size} × {seq} on {where}: p50 {p50 * 1e3:.1f} ms, p90 "
        f"{pct[90] * 1e3:.1f} ms ({runs} runs after warm-up, {reason}), {tokens / p50:,.0f} "
        f"tokens/s{share}.",
        metrics, {"informational": True}, rows)
