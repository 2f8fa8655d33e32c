"""``position_information`` and ``position_shift``: do positions reach the output, and do
relative positions stay relative when the sequence moves?

``position_information``: positions that never reach the output train without an error and a
fixed batch is still memorised — ``torch.zeros`` where ``torch.arange`` belongs, the PyTorch
tutorial's encoding added along the batch axis, RoPE fed one position for all. A bidirectional
(or pooled, or seq2seq) model's outputs must do more than reorder when its tokens are reversed;
a causal model with absolute positions must give different outputs at different positions of
one repeated token. A relative encoding gives the same outputs on such a sequence by design;
there its frequencies, slopes or bias table are perturbed and the outputs must move, and when
they do not, what the rotary module returned tells "fed one position" from "never applied".

``position_shift``: RoPE, ALiBi and relative-position biases promise that attention depends on
the distance between tokens, not on where they sit: the same sequence left-padded with masked
pads must give the same outputs at its real positions. A one-line bug breaks that and trains
anyway — RoPE rotated into the values instead of the keys, a bias indexed by absolute position.
Models with an absolute position table (learned or sinusoidal) change under a shift by design,
so they are skipped with the reason; the family is read from the model's structure and said in
the result.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from utils.checks import register
from utils.compare import rel_diff
from utils.report import CheckResult
from utils.tier1.inputs import token_key
from utils.tier1.locate import call_site
from utils.tier1.outputs import (
    NAN_SOURCES,
    eval_logits,
    eval_randomness,
    moved_by_changing,
    random_in_eval,
    without_padding,
)
from utils.tier1.position_offsets import (
    OPENING_LR,
    offset_shift,
    pinned_tables_verdict,
    rotary_tables,
    starts_closed,
)
from utils.tier1.training_steps import OPENING_STEPS, after_first_steps

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_EXACT = 1e-5
# Names (of modules, their classes, parameters and buffers) that say which encoding a model has.
_RELATIVE = (("rotary", re.compile(r"rotary|\brope\b|_rope|rope_|inv_freq|freqs?_cis|"
                                   r"(cos|sin)_cached|rotate_half", re.I)),
             ("ALiBi", re.compile(r"alibi|slopes", re.I)),
             ("relative-position bias", re.compile(r"relative|rel_pos|relpos", re.I)))
_ABSOLUTE = re.compile(r"(^|[._])(wpe|pos|pe|pos_emb\w*|pos_embed\w*|position\w*|"
                       r"positional\w*)($|[._])", re.I)
_HF_FAMILY = {"llama": "rotary", "mistral": "rotary", "gpt_neox": "rotary", "qwen2": "rotary",
              "gemma": "rotary", "phi": "rotary", "gptj": "rotary", "bloom": "ALiBi",
              "mpt": "ALiBi", "t5": "relative-position bias"}


def position_family(adapter: Adapter) -> tuple[str, str]:
    """``(family, evidence)``: ``"absolute"``, ``"rotary"``, ``"ALiBi"``,
    ``"relative-position bias"`` or ``"none found"``, and what in the model said so."""
    model: nn.Module = adapter.model
    top = adapter.max_seq_len or 0
    token_rows = adapter.vocab_size
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and _ABSOLUTE.search(name) and \
                "relative" not in name.lower() and module.num_embeddings != token_rows:
            return "absolute", f"position table '{name}' ({module.num_embeddings} rows)"
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        leaf = name.rsplit(".", 1)[-1]
        if _ABSOLUTE.search(leaf) and not any(p.search(name) for _, p in _RELATIVE) and \
                tensor.dim() >= 2 and top and any(top <= d <= top + 2 for d in tensor.shape):
            return "absolute", f"position tensor '{name}' of shape {tuple(tensor.shape)}"
    names = [(n, type(m).__name__) for n, m in model.named_modules()]
    names += [(n, "") for n, _ in [*model.named_parameters(), *model.named_buffers()]]
    for family, pattern in _RELATIVE:
        for name, cls in names:
            if pattern.search(name) or pattern.search(cls):
                return family, f"'{name or cls}'" + (f" ({cls})" if cls and name else "")
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in _HF_FAMILY:
        return _HF_FAMILY[model_type], f"Hugging Face model_type '{model_type}'"
    called = _called_in_forward(adapter)
    for family, pattern in _RELATIVE:  # plain functions: apply_rope(…), rotate_half(…)
        for file, function in called:
            if pattern.search(function):
                return family, f"function '{function}' of {file}, called in forward"
    return "none found", "no position table, rotary, ALiBi or relative bias in the structure"


def _called_in_forward(adapter: Adapter) -> list[tuple[str, str]]:
    """``(file name, function name)`` of the functions of the model's own files that one
    short forward calls, in call order (a profile hook, removed afterwards)."""
    files = adapter.model_files
    seen: dict[tuple[str, str], None] = {}

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename in files:
            seen.setdefault((Path(frame.f_code.co_filename).name, frame.f_code.co_name), None)

    t = max(2, min(adapter.max_seq_len or 8, 8))
    batch = without_padding(adapter.make_inputs(1, t, seed=0))
    before = sys.getprofile()
    sys.setprofile(profile)
    try:
        eval_logits(adapter, batch, 0)
    except Exception:  # a model that cannot run here: the other checks say why
        pass
    finally:
        sys.setprofile(before)
    return list(seen)


def seq_first_position_table(model: nn.Module, max_len: int | None) -> str | None:
    """The name and shape of a position tensor laid out ``(seq, 1, dim)`` — the PyTorch
    tutorial's sinusoidal encoding, written for seq-first input — or None."""
    for name, t in [*model.named_buffers(), *model.named_parameters()]:
        if _ABSOLUTE.search(name.rsplit(".", 1)[-1]) and t.dim() == 3 and t.shape[1] == 1 \
                and t.shape[2] > 1 and t.shape[0] >= max(max_len or 0, 2):
            return f"'{name}' of shape {tuple(t.shape)}"
    return None


def _pad_left(adapter: Adapter, batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    pad = adapter.pad_token_id if adapter.pad_token_id is not None else 0
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b = ids.shape[0]
    return {**batch, "input_ids": torch.cat([ids.new_full((b, extra), pad), ids], dim=1),
            "attention_mask": torch.cat([mask.new_zeros((b, extra)), mask], dim=1)}


@contextmanager
def _pad_rows_kept_finite(model: nn.Module, batch: int, length: int,
                          pads: int) -> Iterator[None]:
    """While inside, what any submodule returns has its non-finite values at the first
    ``pads`` positions set to 0.

    A causal model masking with ``-inf`` turns a left pad's query row (every key it may see
    is masked) into NaN, and the next layer's ``0 · NaN`` spreads it to every real position,
    so the shift cannot be judged. The pads' own states mean nothing by design: keeping them
    finite changes no real position of a correct model (its weight on a masked key is exactly
    0) and lets the shift be tested.
    """
    def finite(t):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
            return t
        if t.shape[0] == batch and t.shape[1] == length:
            axis = 1  # [B, T, …]
        elif t.dim() >= 3 and t.shape[0] == batch and t.shape[2] == length:
            axis = 2  # [B, H, T, …] (per-head states)
        else:
            return t
        pad = torch.zeros(length, dtype=torch.bool, device=t.device)
        pad[:pads] = True
        pad = pad.view(*([1] * axis), length, *([1] * (t.dim() - axis - 1)))
        return torch.where(pad & ~torch.isfinite(t), torch.zeros((), dtype=t.dtype,
                                                                  device=t.device), t)

    def hook(_module, _args, out):
        if isinstance(out, torch.Tensor):
            return finite(out)
        if isinstance(out, tuple) and not hasattr(out, "_fields"):
            return tuple(finite(o) for o in out)
        return None

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@register("position_shift", tier=1, thresholds=("rtol",))
def check_position_shift(adapter: Adapter, options) -> CheckResult:
    name = "position_shift"
    if adapter.task not in ("causal_lm", "masked_lm", "encoder"):
        return CheckResult(name, 1, "skip", f"A {adapter.task} model's outputs are not aligned "
                           "with its input positions, so a shift of the input cannot be compared "
                           "position by position.")
    family, evidence = position_family(adapter)
    metrics: dict[str, Any] = {"family": family, "evidence": evidence}
    if family == "absolute":
        return CheckResult(name, 1, "skip", f"Absolute positions ({evidence}): moving the "
                           "sequence changes every position's encoding by design, so shift "
                           "invariance is not a property of this model.", metrics)
    if not adapter.takes_mask:
        return offset_shift(adapter, options, family, evidence)
    top = options.max_len(adapter)
    extra = min(4, top // 3)
    t = min(12, top - extra)
    if extra < 1 or t < 2:
        return CheckResult(name, 1, "skip", f"max_seq_len {top} leaves no room for a shift.",
                           metrics)
    batch = adapter.make_inputs(2, t, seed=options.seed)
    clean = eval_logits(adapter, batch, options.seed).float()
    noise = eval_randomness(adapter, batch, options.seed, clean)
    if noise > _EXACT:
        return random_in_eval(name, noise)
    padded = _pad_left(adapter, batch, extra)
    real = eval_logits(adapter, padded, options.seed).float()[:, extra:]
    nan_pads = not bool(torch.isfinite(real).all())
    if nan_pads:  # -inf masking: NaN from the pad rows; test the shift with them kept finite
        with _pad_rows_kept_finite(adapter.model, 2, t + extra, extra):
            real = eval_logits(adapter, padded, options.seed).float()[:, extra:]
    tol = options.threshold(f"{name}.rtol", 1e-4)
    change = rel_diff(clean, real) if bool(torch.isfinite(real).all()) else float("inf")
    metrics.update({"shift": extra, "real_len": t, "max_rel_change": change,
                    "nan_from_pad_rows": nan_pads})
    threshold = {"max_rel_change": tol}
    what = (f"Positions: {family} ({evidence}). The same {t} tokens moved right by {extra} "
            f"masked pad(s)")
    nan_note = ("Left padding gives NaN at the real positions: a pad's query, whose every "
                "visible key is masked, softmaxes -inf to NaN and the next layer's 0 · NaN "
                "spreads it (batched generation left-pads). Mask with torch.finfo(dtype).min "
                "instead of -inf, or zero fully masked rows.")
    if change == float("inf"):
        return CheckResult(name, 1, "warn", f"{what}: {nan_note} The shift could not be "
                           "tested.", metrics, threshold)
    kept = (" (the NaN of the pad rows set to 0 inside the model, which leaves a correct "
            "model's real positions unchanged)" if nan_pads else "")
    if change <= tol:
        verdict = (f"{what} give the same outputs at the real positions{kept} (max relative "
                   f"change {change:.1e} ≤ {tol:g}): attention depends on distance, not on "
                   "absolute position.")
        if nan_pads:
            return CheckResult(name, 1, "warn", f"{verdict} {nan_note}", metrics, threshold)
        return CheckResult(name, 1, "pass", verdict, metrics, threshold)
    what += kept
    also = f" Also, {nan_note[0].lower()}{nan_note[1:]}" if nan_pads else ""
    if family == "none found":
        return CheckResult(name, 1, "warn", f"{what} moved the outputs at real positions by "
                           f"{change:.1e} (relative; allowed {tol:g}). If the model computes "
                           "absolute positions in forward (a sinusoid of arange), that is by "
                           "design; if it has no positions or relative ones, the padding mask "
                           "or the positions of the real tokens are wrong." + also,
                           metrics, threshold)
    return CheckResult(
        name, 1, "fail", f"{what} moved the outputs at real positions by {change:.1e} "
        f"(relative; allowed {tol:g}): the {family} encoding depends on absolute position. "
        "Rotate queries and keys only (never the values or the hidden states), and index "
        "position biases by the distance i − j, not by i or j." + also, metrics, threshold)


# ---- position_information ----------------------------------------------------------------
_FREQUENCIES = re.compile(r"inv_freq|(^|[._])freqs?($|[._])|freqs_cis|theta", re.I)
_SLOPES = re.compile(r"alibi|slopes", re.I)
_TABLES = re.compile(r"relative_attention_bias|rel_pos|relative_position|relpos", re.I)
_CACHES = re.compile(r"(cos|sin)_cached|cos_cache|sin_cache|_cos\b|_sin\b", re.I)


def _relative_knobs(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Tensors a relative encoding reads (frequencies, slopes, bias tables), to perturb."""
    knobs = []
    for name, t in [*model.named_buffers(), *model.named_parameters()]:
        if t.numel() and (t.is_floating_point() or t.is_complex()) and \
                (_FREQUENCIES.search(name) or _SLOPES.search(name) or _TABLES.search(name)):
            knobs.append((name, t))
    return knobs


@contextmanager
def _perturbed(knobs: list[tuple[str, torch.Tensor]], seed: int) -> Iterator[None]:
    saved = [t.detach().clone() for _, t in knobs]
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for name, t in knobs:
                if t.is_complex():  # freqs_cis = polar(1, angle): turn every angle further
                    t.copy_(torch.polar(t.abs(), t.angle() * 1.37))
                elif _TABLES.search(name):  # a different bias per distance bucket
                    t.add_(torch.randn(t.shape, generator=gen).to(t) *
                           (float(t.float().std()) or 1.0))
                else:  # frequencies and slopes: positions count for more
                    t.mul_(1.37)
        yield
    finally:
        with torch.no_grad():
            for (_, t), old in zip(knobs, saved, strict=True):
                t.copy_(old)


class _ScaledAngles(TorchFunctionMode):
    """While active, every sine, cosine and ``torch.polar`` the model computes gets its angle
    scaled by 1.37 — the frequencies of a position encoding built in forward, perturbed
    without knowing its names. Counts the calls and keeps the first call site in the model's
    own files."""

    def __init__(self, files: set[str]) -> None:
        super().__init__()
        self.files, self.calls, self.site = files, 0, None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("sin", "cos", "sin_", "cos_", "polar") and args and \
                isinstance(args[-1 if name == "polar" else 0], torch.Tensor):
            self.calls += 1
            if self.site is None:
                self.site = call_site(self.files)
            if name == "polar":
                args = (args[0], args[1] * 1.37, *args[2:])
            elif name.endswith("_"):
                args[0].mul_(1.37)
            else:
                args = (args[0] * 1.37, *args[1:])
        return func(*args, **kwargs)


def _angles_probe(adapter: Adapter, batch, seed: int, clean: torch.Tensor) -> tuple[_ScaledAngles, float]:
    """The probe's record and how far the outputs moved with every angle scaled."""
    probe = _ScaledAngles(adapter.model_files)
    with probe:
        moved = eval_logits(adapter, batch, seed).float()
    return probe, (rel_diff(clean, moved) if probe.calls else 0.0)


def _spread_over_positions(out: torch.Tensor) -> float:
    """How much the outputs differ across positions, relative to their size."""
    return rel_diff(out, out[:, :1].expand_as(out)) if out.shape[1] > 1 else math.inf


def _zero_learned_positions(model: nn.Module, frozen: bool = False) -> list[str]:
    """Trainable position tables that start all zero (``nn.Parameter(torch.zeros(1, L, D))``
    in ViT-style code, an embedding zero-initialised): order-blind at init, by design. With
    ``frozen``, the all-zero ones that never train instead (buffers, requires_grad=False)."""
    tensors: list[tuple[str, torch.Tensor]] = [
        (n, t) for n, t in model.named_parameters() if t.requires_grad != frozen]
    tensors += list(model.named_buffers()) if frozen else []
    return [n for n, t in tensors if t.dim() >= 2 and t.is_floating_point() and
            _ABSOLUTE.search(n) and not any(pat.search(n) for _, pat in _RELATIVE) and
            not bool(t.detach().any())]


@register("position_information", tier=1, thresholds=("rtol",))
def check_position_information(adapter: Adapter, options) -> CheckResult:
    result = _position_information(adapter, options)
    zero = _zero_learned_positions(adapter.model) if result.status == "fail" else []
    frozen = _zero_learned_positions(adapter.model, frozen=True) \
        if result.status == "fail" else []
    if frozen:
        result.summary += (f" '{frozen[0]}' is all zero and never trains (a buffer or "
                           "requires_grad=False): fill it (a sin-cos table) or make it a "
                           "trainable parameter.")
    if not zero:
        return result
    # learnable and zero at init, like a closed branch: judged as after the opening steps
    with after_first_steps(adapter, options):
        opened = _position_information(adapter, options)
    tables = ", ".join(f"'{n}'" for n in zero[:3])
    if opened.status == "pass":
        return CheckResult(result.name, 1, "pass", f"The learned position table {tables} "
                           "starts at zero, so the model is order-blind at init by design; "
                           f"after the first {OPENING_STEPS} optimizer steps: {opened.summary}",
                           {**opened.metrics, "zero_at_init": zero}, opened.threshold)
    result.summary += (f" The learned position table {tables} starts at zero, and even after "
                       f"the first {OPENING_STEPS} optimizer steps the outputs stay "
                       "order-blind, so the table never reaches them.")
    return result


def _position_information(adapter: Adapter, options) -> CheckResult:
    name = "position_information"
    family, evidence = position_family(adapter)
    metrics: dict[str, Any] = {"family": family, "evidence": evidence}
    tol = options.threshold(f"{name}.rtol", 1e-5)
    threshold = {"order_blind_at_or_below": tol}
    top = options.max_len(adapter)
    t = min(11, top)  # odd: unlikely to be the size of another axis (heads, widths, batch)
    if t < 3:
        return CheckResult(name, 1, "skip", f"max_seq_len {top} is too short to move tokens "
                           "around.", metrics)
    batch = without_padding(adapter.make_inputs(2, t, seed=options.seed))
    where = f"Positions: {family} ({evidence})."
    clean = eval_logits(adapter, batch, options.seed).float()  # the reference of every probe
    if not bool(torch.isfinite(clean).all()):
        return CheckResult(name, 1, "skip", f"{where} The outputs are not finite at length {t} "
                           "(NaN or Inf), so whether positions reach them cannot be measured. "
                           + NAN_SOURCES, metrics)
    c = _Probe(name, adapter, options, batch, clean, family, where, metrics, tol, threshold, t)
    if adapter.task != "causal_lm":  # bidirectional, pooled or seq2seq: shuffle the tokens
        c.where, verdict = _order_verdict(c)
        if verdict is not None:
            return verdict
    if family in ("absolute", "none found"):
        return _repeated_token_verdict(c)
    return _relative_verdict(c)


@dataclass
class _Probe:
    """What every branch of position_information measures against."""

    name: str
    adapter: Any
    options: Any
    batch: dict[str, torch.Tensor]
    clean: torch.Tensor  # the eval outputs of ``batch``: every probe's reference
    family: str
    where: str  # "Positions: <family> (<evidence>)." and what the order probe found
    metrics: dict[str, Any]
    tol: float
    threshold: dict[str, float]
    t: int


def _order_verdict(c: _Probe) -> tuple[str, CheckResult | None]:
    """Bidirectional, pooled and seq2seq models: the tokens after the first reversed. A verdict
    when that decides it, else None and what it found, for the position probes after it."""
    adapter, options, batch, clean = c.adapter, c.options, c.batch, c.clean
    name, family, where, metrics = c.name, c.family, c.where, c.metrics
    tol, threshold, t = c.tol, c.threshold, c.t
    perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(t - 1, 0, -1)])
    shuffled = {**batch, "input_ids": batch["input_ids"][:, perm]}
    moved = eval_logits(adapter, shuffled, options.seed).float()
    pooled = adapter.task in ("classification", "seq2seq")
    change = rel_diff(clean if pooled else clean[:, perm], moved)
    metrics["max_rel_change"] = change
    side = "encoder's " if adapter.task == "seq2seq" else ""
    what = ("the prediction" if adapter.task == "classification" else
            "the decoder's outputs" if adapter.task == "seq2seq" else "the outputs")
    order = (f"Reversing the {side}tokens after the first changes {what} (max relative "
             f"change {change:.1e})")
    if change > tol and (adapter.task != "seq2seq" or
                         family not in ("absolute", "none found")):
        return where, CheckResult(name, 1, "pass", f"{where} {order}: the model sees word "
                                  "order.", metrics, threshold)
    if change <= tol and moved_by_changing(adapter, batch, "input_ids", slice(1, t),
                                           options.seed + 3, clean,
                                           None if pooled else slice(1, t)) <= tol:
        return where, CheckResult(name, 1, "skip", f"{where} The {side}tokens after the first "
                                  f"do not move {what} even when replaced, so their order "
                                  "cannot matter either; context_use reports why.", metrics)
    if change <= tol:
        return where, CheckResult(
            name, 1, "fail", f"{where} Reversing the {side}tokens after the first "
            f"{'leaves ' + what + ' unchanged' if pooled else 'only reverses the outputs'} "
            f"(max relative change {change:.1e} ≤ {tol:g}): the model is order-blind — "
            "'dog bites man' and 'man bites dog' look the same to it. No position "
            "information reaches the output: the positions fed are constant (torch.zeros "
            "or arange(1) where arange(T) belongs), the encoding is added along the batch "
            "axis, or its sum is discarded. (If the inputs are sets by design, skip this "
            "check.)", metrics, threshold)
    return f"{where} {order};", None  # its positions are tested below


def _repeated_token_verdict(c: _Probe) -> CheckResult:
    """Absolute positions (or none found): one token repeated must give different outputs at
    different positions; for computed sines and cosines, scaling their angles must matter."""
    adapter, options, batch, clean = c.adapter, c.options, c.batch, c.clean
    name, family, where, metrics = c.name, c.family, c.where, c.metrics
    tol, threshold, t = c.tol, c.threshold, c.t
    key = token_key(adapter)
    ids = batch[key]
    same = ids[:, t // 2: t // 2 + 1].expand_as(ids).contiguous()
    out = eval_logits(adapter, {**batch, key: same}, options.seed).float()
    spread = _spread_over_positions(out)
    metrics["spread_over_positions"] = spread
    what = f"{where} On a sequence of one repeated token" if adapter.task != "seq2seq" \
        else f"{where} on a decoder input of one repeated token"
    if spread > tol:
        return CheckResult(name, 1, "pass", f"{what} the outputs differ from position to "
                           f"position (relative spread {spread:.1e}): positions reach the "
                           "output.", metrics, threshold)
    if family == "none found":  # positions may be computed in forward (sin/cos)
        probe, change = _angles_probe(adapter, batch, options.seed, clean)
        metrics.update({"sin_cos_calls": probe.calls, "computed_at": probe.site})
        if probe.calls:
            at = f" ({probe.site})" if probe.site else ""
            if change > tol:
                return CheckResult(
                    name, 1, "pass", f"{what} every position gives the same output, as a "
                    "rotary encoding does (it depends on distances only); the sines and "
                    f"cosines the model computes in forward{at} reach the output: scaling "
                    f"their angles by 1.37 moved it by {change:.1e}.", metrics, threshold)
            return CheckResult(
                name, 1, "fail", f"{what} every position gives the same output (relative "
                f"spread {spread:.1e}), and scaling the angles of the sines and cosines the "
                f"model computes in forward{at} leaves the outputs unchanged ({change:.1e} "
                f"≤ {tol:g}): that position encoding never reaches the output — fed one "
                "position (pe[:1], zeros), added along the batch axis, or its sum "
                "discarded. Add pe[:T] along the time axis (x = tok + pe[:T]) or rotate q "
                "and k by torch.arange(T).", metrics, threshold)
    if family == "none found":
        return CheckResult(
            name, 1, "warn", f"{what} every position gives the same output (relative "
            f"spread {spread:.1e}): the model has no position information and tells "
            "positions apart only through the causal mask (NoPE). If you meant it to have "
            "positions, they do not reach the output.", metrics, threshold)
    return CheckResult(
        name, 1, "fail", f"{what} every position gives the same output (relative spread "
        f"{spread:.1e} ≤ {tol:g}): the position encoding never reaches the output, so the "
        "model cannot tell where a token sits. Feed torch.arange(T) as the positions (not "
        "zeros or arange(1)), add the encoding along the time axis (x + pe[:T], not "
        "pe[:batch]), and keep its sum (x = tok + pos).", metrics, threshold)

def _relative_verdict(c: _Probe) -> CheckResult:
    """Relative encodings (rotary, ALiBi, bias tables): perturbing their frequencies, slopes or
    tables must change the outputs; when it does not, which table is the culprit."""
    adapter, options, batch, clean = c.adapter, c.options, c.batch, c.clean
    name, family, where, metrics = c.name, c.family, c.where, c.metrics
    tol, threshold, t = c.tol, c.threshold, c.t
    knobs = _relative_knobs(adapter.model)
    metrics["perturbed"] = [n for n, _ in knobs]
    if not knobs:  # the angles may still be computed in forward: scale them there
        probe, change = _angles_probe(adapter, batch, options.seed, clean)
        metrics.update({"sin_cos_calls": probe.calls, "computed_at": probe.site,
                        "max_rel_change": change})
        at = f" ({probe.site})" if probe.site else ""
        if probe.calls and change > tol:
            return CheckResult(name, 1, "pass", f"{where} Scaling the angles of the sines and "
                               f"cosines computed in forward{at} by 1.37 changes the outputs "
                               f"(max relative change {change:.1e}): the encoding reaches "
                               "them.", metrics, threshold)
        if probe.calls:
            return CheckResult(
                name, 1, "fail", f"{where} Scaling the angles of the sines and cosines "
                f"computed in forward{at} leaves the outputs unchanged ({change:.1e} ≤ "
                f"{tol:g}): the {family} encoding has no effect — every query and key is "
                "rotated as if at one position. Feed the real positions (torch.arange(T), not "
                "zeros) and apply it to the queries and keys that attention uses.",
                metrics, threshold)
        if rotary_tables(adapter.model):
            return pinned_tables_verdict(adapter, options, batch, where, metrics)
        return CheckResult(name, 1, "skip", f"{where} On one repeated token a relative "
                           "encoding gives the same output everywhere by design, and no "
                           "frequencies, slopes or bias table were found to perturb instead.",
                           metrics)
    owners = _knob_owners(adapter.model, knobs)
    with _recording(owners) as tables:
        clean = eval_logits(adapter, batch, options.seed).float()
    with _perturbed(knobs, options.seed):
        moved = eval_logits(adapter, batch, options.seed).float()
    change, later = rel_diff(clean, moved), ""
    if change <= tol and starts_closed(adapter.model):  # a zero head hides every input at init
        with after_first_steps(adapter, options, lr=OPENING_LR):
            opened = eval_logits(adapter, batch, options.seed).float()
            with _perturbed(knobs, options.seed):
                change = rel_diff(opened, eval_logits(adapter, batch, options.seed).float())
        later = " after the first optimizer steps (a branch starts closed)"
    metrics["max_rel_change"] = change
    listed = ", ".join(f"'{n}'" for n, _ in knobs[:3]) + ("…" if len(knobs) > 3 else "")
    if change > tol:
        return CheckResult(name, 1, "pass", f"{where} Perturbing {listed} changes the outputs"
                           f"{later} (max relative change {change:.1e}): the encoding reaches "
                           "them.", metrics, threshold)
    unchanged = f"{where} Perturbing {listed} leaves the outputs unchanged (max relative " \
                f"change {change:.1e} ≤ {tol:g})"
    varies = {n: _varies_along(out, t) for n, out in tables.items()}
    metrics["tables_vary_by_position"] = varies
    if rotary_tables(adapter.model):  # precomputed cos/sin (Llama's *_cached): the frequencies
        # no longer reach them, so pin the tables themselves (and look after the opening steps
        # when a branch starts closed, as modded-nanogpt's zero head does)
        return pinned_tables_verdict(adapter, options, batch, where, metrics)
    if varies and not any(v for v in varies.values() if v is not None) and \
            any(v is False for v in varies.values()):
        module = next(n for n, v in varies.items() if v is False)
        return CheckResult(
            name, 1, "fail", f"{unchanged}: '{module}' returns the same rotation (or bias) at "
            f"every one of the {t} positions, so it cancels in q · k — the model has no "
            "positions. Feed the real positions (torch.arange(T), not zeros or a constant).",
            metrics, threshold)
    if any(varies.values()):
        module = next(n for n, v in varies.items() if v)
        if _library_code(dict(adapter.model.named_modules())[module]):
            return CheckResult(name, 1, "skip", f"{unchanged}, though '{module}' computes a "
                               "different table per position: this configuration of the "
                               "library's model does not use it (Falcon with alibi=True "
                               "computes rotary tables it never applies).", metrics)
        fix = ("the tables are never applied to the queries and keys that attention uses "
               "(q, k = apply_rotary(q, k, cos, sin) before the scores)" if family == "rotary"
               else "the bias never reaches the attention scores, or it is the same for every "
               "key of a query — a bias of the query's position i alone is constant within "
               "each softmax row and cancels; add -slope · (i − j) (or the table at the "
               "distance i − j) to the scores before the softmax")
        return CheckResult(
            name, 1, "fail", f"{unchanged}, though '{module}' computes a different table per "
            f"position: {fix}, so the model has no positions.", metrics, threshold)
    cached = [n for n, _ in adapter.model.named_buffers() if _CACHES.search(n)]
    if cached:
        return CheckResult(name, 1, "skip", f"{where} Perturbing {listed} left the outputs "
                           f"unchanged, but the model reads precomputed tables ({cached[0]}), "
                           "which this probe does not alter.", metrics)
    if family == "rotary":
        return CheckResult(
            name, 1, "fail", f"{unchanged}: the rotary encoding has no effect — every query "
            "and key is rotated as if at one position. Feed the real positions "
            "(torch.arange(T), not zeros) and rotate the queries and keys that attention "
            "uses.", metrics, threshold)
    return CheckResult(
        name, 1, "fail", f"{unchanged}: the {family} encoding has no effect — every key of a "
        "query gets the same bias (zero, clamped, or a function of the query's position "
        "alone, which cancels in the softmax). Add -slope · (i − j) (or the bias table at the "
        "distance i − j) to the scores before the softmax.", metrics, threshold)


def _knob_owners(model: nn.Module, knobs: list[tuple[str, torch.Tensor]]) -> dict[str, nn.Module]:
    """The submodules holding the perturbed tensors (not the model itself, whose output is the
    logits), by name."""
    modules = dict(model.named_modules())
    owners = {}
    for name, _ in knobs:
        owner = name.rpartition(".")[0]
        if owner and owner in modules:
            owners[owner] = modules[owner]
    return owners


@contextmanager
def _recording(owners: dict[str, nn.Module]) -> Iterator[dict[str, Any]]:
    """What each owner module returned on its first call inside the block."""
    seen: dict[str, Any] = {}

    def hook(name: str):
        def record(_module, _args, out) -> None:  # returning None keeps the output as it is
            seen.setdefault(name, out)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in owners.items()]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _varies_along(out: Any, t: int) -> bool | None:
    """Whether the tensors in ``out`` differ along an axis of length ``t`` (the positions);
    None when no tensor has such an axis."""
    tensors = [out] if torch.is_tensor(out) else [v for v in (
        out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list))
        else ()) if torch.is_tensor(v)]
    verdict = None
    for x in tensors:
        x = torch.view_as_real(x) if x.is_complex() else x
        for dim, size in enumerate(x.shape):
            if size == t and x.is_floating_point():
                first = x.narrow(dim, 0, 1).expand_as(x)
                if rel_diff(x, first) > 1e-6:
                    return True
                verdict = False
    return verdict


def _library_code(module: nn.Module) -> bool:
    """The module's class comes from an installed package, not the user's files."""
    import sys

    file = getattr(sys.modules.get(type(module).__module__), "__file__", "") or ""
    return "site-packages" in file or "dist-packages" in file
