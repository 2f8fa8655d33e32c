"""Which polarity a mask argument uses, when its name does not say (``mask``, ``attn_mask``).

Padding appended after the real tokens and masked out must leave the outputs at the real
positions unchanged. The probe runs the model on a short batch, then on the same batch with
padding appended, once per convention: the batch's 1/0 mask as is, ``True`` = real token, and
``True`` = padding. A convention that leaves the real positions unchanged is the model's; the
wrong polarity masks the real tokens instead and moves them (or makes them NaN). A parameter
that raises under every convention is not a ``[batch, seq_len]`` padding mask (a ``[T, T]``
attention mask, say) and is not fed. When every convention leaves them unchanged (a causal
model never looks right), a second probe masks the first tokens and changes what they hold:
under the right polarity nothing after them can see it. When no convention leaves them
unchanged the model ignores or misapplies the mask, and when the second probe cannot tell
either, the name's usual meaning is kept; padding_invariance measures the rest. A name that does say its meaning (``attention_mask``, ``*_key_padding_mask``)
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


def _batches(spec: ForwardSpec, where: str, *, seq_len: int, id_limit: int, pad_id: int,
             device: torch.device) -> tuple[dict, dict, slice, str]:
    """Two batches whose outputs at ``keep`` must agree under the right polarity.

    ``"right"``: clean ids, then the same ids with padding appended and masked. ``"swap"``: the
    first k tokens masked in both, with different contents — under the right polarity nothing
    after them can see what they hold, and the positions stay put (a causal model, which never
    looks right, is told apart here).
    """
    t = max(2, seq_len)
    gen = torch.Generator().manual_seed(4321)
    ids = torch.randint(0, max(id_limit, 1), (2, t), generator=gen).to(device)
    if id_limit > 1:  # real tokens are never the padding id
        ids[ids == pad_id] = (pad_id + 1) % id_limit
    if where == "right":
        extra = max(2, t // 2)
        first = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        second = {"input_ids": torch.cat([ids, ids.new_full((2, extra), pad_id)], dim=1),
                  "attention_mask": torch.cat([torch.ones_like(ids), ids.new_zeros((2, extra))],
                                              dim=1)}
        keep, what = slice(0, t), f"padding {extra} token(s) after {t} real ones"
    else:
        k = max(1, t // 4)
        mask = torch.ones_like(ids)
        mask[:, :k] = 0
        other = ids.clone()
        other[:, :k] = (ids[:, :k] + 1 + torch.arange(k, device=device)) % max(id_limit, 2)
        first = {"input_ids": ids, "attention_mask": mask}
        second = {"input_ids": other, "attention_mask": mask}
        keep, what = slice(k, t), f"changing the {k} masked token(s) before {t - k} real ones"
    if spec.decoder_param:  # the same decoder input: only the encoder side is masked
        first["decoder_input_ids"] = second["decoder_input_ids"] = ids
    return first, second, keep, what


@torch.no_grad()
def _measure(model: nn.Module, spec: ForwardSpec, styles: tuple[str, ...], where: str, *,
             pooled: bool, device: torch.device, **kw,
             ) -> tuple[dict[str, float | str], str, str]:
    """Per style, the relative change at the compared positions (or why it could not be
    measured); those changes as text, and a sentence saying what was measured."""
    first, second, keep, what = _batches(spec, where, device=device, **kw)
    was_training, style_before = model.training, spec.mask_style
    model.eval()
    changes: dict[str, float | str] = {}
    try:
        for style in styles:
            spec.mask_style = style
            try:
                a = _run(model, spec, first, device)
                b = _run(model, spec, second, device)
            except Exception as exc:  # the wrong dtype or not a padding mask at all
                changes[style] = f"raised {type(exc).__name__}"
                continue
            if not pooled:  # outputs at the real positions only
                a, b = a[:, keep], b[:, keep]
            if a.shape != b.shape:
                changes[style] = "wrong shape"
            elif not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                changes[style] = "not finite"
            else:
                changes[style] = float((a - b).abs().max()) / float(a.abs().max().clamp_min(1e-6))
    finally:
        spec.mask_style = style_before
        model.train(was_training)
    told = "; ".join(f"{_MEANING[s]}: " + (f"{c:.1e}" if isinstance(c, float) else c)
                     for s, c in changes.items())
    return changes, told, f"{what} moved the real positions by ({told})"


def _polarities(changes: dict[str, float | str]) -> set[str]:
    return {"pad" if s == "pad" else "keep" for s, c in changes.items()
            if isinstance(c, float) and c <= _UNCHANGED}


def _probe(model: nn.Module, spec: ForwardSpec, styles: tuple[str, ...], **kw,
           ) -> tuple[dict[str, float | str], str, str]:
    """Appended padding first; when every polarity leaves the real positions unchanged (a
    causal model), the masked-content swap decides where it can."""
    changes, told, how = _measure(model, spec, styles, "right", **kw)
    if len(_polarities(changes)) > 1:
        swapped, told2, how2 = _measure(model, spec, styles, "swap", **kw)
        if len(_polarities(swapped)) == 1:
            return swapped, told2, f"{how}; {how2}"
    return changes, told, how


def probe_mask_polarity(model: nn.Module, spec: ForwardSpec, **kw) -> MaskProbe:
    """Decide ``spec.mask_param``'s convention. Keywords: ``seq_len``, ``id_limit``,
    ``pad_id``, ``device`` and ``pooled`` (outputs are ``[B, C]``: compared whole rather than
    at the real positions)."""
    name = spec.mask_param
    changes, told, how = _probe(model, spec, _STYLES, **kw)
    measured = {s: c for s, c in changes.items() if isinstance(c, float)}
    if not measured:
        return MaskProbe(None, Evidence(
            "not a padding mask", "probe", f"'{name}' raised under every convention for a "
            f"[batch, seq_len] mask ({told}); it is left at its default"))
    right = [s for s, c in measured.items() if c <= _UNCHANGED]
    if len(_polarities(changes)) == 1:
        return MaskProbe(right[0], Evidence(_MEANING[right[0]], "probe", how))
    default = _default_style(name or "")
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
    assert named is not None, "called for a mask whose name decided its meaning"
    opposite = "keep_bool" if named == "pad" else "pad"
    changes, _, how = _probe(model, spec, (named, opposite), **kw)
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
