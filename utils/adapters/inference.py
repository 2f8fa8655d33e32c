"""Decide a model's task, vocab size and lengths from the evidence, strongest first.

An explicit override (API/CLI argument, or the same key in config.json) beats declared intent
(``model_type``, ``is_decoder``, class names such as *GPT* or *MaskedLM*), which beats
structure (triangular mask buffers, ``is_causal=True``, a second token input, output shape),
which beats the probe. The probe's finding is kept either way: a model declared causal whose
probe shows leakage stays ``causal_lm`` so Tier 1's causal check can fail it.
"""

from __future__ import annotations

import re
from typing import Any

from utils.adapters.config_mapping import lookup
from utils.adapters.detection import Evidence, Probe, Scan
from utils.adapters.signature import ForwardSpec
from utils.errors import UserError
from utils.tasks import TASKS

__all__ = ["decide_lengths", "decide_task", "decide_vocab", "normalise_task"]

_TASK_WORDS = {
    "causal_lm": ("causal_lm", "causal", "clm", "lm", "language_modeling", "language-modeling",
                  "text-generation", "text_generation", "generation", "decoder", "autoregressive",
                  "gpt", "next_token"),
    "masked_lm": ("masked_lm", "mlm", "masked", "fill-mask", "fill_mask", "bert"),
    "seq2seq": ("seq2seq", "translation", "text2text", "text2text-generation", "summarization",
                "encoder_decoder", "encoder-decoder"),
    "classification": ("classification", "classifier", "sequence_classification",
                       "text-classification", "text_classification", "cls", "sentiment"),
    "encoder": ("encoder", "feature-extraction", "feature_extraction", "embedding", "embeddings"),
}
_MODEL_TYPES = {
    "causal_lm": ("gpt", "gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "mixtral",
                  "qwen", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "opt", "bloom",
                  "falcon", "olmo", "smollm", "mamba", "rwkv"),
    "masked_lm": ("roberta", "distilbert", "electra", "deberta", "deberta-v2", "modernbert"),
    "seq2seq": ("t5", "mt5", "bart", "mbart", "marian", "pegasus", "encoder-decoder"),
}
# Task heads named in a class (Hugging Face's *For<Task>), which beat model_type.
_HEAD_PATTERNS = (
    ("seq2seq", r"forconditionalgeneration|forseq2seq"),
    ("masked_lm", r"formaskedlm"),
    ("classification", r"forsequenceclassification"),
    ("causal_lm", r"forcausallm"),
)
# Class-name patterns, checked in order (EncoderDecoder before Decoder).
_CLASS_PATTERNS = (
    ("seq2seq", r"seq2seq|encoderdecoder|conditionalgeneration|translat"),
    ("masked_lm", r"maskedlm|formaskedlm|mlm"),
    ("classification", r"classif|forsequenceclassification"),
    ("causal_lm", r"causallm|lmhead|gpt|decoderonly|decoderlm|llama|mistral"),
)


def normalise_task(value: Any, source: str) -> str:
    """Map a task name as people write it onto one of :data:`TASKS`."""
    text = str(value).strip().lower()
    for task, words in _TASK_WORDS.items():
        if text in words:
            return task
    raise UserError(f"{source} gives task {value!r}, which is not a task I know.",
                    why=f"Tasks are {', '.join(TASKS)}.",
                    fix=f"Use one of: {', '.join(TASKS)}.")


def _declared_task(flat: dict, class_name: str) -> Evidence | None:
    # The class name is the most specific declaration: GPT2ForSequenceClassification has
    # model_type 'gpt2' but classifies; ElectraForSequenceClassification likewise.
    names = [class_name] + [str(a) for a in (flat.get("architectures") or [])
                            if isinstance(flat.get("architectures"), list)]
    for name in names:
        squashed = name.lower().replace("_", "")
        for task, pattern in _HEAD_PATTERNS:
            if re.search(pattern, squashed):
                return Evidence(task, "declared", f"class name {name!r}")
    model_type = str(flat.get("model_type", "")).lower()
    for task, types in _MODEL_TYPES.items():
        if model_type in types:
            return Evidence(task, "declared", f"config model_type={model_type!r}")
    for key in ("is_decoder", "is_causal"):
        if flat.get(key) is True:
            return Evidence("causal_lm", "declared", f"config {key}=true")
    for name in names:
        squashed = name.lower().replace("_", "")
        for task, pattern in _CLASS_PATTERNS:
            if re.search(pattern, squashed):
                return Evidence(task, "declared", f"class name {name!r}")
    return None


def decide_task(*, override: str | None, flat: dict, class_name: str, spec: ForwardSpec,
                scan: Scan, probe: Probe, vocab: int | None) -> tuple[Evidence, Evidence | None]:
    """The task's evidence, and the probe's causality finding (kept for reports)."""
    shape = probe.output_shape
    causal_probe = None
    if probe.leak is not None:
        leaks = probe.leak > 1e-4
        causal_probe = Evidence(
            "leaks" if leaks else "causal", "probe",
            f"changing the last token moved earlier outputs by {probe.leak:.2e} (relative; "
            f"{'above' if leaks else 'within'} 1e-4)")
    if override:
        return Evidence(normalise_task(override, "The task override"), "override",
                        f"task={override!r} given explicitly"), causal_probe
    if "task" in flat:
        return Evidence(normalise_task(flat["task"], "config.json"), "config",
                        f"config task={flat['task']!r}"), causal_probe
    declared = _declared_task(flat, class_name)
    if declared is not None:
        return declared, causal_probe
    if spec.decoder_param:
        return Evidence("seq2seq", "structure",
                        f"forward takes a second token input '{spec.decoder_param}'"), causal_probe
    if len(shape) == 2:
        return Evidence("classification", "structure",
                        f"output shape {list(shape)} is [batch, classes]"), causal_probe
    if scan.causal_markers:
        return Evidence("causal_lm", "structure", "; ".join(scan.causal_markers[:3])), causal_probe
    out = shape[-1]
    if causal_probe is not None and causal_probe.value == "causal":
        return Evidence("causal_lm", "probe", causal_probe.detail), causal_probe
    if vocab is not None and out == vocab:
        return Evidence("masked_lm", "probe", "bidirectional (" + (
            causal_probe.detail if causal_probe else "no causality probe") +
            f"), output size {out} = vocab"), causal_probe
    return Evidence("encoder", "probe", f"bidirectional, output size {out} is not the vocab size "
                    f"({vocab}): hidden states"), causal_probe


def decide_vocab(*, override: int | None, flat: dict, scan: Scan, probe: Probe,
                 ) -> tuple[Evidence | None, list[str]]:
    """Vocab size = the token embedding's rows; returns (evidence or None, mismatch notes)."""
    notes: list[str] = []
    config = lookup(flat, "vocab_size")
    found: Evidence | None = None
    if override:
        found = Evidence(int(override), "override", f"vocab_size={override} given explicitly")
    elif probe.token_embedding is not None:
        rows = scan.embeddings[probe.token_embedding]
        found = Evidence(rows, "probe", f"rows of '{probe.token_embedding}', the embedding that "
                         "received the token ids")
    elif len(scan.embedding_params) == 1:
        (name, rows), = scan.embedding_params.items()
        found = Evidence(rows, "structure", f"rows of the embedding table parameter '{name}'")
    elif tables := {n: r for n, r in scan.embeddings.items() if n not in scan.position_tables}:
        name, rows = max(tables.items(), key=lambda kv: kv[1])
        found = Evidence(rows, "structure", f"rows of '{name}', the largest embedding (the probe "
                         "did not see any embedding receive the token ids)")
    elif config is not None:
        found = Evidence(int(config[1]), "config", f"config {config[0]}={config[1]}")
    if found is not None and config is not None and int(config[1]) != found.value:
        notes.append(f"config {config[0]}={config[1]} but the model's token embedding has "
                     f"{found.value} rows; using {found.value} (ids must stay below it).")
    return found, notes


# Hugging Face families whose position ids start after padding_idx (RoBERTa's 514 rows hold
# 512 positions).
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert",
                            "data2vec-text", "roberta-prelayernorm", "longformer", "ibert",
                            "xmod", "luke")


def decide_lengths(*, override: int | None, flat: dict, scan: Scan, probe: Probe) -> Evidence:
    if override:
        return Evidence(int(override), "override", f"max_seq_len={override} given explicitly")
    config = lookup(flat, "max_seq_len")
    if config is not None:
        model_type = str(flat.get("model_type", "")).lower()
        pad = flat.get("pad_token_id")
        if model_type in _POSITIONS_AFTER_PADDING and isinstance(pad, int) and \
                config[0] == "max_position_embeddings":
            return Evidence(int(config[1]) - pad - 1, "config",
                            f"config {config[0]}={config[1]} minus pad_token_id + 1: "
                            f"{model_type} numbers positions from pad_token_id + 1")
        return Evidence(int(config[1]), "config", f"config {config[0]}={config[1]}")
    if probe.position_embedding is not None:
        rows = scan.embeddings[probe.position_embedding]
        return Evidence(rows, "probe", f"rows of '{probe.position_embedding}', the embedding "
                        "that received positions")
    if scan.position_tables:
        name, length = min(scan.position_tables.items(), key=lambda kv: kv[1])
        return Evidence(length, "structure", f"length of '{name}'")
    return Evidence(None, "default", "unknown: no config key and no position table (e.g. rotary "
                    "or no positions); checks cap lengths themselves")
