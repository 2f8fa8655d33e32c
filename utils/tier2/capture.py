"""Capture per-head attention weights from any model during one probing forward pass.

Four mechanisms, all active during the probe and restored in ``finally``:

1. a forward that accepts ``output_attentions`` is asked for them (Hugging Face style);
2. every ``nn.MultiheadAttention`` is made to return per-head weights
   (``need_weights=True, average_attn_weights=False``; the eval fast path is switched off);
3. ``F.scaled_dot_product_attention`` is wrapped: the weights are recomputed from q, k,
   the mask, ``is_causal``, ``scale`` and ``enable_gqa``, then the original runs;
4. ``softmax`` (``torch.softmax``, ``F.softmax``, ``Tensor.softmax``) is wrapped: an output
   over the last dim whose last two dims are ``T × T`` is a hand-written attention map.

While one mechanism is recording, the calls it makes itself are not recorded again. The patches
are process-wide for the one probing forward pass (another thread calling softmax meanwhile would
be seen too), which is why they live only inside :func:`capture_attention`.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter


_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
              "enable_gqa")


@dataclass
class AttentionMap:
    """One attention call's weights: ``(B, H, T, S)`` float32 on the CPU."""

    name: str  # the module that ran it, e.g. "blocks.0.attn"
    weights: torch.Tensor
    mechanism: str
    kind: str = "self"  # self | cross (known only for nn.MultiheadAttention)


@dataclass
class Capture:
    maps: list[AttentionMap] = field(default_factory=list)
    note: str = ""  # why nothing was captured

    @property
    def mechanisms(self) -> list[str]:
        return list(dict.fromkeys(m.mechanism for m in self.maps))


class _Recorder:
    def __init__(self, seq_lens: set[int]) -> None:
        self.maps: list[AttentionMap] = []
        self.busy = 0  # > 0 inside a wrapper: the calls it makes are its own
        self.stack = ["(model)"]
        self.seq_lens = seq_lens

    def add(self, weights: torch.Tensor, mechanism: str, kind: str = "self") -> None:
        w = weights.detach().float().cpu()
        if w.ndim == 3:  # (B, T, S): one head
            w = w.unsqueeze(1)
        elif w.ndim > 4:  # e.g. (B, groups, heads_per_group, T, S)
            w = w.reshape(w.shape[0], -1, *w.shape[-2:])
        self.maps.append(AttentionMap(self.stack[-1], w, mechanism, kind))

    @contextmanager
    def own(self):
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


def sdpa_weights(query, key, attn_mask=None, is_causal=False, scale=None,
                 enable_gqa=False) -> torch.Tensor:
    """The softmax weights ``F.scaled_dot_product_attention`` applies, computed explicitly."""
    q, k = query.detach().float(), key.detach().float()
    if enable_gqa and k.shape[-3] != q.shape[-3]:  # grouped-query: share each kv head
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (..., L, S)
    L, S = scores.shape[-2:]
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    return scores.softmax(-1)


def _sdpa_wrapper(rec: _Recorder, original: Callable) -> Callable:
    def scaled_dot_product_attention(*args, **kwargs):
        if rec.busy:
            return original(*args, **kwargs)
        named = dict(zip(_SDPA_ARGS, args, strict=False)) | kwargs
        with rec.own():
            rec.add(sdpa_weights(named["query"], named["key"], named.get("attn_mask"),
                                 bool(named.get("is_causal", False)), named.get("scale"),
                                 bool(named.get("enable_gqa", False))),
                    "scaled_dot_product_attention")
            return original(*args, **kwargs)

    return scaled_dot_product_attention


def _softmax_wrapper(rec: _Recorder, original: Callable) -> Callable:
    def softmax(input, *args, **kwargs):
        if rec.busy:
            return original(input, *args, **kwargs)
        with rec.own():
            out = original(input, *args, **kwargs)
        dim = kwargs.get("dim", args[0] if args else None)
        if (isinstance(out, torch.Tensor) and out.ndim >= 3 and isinstance(dim, int)
                and dim % out.ndim == out.ndim - 1 and out.shape[-1] == out.shape[-2]
                and out.shape[-1] in rec.seq_lens):
            rec.add(out, "softmax")
        return out

    return softmax


def _mha_wrapper(rec: _Recorder, mha: nn.MultiheadAttention, original: Callable) -> Callable:
    def forward(*args, **kwargs):
        if rec.busy:
            return original(*args, **kwargs)
        bound = _MHA_SIGNATURE.bind(mha, *args, **kwargs)
        bound.apply_defaults()
        call = {k: v for k, v in bound.arguments.items() if k != "self"}
        wanted, average = call["need_weights"], call["average_attn_weights"]
        call.update(need_weights=True, average_attn_weights=False)
        with rec.own():
            out, weights = original(**call)
        kind = "self" if call["query"] is call["key"] else "cross"
        rec.add(weights, "nn.MultiheadAttention", kind)
        if not wanted:
            return out, None
        return out, weights.mean(dim=-3) if average else weights

    return forward


def _patch(stack: ExitStack, obj: Any, attr: str, value: Any) -> Any:
    """Set ``obj.attr = value`` until ``stack`` closes; returns the original."""
    own = attr in vars(obj)
    old_own = vars(obj).get(attr)
    original = getattr(obj, attr)
    setattr(obj, attr, value)

    def restore():
        if own:
            setattr(obj, attr, old_own)
        else:
            delattr(obj, attr)

    stack.callback(restore)
    return original


def _user_modules(model: nn.Module) -> list[Any]:
    """Python modules defining the model's classes (outside torch): their globals may hold
    ``from torch.nn.functional import scaled_dot_product_attention``-style bindings."""
    names = {type(m).__module__ for m in model.modules()}
    return [sys.modules[n] for n in sorted(names)
            if n in sys.modules and n.split(".")[0] != "torch"]


def _install(stack: ExitStack, rec: _Recorder, model: nn.Module) -> None:
    sdpa = _patch(stack, F, "scaled_dot_product_attention",
                  _sdpa_wrapper(rec, F.scaled_dot_product_attention))
    replaced = {id(sdpa): F.scaled_dot_product_attention}
    for owner, attr in ((F, "softmax"), (torch, "softmax"), (torch.Tensor, "softmax")):
        original = _patch(stack, owner, attr, _softmax_wrapper(rec, getattr(owner, attr)))
        replaced[id(original)] = getattr(owner, attr)
    for module in _user_modules(model):
        for attr, value in list(vars(module).items()):
            if callable(value) and id(value) in replaced:
                _patch(stack, module, attr, replaced[id(value)])
    for mha in (m for m in model.modules() if isinstance(m, nn.MultiheadAttention)):
        _patch(stack, mha, "forward", _mha_wrapper(rec, mha, mha.forward))
    if hasattr(torch.backends, "mha"):  # the eval fast path bypasses self_attn.forward
        was = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        stack.callback(torch.backends.mha.set_fastpath_enabled, was)
    _name_calls(stack, rec, model)


def _name_calls(stack: ExitStack, rec: _Recorder, model: nn.Module) -> None:
    """Keep ``rec.stack`` at the name of the module running now, so a map records its layer."""

    def enter(name: str) -> Callable:
        def pre_hook(_module, _args) -> None:
            rec.stack.append(name or "(model)")
        return pre_hook

    def leave(_module, _args, _output) -> None:
        rec.stack.pop()

    for name, module in model.named_modules():
        stack.callback(module.register_forward_pre_hook(enter(name)).remove)
        stack.callback(module.register_forward_hook(leave, always_call=True).remove)


def _returned_attentions(out: Any) -> list[torch.Tensor]:
    attentions = getattr(out, "attentions", None)
    if attentions is None and isinstance(out, dict):
        attentions = out.get("attentions")
    if isinstance(attentions, (tuple, list)):
        return [a for a in attentions if isinstance(a, torch.Tensor)]
    return []


@torch.no_grad()
def capture_attention(adapter: Adapter, batch: dict[str, torch.Tensor]) -> Capture:
    """Run ``batch`` through the model once in eval mode and collect every attention map."""
    model = adapter.model
    model.eval()
    lengths = {batch["input_ids"].shape[1]}
    if "decoder_input_ids" in batch:
        lengths.add(batch["decoder_input_ids"].shape[1])
    rec = _Recorder(lengths)
    args, kwargs = adapter.call_args({k: v for k, v in batch.items() if k != "labels"})
    asks = "output_attentions" in inspect.signature(model.forward).parameters
    if asks:
        kwargs["output_attentions"] = True
    with ExitStack() as stack:
        _install(stack, rec, model)
        out = model(*args, **kwargs)
    returned = _returned_attentions(out) if asks else []
    if returned:
        return Capture([AttentionMap(f"layer {i}", a.detach().float().cpu(),
                                     "output_attentions") for i, a in enumerate(returned)])
    if rec.maps:
        return Capture(rec.maps)
    return Capture(note="no attention weights could be captured: the forward returned no "
                   "attentions, no nn.MultiheadAttention or F.scaled_dot_product_attention ran, "
                   "and no softmax produced a T × T map over the last dim (the model may use "
                   "another attention kernel, or no attention at all)")
