"""One uniform interface over any transformer: what every tier, the trainer and the exporter use.

``adapt(model, config)`` works out how to call the model, its task, vocab size and maximum
length — keeping the evidence for each decision — and returns a :class:`ModelAdapter` with
``make_inputs``, ``logits`` and ``loss`` in one batch format: a dict with ``input_ids``,
``attention_mask`` (1 = real token), ``labels`` (unshifted, -100 ignored; ``[B]`` for
classification) and ``decoder_input_ids`` for seq2seq.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.adapters import detection, inference, targets
from utils.adapters.config_mapping import flatten_config, lookup
from utils.adapters.detection import Evidence
from utils.adapters.hf_config import base_class_names, merge_below, own_config
from utils.adapters.mask_probe import check_named_mask, probe_mask_polarity
from utils.adapters.signature import ForwardSpec, analyse_forward, extract_output
from utils.errors import UserError
from utils.tasks import IGNORE_INDEX, Task

__all__ = ["RAISED_IN_MODE", "ModelAdapter", "adapt"]

# a padding-mask convention -> the opposite one (the inverted-mask retry of the checks)
_FLIPPED = {"keep": "pad", "keep_bool": "pad", "pad": "keep"}

# The attribute ModelAdapter.forward sets on an exception the model raises: "training" or
# "eval", the model's mode at that moment (a check may reset the mode before reporting).
RAISED_IN_MODE = "testbench_raised_in_mode"


@dataclass
class ModelAdapter:
    """A model with everything the testbench needs to feed it and score it."""

    model: nn.Module
    task: Task
    vocab_size: int
    max_seq_len: int | None
    spec: ForwardSpec
    output_size: int
    num_classes: int | None = None
    pad_token_id: int | None = None
    mask_token_id: int | None = None
    bos_token_id: int | None = None
    target_vocab_size: int | None = None  # seq2seq decoder vocab, when it differs
    token_embedding: str | None = None  # module name of the nn.Embedding that reads input_ids
    config: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Evidence] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    # the LoadedModel it was made from (its code files and config: what training's final/ copies)
    loaded: Any = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:  # the dataclass one prints the whole module and config
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return (f"<ModelAdapter {type(self.model).__name__}: {self.task}, vocab_size "
                f"{self.vocab_size}, max_seq_len {self.max_seq_len}{classes}, "
                f"{self.num_parameters:,} parameters on {self.device}>")

    # ---- facts ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def is_causal(self) -> bool:
        """Whether outputs at position t may depend only on tokens up to t (decoder side)."""
        return self.task in ("causal_lm", "seq2seq")

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def model_files(self) -> set[str]:
        return detection.model_files(self.model)

    def to(self, device: str | torch.device) -> ModelAdapter:
        self.model.to(device)
        return self

    # ---- batches ----------------------------------------------------------------------
    @property
    def id_limit(self) -> int:
        """Input ids stay below this: the embedding's rows and, for LMs, the head's outputs."""
        if self.task in ("causal_lm", "masked_lm"):
            return min(self.vocab_size, self.output_size)
        return self.vocab_size

    def _random_ids(self, shape, limit: int, gen: torch.Generator) -> torch.Tensor:
        ids = torch.randint(0, limit, shape, generator=gen)
        if self.pad_token_id is not None and limit > 1:  # real tokens are never padding
            ids[ids == self.pad_token_id] = (self.pad_token_id + 1) % limit
        return ids

    def make_inputs(self, batch: int = 2, seq_len: int | None = None, seed: int = 0,
                    device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
        """A random batch in the standard format, valid for this model's task.

        Example:
            >>> batch = adapter.make_inputs(4, 32)
            >>> loss = adapter.loss(batch)
        """
        seq_len = seq_len or min(16, self.max_seq_len or 16)
        gen = torch.Generator().manual_seed(seed)
        limit = self.id_limit
        ids = self._random_ids((batch, seq_len), limit, gen)
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.task == "causal_lm":
            out["labels"] = ids.clone()
        elif self.task == "masked_lm":
            chosen = torch.rand((batch, seq_len), generator=gen) < 0.15
            chosen[torch.arange(batch), torch.randint(0, seq_len, (batch,), generator=gen)] = True
            out["labels"] = torch.where(chosen, ids, IGNORE_INDEX)
            fill = (torch.full_like(ids, self.mask_token_id) if self.mask_token_id is not None
                    else self._random_ids((batch, seq_len), limit, gen))
            out["input_ids"] = torch.where(chosen, fill, ids)
        elif self.task == "classification":
            out["labels"] = torch.randint(0, self.num_classes or 2, (batch,), generator=gen)
        elif self.task == "seq2seq":
            tgt_limit = min(self.target_vocab_size or self.vocab_size, self.output_size)
            labels = self._random_ids((batch, seq_len), tgt_limit, gen)
            start = self.bos_token_id if self.bos_token_id is not None else (
                self.pad_token_id or 0)
            out["labels"] = labels
            out["decoder_input_ids"] = torch.cat(
                [torch.full((batch, 1), start, dtype=labels.dtype), labels[:, :-1]], dim=1)
        target = torch.device(device) if device is not None else self.device
        return {k: v.to(target) for k, v in out.items()}

    # ---- how forward is called (the Adapter Protocol's names for the call spec) -------
    @property
    def takes_mask(self) -> bool:
        """Whether forward has a padding-mask parameter the batch's mask is fed to."""
        return self.spec.takes_mask

    @property
    def mask_param(self) -> str | None:
        """forward's padding-mask parameter, if it has one."""
        return self.spec.mask_param

    @property
    def token_param(self) -> str | None:
        """forward's token parameter (None: passed positionally)."""
        return self.spec.token_param

    @property
    def targets_param(self) -> str | None:
        """forward's optional targets/labels parameter, if it has one."""
        return self.spec.targets_param

    def takes_by_name(self, param: str) -> bool:
        """Whether forward's ``param`` can be passed by keyword (not positional-only)."""
        return param not in self.spec.positional

    def unfed_params(self) -> list[str]:
        """forward's optional parameters this adapter leaves at their defaults."""
        return list(self.spec.left_default)

    def call_args(self, batch: dict[str, torch.Tensor], *, feed_targets: bool = False,
                  ) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` forward is called with for ``batch``; ``feed_targets`` passes
        the input ids to the targets parameter too (a model that returns full logits only
        then)."""
        spec = dataclasses.replace(self.spec, feed_targets=True) if feed_targets else self.spec
        args, kwargs = spec.build_call(batch)
        return list(args), dict(kwargs)

    @contextlib.contextmanager
    def mask_flipped(self) -> Iterator[bool]:
        """Feed the padding mask the other way round while inside (yields whether it could:
        only a mask whose convention is known can be flipped)."""
        old = self.spec.mask_style
        if old not in _FLIPPED:
            yield False
            return
        self.spec.mask_style = _FLIPPED[old]
        try:
            yield True
        finally:
            self.spec.mask_style = old

    # ---- calling the model ------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        """Call the model on a batch dict; returns whatever the model returns."""
        args, kwargs = self.spec.build_call(batch)
        try:
            return self.model(*args, **kwargs)
        except Exception as exc:  # the mode it raised in, for a report made after it is reset
            if getattr(exc, RAISED_IN_MODE, None) is None:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(exc, RAISED_IN_MODE, "training" if self.model.training else "eval")
            raise

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               **extra: torch.Tensor) -> torch.Tensor:
        """The main output tensor: [B, T, V] for LMs/seq2seq, [B, C] classifiers, [B, T, H]
        encoders. ``decoder_input_ids`` may be passed for seq2seq (default: ``input_ids``)."""
        batch = {"input_ids": input_ids, **extra}
        if attention_mask is not None:
            batch["attention_mask"] = attention_mask
        return extract_output(self.forward(batch))[0]

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task loss: shifted next-token CE (causal), CE on masked positions (masked LM),
        teacher-forced CE (seq2seq), CE over classes; encoders have no task loss, so a
        surrogate (mean squared output) lets gradients flow."""
        return self.loss_from_logits(
            self.logits(**{k: v for k, v in batch.items() if k != "labels"}), batch)

    def loss_from_logits(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                         ) -> torch.Tensor:
        """The task loss of :meth:`loss` for logits already computed from ``batch``."""
        labels = batch.get("labels")
        if self.task == "encoder" or labels is None:
            return logits.float().pow(2).mean()
        if self.task == "causal_lm":
            logits, labels = logits[:, :-1], labels[:, 1:]
            mask = batch.get("attention_mask")
            if mask is not None:  # no loss on padding targets
                labels = labels.masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        if self.task == "classification":
            return F.cross_entropy(logits.float(), labels)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    # ---- reporting --------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The JSON contract's ``model`` object."""
        params = self.num_parameters
        return {
            "class": type(self.model).__name__,
            "task": self.task,
            "vocab_size": self.vocab_size,
            "max_seq_len": self.max_seq_len,
            "num_classes": self.num_classes,
            "pad_token_id": self.pad_token_id,
            "mask_token_id": self.mask_token_id,
            "output_size": self.output_size,
            "parameters": params,
            "trainable_parameters": sum(p.numel() for p in self.model.parameters()
                                        if p.requires_grad),
            "size_mb": round(sum(p.numel() * p.element_size()
                                 for p in self.model.parameters()) / 2**20, 3),
            "forward": self.spec.describe(),
            "evidence": {k: v.to_dict() for k, v in self.evidence.items()},
            "warnings": list(self.warnings),
        }


def _optional_int(flat: dict, names: tuple[str, ...]) -> tuple[int | None, str | None]:
    for name in names:
        if isinstance(flat.get(name), int) and not isinstance(flat.get(name), bool):
            return flat[name], name
    return None, None


def _id_limit(scan, flat: dict, vocab_override: int | None) -> int:
    """Probe ids are kept below every table that might be the token embedding."""
    sizes = [*scan.embeddings.values(), *scan.embedding_params.values()]
    sizes = [s for s in sizes if s >= 4] or sizes
    config = lookup(flat, "vocab_size")
    sizes += [int(config[1])] if config else []
    sizes += [vocab_override] if vocab_override else []
    return min(sizes) if sizes else 2


def adapt(model, config: dict | None = None, *, task: str | None = None,
          vocab_size: int | None = None, max_seq_len: int | None = None,
          num_classes: int | None = None, pad_token_id: int | None = None,
          mask_token_id: int | None = None, device: str | torch.device | None = None,
          ) -> ModelAdapter:
    """Wrap ``model`` (an ``nn.Module`` or a ``LoadedModel``) in a :class:`ModelAdapter`.

    Keyword arguments are explicit overrides and beat everything the adapter would infer.

    Raises:
        UserError: a forward that cannot be called with token ids, a probe forward that
            raises, a vocab size or task that cannot be determined.
    """
    source: dict[str, Any] = {}
    loaded_notes: list[str] = []  # the loader's (config keys not taken, ...) come first
    loaded = None
    if not isinstance(model, nn.Module) and hasattr(model, "model"):  # a LoadedModel
        loaded = model
        loaded_notes = list(getattr(model, "warnings", []))
        source, config, model = model.source, config or model.config, model.model
    if not isinstance(model, nn.Module):
        raise UserError(f"adapt() needs a torch nn.Module; it got {type(model).__name__}.",
                        fix="Pass the model instance (or load one with utils.load_model).")
    own = own_config(model)
    merged = merge_below(dict(config or {}), own)
    flat, _ = flatten_config(merged)
    if device is not None:
        model.to(device)
    name = type(model).__name__
    spec = analyse_forward(model)
    scan = detection.scan_structure(model)
    length_ev = inference.decide_lengths(override=max_seq_len, flat=flat, scan=scan,
                                         probe=detection.Probe((), "", 0))
    probe_len = min(8, length_ev.value) if length_ev.value else 8
    dev = next(model.parameters(), torch.empty(0)).device
    id_limit = _id_limit(scan, flat, vocab_size)
    probe = detection.run_probe(model, spec, seq_len=probe_len, id_limit=id_limit, device=dev)
    probe, last_only = targets.full_logits_probe(model, spec, probe, id_limit=id_limit,
                                                  device=dev)
    model_len = inference.decide_lengths(override=None, flat=flat, scan=scan, probe=probe)
    length_ev = inference.decide_lengths(override=max_seq_len, flat=flat, scan=scan, probe=probe)
    vocab_ev, notes = inference.decide_vocab(override=vocab_size, flat=flat, scan=scan,
                                             probe=probe)
    if vocab_ev is None:
        raise UserError(
            f"Could not determine the vocab size of {name}.",
            why="No nn.Embedding received the token ids, no embedding table was found, and the "
            "config has no vocab_size.",
            fix="Add \"vocab_size\": N to config.json, or pass vocab_size=N (CLI: --vocab-size N).")
    task_ev, causal_probe = inference.decide_task(
        override=task, flat=flat, class_name=name, bases=base_class_names(model), spec=spec,
        scan=scan, probe=probe, vocab=vocab_ev.value)
    shape = probe.output_shape
    _check_output(task_ev, shape, probe_len, name, spec, last_only)
    evidence = {"task": task_ev, "vocab_size": vocab_ev, "max_seq_len": length_ev}
    if max_seq_len and model_len.value is not None and model_len.value != max_seq_len:
        notes.append(f"max_seq_len={max_seq_len} given explicitly, but the model says "
                     f"{model_len.value} ({model_len.detail}); checks test up to {max_seq_len}"
                     + (", past the model's limit." if max_seq_len > model_len.value else "."))
    if causal_probe is not None:
        evidence["causal_probe"] = causal_probe
        if causal_probe.value == inference.SUSPECTED:
            notes.append(f"Task '{task_ev.value}' was decided by the causality probe alone, "
                         f"and it found a {inference.SUSPECTED}: {causal_probe.detail}.")
    evidence["forward"] = Evidence(spec.describe(), "signature",
                                   f"output found as {probe.output_how}, shape {list(shape)}")
    if spec.feed_targets:
        evidence["forward"] = Evidence(spec.describe(), "probe", last_only or "")

    classes = inference.decide_classes(task_ev.value, flat, shape, num_classes, evidence,
                                       notes)
    pad, pad_key = _optional_int(flat, ("pad_token_id", "pad_id", "pad_idx", "padding_idx"))
    if pad_token_id is not None:
        evidence["pad_token_id"] = Evidence(pad_token_id, "override", "given explicitly")
    elif pad is not None:
        evidence["pad_token_id"] = Evidence(pad, "config", f"config {pad_key}")
    elif probe.token_embedding in scan.padding_idx:
        evidence["pad_token_id"] = Evidence(scan.padding_idx[probe.token_embedding], "structure",
                                            f"padding_idx of '{probe.token_embedding}'")
    pad_value = evidence["pad_token_id"].value if "pad_token_id" in evidence else None
    mask_kw = {"seq_len": probe_len, "id_limit": id_limit, "pad_id": pad_value or 0,
               "device": dev, "pooled": task_ev.value in ("classification", "seq2seq")}
    if spec.mask_param is not None and spec.mask_style is not None:
        evidence["mask"], warning = check_named_mask(model, spec, **mask_kw)
        notes += [warning] if warning else []
    elif spec.mask_param is not None:
        found = probe_mask_polarity(model, spec, **mask_kw)
        evidence["mask"] = found.evidence
        if found.style is None:
            spec.left_default.append(spec.mask_param)
            spec.mask_param = None
        spec.mask_style = found.style
        evidence["forward"].value = spec.describe()
    if task_ev.value == "causal_lm" and spec.targets_param:
        agreement = targets.model_loss_agreement(model, spec, seq_len=probe_len,
                                                 id_limit=id_limit, device=dev)
        if agreement is not None:
            evidence["model_loss"], warning = agreement
            notes += [warning] if warning else []
    mask_id, _ = _optional_int(flat, ("mask_token_id", "mask_id", "mask_idx"))
    out_size = shape[-1]
    # the model's own rows, not an override's (which decide_vocab has compared with them)
    rows = scan.embeddings.get(probe.token_embedding or "", vocab_ev.value)
    if task_ev.value in ("causal_lm", "masked_lm") and rows is not None and out_size != rows:
        notes.append(f"The output head has {out_size} outputs but the token embedding has "
                     f"{rows} rows: ids >= {min(out_size, rows)} cannot be both read and "
                     "predicted.")
    tgt_vocab = None
    if probe.decoder_embedding is not None:
        tgt_vocab = scan.embeddings[probe.decoder_embedding]
    bos, _ = _optional_int(flat, ("bos_token_id", "decoder_start_token_id", "sos_token_id"))
    return ModelAdapter(
        model=model, task=task_ev.value, vocab_size=int(vocab_ev.value),
        max_seq_len=length_ev.value, spec=spec, output_size=int(out_size), num_classes=classes,
        pad_token_id=pad_value,
        mask_token_id=mask_token_id if mask_token_id is not None else mask_id,
        bos_token_id=bos, target_vocab_size=tgt_vocab, token_embedding=probe.token_embedding,
        config=dict(config or own),
        evidence=evidence, warnings=[*loaded_notes, *notes], source=source, loaded=loaded)


def _check_output(task_ev: Evidence, shape: tuple[int, ...], seq_len: int, name: str,
                  spec: ForwardSpec, last_only: str | None) -> None:
    """The output's shape must fit the task, or no loss and no check can be computed."""
    task = task_ev.value
    per_token = len(shape) == 3 and shape[1] == seq_len
    if task == "classification" and len(shape) == 2:
        return
    if task != "classification" and per_token:
        return
    if last_only is not None and not spec.feed_targets:
        raise UserError(
            f"{name} returned the last position only: {last_only}.",
            why=f"Task '{task}' ({task_ev.method}: {task_ev.detail}) needs logits for every "
            f"position, [batch, seq_len={seq_len}, vocab]: the loss and the causal, padding "
            "and gradient checks read all of them. This is the inference shortcut "
            "`logits = self.lm_head(x[:, [-1], :])`.",
            fix="Compute the head on every position in forward — `logits = self.lm_head(x)` — "
            "and take logits[:, -1, :] where you generate; or give forward a `targets=None` "
            "parameter under which it returns every position.")
    want = "[batch, classes]" if task == "classification" else f"[batch, seq_len={seq_len}, vocab]"
    raise UserError(
        f"{name} returned an output of shape {list(shape)}, which does not fit task '{task}' "
        f"({task_ev.method}: {task_ev.detail}).",
        why=f"Task '{task}' needs {want}, batch first.",
        fix="Return batch-first logits from forward, or set the right task in config.json "
        '("task": "classification" | "causal_lm" | ...).')


if TYPE_CHECKING:  # the type checker proves ModelAdapter is an Adapter (the Protocol's seam)
    from utils.adapters.protocol import Adapter

    def _is_an_adapter(adapter: ModelAdapter) -> Adapter:
        return adapter
