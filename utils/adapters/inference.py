"""Decide a model's task, vocab size and lengths from the evidence, strongest first.

An explicit override (API/CLI argument, or the same key in config.json) beats declared intent
(``model_type``, ``is_decoder``, class names such as *GPT* or *MaskedLM*), which beats
structure (a second token input, output shape, triangular mask buffers, and the signs of causal
intent in the model's own code: a causal mask built even when never applied, ``is_causal``, a
``generate`` method, a next-token loss), which beats the probe. The probe's finding is kept
either way: a model meant to be causal whose probe shows leakage stays ``causal_lm`` so Tier 1's
causal check can fail it — the defect never decides the task. When the probe alone decides and
its leak is partial or small, the model is called bidirectional but the evidence says
"suspected leak" with the override to run.
"""

from __future__ import annotations

import re
from typing import Any

from utils.adapters.config_mapping import lookup
from utils.adapters.detection import Evidence, Probe, Scan
from utils.adapters.signature import ForwardSpec
from utils.errors import UserError
from utils.tasks import TASKS

__all__ = ["SUSPECTED", "decide_classes", "decide_lengths", "decide_task", "decide_vocab",
           "normalise_task", "suspected_leak"]

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


def _declared_task(flat: dict, class_name: str, bases: list[str]) -> Evidence | None:
    # The class name is the most specific declaration: GPT2ForSequenceClassification has
    # model_type 'gpt2' but classifies; ElectraForSequenceClassification likewise. A head named
    # by a base class counts as much (a thin subclass of RobertaForSequenceClassification).
    arch = flat.get("architectures")
    names = [class_name, *bases, *(str(a) for a in arch if isinstance(arch, list))] \
        if isinstance(arch, list) else [class_name, *bases]
    for name in names:
        squashed = name.lower().replace("_", "")
        for task, pattern in _HEAD_PATTERNS:
            if re.search(pattern, squashed):
                how = "base class" if name in bases else "class name"
                return Evidence(task, "declared", f"{how} {name!r}")
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
                scan: Scan, probe: Probe, vocab: int | None, bases: list[str] | None = None,
                ) -> tuple[Evidence, Evidence | None]:
    """The task's evidence, and the probe's causality finding (kept for reports)."""
    shape = probe.output_shape
    causal_probe = None
    if probe.leak is not None:
        leaks = probe.leak > 1e-4
        moved = (f", {probe.leak_moved} of the {probe.leak_positions} positions before it"
                 if leaks and probe.leak_positions else "")
        causal_probe = Evidence(
            "leaks" if leaks else "causal", "probe",
            f"changing the last token moved earlier outputs by {probe.leak:.2e} (relative; "
            f"{'above' if leaks else 'within'} 1e-4{moved})" + (
                f" after two gradient steps — {probe.leak_at_init:.1e} at init, where its "
                "mixing branch starts small (a layer scale) or closed (a gate at 0)"
                if probe.leak_at_init is not None else ""))
    if override:
        return Evidence(normalise_task(override, "The task override"), "override",
                        f"task={override!r} given explicitly"), causal_probe
    if "task" in flat:
        return Evidence(normalise_task(flat["task"], "config.json"), "config",
                        f"config task={flat['task']!r}"), causal_probe
    declared = _declared_task(flat, class_name, list(bases or []))
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
    suspected = suspected_leak(probe)
    seen = causal_probe.detail if causal_probe else "no causality probe"
    if causal_probe is not None and suspected:
        causal_probe = Evidence(SUSPECTED, "probe", f"{seen}; {suspected}")
    said = f"; {SUSPECTED}: {suspected}" if suspected else ""
    if vocab is not None and out == vocab:
        return Evidence("masked_lm", "probe", f"bidirectional ({seen}), output size {out} = "
                        f"vocab{said}"), causal_probe
    return Evidence("encoder", "probe", f"bidirectional, output size {out} is not the vocab size "
                    f"({vocab}): hidden states{said}"), causal_probe


# What the probe's finding is called when the leak looks like a causal mask that leaks rather
# than a model meant to see both ways.
SUSPECTED = "suspected leak"
# In a bidirectional model the last token reaches the earlier outputs about as far as the
# first reaches the later ones (attention starts near uniform; HF BERT: both ~2e-3 at init).
# A causal mask that lets a little through (a soft cap applied after the mask, a finite fill
# value) leaks far less than the past reaches: below this fraction of it.
_ASYMMETRY = 0.1


def suspected_leak(probe: Probe) -> str | None:
    """Why the probe's leak looks like a causal mask that leaks, when it does: partial (some
    earlier positions moved, not all) or small (far below how far the past reaches). None for
    a plain bidirectional model."""
    if probe.leak is None or probe.leak <= 1e-4:
        return None
    partial = probe.leak_positions is not None and probe.leak_moved is not None and \
        probe.leak_moved < probe.leak_positions
    small = probe.reach_back is not None and probe.leak < _ASYMMETRY * probe.reach_back
    if not (partial or small):
        return None
    why = (f"only {probe.leak_moved} of the {probe.leak_positions} positions before the changed "
           "token moved (a bidirectional model moves every one; a causal mask off by one or a "
           "window into the future moves some)" if partial else
           f"the leak is small: the last token moves earlier outputs by {probe.leak:.1e}, the "
           f"first moves later ones by {probe.reach_back:.1e} (a bidirectional model reaches "
           "about as far both ways; a causal mask that lets a little through — a soft cap "
           "applied after the mask, a finite fill value — leaks far less)")
    return (f"{why}. Nothing the adapter reads in its code says causal, so the probe alone "
            "decided; if the model is a causal LM, run it as one — CLI: --task causal_lm; "
            "Python: adapt(..., task=\"causal_lm\"); or \"task\": \"causal_lm\" in "
            "config.json — and causal_masking will measure the leak")


def decide_vocab(*, override: int | None, flat: dict, scan: Scan, probe: Probe,
                 ) -> tuple[Evidence | None, list[str]]:
    """Vocab size = the token embedding's rows; returns (evidence or None, mismatch notes).

    Raises:
        UserError: an override larger than the table that received the token ids (ids past
            its rows cannot be looked up).
    """
    notes: list[str] = []
    config = lookup(flat, "vocab_size")
    found: Evidence | None = None  # what the model itself has
    if probe.token_embedding is not None:
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
    used = found
    if override:
        used = Evidence(int(override), "override", f"vocab_size={override} given explicitly")
        if found is not None and found.value != override:
            if override > found.value and found.method == "probe":
                raise UserError(
                    f"vocab_size={override} was given, but the model's token embedding has "
                    f"{found.value} rows ({found.detail}).",
                    why=f"Token ids {found.value}–{override - 1} would index past the table, so "
                    "no forward pass with them can run: the override cannot apply.",
                    fix=f"Build the model with vocab_size {override} (config.json), or drop "
                    f"--vocab-size / vocab_size= to use its {found.value} rows.")
            notes.append(f"vocab_size={override} given explicitly, but the model has "
                         f"{found.value} ({found.detail}); ids stay below {override}"
                         + (f", so {found.value - override} rows are never read."
                            if override < found.value else "."))
    if found is not None and config is not None and int(config[1]) != found.value:
        notes.append(f"config {config[0]}={config[1]} but the model's token embedding has "
                     f"{found.value} rows; using {(used or found).value} (ids must stay below "
                     "it).")
    return used, notes


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


def decide_classes(task: str, flat: dict, shape: tuple[int, ...], override: int | None,
                   evidence: dict[str, Evidence], notes: list[str]) -> int | None:
    """A classifier's number of classes (recorded in ``evidence``); None for other tasks.

    Raises:
        UserError: ``override`` on a task without classes, or more classes than the output has.
    """
    if override is not None and task != "classification":
        raise UserError(
            f"num_classes={override} was given, but the model's task is '{task}' "
            f"({evidence['task'].method}: {evidence['task'].detail}), which has no classes.",
            why="num_classes sets the labels of a classifier (output [batch, classes]); "
            f"a {task} model predicts {'tokens' if task.endswith('lm') else 'outputs'} per "
            "position, so the override cannot apply.",
            fix="Drop --num-classes / num_classes=, or set the task (--task classification) "
            "if the model really is a classifier.")
    if task != "classification":
        return None
    key = next((k for k in ("num_classes", "num_labels", "n_classes")
                if isinstance(flat.get(k), int) and not isinstance(flat.get(k), bool)), None)
    declared = flat[key] if key else None
    outputs = shape[-1]
    if override is not None:
        if override > outputs:
            raise UserError(
                f"num_classes={override} was given, but the model's output has {outputs} "
                f"classes (shape {list(shape)}).",
                why=f"Labels {outputs}–{override - 1} would index past the output, so no loss "
                "could be computed.",
                fix=f"Build the classifier with {override} outputs, or drop the override.")
        if override != outputs:
            notes.append(f"num_classes={override} given explicitly, but the model's output has "
                         f"{outputs} classes; labels stay below {override}.")
        evidence["num_classes"] = Evidence(override, "override", f"num_classes={override} "
                                           f"given explicitly; the output has {outputs}")
        return override
    classes = declared or outputs
    evidence["num_classes"] = Evidence(classes, "config" if declared else "probe",
                                       f"config {key}" if declared else
                                       f"output shape {list(shape)}")
    return classes
