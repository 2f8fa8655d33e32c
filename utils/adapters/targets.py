"""Models whose forward returns only the last position unless targets are given.

A very common GPT pattern (nanoGPT's ``forward(idx, targets=None)``) computes the head on the
last position only at inference (``logits[:, [-1], :]``, shape ``[B, 1, V]``) and full logits
plus its own loss only when ``targets`` is passed. Such a model is driven with its targets
parameter (the input ids as a placeholder: the logits do not depend on it), and its own loss is
compared with cross-entropy of its logits so the report says which convention it follows and
whether it agrees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.adapters.detection import Evidence, Probe, run_probe
from utils.adapters.signature import ForwardSpec, extract_output
from utils.errors import UserError

__all__ = ["full_logits_probe", "last_position_only", "model_loss_agreement", "returned_logits",
           "scalar_loss"]

_AGREE = 1e-4  # relative difference between the model's loss and the cross-entropy


def last_position_only(shape: tuple[int, ...], seq_len: int) -> bool:
    """A ``[B, 1, V]`` output for an input of ``seq_len`` > 1 tokens."""
    return len(shape) == 3 and shape[1] == 1 and seq_len > 1


def full_logits_probe(model: nn.Module, spec: ForwardSpec, probe: Probe, *, id_limit: int,
                      device: torch.device) -> tuple[Probe, str | None]:
    """``(probe, note)``: when the plain call returned the last position only, the probe again
    with ``spec.feed_targets`` set (kept when it gives every position); ``note`` says what
    happened (None when the output already had every position)."""
    t = probe.seq_len
    if not last_position_only(probe.output_shape, t):
        return probe, None
    seen = (f"without targets forward returned time dimension 1 while the input had T={t} "
            f"(output {list(probe.output_shape)} for input [2, {t}])")
    if spec.targets_param is None:
        return probe, f"{seen}, and it takes no targets/labels parameter to ask for more"
    spec.feed_targets = True
    try:
        full = run_probe(model, spec, seq_len=t, id_limit=id_limit, device=device)
    except UserError as err:
        spec.feed_targets = False
        return probe, f"{seen}; called with {spec.targets_param}= it raised: {err.message}"
    if len(full.output_shape) == 3 and full.output_shape[1] == t:
        return full, (f"{seen}; called with {spec.targets_param}=<the input ids> it returns "
                      f"every position ({list(full.output_shape)}), so every call passes it")
    spec.feed_targets = False
    return probe, (f"{seen}; called with {spec.targets_param}= it still returned "
                   f"{list(full.output_shape)}")


def scalar_loss(out) -> torch.Tensor | None:
    """The 0-dim loss a forward returned beside its logits (``.loss``, ``['loss']`` or a
    0-dim element of a tuple) or alone (a 0-dim tensor)."""
    if isinstance(out, torch.Tensor):
        return out if out.ndim == 0 else None
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, dict):
        loss = out.get("loss")
    if loss is None and isinstance(out, (tuple, list)):
        loss = next((x for x in out if isinstance(x, torch.Tensor) and x.ndim == 0), None)
    return loss if isinstance(loss, torch.Tensor) and loss.ndim == 0 else None


def returned_logits(out) -> torch.Tensor | None:
    """The logits a forward given targets returned, or None when it returned the loss alone
    (a 0-dim tensor, or a dict or tuple with no tensor of two or more dims)."""
    if isinstance(out, torch.Tensor) and out.ndim == 0:
        return None
    try:
        return extract_output(out)[0]
    except UserError:
        return None


@torch.no_grad()
def model_loss_agreement(model: nn.Module, spec: ForwardSpec, *, seq_len: int, id_limit: int,
                         device: torch.device) -> tuple[Evidence, str | None] | None:
    """The model's own loss (targets = the input ids) against cross-entropy of its logits,
    aligned (the targets are already the next tokens: nanoGPT) and shifted (the model shifts
    labels itself: Hugging Face). ``(evidence, warning or None)``; None when the model returns
    no loss. The adapter's ``loss`` shifts unshifted labels, so an agreement under either
    convention means the two measure the same next-token cross-entropy."""
    t = max(2, seq_len)
    ids = torch.randint(0, max(id_limit, 1), (2, t),
                        generator=torch.Generator().manual_seed(99)).to(device)
    fed, spec.feed_targets = spec.feed_targets, True
    was_training = model.training
    model.eval()
    try:
        args, kwargs = spec.build_call({"input_ids": ids})
        out = model(*args, **kwargs)
        logits = returned_logits(out)
        if logits is None or logits.shape[:2] != ids.shape:  # the loss alone, or flattened
            spec.feed_targets = False
            args, kwargs = spec.build_call({"input_ids": ids})
            logits, _ = extract_output(model(*args, **kwargs))
    except Exception:  # a targets parameter of another shape or meaning: nothing to compare
        return None
    finally:
        spec.feed_targets = fed
        model.train(was_training)
    loss = scalar_loss(out)
    if loss is None or logits.ndim != 3 or logits.shape[1] != t:
        return None
    logits = logits.float()
    aligned = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                              ids[:, 1:].reshape(-1))
    own = float(loss)

    def close(ref: torch.Tensor) -> bool:
        return abs(own - float(ref)) <= _AGREE * max(abs(float(ref)), 1e-6)

    name = spec.targets_param
    if close(shifted) and name in ("targets", "target", "y"):
        detail = (f"the model's own loss with {name}=ids ({own:.4f}) is next-token "
                  f"cross-entropy: it shifts its {name} itself, though a '{name}' argument is, "
                  "by nanoGPT's convention, already the next tokens — given them it would "
                  "train to predict two tokens ahead")
        return (Evidence("differs", "probe", detail),
                f"{detail} (Tier 1's model_loss check)")
    if close(shifted):
        return Evidence("agrees", "probe", f"the model's own loss with {name}=ids ({own:.4f}) "
                        "equals the adapter's next-token cross-entropy: the model shifts "
                        "labels itself (Hugging Face's convention)"), None
    if close(aligned) and name not in ("targets", "target", "y"):
        detail = (f"the model's own loss with {name}=ids ({own:.4f}) is cross-entropy against "
                  "the same positions, not the next tokens: a labels argument is the input ids "
                  "(Hugging Face's convention), so the labels are not shifted")
        return (Evidence("differs", "probe", detail),
                f"{detail} — training on the model's own loss would learn to copy the current "
                "token (Tier 1's model_loss check)")
    if close(aligned):
        return Evidence("agrees", "probe", f"the model's own loss with {name}=ids ({own:.4f}) "
                        "equals cross-entropy of its logits against the targets at the same "
                        f"positions: its {name} are the next tokens (nanoGPT's convention); the "
                        "adapter's loss is that cross-entropy, shifting unshifted labels "
                        "itself"), None
    detail = (f"the model's own loss with {name}=ids is {own:.4f}, but cross-entropy of its "
              f"logits is {float(shifted):.4f} against the next tokens and {float(aligned):.4f} "
              "against the same positions")
    return (Evidence("differs", "probe", detail),
            f"{detail}: its loss is not plain next-token cross-entropy (label smoothing, an "
            "auxiliary term, a sum instead of a mean, or a bug). The testbench's checks and "
            "training use the adapter's loss.")
