"""``SearchSpace``: which hyperparameters a search varies, over which ranges.

Each field names a :class:`~utils.training.config.TrainingConfig` field, so a trial's parameters
are a ``config.replace(**params)`` away from the config it trains with, and the best trial's
parameters give the best config. A field left at None is not searched: the trial keeps the
config's value. :meth:`SearchSpace.for_model` picks ranges from the model's size, the trial's
budget and the memory the device has.

Example:
    >>> SearchSpace(lr=(1e-4, 1e-2), batch_size=(8, 16))      # only these two are searched
    >>> SearchSpace.for_model(adapter, config, steps=200)      # the defaults for this model
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from utils.training.config import ConfigError, TrainingConfig

__all__ = ["SearchSpace", "default_lr"]

# A peak learning rate that trains a model of a million parameters well with AdamW; larger
# models want smaller ones (≈ 6e-4 at 125M, 2e-4 at 1.3B in GPT-3's table): lr ∝ N^-1/4 fits.
LR_AT_1M = 3e-3
MAX_DEFAULT_LR = 2e-2
CPU_MEMORY_SHARE = 0.5  # of the host's available RAM a CPU step may use, as the presets do


def default_lr(num_parameters: int) -> float:
    """A learning rate near the middle of what suits a model of ``num_parameters``."""
    return min(LR_AT_1M * (max(num_parameters, 1) / 1e6) ** -0.25, MAX_DEFAULT_LR / 3)


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameters a search varies; None = not searched (the config's value is kept).

    Attributes:
        lr: ``(low, high)`` of the peak learning rate, sampled log-uniformly (0 < low <= high).
        warmup_steps: ``(low, high)`` of the warm-up steps, integers (0 <= low <= high).
        weight_decay: ``(low, high)`` of AdamW's weight decay, sampled uniformly (>= 0).
        batch_size: The micro-batch sizes to choose from (integers >= 1, no repeats).
        dropout: ``(low, high)`` of every ``nn.Dropout``'s ``p``, uniformly (0 <= low <= high < 1).
    """

    lr: tuple[float, float] | None = None
    warmup_steps: tuple[int, int] | None = None
    weight_decay: tuple[float, float] | None = None
    batch_size: tuple[int, ...] | None = None
    dropout: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):  # lists from JSON and the CLI become tuples
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        problems = _problems(self)
        if problems:
            lines = "".join(f"\n    {name}: {msg}" for name, msg in problems.items())
            raise ConfigError(f"Invalid search space: {len(problems)} field(s) are wrong:{lines}",
                              problems, fix="Change the fields listed above; SearchSpace's "
                              "docstring describes each one.")

    # ---- conversions ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """The space ``data`` describes; an unknown key is a ``ConfigError``."""
        names = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ConfigError(f"Unknown search space key(s): {', '.join(map(repr, unknown))}.",
                              {str(k): "unknown key" for k in unknown},
                              why=f"A search can vary: {', '.join(names)}.",
                              fix="Rename or drop the keys above.")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The searched fields as JSON-friendly data (tuples become lists)."""
        return {k: list(v) for k, v in asdict(self).items() if v is not None}

    @property
    def names(self) -> list[str]:
        """The searched fields."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def size(self) -> int | None:
        """How many distinct parameter sets there are; None when a range is continuous."""
        if any(getattr(self, n) is not None and getattr(self, n)[0] != getattr(self, n)[1]
               for n in ("lr", "weight_decay", "dropout")):
            return None
        count = 1
        if self.warmup_steps is not None:
            count *= self.warmup_steps[1] - self.warmup_steps[0] + 1
        if self.batch_size is not None:
            count *= len(self.batch_size)
        return count

    # ---- sampling --------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """This trial's parameters, drawn through Optuna's ``trial.suggest_*``."""
        params: dict[str, Any] = {}
        if self.lr is not None:
            params["lr"] = trial.suggest_float("lr", *self.lr, log=True)
        if self.warmup_steps is not None:
            params["warmup_steps"] = trial.suggest_int("warmup_steps", *self.warmup_steps)
        if self.weight_decay is not None:
            params["weight_decay"] = trial.suggest_float("weight_decay", *self.weight_decay)
        if self.batch_size is not None:
            params["batch_size"] = trial.suggest_categorical("batch_size", list(self.batch_size))
        if self.dropout is not None:
            params["dropout"] = trial.suggest_float("dropout", *self.dropout)
        return params

    # ---- defaults ------------------------------------------------------------------------
    @classmethod
    def for_model(cls, adapter: Any, config: TrainingConfig, steps: int, *,
                  memory_bytes: int | None = None) -> SearchSpace:
        """The default space for ``adapter`` trained ``steps`` steps per trial.

        - ``lr``: log-uniform from a tenth to three times :func:`default_lr` of the model's
          parameter count.
        - ``warmup_steps``: 0 to a tenth of the trial's steps.
        - ``weight_decay``: 0 to 0.2.
        - ``batch_size``: half, once and twice the config's micro-batch, those that fit in
          ``memory_bytes`` (default: what the device has free; the CPU's share as the presets).
        - ``dropout``: 0 to 0.2 when the model has ``nn.Dropout`` modules (what the trainer sets).
        """
        from torch import nn

        lr = default_lr(adapter.num_parameters)
        has_dropout = any(isinstance(m, nn.Dropout) for m in adapter.model.modules())
        return cls(lr=(lr / 10, min(lr * 3, MAX_DEFAULT_LR)),
                   warmup_steps=(0, max(0, steps // 10)),
                   weight_decay=(0.0, 0.2),
                   batch_size=_fitting_batches(adapter, config, memory_bytes),
                   dropout=(0.0, 0.2) if has_dropout else None)


def _fitting_batches(adapter: Any, config: TrainingConfig, memory_bytes: int | None,
                     ) -> tuple[int, ...]:
    """Half, once and twice ``config.batch_size``, keeping those whose step fits the device."""
    import torch

    from utils.environment import free_memory_bytes
    from utils.memory import max_batch_size

    b = config.batch_size
    choices = sorted({max(1, b // 2), b, 2 * b})
    budget = memory_bytes
    if budget is None:
        free = free_memory_bytes(adapter.device)
        share = 1.0 if adapter.device.type == "cuda" else CPU_MEMORY_SHARE
        budget = None if free is None else int(free * share)
    if budget is None:
        return tuple(choices)
    cuda = adapter.device.type == "cuda"
    precision = config.effective_precision(adapter.device.type,
                                           cuda and torch.cuda.is_bf16_supported())
    most = max_batch_size(adapter, config.seq_len_for(adapter.max_seq_len), budget,
                          precision=precision)
    return tuple(c for c in choices if c <= most) or (choices[0],)


def _pair(value: Any, kind: type, low: float, high: float | None, *, strict_low: bool = False,
          strict_high: bool = False) -> str | None:
    """What is wrong with a ``(low, high)`` range, or None."""
    if not isinstance(value, tuple) or len(value) != 2:
        return f"got {value!r}; allowed: a pair (low, high)"
    ok_type = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if kind is int else \
        (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    a, b = value
    if not (ok_type(a) and ok_type(b)):
        return f"got {value!r}; allowed: two {'integers' if kind is int else 'numbers'}"
    bad_low = a <= low if strict_low else a < low
    bad_high = high is not None and (b >= high if strict_high else b > high)
    if bad_low or bad_high or a > b:
        lo = f"{'>' if strict_low else '>='} {low:g}"
        hi = "" if high is None else f" and {'<' if strict_high else '<='} {high:g}"
        return f"got {value!r}; allowed: low <= high, both {lo}{hi}"
    return None


def _problems(space: SearchSpace) -> dict[str, str]:
    checks = {
        "lr": lambda v: _pair(v, float, 0, None, strict_low=True),
        "warmup_steps": lambda v: _pair(v, int, 0, None),
        "weight_decay": lambda v: _pair(v, float, 0, None),
        "dropout": lambda v: _pair(v, float, 0, 1, strict_high=True),
    }
    problems = {name: msg for name, check in checks.items()
                if getattr(space, name) is not None and (msg := check(getattr(space, name)))}
    b = space.batch_size
    if b is not None and (not isinstance(b, tuple) or not b or len(set(b)) != len(b) or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in b)):
        problems["batch_size"] = f"got {b!r}; allowed: distinct integers >= 1, at least one"
    if not problems and not space.names:
        problems["space"] = "nothing is searched; set at least one field"
    return problems
