"""How to call a model's ``forward``, decided from its signature alone.

The token input may be called ``input_ids``, ``idx``, ``x``, ``src``, ``tokens`` or a builder's
``input_0_tokens``; a seq2seq model takes a second token input (``tgt``,
``decoder_input_ids``); a mask is passed only when ``forward`` accepts one, translated to what
its name means (HF ``attention_mask``: 1 = real token; PyTorch ``*_key_padding_mask``: True =
padding). A mask whose name does not say its meaning (``mask``, ``attn_mask``, ``src_mask``) is
recorded as ambiguous; the adapter probes both polarities and settles ``mask_style``
(:mod:`utils.adapters.mask_probe`). An optional ``targets``/``labels`` parameter is recorded
too: a forward that returns only the last position unless targets are given (nanoGPT's
``logits[:, [-1], :]``) is then driven with targets. A forward that demands intermediate
tensors as arguments is refused with a clear error rather than fed fabricated tensors.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from utils.errors import UserError

__all__ = ["ForwardSpec", "analyse_forward", "extract_output"]

_TOKEN_NAMES = ("input_ids", "idx", "x", "src", "tokens", "token_ids", "input", "inputs", "ids",
                "input_tokens", "seq", "sequence", "source", "src_tokens", "src_ids",
                "encoder_input_ids", "enc_input", "encoder_input", "text", "tok", "inp")
_DECODER_NAMES = ("decoder_input_ids", "tgt", "trg", "target_input", "tgt_tokens", "tgt_ids",
                  "dec_input", "decoder_input", "decoder_inputs", "target_ids", "tgt_input")
_KEEP_MASKS = ("attention_mask", "input_mask", "src_attention_mask", "encoder_attention_mask")
_PAD_MASKS = ("src_key_padding_mask", "key_padding_mask", "padding_mask", "pad_mask",
              "src_padding_mask")
# Names that do not say whether True means "keep" or "padding": the polarity is probed.
_AMBIGUOUS_MASKS = ("mask", "src_mask", "attn_mask", "masks", "key_mask", "seq_mask")
_MEMORY_MASKS = ("memory_key_padding_mask",)
_TARGET_NAMES = ("targets", "labels", "target", "lm_labels", "y", "label")
_DECODER_PAD_MASKS = ("tgt_key_padding_mask",)
_DECODER_KEEP_MASKS = ("decoder_attention_mask",)
_BUILDER_TOKEN = re.compile(r"^(input_\d+(_tokens?|_ids)?|.*_(tokens|input_ids))$")
_NOT_TOKENS = {"token_type_ids", "position_ids", "segment_ids", "type_ids"}


@dataclass
class ForwardSpec:
    """Which ``forward`` parameter receives what, and how masks are translated."""

    token_param: str | None  # None: passed positionally through *args
    decoder_param: str | None = None
    mask_param: str | None = None
    # "keep" (the batch's 1/0 mask as is) | "keep_bool" (True = real token) | "pad" (True =
    # padding); None with mask_param set: not decided yet (an ambiguous name, probed by adapt)
    mask_style: str | None = None
    memory_mask_param: str | None = None
    decoder_mask_param: str | None = None
    decoder_mask_style: str | None = None
    positional: set[str] = field(default_factory=set)  # positional-only parameters
    left_default: list[str] = field(default_factory=list)  # optional params we do not feed
    targets_param: str | None = None  # an optional targets/labels parameter
    feed_targets: bool = False  # pass it (the input ids as placeholder) to get full logits

    @property
    def takes_mask(self) -> bool:
        return self.mask_param is not None

    def describe(self) -> str:
        parts = [f"tokens -> {self.token_param or '*args[0]'}"]
        if self.decoder_param:
            parts.append(f"decoder tokens -> {self.decoder_param}")
        if self.mask_param:
            meaning = {"keep": "1 = real token", "keep_bool": "True = real token",
                       "pad": "True = padding"}.get(self.mask_style or "", "meaning not decided")
            parts.append(f"mask -> {self.mask_param} ({meaning})")
        else:
            parts.append("no padding mask accepted")
        if self.feed_targets:
            parts.append(f"targets -> {self.targets_param} (the input ids, so forward returns "
                         "logits for every position)")
        return "; ".join(parts)

    def build_call(self, batch: dict[str, torch.Tensor]) -> tuple[list, dict[str, Any]]:
        """``(args, kwargs)`` for ``model(*args, **kwargs)`` from a batch dict."""
        values: dict[str, Any] = {}
        if self.token_param:
            values[self.token_param] = batch["input_ids"]
        if self.decoder_param:
            dec = batch.get("decoder_input_ids")
            values[self.decoder_param] = batch["input_ids"] if dec is None else dec
        mask = batch.get("attention_mask")
        if mask is not None:
            if self.mask_param and self.mask_style is not None:
                values[self.mask_param] = (mask if self.mask_style == "keep" else mask != 0
                                           if self.mask_style == "keep_bool" else mask == 0)
            if self.memory_mask_param:
                values[self.memory_mask_param] = mask == 0
        dec_mask = batch.get("decoder_attention_mask")
        if dec_mask is not None and self.decoder_mask_param:
            values[self.decoder_mask_param] = (dec_mask if self.decoder_mask_style == "keep"
                                               else dec_mask == 0)
        if self.feed_targets and self.targets_param:
            # a placeholder of valid ids: the logits do not depend on it, only the model's loss
            values[self.targets_param] = batch["input_ids"].contiguous()  # models .view() it
        args = [] if self.token_param else [batch["input_ids"]]
        args += [values.pop(p) for p in list(values) if p in self.positional]
        return args, values


def _first(names: tuple[str, ...], params: dict[str, inspect.Parameter]) -> str | None:
    return next((n for n in names if n in params), None)


def analyse_forward(model: nn.Module) -> ForwardSpec:
    """Map batch keys onto ``model.forward``'s parameters.

    Raises:
        UserError: when ``forward`` requires arguments that are not model inputs (e.g.
            intermediate tensors an exported graph expects to be handed in).
    """
    sig = inspect.signature(model.forward)
    params = {n: p for n, p in sig.parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    var_positional = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty]

    token = _first(_TOKEN_NAMES, params) or next(
        (n for n in params if _BUILDER_TOKEN.match(n) and n not in _NOT_TOKENS), None)
    if token is None and params:
        first = next(iter(params))
        if first in required or len(required) == 0:
            token = first  # the one input whatever its name, e.g. forward(self, batch)
    if token is None and not var_positional:
        raise UserError(f"{type(model).__name__}.forward takes no input argument.",
                        why="The testbench feeds token ids of shape [batch, seq_len].",
                        fix="Give forward a token-id argument, e.g. forward(self, input_ids).")
    decoder = _first(_DECODER_NAMES, params)
    spec = ForwardSpec(token_param=token, decoder_param=decoder)
    spec.positional = {n for n, p in params.items() if p.kind == p.POSITIONAL_ONLY}
    if (name := _first(_KEEP_MASKS, params)) is not None:
        spec.mask_param, spec.mask_style = name, "keep"
    elif (name := _first(_PAD_MASKS, params)) is not None:
        spec.mask_param, spec.mask_style = name, "pad"
    elif (name := _first(_AMBIGUOUS_MASKS, params)) is not None and \
            params[name].default is not inspect.Parameter.empty:
        spec.mask_param = name  # polarity probed by adapt()
    spec.memory_mask_param = _first(_MEMORY_MASKS, params)
    if decoder and (name := _first(_DECODER_KEEP_MASKS + _DECODER_PAD_MASKS, params)):
        spec.decoder_mask_param = name
        spec.decoder_mask_style = "keep" if name in _DECODER_KEEP_MASKS else "pad"

    spec.targets_param = next((n for n in _TARGET_NAMES if n in params and n != token
                               and params[n].default is not inspect.Parameter.empty), None)
    fed = {token, decoder, spec.mask_param, spec.memory_mask_param, spec.decoder_mask_param}
    unfed = [n for n in required if n not in fed]
    masks = [n for n in unfed if "mask" in n]
    if masks:
        raise UserError(
            f"{type(model).__name__}.forward requires the mask argument "
            f"{', '.join(repr(n) for n in masks)} with no default.",
            why="Masks are passed only under names whose meaning is known (attention_mask: "
            "1 = real token; *_key_padding_mask: True = padding); a required "
            f"'{masks[0]}' could be a causal mask or a padding mask.",
            fix=f"Give '{masks[0]}' a default of None and build the causal mask inside forward, "
            "or rename it to attention_mask / src_key_padding_mask.")
    if unfed:
        listed = ", ".join(f"'{n}'" for n in unfed)
        raise UserError(
            f"{type(model).__name__}.forward requires {listed} besides the token input "
            f"'{token}', and the testbench cannot provide {'it' if len(unfed) == 1 else 'them'}.",
            why=f"{listed} look like intermediate results (attention or residual outputs) that an "
            "exported graph turned into arguments. A model's forward takes only its inputs "
            "(token ids, optionally a mask) and computes every intermediate tensor itself; "
            "fabricated tensors would make every check meaningless.",
            fix=f"Compute {listed} inside forward from '{token}' (re-export from the builder with "
            "the blocks connected), or give those arguments defaults.")
    spec.left_default = [n for n in params if n not in fed]
    return spec


def extract_output(out: Any) -> tuple[torch.Tensor, str]:
    """The main output tensor of whatever ``forward`` returned, and how it was found."""
    if isinstance(out, torch.Tensor):
        return out, "tensor"
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits, "attribute .logits"
    if isinstance(out, dict):
        for key in ("logits", "output", "outputs", "last_hidden_state", "hidden_states"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key], f"dict['{key}']"
        tensors = [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim >= 2]
        if tensors:
            return out[tensors[0]], f"dict['{tensors[0]}'] (first tensor)"
    hidden = getattr(out, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden, "attribute .last_hidden_state"
    if isinstance(out, (tuple, list)):
        for i, item in enumerate(out):
            if isinstance(item, torch.Tensor) and item.ndim >= 2:
                return item, f"element [{i}] of the returned {type(out).__name__}"
    raise UserError(f"forward returned {type(out).__name__}, which holds no output tensor.",
                    why="Expected logits: a tensor, a tuple starting with one, a dict with "
                    "'logits', or an object with .logits.",
                    fix="Return the logits tensor from forward.")
