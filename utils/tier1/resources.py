"""``memory_footprint`` and ``inference_speed``: what the model costs to train and to run.

Memory for one training step = parameters + gradients + AdamW state (two fp32 moments) +
activations. Activations are what autograd saves for backward, measured exactly with
``saved_tensors_hooks`` at two lengths and fitted as ``αT + βT²`` per sample (attention maps
grow with T²), so the answer extends to the model's full length and any batch. On CUDA the
forward+backward peak is measured with the allocator's peak statistics instead.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from utils.checks import register
from utils.report import CheckResult
from utils.tier1.gpu_table import COLAB_FREE, RESERVED_GB, lookup

_MB = 2**20
_GB = 2**30


def _saved_bytes(adapter, batch: dict[str, torch.Tensor], param_ptrs: set[int]) -> int:
    """Bytes autograd keeps for backward during one forward (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    adapter.model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        adapter.loss(batch)
    return sum(seen.values())


def _activation_model(adapter, options) -> tuple[float, float]:
    """Per-sample saved bytes as ``(α, β)`` with activations(T) = αT + βT²."""
    params = {p.untyped_storage().data_ptr() for p in adapter.model.parameters()}
    top = options.max_len(adapter)
    t_a, t_b = max(1, min(top, 32) // 2), min(top, 64)
    b = 2
    a_a = _saved_bytes(adapter, adapter.make_inputs(b, t_a, seed=options.seed), params) / b
    if t_b == t_a:
        return a_a / t_a, 0.0
    a_b = _saved_bytes(adapter, adapter.make_inputs(b, t_b, seed=options.seed), params) / b
    beta = (a_b / t_b - a_a / t_a) / (t_b - t_a)
    if beta < 0:
        return a_b / t_b, 0.0
    return max(a_a / t_a - beta * t_a, 0.0), beta


@register("memory_footprint", tier=1)
def check_memory_footprint(adapter, options) -> CheckResult:
    model = adapter.model
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    alpha, beta = _activation_model(adapter, options)
    seq = adapter.max_seq_len or options.max_len_cap
    per_sample = alpha * seq + beta * seq * seq
    fixed = params + trainable + 2 * trainable  # weights, grads, AdamW moments
    budget = (COLAB_FREE.memory_gb - RESERVED_GB) * _GB
    rows = []
    for b in sorted({1, 8, 32, options.batch_size}):  # memory answers any batch
        act = per_sample * b
        total = fixed + act
        rows.append({"batch": b, "seq_len": seq, "params_mb": params / _MB,
                     "grads_mb": trainable / _MB, "optimizer_mb": 2 * trainable / _MB,
                     "activations_mb": act / _MB, "train_total_mb": total / _MB,
                     "train_total_fp16_mb": (fixed + act / 2) / _MB,
                     "fits_colab_t4": total <= budget})
    fit = int((budget - fixed) // per_sample) if per_sample > 0 and budget > fixed else 0
    fit16 = int((budget - fixed) // (per_sample / 2)) if per_sample > 0 and budget > fixed else 0
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
            f"16 GB Colab T4 offers. Shorten sequences, shrink the model, or use gradient "
            "checkpointing.", metrics, threshold, rows)
    return CheckResult(
        "memory_footprint", 1, "pass",
        f"Training at length {seq}: batch 1 needs ≈ {one:.0f} MB (weights {params / _MB:.1f} MB "
        f"+ grads + AdamW + activations, {how}); a 16 GB Colab T4 fits batch ≈ {fit} in fp32, "
        f"≈ {fit16} with fp16 autocast.", metrics, threshold, rows)


@register("inference_speed", tier=1)
def check_inference_speed(adapter, options) -> CheckResult:
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

    warmup = [once() for _ in range(2)]
    budget = min(options.time_budget, 1.0)  # ~10 timed runs give a stable p50
    runs = max(5, min(30, int(budget / max(warmup[-1], 1e-4))))
    times = sorted(once() for _ in range(runs))
    p50 = statistics.median(times)
    pct = {q: times[min(len(times) - 1, math.ceil(q / 100 * len(times)) - 1)] for q in (90, 99)}
    tokens = size * seq
    params = sum(p.numel() for p in adapter.model.parameters())
    metrics = {"batch": size, "seq_len": seq, "runs": runs,
               "p50_ms": p50 * 1e3, "p90_ms": pct[90] * 1e3, "p99_ms": pct[99] * 1e3,
               "tokens_per_s": tokens / p50, "approx_gflop_per_forward": 2 * params * tokens / 1e9}
    where = "CPU"
    if cuda:
        name = torch.cuda.get_device_name(adapter.device)
        gpu, where = lookup(name), name
        if gpu is not None:
            achieved = 2 * params * tokens / p50 / 1e12
            metrics["utilisation_of_fp32_peak"] = achieved / gpu.fp32_tflops
    rows = [{"run": i, "ms": t * 1e3} for i, t in enumerate(times)]
    share = (f"; {metrics['utilisation_of_fp32_peak']:.0%} of the card's fp32 peak"
             if "utilisation_of_fp32_peak" in metrics else "")
    return CheckResult(
        "inference_speed", 1, "pass",
        f"Forward at batch {size} × {seq} on {where}: p50 {p50 * 1e3:.1f} ms, p90 "
        f"{pct[90] * 1e3:.1f} ms ({runs} runs after warm-up), {tokens / p50:,.0f} tokens/s{share}.",
        metrics, {"informational": True}, rows)
