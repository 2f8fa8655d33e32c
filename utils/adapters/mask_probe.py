"""Which polarity a mask argument uses, when its name does not say (``mask``, ``attn_mask``).

Padding appended after the real tokens and masked out must leave the outputs at the real
positions unchanged. The probe runs the model on a short batch, then on the same batch with
padding appended, once per convention: the batch's 1/0 mask as is, ``True`` = real token, and
``True`` = padding. A convention that leaves the real positions unchanged is the model's; the
wrong polarity masks the real tokens instead and moves them (or makes them NaN). A parameter
that raises under every convention is not a ``[batch, seq_len]`` padding mask (a ``[T, T]``
attention mask, say) and is not fed. When no convention leaves them unchanged the model
ignores or misapplies the mask, and when every convention does (a causal model never looks
right), the probe cannot tell: both keep the name's usual meaning, and padding_invariance
measures the rest. A name that does say its meaning (``attention_mask``, ``*_key_padding_mask``)
is kept, and checked against the opposite polarity: a model that works only the other way
round applies its mask inverted, which padding_invariance then fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from utils.adapters.detection import Evidence
from utils.adapters.signature import ForwardSpec, extract_output

__all__ = ["MaskProbe", "check_named_mask", "probe_mask_polarity"]

_STYLES = ("keep_bool", "pad", "keep")  # bool True = keep first: what a bare `mask` means
_MEANING = {"keep": "1 = real token", "keep_bool": "True = real token", "pad": "True = padding"}
_UNCHANGED = 1e-4  # relative change at real positions that counts as "unchanged"


@dataclass
class MaskProbe:
    style: str | None  # the convention to use; None: do not feed the parameter
    evidence: Evidence


def _default_style(name: str) -> str:
    # PyTorch's attn_mask (bool) means True = blocked; a bare `mask` usually True = keep.
    return "pad" if name == "attn_mask" else "keep_bool"


def _run(model: nn.Module, spec: ForwardSpec, batch: dict, device: torch.device,
         ) -> torch.Tensor:
    """One forward on a fixed seed (randomness a model keeps on in eval cannot pose as a
    difference), the global RNG left as it was."""
    args, kwargs = spec.build_call(batch)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1234)
        return extract_output(model(*args, **kwargs))[0].detach().float()


@torch.no_grad()
def _measure(model: nn.Module, spec: ForwardSpec, styles: tuple[str, ...], *, seq_len: int,
             id_limit: int, pad_id: int, device: torch.device, pooled: bool,
             ) -> tuple[dict[str, float | str], str, str]:
    """Per style, the relative change at real positions (or why it could not be measured);
    those changes as text, and a sentence saying what was measured."""
    t, extra = max(2, seq_len), max(2, seq_len // 2)
    gen = torch.Generator().manual_seed(4321)
    ids = torch.randint(0, max(id_limit, 1), (2, t), generator=gen).to(device)
    if id_limit > 1:  # real tokens are never the padding id
        ids[ids == pad_id] = (pad_id + 1) % id_limit
    padded = torch.cat([ids, ids.new_full((2, extra), pad_id)], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros((2, extra), dtype=ids.dtype,
                                                        device=device)], dim=1)
    clean_batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    padded_batch = {"input_ids": padded, "attention_mask": mask}
    if spec.decoder_param:  # the same decoder input: only the encoder side is padded
        clean_batch["decoder_input_ids"] = padded_batch["decoder_input_ids"] = ids
    was_training, style_before = model.training, spec.mask_style
    model.eval()
    changes: dict[str, float | str] = {}
    try:
        for style in styles:
            spec.mask_style = style
            try:
                clean = _run(model, spec, clean_batch, device)
                out = _run(model, spec, padded_batch, device)
            except Exception as exc:  # the wrong dtype or not a padding mask at all
                changes[style] = f"raised {type(exc).__name__}"
                continue
            real = out if pooled else out[:, :t]
            if real.shape != clean.shape:
                changes[style] = "wrong shape"
                continue
            if not (torch.isfinite(real).all() and torch.isfinite(clean).all()):
                changes[style] = "not finite"
                continue
            scale = float(clean.abs().max().clamp_min(1e-6))
            changes[style] = float((real - clean).abs().max()) / scale
    finally:
        spec.mask_style = style_before
        model.train(was_training)
    told = "; ".join(f"{_MEANING[s]}: " + (f"{c:.1e}" if isinstance(c, float) else c)
                     for s, c in changes.items())
    return changes, told, f"padding {extra} token(s) after {t} real ones moved the real " \
        f"positions by ({told})"


def probe_mask_polarity(model: nn.Module, spec: ForwardSpec, **kw) -> MaskProbe:
    """Decide ``spec.mask_param``'s convention. Keywords: ``seq_len``, ``id_limit``,
    ``pad_id``, ``device`` and ``pooled`` (outputs are ``[B, C]``: compared whole rather than
    at the real positions)."""
    name = spec.mask_param
    changes, told, how = _measure(model, spec, _STYLES, **kw)
    measured = {s: c for s, c in changes.items() if isinstance(c, float)}
    if not measured:
        return MaskProbe(None, Evidence(
            "not a padding mask", "probe", f"'{name}' raised under every convention for a "
            f"[batch, seq_len] mask ({told}); it is left at its default"))
    right = [s for s, c in measured.items() if c <= _UNCHANGED]
    polarity = {"pad" if s == "pad" else "keep" for s in right}
    if len(polarity) == 1:
        return MaskProbe(right[0], Evidence(_MEANING[right[0]], "probe", how))
    default = _default_style(name)
    chosen = default if default in measured else next(iter(measured))
    reason = ("every convention left them unchanged, so the polarity cannot be told (a causal "
              "model never looks right)" if right else "no convention left them unchanged: the "
              "model ignores or misapplies the mask (padding_invariance measures it)")
    return MaskProbe(chosen, Evidence(_MEANING[chosen], "default",
                                      f"{how}; {reason}; using the name's usual meaning"))


def check_named_mask(model: nn.Module, spec: ForwardSpec, **kw) -> tuple[Evidence, str | None]:
    """A mask whose name gives its meaning, measured against the opposite polarity:
    ``(evidence, warning or None)``. The name's meaning is kept either way, so a mask applied
    inverted fails padding_invariance rather than being silently flipped here."""
    named = spec.mask_style
    opposite = "keep_bool" if named == "pad" else "pad"
    changes, _, how = _measure(model, spec, (named, opposite), **kw)
    right = {s for s, c in changes.items() if isinstance(c, float) and c <= _UNCHANGED}
    meaning = _MEANING[named]
    if right == {opposite}:
        warning = (f"'{spec.mask_param}' means {meaning} by its name, but the model works only "
                   f"the other way round ({_MEANING[opposite]}): it applies the mask inverted, "
                   f"so real tokens are blocked and padding attended ({how}).")
        return Evidence(meaning, "signature", f"by its name; inverted in the model: {how}"), \
            warning
    agrees = "the probe agrees: " if named in right and opposite not in right else ""
    return Evidence(meaning, "signature", f"by its name; {agrees}{how}"), None
