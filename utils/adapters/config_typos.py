"""Which unused config keys are misspellings of a constructor parameter (``d_modle`` → ``d_model``).

A key the constructor does not take is never passed, so a misspelt one silently builds the
model with the parameter's default. A key is taken for a misspelling of a parameter the config
left unset when the two are the same name up to case and separators (``dModel``, ``D_MODEL``,
``n-layer``), or when both are at least five letters long, differ by one edit (a letter added,
dropped, changed, or two neighbours swapped) and carry the same digits. Short names must match
exactly: ``top_p`` is not a misspelling of ``top_k``, nor ``d_v`` of ``d_k``; neither are
``encoder_layers`` and ``decoder_layers``, two edits apart. Keys of a known schema (a Hugging
Face ``config.json``, which says so with ``model_type``, ``architectures`` or
``transformers_version``) are that schema's own names, never misspellings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["HF_CONFIG_KEYS", "is_known_schema", "misspelling_of", "near_miss"]

# Keys that Hugging Face configs carry (PretrainedConfig and the common architectures').
HF_CONFIG_KEYS = frozenset({
    "_name_or_path", "activation", "activation_dropout", "activation_function",
    "add_cross_attention", "alibi", "architectures", "attention_bias", "attention_dropout",
    "attention_probs_dropout_prob", "attn_pdrop", "bos_token_id", "chunk_size_feed_forward",
    "classifier_dropout", "d_ff", "d_kv", "d_model", "decoder_attention_heads", "decoder_ffn_dim",
    "decoder_layerdrop", "decoder_layers", "decoder_start_token_id", "dense_act_fn", "dim",
    "do_layer_norm_before", "dropout", "dropout_rate", "dtype", "embd_pdrop", "embedding_size",
    "encoder_attention_heads", "encoder_ffn_dim", "encoder_layerdrop", "encoder_layers",
    "eos_token_id", "expand", "feed_forward_proj", "ffn_dim", "forced_eos_token_id", "head_dim",
    "hidden_act", "hidden_dim", "hidden_dropout", "hidden_dropout_prob", "hidden_size", "id2label",
    "init_std", "initializer_factor", "initializer_range", "intermediate_size", "is_decoder",
    "is_encoder_decoder", "is_gated_act", "label2id", "layer_norm_eps", "layer_norm_epsilon",
    "layerdrop", "max_position_embeddings", "max_source_positions", "max_target_positions",
    "mlp_bias", "model_type", "multi_query", "n_ctx", "n_embd", "n_head", "n_heads", "n_inner",
    "n_layer", "n_layers", "n_positions", "num_attention_heads", "num_decoder_layers",
    "num_experts_per_tok", "num_heads", "num_hidden_layers", "num_key_value_heads", "num_kv_heads",
    "num_layers", "num_local_experts", "output_attentions", "output_hidden_states", "pad_token_id",
    "parallel_attn", "partial_rotary_factor", "position_embedding_type", "problem_type",
    "qkv_bias", "relative_attention_max_distance", "relative_attention_num_buckets", "resid_pdrop",
    "return_dict", "rms_norm_eps", "rope_scaling", "rope_theta", "rotary_dim", "rotary_emb_base",
    "rotary_pct", "scale_attn_weights", "scale_embedding", "sliding_window", "state_size",
    "summary_activation", "summary_first_dropout", "summary_proj_to_labels", "summary_type",
    "summary_use_proj", "tie_word_embeddings", "torch_dtype", "transformers_version",
    "type_vocab_size", "use_bias", "use_cache", "use_parallel_residual", "use_sliding_window",
    "vocab_size", "word_embed_proj_dim"
})
_SCHEMA_MARKERS = ("model_type", "architectures", "transformers_version", "_name_or_path")
_MIN_FUZZY = 5  # letters; shorter names must match up to case and separators


def is_known_schema(flat: dict) -> bool:
    """True for a Hugging Face ``config.json`` (its keys are that schema's names)."""
    return any(k in flat for k in _SCHEMA_MARKERS)


def _normal(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


def _one_edit(a: str, b: str) -> bool:
    """``a`` and ``b`` (different) are one insertion, deletion, substitution or swap apart."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    i = next((i for i, (x, y) in enumerate(zip(short, long, strict=False)) if x != y), len(short))
    return short[i:] == long[i + 1:]


def near_miss(key: str, name: str) -> bool:
    """Whether config key ``key`` reads as a misspelling of parameter ``name``."""
    a, b = _normal(key), _normal(name)
    if key == name or not a or not b:
        return False
    if a == b:
        return True
    digits = re.findall(r"\d", a) == re.findall(r"\d", b)
    return digits and min(len(a), len(b)) >= _MIN_FUZZY and _one_edit(a, b)


def misspelling_of(key: str, targets: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The ``(target, parameter)`` that ``key`` misspells, from ``(name, parameter)`` pairs
    (a parameter's own name and its aliases); an exact case/separator match wins."""
    found = [(t, p) for t, p in targets if near_miss(key, t)]
    found.sort(key=lambda tp: _normal(tp[0]) != _normal(key))
    return found[0] if found else None
