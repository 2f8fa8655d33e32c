"""A Hugging Face model's own config and class hierarchy, as evidence for the adapter.

A ``PreTrainedModel`` carries a ``.config`` (``model_type``, ``max_position_embeddings``,
``pad_token_id``, ``architectures`` …): it is merged below the user's config.json, so
RoBERTa-family position offsets apply without the user repeating ``model_type``, while every
key the user sets — under any of its aliases — wins. A thin subclass declares its head through
its bases (``MyClassifier(RobertaForSequenceClassification)``), so class names are read
through the MRO.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

from torch import nn

from utils.adapters.config_mapping import ALIASES, flatten_config

__all__ = ["base_class_names", "merge_below", "own_config"]


def own_config(model: nn.Module) -> dict[str, Any]:
    """The settings a model carries itself, as a dict: a Hugging Face ``PreTrainedModel``'s
    ``.config`` (model_type, architectures, max_position_embeddings, pad_token_id …); else the
    scalars of a config object it keeps (``self.config = config``, a dataclass such as
    nanoGPT's ``GPTConfig`` whose defaults config.json may not repeat) and a maximum length it
    keeps as an attribute (``self.block_size``, ``self.n_ctx``, ``self.sequence_len``)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict") and hasattr(cfg, "model_type"):
        own = cfg.to_dict()
        return own if isinstance(own, dict) else {}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        values = {f.name: getattr(cfg, f.name, None) for f in dataclasses.fields(cfg)}
    elif isinstance(cfg, dict):
        values = dict(cfg)
    elif isinstance(cfg, SimpleNamespace):
        values = vars(cfg)
    else:
        values = {}
    own = {k: v for k, v in values.items() if isinstance(k, str) and _scalar(v)}
    lengths = next(group for group in ALIASES if group[0] == "max_seq_len")
    for name in lengths:  # only the model's own attributes, never a submodule's
        value = vars(model).get(name)
        if _scalar(value) and isinstance(value, int) and not isinstance(value, bool):
            own.setdefault(name, value)
            break
    return own


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) and value is not None


def _alias_group(key: str) -> tuple[str, ...]:
    return next((group for group in ALIASES if key in group), (key,))


def merge_below(explicit: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """``explicit`` (config.json) over the model's own config: an own key is kept only when
    the explicit config sets neither it nor any of its aliases (so an explicit ``seq_len``
    is not beaten by the model's ``max_position_embeddings``)."""
    if not own:
        return explicit
    given, _ = flatten_config(explicit)
    taken = {alias for key in given for alias in _alias_group(key)}
    return {**{k: v for k, v in own.items() if k not in taken}, **explicit}


def base_class_names(model: nn.Module) -> list[str]:
    """The model's base classes, nearest first, without torch's, mixins and HF's generic
    ``PreTrainedModel``: ``MyClassifier(RobertaForSequenceClassification)`` declares its head
    through its base."""
    return [c.__name__ for c in type(model).__mro__[1:]
            if not c.__module__.startswith(("torch", "builtins"))
            and not c.__name__.endswith(("Mixin", "PreTrainedModel"))]
