"""``mixed_precision``: the forward under autocast against fp32.

Colab's free T4 trains in fp16 (no bf16), whose largest value is 65504: a model that is fine
in fp32 can overflow to inf there. On a GPU the check runs fp16 (and bf16 where the card has
it); on a CPU it runs bf16 and also fp16, which CPU autocast supports, so the T4's overflow is
seen before any GPU time is spent. Non-finite outputs fail; large deviations warn. An exception the model raises under a
precision (a -1e9 mask constant that fp16 cannot hold) fails at the user's line; only a missing
kernel for the dtype on this device is a skip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from utils.checks import register
from utils.errors import locate_in_files
from utils.report import CheckResult
from utils.tier1.locate import describe_module
from utils.tier1.outputs import eval_logits, eval_randomness, random_in_eval

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
# Relative Frobenius deviation from fp32 to warn above: ~8× each format's epsilon
# (fp16 2^-10, bf16 2^-7), which a stack of healthy layers stays well within.
_WARN = {torch.float16: 0.01, torch.bfloat16: 0.06}


# Words of a "this op has no kernel for the dtype on this device" error: a gap in this PyTorch
# build, not in the model — the only exception under autocast that is a skip.
_NO_KERNEL = ("not implemented for", "no kernel", "not supported for", "unsupported dtype",
              "does not support")


def _no_kernel(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, NotImplementedError) or any(w in text for w in _NO_KERNEL)


def _fix_for(message: str) -> str:
    if "without overflow" in message or "cannot be converted" in message:
        return ("a constant that does not fit the format (fp16's largest value is 65504): mask "
                "with float('-inf') or torch.finfo(scores.dtype).min instead of -1e9 / -1e10")
    return ("an operation that only works in fp32: keep that computation in fp32 (cast the "
            "inputs with .float()) or use the dtype of the tensors it receives")


def _dtypes(device: torch.device) -> list[torch.dtype]:
    if device.type == "cuda":
        return [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
    return [torch.bfloat16, torch.float16]


def _compare(adapter: Adapter, batch, ref: torch.Tensor, ref_loss: float | None, dtype) -> dict:
    device = adapter.device
    with torch.autocast(device.type, dtype=dtype):
        out = eval_logits(adapter, batch)
    row: dict[str, Any] = {"dtype": _NAMES[dtype], "output_dtype": str(out.dtype).replace("torch.", "")}
    out = out.float()
    row["finite"] = bool(torch.isfinite(out).all())
    if not row["finite"]:
        row["non_finite_share"] = float((~torch.isfinite(out)).float().mean())
        return row
    row["rel_error"] = float((out - ref).norm() / ref.norm().clamp_min(1e-12))
    if ref.ndim >= 2 and ref.shape[-1] > 1:
        row["top1_agreement"] = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
    if ref_loss is not None:
        loss = float(adapter.loss_from_logits(out, batch))
        row["loss"] = loss
        row["loss_rel_diff"] = abs(loss - ref_loss) / max(abs(ref_loss), 1e-12)
    return row


def _non_finite(values) -> bool:
    values = values if isinstance(values, (tuple, list)) else (values,)
    return any(isinstance(v, torch.Tensor) and v.is_floating_point() and
               not bool(torch.isfinite(v).all()) for v in values)


def _first_non_finite(adapter: Adapter, batch: dict[str, torch.Tensor], dtype) -> str | None:
    """The first module whose inputs are finite and whose output holds NaN/Inf under
    autocast to ``dtype`` — where they are made, in its own code — with where its forward is
    defined; or None."""
    found: list[str] = []
    names = {m: n for n, m in adapter.model.named_modules()}

    def hook(module, args, out):
        if not found and not _non_finite(args) and _non_finite(out):
            found.append(describe_module(module, names.get(module, "")))

    handles = [m.register_forward_hook(hook) for m in adapter.model.modules()]
    try:
        with torch.autocast(adapter.device.type, dtype=dtype):
            eval_logits(adapter, batch)
    except Exception:  # a crash is reported by the run that raised it
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def _finite_where_real(out: torch.Tensor, real: torch.Tensor) -> bool:
    """Finite at the real positions of a per-position output (everywhere for a pooled one)."""
    out = out.float()
    if out.ndim >= 2 and out.shape[:2] == real.shape:
        return bool(torch.isfinite(out[real]).all())
    return bool(torch.isfinite(out).all())


def _padded_non_finite(adapter: Adapter, batch: dict[str, torch.Tensor],
                       dtypes: list[torch.dtype]) -> list[tuple[str, list[str]]]:
    """``(side, [dtype names])`` for each padding side whose real positions hold NaN/Inf under
    autocast while fp32 is finite: a mask constant the format cannot hold. Right padding for
    every model that takes a mask; left padding too for a causal LM, where a leading pad's
    query sees only masked keys."""
    if not adapter.takes_mask or not dtypes:
        return []
    ids = batch["input_ids"]
    t = ids.shape[1]
    n = max(1, t // 4)
    if t < 4:
        return []
    sides = ["right"] + (["left"] if adapter.task == "causal_lm" else [])
    found = []
    for side in sides:
        mask = torch.ones_like(ids)
        cut = slice(t - n, t) if side == "right" else slice(0, n)
        mask[-1, cut] = 0
        pad_ids = ids.clone()
        pad_ids[-1, cut] = adapter.pad_token_id if adapter.pad_token_id is not None else 0
        probe = {k: v for k, v in batch.items() if k not in ("labels", "attention_mask")}
        probe.update(input_ids=pad_ids, attention_mask=mask)
        real = mask.bool()
        if not _finite_where_real(eval_logits(adapter, probe), real):
            continue  # fp32 already breaks: padding_invariance and position_shift say why
        bad = []
        for dtype in dtypes:
            with torch.autocast(adapter.device.type, dtype=dtype):
                try:
                    out = eval_logits(adapter, probe)
                except Exception:  # raised under this dtype: the unpadded run reports it
                    continue
            if not _finite_where_real(out, real):
                bad.append(_NAMES[dtype])
        if bad:
            found.append((side, bad))
    return found


@register("mixed_precision", tier=1, thresholds=("fp16_rel_error", "bf16_rel_error"))
def check_mixed_precision(adapter: Adapter, options) -> CheckResult:
    t = min(options.max_len(adapter), 64)
    batch = adapter.make_inputs(options.batch(adapter, 2), t, seed=options.seed)
    ref = eval_logits(adapter, batch, options.seed).float()
    if not bool(torch.isfinite(ref).all()):
        return CheckResult("mixed_precision", 1, "skip", "The fp32 outputs are already not "
                           "finite; output_stability reports where NaN/Inf starts.")
    noise = eval_randomness(adapter, batch, options.seed, ref)
    if noise > 1e-5:
        return random_in_eval("mixed_precision", noise)
    has_loss = "labels" in batch and adapter.task != "encoder" and not (
        adapter.task == "causal_lm" and t < 2)
    ref_loss = float(adapter.loss_from_logits(ref, batch)) if has_loss else None
    rows: list[dict[str, Any]] = []
    unsupported: list[str] = []
    raised: list[dict[str, Any]] = []
    for dtype in _dtypes(adapter.device):
        try:
            rows.append(_compare(adapter, batch, ref, ref_loss, dtype))
        except Exception as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            loc = locate_in_files(exc.__traceback__, adapter.model_files)
            if _no_kernel(exc):
                unsupported.append(f"{_NAMES[dtype]}: {first[:120]}")  # this build's gap
            else:  # the model's own code fails under this precision
                raised.append({"dtype": _NAMES[dtype], "error": f"{type(exc).__name__}: {first}",
                               "file": loc.file if loc else None,
                               "line": loc.line if loc else None, "at": str(loc or "")})
    warn = {_NAMES[d]: options.threshold(f"mixed_precision.{_NAMES[d]}_rel_error", w)
            for d, w in _WARN.items()}
    metrics: dict[str, Any] = {f"{r['dtype']}_rel_error": r.get("rel_error") for r in rows}
    metrics.update({f"{r['dtype']}_finite": r["finite"] for r in rows})
    metrics["device"] = adapter.device.type
    threshold = {"non_finite": 0, **{f"warn_{k}_rel_error": v for k, v in warn.items()}}
    where = "on this CPU (emulating Colab's T4)" if adapter.device.type == "cpu" else ""
    if raised:
        r = raised[0]
        names = ", ".join(x["dtype"] for x in raised)
        t4 = " (what Colab's T4 trains in)" if any(x["dtype"] == "fp16" for x in raised) else ""
        where_ = f" at {r['at']}" if r["at"] else ""
        metrics["raised"] = names
        return CheckResult(
            "mixed_precision", 1, "fail",
            f"Under {names} autocast{t4} the model raises{where_}: {r['error']}. fp32 runs, so "
            f"training with this precision would crash. The cause is {_fix_for(r['error'])}.",
            metrics, threshold, rows + raised)
    broken = [r for r in rows if not r["finite"]]
    if broken:
        names = ", ".join(r["dtype"] for r in broken)
        t4 = " (what Colab's T4 trains in)" if any(r["dtype"] == "fp16" for r in broken) else ""
        made_in = _first_non_finite(adapter, batch, next(d for d in _NAMES
                                                         if _NAMES[d] == broken[0]["dtype"]))
        if made_in:
            metrics["first_non_finite_module"] = made_in
        at = f" (made in {made_in})" if made_in else ""
        return CheckResult(
            "mixed_precision", 1, "fail",
            f"Under {names} autocast{t4} the outputs hold NaN/Inf "
            f"({broken[0]['non_finite_share']:.1%} of values){at} while fp32 is finite: values "
            "exceed the format's range (fp16 max 65504). Scale attention scores by "
            "1/sqrt(head_dim), keep residual streams normalised, and avoid huge constants "
            "(use -inf or torch.finfo(x.dtype).min for masks, not -1e9).",
            metrics, threshold, rows)
    padded = _padded_non_finite(adapter, batch, [d for d in _dtypes(adapter.device)
                                                 if _NAMES[d] in {r["dtype"] for r in rows}])
    if padded:
        side, padded_dtypes = padded[0]
        metrics["non_finite_when_padded"] = {s_: n for s_, n in padded}
        t4 = " (what Colab's T4 trains in)" if "fp16" in padded_dtypes else ""
        said = (f"Under {', '.join(padded_dtypes)} autocast{t4} the outputs at real positions hold "
                f"NaN/Inf when the batch is {side}-padded, while fp32 is finite: a mask "
                "constant such as -1e9 becomes -inf in fp16, and a query whose visible keys "
                "are all masked then softmaxes to NaN, which the next layer spreads "
                "(0 · NaN). Mask with torch.finfo(scores.dtype).min (it fits every format) "
                "and add it in the scores' dtype, or zero fully masked rows.")
        if side == "right":
            return CheckResult("mixed_precision", 1, "fail", f"{said} Training on padded "
                               "batches in this precision would give a NaN loss.", metrics,
                               threshold, rows)
        return CheckResult("mixed_precision", 1, "warn", f"{said} Right-padded batches are "
                           "fine; left padding is what batched generation and some tokenizers "
                           "(padding_side='left') use.", metrics, threshold, rows)
    if not rows:
        return CheckResult("mixed_precision", 1, "skip", "Autocast is not supported here: "
                           + "; ".join(unsupported), metrics, threshold, rows)
    loud = [r for r in rows if r["rel_error"] > warn[r["dtype"]]]
    measured = ", ".join(f"{r['dtype']} {r['rel_error']:.1e}" for r in rows)
    if loud:
        r = loud[0]
        return CheckResult(
            "mixed_precision", 1, "warn",
            f"Under {r['dtype']} autocast {where} the outputs deviate from fp32 by "
            f"{r['rel_error']:.1e} (relative; warn above {warn[r['dtype']]:g}): low precision "
            "changes what this model computes. Look for large activations, softmax over "
            "unscaled scores, or sums over long sequences.", metrics, threshold, rows)
    note = f"; not run: {'; '.join(unsupported)}" if unsupported else ""
    return CheckResult(
        "mixed_precision", 1, "pass",
        f"Autocast outputs finite and close to fp32 {where} (relative error {measured}){note}.",
        metrics, threshold, rows)
