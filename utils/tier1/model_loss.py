"""``model_loss``: does the loss the model computes itself measure what its task says?

Many forwards take labels or targets and return their own loss, which is what a user's own
training loop (or Hugging Face's Trainer) optimises. A one-line slip there trains happily and
gives a useless model: ``cross_entropy(logits, labels)`` without the shift that a ``labels``
argument (Hugging Face's convention: labels are the input ids) calls for drives the loss to ~0
by predicting the current token. So the model's own loss on a batch is compared, on the same
batch, with the task loss computed from the logits it returned: next-token cross-entropy for a
causal LM (labels unshifted for a ``labels`` parameter, already the next tokens for
``targets``, nanoGPT's convention), and with padded positions ignored.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from utils.checks import register
from utils.report import CheckResult
from utils.tasks import IGNORE_INDEX
from utils.tier1.outputs import NAN_SOURCES, eval_logits, eval_randomness, random_in_eval

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_NEXT_TOKEN_NAMES = ("targets", "target", "y")  # nanoGPT: the caller passes the next tokens


def _own_loss(adapter: Adapter, ids: torch.Tensor, mask: torch.Tensor | None,
              labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(logits or None, the model's own loss or None)`` of one eval forward with ``labels``
    fed. The logits are None when forward returned the loss alone (a 0-dim tensor, or a dict
    or tuple holding no other tensor)."""
    from utils.adapters.targets import returned_logits, scalar_loss

    batch = {"input_ids": ids, **({"attention_mask": mask} if mask is not None else {})}
    args, kwargs = adapter.call_args(batch, feed_targets=True)
    assert adapter.targets_param is not None, "model_loss runs for models that take targets"
    kwargs[adapter.targets_param] = labels
    adapter.model.eval()
    with torch.no_grad():
        out = adapter.model(*args, **kwargs)
    logits = returned_logits(out)
    return (logits.float() if logits is not None else None), scalar_loss(out)


def _logits_shape_note(logits: torch.Tensor | None, param: str, b: int, t: int) -> str | None:
    """What forward returned instead of ``[B, T, V]`` logits when given ``param`` (the loss
    alone, logits flattened to ``[B·T, V]``, or cut), or None when it returned those."""
    if logits is None:
        return f"given {param}, forward returns the loss alone"
    if logits.ndim == 3 and tuple(logits.shape[:2]) == (b, t):
        return None
    flat = logits.ndim == 2 and logits.shape[0] in (b * t, b * (t - 1))
    return (f"given {param}, forward returns logits of shape {list(logits.shape)}"
            + (" (flattened to [B·T, V])" if flat else "") + f" for input [{b}, {t}]")


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-6)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 ignore_index=IGNORE_INDEX))


def _task_loss(logits: torch.Tensor, labels: torch.Tensor, next_tokens: bool) -> float:
    """Next-token cross-entropy: ``labels`` already the next tokens, or shifted here."""
    return _cross_entropy(logits, labels) if next_tokens else \
        _cross_entropy(logits[:, :-1], labels[:, 1:])


def _ignores_by_pad_id(adapter: Adapter, x, mask, labels, param: str, next_tokens: bool,
                       exc: Exception, tol: float) -> CheckResult:
    """The model raised on -100 in its labels: does it mark padding with its pad id instead?"""
    name = "model_loss"
    pad = adapter.pad_token_id if adapter.pad_token_id is not None else 0
    by_pad = labels.masked_fill(labels == IGNORE_INDEX, pad)
    said = (f"Calling forward with {param} marked -100 where padded (Hugging Face's "
            f"convention, what its collators produce) raised {type(exc).__name__}: "
            f"{str(exc)[:120].rstrip('.')}")
    try:
        logits, own = _own_loss(adapter, x, mask, by_pad)
    except Exception:
        own = None
    if own is None:
        return CheckResult(name, 1, "skip", f"{said}; with the pad id there instead it gives "
                           "no loss either, so its own loss cannot be compared.")
    if logits is None or _logits_shape_note(logits, param, *x.shape) is not None:
        # the loss alone, or logits flattened: those of the same eval forward without targets
        logits = eval_logits(adapter, {"input_ids": x, "attention_mask": mask}).float()
    expected = _task_loss(logits, labels, next_tokens)
    own_value = float(own)
    metrics = {"model_loss": own_value, "task_loss": expected, "ignores": f"pad id {pad}",
               "rel_diff": _rel(own_value, expected)}
    if _rel(own_value, expected) <= tol:
        return CheckResult(name, 1, "warn", f"{said}. With the pad id ({pad}) there instead "
                           f"its loss ({own_value:.4f}) equals the task loss ({expected:.4f}): "
                           "it ignores padding by the pad id (ignore_index=pad_token_id). "
                           "Batches from Hugging Face's collators, or any labels with -100, "
                           "crash it; ignore_index=-100 takes both once pads are marked -100.",
                           metrics)
    return CheckResult(name, 1, "skip", f"{said}; with the pad id ({pad}) there its loss is "
                       f"{own_value:.4f} against a task loss of {expected:.4f}, so what it "
                       "ignores is unclear and its own loss cannot be compared.", metrics)


@register("model_loss", tier=1, thresholds=("rtol",))
def check_model_loss(adapter: Adapter, options) -> CheckResult:
    name = "model_loss"
    param = adapter.targets_param
    if adapter.task != "causal_lm" or param is None:
        return CheckResult(name, 1, "skip", "The model takes no labels/targets argument, so it "
                           "computes no loss of its own; training uses the task loss."
                           if param is None else
                           f"Compared for causal LMs only (this is a {adapter.task} model).")
    if not adapter.takes_by_name(param):
        return CheckResult(name, 1, "skip", f"'{param}' is positional-only, so it cannot be fed "
                           "by name.")
    next_tokens = param in _NEXT_TOKEN_NAMES
    t = max(4, min(options.max_len(adapter), 16))
    batch = adapter.make_inputs(2, t, seed=options.seed)
    ids = batch["input_ids"]
    mask = None
    if adapter.takes_mask:  # the last quarter of the second row is padding, ignored by the loss
        mask = torch.ones_like(ids)
        mask[1, -(t // 4):] = 0
    if next_tokens:  # nanoGPT: inputs x[:, :-1], targets x[:, 1:], aligned
        x, labels = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        mask = mask[:, :-1].contiguous() if mask is not None else None
    else:  # Hugging Face: labels are the input ids; the model shifts them itself
        x, labels = ids, ids.clone()
    if mask is not None:
        labels[mask == 0] = IGNORE_INDEX
    try:
        logits, own = _own_loss(adapter, x, mask, labels)
    except Exception as exc:  # the model's labels mean something else: nothing to compare
        if mask is not None and str(IGNORE_INDEX) in str(exc):
            return _ignores_by_pad_id(adapter, x, mask, labels, param, next_tokens, exc,
                                      options.threshold(f"{name}.rtol", 1e-5))
        return CheckResult(name, 1, "skip", f"Calling forward with {param}=<labels> raised "
                           f"{type(exc).__name__}: {str(exc)[:160]}; its own loss cannot be "
                           "compared.")
    if own is None:
        return CheckResult(name, 1, "skip", f"forward takes '{param}' but returned no scalar "
                           "loss beside its logits.")
    probe = {"input_ids": x, **({"attention_mask": mask} if mask is not None else {})}
    plain = eval_logits(adapter, probe, options.seed).float()
    noise = eval_randomness(adapter, probe, options.seed, plain)
    if noise > 1e-5:
        return random_in_eval(name, noise)
    # the loss alone, or logits flattened to [B·T, V] beside it (Karpathy's lecture GPT): the
    # logits of the same eval forward without targets are what that loss was computed from
    shape_note = _logits_shape_note(logits, param, *x.shape)
    if shape_note is not None:
        if tuple(plain.shape[:2]) != tuple(x.shape) or plain.ndim != 3:
            return CheckResult(name, 1, "skip", f"{shape_note[0].upper()}{shape_note[1:]}, and "
                               f"without it logits of shape {list(plain.shape)}: its own loss "
                               "cannot be lined up with per-position logits.")
        logits = plain
    assert logits is not None, "_logits_shape_note names what forward gave instead"
    expected = _task_loss(logits, labels, next_tokens)
    if next_tokens:
        unshifted = _cross_entropy(logits[:, :-1], labels[:, 1:])  # shifted once more
        rule = f"{param} are the next tokens (nanoGPT's convention): cross-entropy at each position"
    else:
        unshifted = _cross_entropy(logits, labels)
        rule = (f"{param} are the input ids (Hugging Face's convention): next-token "
                "cross-entropy, the model shifting them")
    own_value = float(own)
    if not (math.isfinite(own_value) and math.isfinite(expected)):
        return CheckResult(name, 1, "skip", ("On a padded batch t" if mask is not None else
                                             "T") + "he model's own loss is "
                           f"{own_value:.4g} and the task loss of its logits {expected:.4g}: not "
                           "finite, so they cannot be compared. " + NAN_SOURCES,
                           {"model_loss": own_value, "task_loss": expected})
    # Exact up to float rounding: at init the logits are near uniform, so a slip's loss can
    # differ from the right one by only ~1e-5 (relative). So the loss is matched against each
    # candidate — the task loss and what each known slip computes — and the closest one is the
    # verdict when it is clearly closer than the task loss.
    tol = options.threshold(f"{name}.rtol", 1e-5)
    diff = _rel(own_value, expected)
    scored = labels[:, 1:] if not next_tokens else labels
    real = int((scored != IGNORE_INDEX).sum())
    slips = {"unshifted": unshifted}
    if mask is not None:  # padding scored against the pad ids
        slips["no_ignore"] = _cross_entropy(logits[:, :-1], ids[:, 1:]) if not next_tokens \
            else _cross_entropy(logits, ids[:, 1:])
    if real < scored.numel():  # reduction='none' then .mean(): ignored ones count as 0
        slips["zeros_counted"] = expected * real / scored.numel()
    closest = min(slips, key=lambda k: _rel(own_value, slips[k]))
    slip_diff = _rel(own_value, slips[closest])
    metrics = {"convention": "next tokens" if next_tokens else "input ids",
               "model_loss": own_value, "task_loss": expected, "rel_diff": diff,
               "padded": mask is not None, "closest_slip": closest,
               "closest_slip_rel_diff": slip_diff}
    if shape_note is not None:
        metrics["returned_with_targets"] = shape_note
        rule += f"; {shape_note}, so the logits are those of the same forward without it"
    threshold = {"rel_diff": tol}
    slip = slip_diff <= tol and slip_diff * 10 < diff
    if diff <= tol and not slip:
        return CheckResult(name, 1, "pass", f"The model's own loss ({own_value:.4f}) equals the "
                           f"task loss from its logits ({expected:.4f}; {rule}"
                           + (", padded positions ignored" if mask is not None else "") + ").",
                           metrics, threshold)
    if not slip:  # not a known slip: label smoothing or an auxiliary term may be meant
        return CheckResult(name, 1, "warn", f"The model's own loss is {own_value:.4f}, but the "
                           f"task loss from the logits it returned is {expected:.4f} ({rule}; "
                           f"relative difference {diff:.1e}, allowed {tol:g}). Not an unshifted "
                           "label or a mean over padding; if it is not label smoothing or an "
                           "auxiliary term you meant, look at how the loss is computed. Training "
                           "here uses the task loss.", metrics, threshold)
    cause = {
        "unshifted": "it scores each position against its own input token — the labels are "
                     "not shifted, so training on this loss learns to copy the current token. "
                     "Shift them: cross_entropy(logits[:, :-1].flatten(0, 1), "
                     "labels[:, 1:].flatten())" if not next_tokens else
                     f"it shifts {param} once more, though they already are the next tokens, "
                     "so it trains to predict two tokens ahead: compute "
                     "cross_entropy(logits.flatten(0, 1), targets.flatten()) unshifted",
        "no_ignore": f"it averages over padded positions too: pass ignore_index={IGNORE_INDEX} "
                     "to cross_entropy (Hugging Face marks padding in labels with -100)",
        "zeros_counted": f"it averages over every position, padding counted as zero loss "
                         f"({real} real targets of {scored.numel()}): "
                         "cross_entropy(…, reduction='none').mean() divides by all of them, so "
                         "the loss shrinks with the padding. Use the default reduction='mean' "
                         "with ignore_index=-100, or divide the sum by the number of real "
                         "targets"}[closest]
    return CheckResult(name, 1, "fail", f"The model's own loss is {own_value:.4f}, but the task "
                       f"loss from the logits it returned is {expected:.4f} ({rule}; relative "
                       f"difference {diff:.1e}, allowed {tol:g}): {cause}.", metrics, threshold)
