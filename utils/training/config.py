"""``TrainingConfig``: the one training config of the CLI, the notebooks, the wizard, presets, HPO.

A frozen dataclass, validated when it is made: every bad field is reported at once in one
:class:`ConfigError` (a :class:`~utils.errors.UserError`). It round-trips through JSON and
YAML with :meth:`TrainingConfig.to_dict` / :meth:`TrainingConfig.from_dict`, and a resumed run
merges its stored config with the new call's through :func:`merge_for_resume`. This module
imports nothing heavy: the CLI and the notebooks import it before any training extra.

Example:
    >>> config = TrainingConfig(max_steps=500, lr="auto", precision="16-mixed")
    >>> TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from utils.errors import UserError, advice, arg

__all__ = ["ACCELERATORS", "LOGGERS", "PRECISIONS", "RESUME_OVERRIDABLE", "STRATEGIES",
           "ConfigError", "ConfigField", "TrainingConfig", "config_fields", "effective_precision",
           "field_docs", "load_config_file", "merge_for_resume"]

Precision = Literal["auto", "32", "16-mixed", "bf16-mixed"]
Logger = Literal["csv", "wandb", "none"]
Strategy = Literal["auto", "ddp", "ddp_spawn", "ddp_notebook", "fsdp", "single_device"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
LOGGERS: tuple[str, ...] = get_args(Logger)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
ACCELERATORS: tuple[str, ...] = get_args(Accelerator)
SEQ_LEN_CAP = 256  # seq_len=None trains at the model's max_seq_len, capped here

# On resume the stored config wins, except these: the budget, the intervals and where and how
# this process runs, which the new call may change.
RESUME_OVERRIDABLE = ("max_steps", "epochs", "val_every", "checkpoint_every", "log_every",
                      "val_batches", "devices", "num_nodes", "strategy", "accelerator", "logger",
                      "num_workers", "out_dir", "mirror_dir", "resume")


class ConfigError(UserError):
    """Invalid or unknown ``TrainingConfig`` fields; ``problems`` maps each field to what is wrong
    (a form can mark every bad field at once)."""

    def __init__(self, what: str, problems: Mapping[str, str], *, why: str | None = None,
                 fix: str | None = None) -> None:
        self.problems = dict(problems)
        super().__init__(what, why=why, fix=fix)


@dataclass(frozen=True)
class TrainingConfig:
    """How to train a model: budget, optimizer, precision, evaluation, checkpoints, devices.

    Attributes:
        max_steps: Optimizer steps to train for (>= 1), or -1 for no step limit when ``epochs``
            is set; with both set, whichever comes first ends the run.
        epochs: Passes over the training split (>= 1), or None to count steps only.
        batch_size: Samples per forward/backward (the micro-batch).
        grad_accum: Micro-batches accumulated into one optimizer step, so the effective batch
            is ``batch_size × grad_accum``.
        seq_len: Tokens per sample; None = the model's max_seq_len capped at 256 (resolved by
            :meth:`seq_len_for`).
        lr: Peak learning rate (> 0), or ``"auto"`` to run Lightning's learning-rate finder
            first and train at its suggestion.
        min_lr_ratio: Where the cosine schedule ends, as a share of ``lr`` (0..1).
        warmup_steps: Steps of linear warm-up from 0 to ``lr`` (>= 0; the trainer keeps it
            below max_steps).
        weight_decay: AdamW's decoupled weight decay (>= 0), not applied to biases, norms and
            embeddings.
        betas: AdamW's two moment coefficients, each in [0, 1).
        eps: AdamW's epsilon (> 0).
        grad_clip: Largest global gradient norm (> 0), or 0 for no clipping.
        precision: ``"auto"`` (fp32 on CPU, bf16-mixed on a GPU with bf16, 16-mixed with a
            gradient scaler otherwise, e.g. a T4), ``"32"``, ``"16-mixed"`` or ``"bf16-mixed"``.
        compile: Whether to ``torch.compile`` the model before training.
        seed: Seed of every random number generator the run uses (0 <= seed < 2**32).
        val_every: Optimizer steps between validations; 0 turns validation off.
        val_batches: Validation batches per validation; None = the whole validation split.
        checkpoint_every: Optimizer steps between checkpoints; 0 turns periodic checkpoints off.
        keep_last: Newest checkpoints to keep (>= 1), besides the best one. Small by default
            because Google Drive keeps deleted files in its Trash, where they still count
            against the quota.
        early_stopping_patience: Validations without improvement of val_loss before training
            stops; 0 turns early stopping off (it needs ``val_every`` > 0).
        log_every: Optimizer steps between training-metric log rows (>= 1).
        out_dir: The run folder; None = one derived from the model and the config under
            ``$TESTBENCH_HOME/runs``, so running the same command again resumes.
        mirror_dir: A second folder (Google Drive in Colab) that receives a copy of the run
            folder's layout after each checkpoint; None = no mirror.
        resume: ``"auto"`` (continue from the newest valid checkpoint of the run folder or the
            mirror, if any), ``"never"`` (start fresh), or a path to a checkpoint file or a run
            folder.
        logger: ``"csv"`` (metrics.csv in the run folder), ``"wandb"`` or ``"none"``.
        devices: Devices per node (>= 1), or ``"auto"`` for all of them.
        num_nodes: Machines taking part (>= 1).
        strategy: Lightning's strategy: ``"auto"``, ``"ddp"`` (scripts), ``"ddp_spawn"``,
            ``"ddp_notebook"`` (the only one that works in a notebook), ``"fsdp"`` (GPUs only)
            or ``"single_device"``.
        accelerator: ``"auto"``, ``"cpu"``, ``"gpu"``, ``"cuda"`` or ``"mps"``.
        num_workers: DataLoader worker processes (>= 0; Colab has 2 CPU cores).
        spike_factor: A step whose loss is above ``spike_factor`` × the running median of
            recent losses is skipped, like a non-finite one (> 1).
        max_bad_steps: After this many skipped steps in a row, training rolls back to the last
            good checkpoint (>= 1).
        rollback_lr_factor: Multiplier of the learning rate after a rollback, in (0, 1).
        dropout: When set, the trainer sets every ``nn.Dropout``'s ``p`` to it, in [0, 1)
            (hyperparameter search uses it); None leaves the model's own.
    """

    max_steps: int = 1000
    epochs: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int | None = None
    lr: float | Literal["auto"] = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    precision: Precision = "auto"
    compile: bool = False
    seed: int = 0
    val_every: int = 200
    val_batches: int | None = None
    checkpoint_every: int = 200
    keep_last: int = 2
    early_stopping_patience: int = 0
    log_every: int = 10
    out_dir: str | None = None
    mirror_dir: str | None = None
    resume: str = "auto"
    logger: Logger = "csv"
    devices: int | Literal["auto"] = 1
    num_nodes: int = 1
    strategy: Strategy = "auto"
    accelerator: Accelerator = "auto"
    num_workers: int = 0
    spike_factor: float = 10.0
    max_bad_steps: int = 3
    rollback_lr_factor: float = 0.5
    dropout: float | None = None

    def __post_init__(self) -> None:
        for name, value in _normalised(self).items():
            object.__setattr__(self, name, value)
        problems = _problems(self)
        if problems:
            lines = "".join(f"\n    {arg(name)}: {msg}" for name, msg in problems.items())
            raise ConfigError(
                f"Invalid training settings: {len(problems)} "
                f"{advice('field(s) are', 'flag(s) are')} wrong:{lines}", problems,
                fix=advice("Change the fields listed above; TrainingConfig's docstring (or "
                           "field_docs()) describes each one.",
                           "Change the flags listed above; `testbench train --help` describes "
                           "each one."))

    # ---- conversions ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON/YAML-friendly data (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self)}

    def to_yaml(self) -> str:
        """Every field as YAML, each under a comment with its doc: the file ``--config`` reads
        and ``--print-config`` writes."""
        import textwrap

        from utils.environment import require

        yaml = require("yaml", "Writing a YAML training config")
        docs, lines = field_docs(), []
        for name, value in self.to_dict().items():
            lines += textwrap.wrap(docs.get(name, ""), 96, initial_indent="# ",
                                   subsequent_indent="# ")
            # a one-item flow list, unwrapped: one line per field, lists inline, quoting
            # where YAML needs it ('32' stays a string)
            flow = yaml.safe_dump([value], default_flow_style=True, width=1000).strip()
            lines.append(f"{name}: {flow[1:-1]}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """The config ``data`` describes (missing keys take their defaults); an unknown key is a
        :class:`ConfigError` naming the nearest valid one."""
        if not isinstance(data, Mapping):
            raise UserError(f"A training config must be a mapping of field names to values, got "
                            f"{type(data).__name__}.", fix="Pass a dict such as "
                            "{'max_steps': 500, 'lr': 0.001}.")
        _reject_unknown(data)
        return cls(**data)

    def replace(self, **changes: Any) -> TrainingConfig:
        """A copy with ``changes`` applied, validated like a new config."""
        _reject_unknown(changes)
        return dataclasses.replace(self, **changes)

    # ---- facts the trainer and presets need ----------------------------------------------
    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step: ``batch_size × grad_accum`` (per device)."""
        return self.batch_size * self.grad_accum

    def seq_len_for(self, max_seq_len: int | None) -> int:
        """The length to train at for a model whose longest input is ``max_seq_len``."""
        if self.seq_len is None:
            return min(max_seq_len or SEQ_LEN_CAP, SEQ_LEN_CAP)
        if max_seq_len is not None and self.seq_len > max_seq_len:
            raise UserError(f"seq_len={self.seq_len} is longer than the model's max_seq_len="
                            f"{max_seq_len}.", why="Positions past max_seq_len have no embedding.",
                            fix=f"Pass seq_len <= {max_seq_len}, or None for the model's own.")
        return self.seq_len

    def effective_precision(self, device_type: str, bf16_supported: bool) -> str:
        """``precision`` with ``"auto"`` resolved for a device (see :func:`effective_precision`)."""
        return effective_precision(device_type, bf16_supported, self.precision)


def effective_precision(device_type: str, bf16_supported: bool, precision: str = "auto") -> str:
    """``precision`` with ``"auto"`` resolved: ``"32"`` off CUDA, ``"bf16-mixed"`` on a GPU with
    bf16, ``"16-mixed"`` (with a gradient scaler) on one without, e.g. a T4; an explicit value
    passes through.

    Args:
        device_type: ``torch.device.type`` of where training runs (``"cpu"``, ``"cuda"``, …).
        bf16_supported: ``torch.cuda.is_bf16_supported()`` on that device.
        precision: The config's ``precision``.
    """
    if precision != "auto":
        return precision
    if device_type != "cuda":
        return "32"
    return "bf16-mixed" if bf16_supported else "16-mixed"


def field_docs() -> dict[str, str]:
    """Each field's description from the ``Attributes:`` block (for forms and ``--help``)."""
    block = (TrainingConfig.__doc__ or "").split("Attributes:", 1)[-1]
    found = re.findall(r"^ {8}(\w+): (.*?)(?=^ {8}\w+: |\Z)", block, re.M | re.S)
    plain = {name: re.sub(r":\w+:`(\w+)`", r"\1", " ".join(text.split())).replace("``", "")
             for name, text in found}  # no reST markup: forms, --help and YAML comments show it
    return plain


@dataclass(frozen=True)
class ConfigField:
    """One ``TrainingConfig`` field as every surface needs it: the CLI's flag, a form's entry,
    an environment variable. Derived from the dataclass (:func:`config_fields`), so a new
    option is one line in :class:`TrainingConfig` and one row in its docstring."""

    name: str
    annotation: Any
    default: Any
    doc: str
    allowed: str  # what the validation accepts, in words

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The strings the field takes when it is one of a fixed set (a ``Literal``)."""
        return _literal(self.annotation) if get_origin(self.annotation) is Literal else None

    @property
    def metavar(self) -> str:
        """``N``, ``X|auto``, ``N|none``, ``{a,b}``: what the flag takes, for ``--help``."""
        kinds = _kinds(self.annotation)
        if self.choices:
            return "{" + ",".join(self.choices) + "}"
        if self.name.endswith("_dir"):
            return "DIR"
        core = ("true|false" if bool in kinds else "N" if int in kinds else "X" if float in kinds
                else "B1,B2" if tuple in kinds else "VALUE")
        words = [k for k in kinds if isinstance(k, str)] + ["none"] * (type(None) in kinds)
        return "|".join([core, *words])

    def parse(self, text: Any) -> Any:
        """``text`` (a flag's, a form entry's or an environment variable's string) as this
        field's value; ValueError saying what was expected. Non-strings pass through, for
        :class:`TrainingConfig` to judge."""
        if not isinstance(text, str):
            return text
        value = text.strip()
        kinds = _kinds(self.annotation)
        lowered = value.lower()
        if type(None) in kinds and lowered in ("", "none", "null"):
            return None
        for word in (k for k in kinds if isinstance(k, str)):
            if value == word:
                return word
        if bool in kinds:
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
        elif int in kinds:
            with contextlib.suppress(ValueError):
                return int(value.replace("_", "").replace(",", ""))
        elif float in kinds:
            with contextlib.suppress(ValueError):
                return float(value)
        elif tuple in kinds:
            with contextlib.suppress(ValueError):
                parts = tuple(float(x) for x in value.strip("()[] ").split(","))
                if len(parts) == len(get_args(self.annotation)):
                    return parts
        elif str in kinds:
            return value
        what = ("true or false" if bool in kinds else "a whole number" if int in kinds
                else "a number" if float in kinds or tuple in kinds else "allowed")
        raise ValueError(f"{text!r} is not {what}; allowed: {self.allowed}")


def _literal(annotation: Any) -> tuple[str, ...]:
    return tuple(str(a) for a in get_args(annotation))


def _kinds(annotation: Any) -> tuple[Any, ...]:
    """The plain types of an annotation and the words its ``Literal`` parts allow
    (``int | Literal["auto"] | None`` -> ``(int, "auto", NoneType)``)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return tuple(k for arg in get_args(annotation) for k in _kinds(arg))
    if origin is Literal:
        return _literal(annotation)
    return (origin or annotation,)


def config_fields() -> dict[str, ConfigField]:
    """Every ``TrainingConfig`` field with its type, default, doc and accepted values, in the
    dataclass's order: what the CLI's flags, the setup form and the notebook are built from."""
    hints, docs = get_type_hints(TrainingConfig), field_docs()
    return {f.name: ConfigField(f.name, hints[f.name], f.default, docs.get(f.name, ""),
                                _RULES[f.name][1]) for f in fields(TrainingConfig)}


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The ``TrainingConfig`` fields a YAML or JSON file sets (``--config run.yaml``; what
    ``--print-config`` writes), checked: every key a field, every value valid. Missing keys are
    left out, so the preset and the flags decide them."""
    from pathlib import Path

    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise UserError(f"Cannot read the training config {file}: {exc.strerror or exc}.",
                        fix="Check the path; `testbench train SOURCE --print-config > run.yaml` "
                        "writes one to start from.") from exc
    try:
        if file.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            from utils.environment import require

            data = require("yaml", "Reading a YAML training config").safe_load(text)
    except Exception as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"The training config {file} does not parse: {exc}",
                        fix="Correct the line it names; a config is one `field: value` per "
                        "line (YAML) or a JSON object.") from None
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise UserError(f"The training config {file} holds a {type(data).__name__}, not a "
                        "mapping of field names to values.", fix="Write one `field: value` "
                        "per line, e.g. `max_steps: 500`.")
    try:  # unknown keys and bad values, each named, before any work
        TrainingConfig.from_dict(data)
    except ConfigError as exc:
        lines = "".join(f"\n    {name}: {problem}" for name, problem in exc.problems.items())
        raise ConfigError(f"The training config {file} has {len(exc.problems)} bad "
                          f"field(s):{lines}", exc.problems, why=exc.why,
                          fix=f"Correct those lines of {file}.") from None
    return dict(data)


def merge_for_resume(stored: TrainingConfig, requested: TrainingConfig,
                     ) -> tuple[TrainingConfig, list[str]]:
    """The config a resumed run uses, and sentences saying what changed and what was ignored.

    The stored config wins, except the fields in :data:`RESUME_OVERRIDABLE`, which come from
    ``requested``.

    Example:
        >>> merged, notes = merge_for_resume(stored, stored.replace(max_steps=2000, lr=1e-3))
        >>> notes
        ['max_steps changed from 1000 to 2000 on resume.',
         'lr=0.001 was ignored: a resumed run keeps its stored lr=0.0003.']
    """
    changes, notes = {}, []
    for f in fields(TrainingConfig):
        old, new = getattr(stored, f.name), getattr(requested, f.name)
        if old == new:
            continue
        if f.name in RESUME_OVERRIDABLE:
            changes[f.name] = new
            notes.append(f"{f.name} changed from {_fmt(old)} to {_fmt(new)} on resume.")
        else:
            notes.append(f"{f.name}={_fmt(new)} was ignored: a resumed run keeps its stored "
                         f"{f.name}={_fmt(old)}.")
    return stored.replace(**changes), notes


# ---- validation ---------------------------------------------------------------------------
_FLOATS = ("lr", "min_lr_ratio", "weight_decay", "eps", "grad_clip", "spike_factor",
           "rollback_lr_factor", "dropout")
_PATHS = ("out_dir", "mirror_dir", "resume")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _as_float(v: Any) -> Any:
    """Ints and numeric strings (YAML 1.1 reads ``3e-4`` as a string) as floats; else ``v``."""
    if _is_int(v):
        return float(v)
    if isinstance(v, str) and v != "auto":
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _normalised(c: TrainingConfig) -> dict[str, Any]:
    """Lossless conversions of what JSON, YAML and the CLI hand in."""
    out: dict[str, Any] = {name: _as_float(getattr(c, name)) for name in _FLOATS}
    out.update({name: os.fspath(v) for name in _PATHS
                if isinstance(v := getattr(c, name), os.PathLike)})
    if isinstance(c.betas, (list, tuple)):
        out["betas"] = tuple(_as_float(b) for b in c.betas)
    if _is_int(c.precision):
        out["precision"] = str(c.precision)
    if isinstance(c.devices, str) and c.devices.isdigit():
        out["devices"] = int(c.devices)
    return out


def _in(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in choices


def _one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(repr(c) for c in choices)


def _at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


# field -> (accepts value, what is allowed)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_steps": (lambda v: _is_int(v) and (v >= 1 or v == -1), "an integer >= 1, or -1 with "
                  "epochs set"),
    "epochs": (lambda v: v is None or _at_least(1)(v), "an integer >= 1 or None"),
    "batch_size": (_at_least(1), "an integer >= 1"),
    "grad_accum": (_at_least(1), "an integer >= 1"),
    "seq_len": (lambda v: v is None or _at_least(1)(v), "an integer >= 1 or None"),
    "lr": (lambda v: v == "auto" or (_is_num(v) and v > 0), "a number > 0 or 'auto'"),
    "min_lr_ratio": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "warmup_steps": (_at_least(0), "an integer >= 0"),
    "weight_decay": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "betas": (lambda v: isinstance(v, tuple) and len(v) == 2
              and all(_is_num(b) and 0 <= b < 1 for b in v), "two numbers, each in [0, 1)"),
    "eps": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "grad_clip": (lambda v: _is_num(v) and v >= 0, "a number >= 0 (0 = no clipping)"),
    "precision": (_in(PRECISIONS), _one_of(PRECISIONS)),
    "compile": (lambda v: isinstance(v, bool), "True or False"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "val_every": (_at_least(0), "an integer >= 0 (0 = no validation)"),
    "val_batches": (lambda v: v is None or _at_least(1)(v), "an integer >= 1 or None (all)"),
    "checkpoint_every": (_at_least(0), "an integer >= 0 (0 = no periodic checkpoints)"),
    "keep_last": (_at_least(1), "an integer >= 1"),
    "early_stopping_patience": (_at_least(0), "an integer >= 0 (0 = off)"),
    "log_every": (_at_least(1), "an integer >= 1"),
    "out_dir": (lambda v: v is None or (isinstance(v, str) and v != ""), "a path or None"),
    "mirror_dir": (lambda v: v is None or (isinstance(v, str) and v != ""), "a path or None"),
    "resume": (lambda v: isinstance(v, str) and v != "", "'auto', 'never' or a path"),
    "logger": (_in(LOGGERS), _one_of(LOGGERS)),
    "devices": (lambda v: v == "auto" or _at_least(1)(v), "an integer >= 1 or 'auto'"),
    "num_nodes": (_at_least(1), "an integer >= 1"),
    "strategy": (_in(STRATEGIES), _one_of(STRATEGIES)),
    "accelerator": (_in(ACCELERATORS), _one_of(ACCELERATORS)),
    "num_workers": (_at_least(0), "an integer >= 0"),
    "spike_factor": (lambda v: _is_num(v) and v > 1, "a number > 1"),
    "max_bad_steps": (_at_least(1), "an integer >= 1"),
    "rollback_lr_factor": (lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    "dropout": (lambda v: v is None or (_is_num(v) and 0 <= v < 1), "a number in [0, 1) or None"),
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return repr(v)


def _problems(c: TrainingConfig) -> dict[str, str]:
    problems = {}
    for name, (ok, allowed) in _RULES.items():
        value = getattr(c, name)
        if not ok(value):
            problems[name] = f"got {value!r}; allowed: {allowed}"
    if c.max_steps == -1 and c.epochs is None:
        problems.setdefault("max_steps", "got -1 (no step limit) but epochs is None, so nothing "
                            "would end the run; set max_steps >= 1 or epochs")
    if _is_int(c.early_stopping_patience) and c.early_stopping_patience > 0 and c.val_every == 0:
        problems.setdefault("early_stopping_patience", f"got {c.early_stopping_patience} but "
                            "val_every=0 turns validation off; set val_every > 0 or patience 0")
    if c.strategy == "fsdp" and c.accelerator == "cpu":
        problems.setdefault("strategy", "got 'fsdp' with accelerator='cpu'; FSDP runs on GPUs "
                            "only, use 'ddp' on CPUs")
    if c.strategy == "single_device" and (c.devices != 1 or c.num_nodes != 1):
        problems.setdefault("strategy", f"got 'single_device' with devices={c.devices!r}, "
                            f"num_nodes={c.num_nodes!r}; use 'ddp' for several devices")
    return problems


def _reject_unknown(keys: Iterable[str]) -> None:
    valid = [f.name for f in fields(TrainingConfig)]
    unknown = [k for k in keys if k not in valid]
    if not unknown:
        return
    hints = {k: (f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
        str(k), valid, n=1)) else repr(k)) for k in unknown}
    raise ConfigError(
        f"Unknown training config key(s): {', '.join(hints.values())}.",
        {str(k): "unknown key" + (hint[len(repr(k)):] if (hint := hints[k]) != repr(k) else "")
         for k in unknown},
        why=f"TrainingConfig has no such field, so it would be silently ignored. Valid keys: "
        f"{', '.join(valid)}.", fix="Rename each key to one of the valid keys above, or drop it.")
