"""Map ``config.json`` onto the model's constructor and build the model.

Configs come flat (``{"vocab_size": 512, "d_model": 64}``), nested one level
(``{"model": {...}, "training": {...}}``) or in a visual builder's graph form
(``{"nodes": [{"params": {...}}], "vocab_size": ..., "seq_length": ...}``). Constructors take
named arguments, nothing (sizes baked in by a builder), or one config object (``GPT(config)``,
built as the file's dataclass when the parameter is annotated with one). Keys the constructor
does not take are never passed; they are listed as a warning, except one that reads as a
misspelling of a parameter the config leaves unset (``d_modle`` for ``d_model``): that is a
``UserError`` naming both, since the model would silently be built with the default. A required
argument missing from the config is a ``UserError`` that names it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from utils.adapters.config_typos import HF_CONFIG_KEYS, is_known_schema, misspelling_of
from utils.errors import UserError, locate_in_files

__all__ = ["ALIASES", "META_KEYS", "BuildRecord", "build_model", "flatten_config", "lookup"]

# Names that mean the same thing in different codebases; the first is the canonical one.
ALIASES: tuple[tuple[str, ...], ...] = (
    ("vocab_size", "vocab", "n_vocab", "num_tokens", "ntoken", "ntokens", "vocab_len",
     "src_vocab_size", "input_vocab_size"),
    ("max_seq_len", "seq_length", "seq_len", "max_len", "max_length", "block_size", "n_positions",
     "n_ctx", "context_length", "context_size", "max_position_embeddings", "max_seq_length",
     "sequence_len", "sequence_length", "context_len", "ctx_len", "max_sequence_length",
     "max_context_length", "max_seq", "max_positions"),
    ("d_model", "n_embd", "hidden_size", "embed_dim", "emb_dim", "dim", "d_embed",
     "embedding_dim", "model_dim"),
    ("n_layer", "n_layers", "num_layers", "num_hidden_layers", "depth"),
    ("n_head", "n_heads", "num_heads", "num_attention_heads", "nhead"),
    ("d_ff", "dim_feedforward", "ffn_dim", "intermediate_size", "d_inner", "ff_dim", "mlp_dim"),
    ("num_classes", "num_labels", "n_classes"),
    ("dropout", "dropout_rate", "p_dropout", "drop_rate"),
)
# Keys that steer the testbench, never constructor arguments (unless a constructor asks).
# The vocab, length and class-count aliases are read by the adapter too, so they are never
# reported as unused.
META_KEYS = frozenset({"model_name", "model_class", "task", "nodes", "edges", "model_type",
                       "architectures", "is_decoder", "is_causal", "pad_token_id",
                       "mask_token_id", "bos_token_id", "eos_token_id"})
_READ_BY_TESTBENCH = {alias for group in ALIASES if group[0] in ("vocab_size", "max_seq_len",
                                                               "num_classes") for alias in group}
_CONFIG_PARAMS = {"config", "cfg", "conf", "args", "params", "hparams", "hp", "model_config",
                  "configs", "opt", "opts"}
_NESTED = ("model", "model_config", "config", "architecture", "hyperparameters", "params")


@dataclass
class BuildRecord:
    """How the config met the constructor; kept for reports."""

    style: str  # "keywords" | "no-arguments" | "config-object" | "dataclass:<Name>"
    passed: dict[str, Any] = field(default_factory=dict)
    from_alias: dict[str, str] = field(default_factory=dict)  # parameter -> config key used
    unused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def flatten_config(config: dict) -> tuple[dict[str, Any], list[str]]:
    """One flat dict of scalar settings, and notes on conflicting values.

    Top-level keys win; then nested sections; then the builder graph's node params in order.
    Lists of values (``"architectures"``, ``"layer_sizes"``) are settings too and are kept.
    """
    flat = {k: v for k, v in config.items()
            if not isinstance(v, dict) and k not in ("nodes", "edges")}
    notes: list[str] = []
    sections = [config[k] for k in _NESTED if isinstance(config.get(k), dict)]
    nodes = config.get("nodes")
    if isinstance(nodes, list):
        sections += [n.get("params") or n.get("config") or {} for n in nodes if isinstance(n, dict)]
    for section in sections:
        for key, value in section.items():
            if isinstance(value, dict):
                continue
            if key not in flat:
                flat[key] = value
            elif flat[key] != value and not any(key in n for n in notes):
                notes.append(f"'{key}' has several values in the config ({flat[key]!r} and "
                             f"{value!r}); using {flat[key]!r}.")
    return flat, notes


def lookup(flat: dict[str, Any], name: str) -> tuple[str, Any] | None:
    """``(key, value)`` for ``name`` or one of its aliases, exact name first."""
    if name in flat:
        return name, flat[name]
    for group in ALIASES:
        if name in group:
            for alias in group:
                if alias in flat:
                    return alias, flat[alias]
    return None


def _config_class(cls: type, param: inspect.Parameter, module: ModuleType) -> type | None:
    """The dataclass a single config parameter expects, if one can be found."""
    hint = param.annotation
    if isinstance(hint, str) or hint is inspect.Parameter.empty:
        try:
            hint = typing.get_type_hints(cls.__init__, vars(module)).get(param.name)  # type: ignore[misc]
        except Exception:
            hint = vars(module).get(hint) if isinstance(hint, str) else None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    configs = [v for k, v in vars(module).items() if isinstance(v, type)
               and dataclasses.is_dataclass(v) and k.lower().endswith("config")
               and v.__module__ == module.__name__]
    return configs[0] if len(configs) == 1 else None


class ConfigNamespace(dict):
    """The config as an object with both ``cfg.key`` and ``cfg["key"]`` access."""

    def __getattr__(self, name: str) -> Any:
        found = lookup(self, name)
        if found is None:
            raise AttributeError(f"config has no key {name!r} (keys: {sorted(self)})")
        return found[1]


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


def _fill(names: list[inspect.Parameter], flat: dict, record: BuildRecord) -> list[str]:
    """Fill ``record.passed`` for ``names`` from ``flat``; return the required ones missing."""
    missing = []
    for p in names:
        found = lookup(flat, p.name)
        if found is not None:
            record.passed[p.name] = found[1]
            if found[0] != p.name:
                record.from_alias[p.name] = found[0]
        elif p.default is inspect.Parameter.empty:
            missing.append(p.name)
    return missing


def build_model(cls: type, module: ModuleType, config: dict, config_name: str = "config.json"):
    """Instantiate ``cls`` from ``config``; returns ``(model, BuildRecord)``."""
    flat, notes = flatten_config(config)
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]
    params = [p for p in list(sig.parameters.values())[1:]
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    single = params[0] if len(params) == 1 else None
    config_cls = _config_class(cls, single, module) if single else None
    if not params:
        record = BuildRecord("no-arguments")
        args: tuple = ()
    elif single is not None and (config_cls is not None or single.name in _CONFIG_PARAMS):
        if config_cls is not None:
            record = BuildRecord(f"dataclass:{config_cls.__name__}")
            fields = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=_field_default(f))
                      for f in dataclasses.fields(config_cls) if f.init]
            missing = _fill(fields, flat, record)
            _raise_misspelt(config_cls.__name__, fields, flat, record, config_name)
            _raise_missing(cls, missing, flat, config_name)
            args = (config_cls(**record.passed),)
        else:
            record = BuildRecord("config-object", passed=dict(flat))
            args = (ConfigNamespace(flat),)
    else:
        record = BuildRecord("keywords")
        missing = _fill(params, flat, record)
        _raise_misspelt(f"{cls.__name__}.__init__", params, flat, record, config_name)
        _raise_missing(cls, missing, flat, config_name)
        args = ()
    record.unused = _unused(flat, record)
    record.warnings = notes
    if record.unused and record.style != "config-object":
        record.warnings.append(
            f"{config_name} keys not taken by {cls.__name__}.__init__ (not passed): "
            f"{', '.join(record.unused)}." if params else
            f"{cls.__name__}() takes no arguments, so {config_name} values are descriptive only "
            f"(sizes are set in the code): {', '.join(record.unused)}.")
    kwargs = record.passed if record.style == "keywords" else {}
    try:
        model = cls(*args, **kwargs)
    except Exception as exc:
        user_files: set[str] = {f for f in [inspect.getsourcefile(module)] if f}
        user_files |= {str(p) for p in _sibling_files(module)}
        shown = ", ".join(f"{k}={v!r}" for k, v in record.passed.items()) or "no arguments"
        raise UserError(
            f"Building {cls.__name__} failed: {type(exc).__name__}: {exc}",
            location=locate_in_files(exc.__traceback__, user_files),
            why=f"{cls.__name__} was called with {shown}.",
            fix=f"Check {config_name} against the constructor, or fix the line shown.",
        ) from None
    return model, record


def _sibling_files(module: ModuleType):
    from pathlib import Path

    src = getattr(module, "__file__", None)
    return Path(src).parent.glob("*.py") if src else []


def _unused(flat: dict, record: BuildRecord) -> list[str]:
    """Config keys that reach neither the constructor nor the testbench."""
    used_keys = {record.from_alias.get(k, k) for k in record.passed}
    return sorted(k for k in flat if k not in used_keys and k not in META_KEYS
                  and k not in _READ_BY_TESTBENCH)


def _raise_misspelt(taker: str, params: list[inspect.Parameter], flat: dict,
                    record: BuildRecord, config_name: str) -> None:
    """A ``UserError`` for every unused key that misspells a parameter the config left unset
    (checked before a missing required argument, so the message names the typo)."""
    unset = {p.name: p for p in params if p.name not in record.passed}
    targets = [(alias, name) for name in unset
               for alias in next((g for g in ALIASES if name in g), (name,))]
    exempt = HF_CONFIG_KEYS if is_known_schema(flat) else frozenset()
    typos = {key: hit for key in _unused(flat, record) if key not in exempt
             and (hit := misspelling_of(key, targets)) is not None}
    if not typos:
        return

    def meant(key: str, target: str, name: str) -> str:
        alias = f" (taken as '{name}')" if target != name else ""
        return f"'{key}' → '{target}'{alias}"

    required = [n for _, n in typos.values() if unset[n].default is inspect.Parameter.empty]
    defaulted = [f"{n}={unset[n].default!r} (its default) instead of {flat[k]!r}"
                 for k, (_, n) in typos.items() if n not in required]
    effects = ([f"the model would be built with {', '.join(defaulted)}, and every check would "
                "test a model other than the one configured"] if defaulted else []) + (
        [f"{', '.join(required)} would be missing, which has no default"] if required else [])
    pairs = "; ".join(meant(k, t, n) for k, (t, n) in typos.items())
    raise UserError(
        f"{config_name} has key(s) that {taker} does not take but that look like misspellings "
        f"of its parameters: {pairs}.",
        why="A key the constructor does not take is not passed: " + "; ".join(effects) + ".",
        fix=f"Rename {', '.join(f'{k!r} to {t!r}' for k, (t, _) in typos.items())} in "
        f"{config_name} (or remove the key if it is not meant for the model).")


def _raise_missing(cls: type, missing: list[str], flat: dict, config_name: str) -> None:
    if missing:
        raise UserError(
            f"{cls.__name__} needs {', '.join(repr(m) for m in missing)}, which "
            f"{config_name} does not give.",
            why=f"Those constructor arguments have no default. {config_name} has: "
            f"{', '.join(sorted(flat)) or 'no keys'}.",
            fix=f"Add {', '.join(repr(m) + ': <value>' for m in missing)} to {config_name}, "
            "or give the arguments defaults.")
