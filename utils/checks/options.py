"""``CheckOptions``: the settings every check shares (seed, device, sizes, thresholds)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from utils.checks.registry import REGISTRY
from utils.errors import UserError

__all__ = ["CheckOptions"]


@dataclass(frozen=True)
class CheckOptions:
    """Settings shared by all checks.

    Attributes:
        seed: Seed for generated inputs and any randomness a check uses.
        device: ``"cpu"``, ``"cuda"`` or None for wherever the model already is.
        batch_size: Largest batch a check generates (checks shrink it for big models).
        max_len_cap: Longest sequence a check generates, whatever the model's max_seq_len
            (long-context configs would make checks slow).
        time_budget: Seconds a single check should aim to stay within.
        thresholds: Overrides of checks' thresholds by key, e.g. ``{"initial_loss.ratio": 3}``.
    """

    seed: int = 0
    device: str | None = None
    batch_size: int = 4
    max_len_cap: int = 256
    time_budget: float = 10.0
    thresholds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        problems = []
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_len_cap < 1:
            problems.append(f"max_len_cap must be >= 1, got {self.max_len_cap}")
        if self.time_budget <= 0:
            problems.append(f"time_budget must be > 0, got {self.time_budget}")
        if problems:
            raise UserError(f"Invalid check options: {'; '.join(problems)}.",
                            fix="Pass values in range.")
        object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))

    def threshold(self, key: str, default: float) -> float:
        """An overridable threshold: ``thresholds[key]`` or the check's default.

        ``key`` is ``"<check>.<name>"`` and must be one the check declared in :func:`register`.
        """
        check, _, short = key.partition(".")
        spec = REGISTRY.get(check)
        if spec is not None and short not in spec.thresholds:
            raise KeyError(f"check {check!r} reads threshold {short!r} without declaring it "
                           f"(declared: {spec.thresholds})")
        return float(self.thresholds.get(key, default))

    def validate_thresholds(self) -> None:
        """Every key of ``thresholds`` names a threshold some registered check declares."""
        valid = sorted(f"{s.name}.{t}" for s in REGISTRY.values() for t in s.thresholds)
        unknown = [k for k in self.thresholds if k not in valid]
        if not unknown:
            return
        import difflib

        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
            k, valid, n=1)) else repr(k) for k in unknown]
        raise UserError(f"Unknown threshold key(s): {', '.join(hints)}.",
                        why="No check reads them, so they would be silently ignored. Valid "
                        f"keys: {', '.join(valid)}.",
                        fix="Use '<check>.<threshold>' with one of the keys above.")

    def batch(self, adapter, at_most: int | None = None) -> int:
        """Batch size for generated inputs, smaller for big models (1 above 300M parameters,
        2 above 50M), so a check on a large model stays within memory and time."""
        params = adapter.num_parameters
        cap = 1 if params > 300e6 else 2 if params > 50e6 else self.batch_size
        return max(1, min(self.batch_size, cap, at_most or self.batch_size))

    def max_len(self, adapter) -> int:
        """The longest length to test: the model's max_seq_len, capped."""
        return min(adapter.max_seq_len or self.max_len_cap, self.max_len_cap)
