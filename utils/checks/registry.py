"""The check registry: every check registers itself here under its bare name, with its tier, the
threshold keys it reads and, for a check that measures the longest length a model runs at, a
cheap probe for that length."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from utils.errors import UserError

if TYPE_CHECKING:
    from utils.checks.options import CheckOptions
    from utils.report import CheckResult

__all__ = ["REGISTRY", "CheckFn", "CheckSpec", "LengthProbe", "available", "register", "select"]

CheckFn = Callable[..., "CheckResult"]
LengthProbe = Callable[[Any, "CheckOptions"], "int | None"]


@dataclass(frozen=True)
class CheckSpec:
    """A registered check.

    Attributes:
        name: The bare name (``checks=[...]``, ``--checks``, JSON).
        tier: 1, 2 or 3.
        fn: ``fn(adapter, options) -> CheckResult``.
        thresholds: The keys of ``CheckOptions.thresholds`` it reads, without the name prefix.
        length_probe: For a check that finds the longest length a model runs at (and reports
            it as ``metrics["runnable_max_len"]``): a cheap ``probe(adapter, options)`` giving
            that length (None when every length runs). A run that does not start with such a
            check asks the probe first, so one length bug caps every check instead of crashing
            each one.
    """

    name: str
    tier: int
    fn: CheckFn
    thresholds: tuple[str, ...] = ()
    length_probe: LengthProbe | None = None


REGISTRY: dict[str, CheckSpec] = {}


def register(name: str, tier: int, *, thresholds: Iterable[str] = (),
             length_probe: LengthProbe | None = None) -> Callable[[CheckFn], CheckFn]:
    """Decorator: make ``fn`` the check called ``name`` in ``tier`` (see :class:`CheckSpec`)."""

    def deco(fn: CheckFn) -> CheckFn:
        REGISTRY[name] = CheckSpec(name, tier, fn, tuple(thresholds), length_probe)
        return fn

    return deco


def available(tier: int | None = None) -> list[str]:
    """Names of registered checks (of one tier, or all), in registration order."""
    return [n for n, spec in REGISTRY.items() if tier is None or spec.tier == tier]


def select(tier_names: list[str], checks: Iterable[str] | None,
           skip: Iterable[str] | None, *, cli: bool = False) -> list[str]:
    """The checks to run: ``checks`` (default ``tier_names``) minus ``skip``.

    Raises:
        UserError: an unknown name; the message lists the checks of the tiers asked for and
            shows the fix in the caller's terms (``--checks a`` when ``cli``, else
            ``checks=['a']``).
    """
    import difflib

    wanted, skipped = list(checks or tier_names), list(skip or ())
    unknown = [n for n in dict.fromkeys([*wanted, *skipped]) if n not in REGISTRY]
    if not unknown:
        return [n for n in wanted if n not in set(skipped)]
    tiers = sorted({REGISTRY[n].tier for n in tier_names if n in REGISTRY})
    close = {n: difflib.get_close_matches(n, tier_names, n=1) for n in unknown}
    hints = [f"{n!r} (did you mean {m[0]!r}?)" if m else repr(n) for n, m in close.items()]
    example = next((m[0] for m in close.values() if m), tier_names[0])
    arg = "skip" if all(n in skipped for n in unknown) else "checks"
    form = f"--{arg} {example}" if cli else f"{arg}=[{example!r}]"
    raise UserError(f"Unknown check name(s): {', '.join(hints)}.",
                    why=f"Tier {' and '.join(map(str, tiers))} checks: {', '.join(tier_names)}.",
                    fix=f"Use the bare names above, e.g. {form}.")


