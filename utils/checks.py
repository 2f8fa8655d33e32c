"""What every tier shares: check options, the check registry, and the runner.

A check is one function ``check_<name>(adapter, options) -> CheckResult`` registered under its
bare name with :func:`register`, declaring the threshold keys it reads and, when it measures
the longest length a model runs at, a cheap probe for that length. Checks never print and
never raise on a failed model; the runner times each one, turns a crash into status ``error``
(with the model file's line), and collects the results into a :class:`~utils.report.Report`.
The runner knows no check by name: what it does differently for a check comes from the spec.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from utils.errors import UserError, locate_in_files
from utils.report import CheckResult, Report

__all__ = ["REGISTRY", "CheckOptions", "CheckSpec", "as_adapter", "register", "run_checks",
           "run_tier"]

CheckFn = Callable[..., CheckResult]
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


def _mode_at_raise(exc: BaseException, adapter) -> str:
    """'training' or 'eval': the model's mode when it raised ``exc``.

    :meth:`ModelAdapter.forward` marks what passes through it (a check's ``finally`` — a
    snapshot restored, ``train(was_training)`` — has put the model back in its earlier mode by
    the time the exception reaches the runner); otherwise the mode the model is in now.
    """
    from utils.adapters.model_adapter import RAISED_IN_MODE

    marked = getattr(exc, RAISED_IN_MODE, None)
    if marked is not None:
        return marked
    return "training" if adapter.model.training else "eval"


def _run_one(name: str, adapter, options: CheckOptions) -> CheckResult:
    tier, fn = REGISTRY[name].tier, REGISTRY[name].fn
    start = time.perf_counter()
    was_training = adapter.model.training
    torch.manual_seed(options.seed)
    try:
        result = fn(adapter, options)
    except Exception as exc:
        loc = locate_in_files(exc.__traceback__, adapter.model_files)
        frames = traceback.extract_tb(exc.__traceback__)
        result = CheckResult(
            name=name, tier=tier, status="error",
            summary=f"The check crashed: {type(exc).__name__}: {exc}"
            + (f" (at {loc})" if loc else ""),
            error={"type": type(exc).__name__, "message": str(exc),
                   "file": loc.file if loc else (frames[-1].filename if frames else None),
                   "line": loc.line if loc else (frames[-1].lineno if frames else None),
                   "in_model": loc is not None, "code": loc.text.strip() if loc else "",
                   "mode": _mode_at_raise(exc, adapter)})
    finally:
        adapter.model.train(was_training)
        adapter.model.zero_grad(set_to_none=True)
    result.seconds = time.perf_counter() - start
    return result


def _progress(names: list[str], enabled: bool):
    if not enabled:
        return names
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm ships with Colab, but a bare install may lack it
        return names
    return tqdm(names, desc="checks", unit="check", leave=False)


def _probe_lengths(adapter, names: list[str], options: CheckOptions,
                   ) -> tuple[int | None, str | None]:
    """The longest runnable length and the check whose probe found it, when the run does not
    start with a check that measures it itself."""
    if not names or REGISTRY[names[0]].length_probe is not None:
        return None, None
    for spec in REGISTRY.values():
        if spec.length_probe is None:
            continue
        was_training = adapter.model.training
        try:
            runnable = spec.length_probe(adapter, options)
        finally:
            adapter.model.train(was_training)
        if runnable is not None:
            return runnable, spec.name
    return None, None


# Loggers whose WARNING records are collected into the report's notes while checks run (their
# handlers print to stderr, which a notebook shows as red boxes that look like errors).
LIBRARY_LOGGERS = ("transformers", "torch", "huggingface_hub")
_NOTE_CHARS = 200


class LibraryWarnings:
    """What is said while checks run — ``warnings.warn`` calls (from a library or the model's
    code) and WARNING records of the :data:`LIBRARY_LOGGERS` — kept as short report notes
    instead of being printed.

    One note per distinct message, naming the checks during which it came; a message a
    library repeats in every check is noted once.
    """

    def __init__(self) -> None:
        self._seen: dict[str, list[str]] = {}  # message -> labels of the checks that raised it

    def add(self, label: str, message: str) -> None:
        text = " ".join(str(message).split())
        if len(text) > _NOTE_CHARS:
            text = text[: _NOTE_CHARS - 1] + "…"
        labels = self._seen.setdefault(text, [])
        if label not in labels:
            labels.append(label)

    def notes(self) -> list[str]:
        out = []
        for text, labels in self._seen.items():
            during = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3
                                               else "")
            out.append(f"Warned during {during}: {text}")
        return out

    @contextmanager
    def capture(self, label: str) -> Iterator[None]:
        """Collect, and do not print, what libraries warn inside the block."""
        handler = _Collect(self, label)
        quiet = _LibraryRecords()
        # a library's root logger, plus its child loggers that do not propagate to it (torch
        # gives many of its own loggers a stderr handler and propagate=False)
        targets = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
        targets += [lg for name, lg in list(logging.Logger.manager.loggerDict.items())
                    if isinstance(lg, logging.Logger) and not lg.propagate
                    and name.split(".")[0] in LIBRARY_LOGGERS and lg not in targets]
        printers = {h for lg in [*targets, logging.getLogger()] for h in lg.handlers}
        for h in printers:
            h.addFilter(quiet)
        for lg in targets:
            lg.addHandler(handler)
        try:
            with warnings.catch_warnings(record=True) as caught:
                try:
                    yield
                finally:
                    for w in caught:
                        if not _library_deprecation(w):
                            self.add(label, f"{w.category.__name__}: {w.message}")
        finally:
            for lg in targets:
                lg.removeHandler(handler)
            for h in printers:
                h.removeFilter(quiet)


_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _library_deprecation(w: warnings.WarningMessage) -> bool:
    """A library's deprecation notice about its own internals (torch.export's ``LeafSpec``…):
    nothing the user wrote or can change, so not a note. One that points at the user's code
    (a deprecated call in model.py) stays."""
    where = str(w.filename).replace("\\", "/")
    return issubclass(w.category, _DEPRECATIONS) and ("/site-packages/" in where
                                                      or "/dist-packages/" in where
                                                      or "/lib/python3" in where)


class _LibraryRecords(logging.Filter):
    """Rejects a library's WARNING-or-worse records (collected instead); passes the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.WARNING
                    and record.name.split(".")[0] in LIBRARY_LOGGERS)


class _Collect(logging.Handler):
    def __init__(self, sink: LibraryWarnings, label: str) -> None:
        super().__init__(logging.WARNING)
        self.sink, self.label = sink, label

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.add(self.label, f"{record.name}: {record.getMessage()}")
        except Exception:  # a malformed log call must not break a check
            self.handleError(record)


# Known messages of exceptions models raise, and what they mean in the user's terms.
_CRASH_HINTS = (
    ("Explicit attn_mask should not be set when is_causal=True",
     "SDPA takes a causal attn_mask or is_causal=True, never both: "
     "drop the mask (is_causal=True builds it) or pass is_causal=False with the mask"),
    ("mat1 and mat2 shapes cannot be multiplied",
     "A Linear layer's in_features differs from the last dimension of what it receives"),
    ("Expected all tensors to be on the same device",
     "A tensor is created without device=: build it from the input (torch.arange(T, "
     "device=x.device)) or register it as a buffer"),
    ("must match the size of tensor",
     "Two tensors of different shapes meet: a reshape, a mask or a position table of the "
     "wrong length"),
)


def _crash_finding(result: CheckResult, first_of: dict[tuple, str]) -> None:
    """A crash in the model's own code is a finding about the model: the first check it stops
    is a ``fail`` at the user's line, with a diagnosis where the message is known; every later
    check stopped by the same line says it depends on that one (``skip``)."""
    err = result.error or {}
    if result.status != "error" or not err.get("in_model"):
        return  # a crash in a check's own code stays an error: a bug of this tool
    key = (err["type"], err["file"], err["line"])
    where = f"{err['file']}, line {err['line']}"
    if key in first_of:
        result.status = "skip"
        result.summary = (f"Depends on {first_of[key]}: the model raises the same "
                          f"{err['type']} at {where}, so this check could not run; fix that "
                          "first.")
        return
    first_of[key] = result.name
    hint = next((h for text, h in _CRASH_HINTS if text in err["message"]), "")
    message = (err["message"].splitlines() or [""])[0]
    result.status = "fail"
    result.summary = (f"The model raises in {err['mode']} mode at {where}"
                      + (f" ({err['code']})" if err["code"] else "")
                      + f": {err['type']}: {message}." + (f" {hint}." if hint else ""))


def _inverted_mask_finding(result: CheckResult, first: str, adapter,
                           options: CheckOptions) -> None:
    """A failure after a check found the mask applied inverted is asked again with the mask
    fed the other way round; when it then passes it only follows from that finding and says
    it depends on it (``skip``), as the checks a crash stops do."""
    if result.status != "fail":
        return
    with adapter.mask_flipped() as flipped:
        if not flipped:
            return
        again = _run_one(result.name, adapter, options)
    if again.status in ("pass", "warn", "skip"):
        result.status = "skip"
        result.metrics["with_mask_flipped"] = again.status
        verdict = "passes" if again.status == "pass" else "does not fail"
        result.summary = (f"Depends on {first}: the model applies its padding mask inverted, "
                          "so with nothing padded it blocks the real tokens; fed the mask the "
                          f"other way round this check {verdict}, so fix the mask first. (As "
                          f"run: {result.summary})")
    else:
        result.summary += (f" [Asked again with the padding mask fed the other way round "
                           f"({first} found it applied inverted), it still fails: the mask "
                           "is read elsewhere too (pooling?) or this is a second problem.]")


def run_checks(adapter, names: list[str], options: CheckOptions | None = None, *,
               progress: bool = True, model_info: dict[str, Any] | None = None) -> Report:
    """Run the named checks on ``adapter``; a crash is an ``error`` result, never a stop.

    Warnings raised while the checks run (see :class:`LibraryWarnings`) become the report's
    notes, once each, instead of stderr output.

    Raises:
        UserError: a threshold key in ``options`` that no check declares.
    """
    from utils.environment import versions

    options = options or CheckOptions()
    options.validate_thresholds()
    if options.device is not None:
        adapter.to(options.device)
    report = Report(model=model_info or adapter.describe(), source=dict(adapter.source),
                    environment={**versions(), "device": str(adapter.device)})
    bar = _progress(names, progress)
    capped_by = None
    crashes: dict[tuple, str] = {}  # (type, file, line) of a crash in the model -> first check
    inverted_by: str | None = None  # the check that found the model's mask applied inverted
    said = LibraryWarnings()
    with said.capture("the length probe"):
        runnable, prober = _probe_lengths(adapter, names, options)
    top = options.max_len(adapter)
    if runnable is None and adapter.max_seq_len is not None and top < adapter.max_seq_len:
        report.notes.append(
            f"Checks use sequences of at most {top} tokens (max_len_cap={options.max_len_cap}), "
            f"below the model's max_seq_len {adapter.max_seq_len}, so each check stays within "
            f"its time budget: lengths {top + 1}–{adapter.max_seq_len} are not tested. "
            f"CheckOptions(max_len_cap={adapter.max_seq_len}) tests them.")
    if runnable is not None:
        options = dataclasses.replace(options, max_len_cap=runnable)
        assert prober is not None, "a runnable length comes from the check that probed it"
        capped_by = f"Tier {REGISTRY[prober].tier}'s {prober}"
        report.notes.append(f"The model fails beyond length {runnable} (a length probe found "
                            f"it); every check stays within it. Run {prober} for the cause.")
    for name in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(name)
        with said.capture(name):
            result = _run_one(name, adapter, options)
        _crash_finding(result, crashes)
        if inverted_by is not None:
            _inverted_mask_finding(result, inverted_by, adapter, options)
        elif result.status == "fail" and result.metrics.get("inverted_mask"):
            inverted_by = name  # later failures may only follow from it: asked again
        if capped_by is not None:
            result.summary += (f" [Lengths capped at {options.max_len_cap}: the model fails "
                               f"beyond — see {capped_by}.]")
        # A check that finds the model breaks past some length caps the later ones, so one
        # bug is reported once instead of crashing every check after it.
        runnable = result.metrics.get("runnable_max_len")
        if isinstance(runnable, int) and 0 < runnable < options.max_len(adapter):
            options = dataclasses.replace(options, max_len_cap=runnable)
            capped_by = name
            report.notes.append(f"{name} found that the model fails beyond length {runnable}; "
                                "the checks after it stay within that length.")
        report.results.append(result)
    report.notes += said.notes()
    return report


def as_adapter(model_or_adapter, config: dict | None = None):
    """An adapter for whatever the caller has: an adapter, a LoadedModel or an nn.Module."""
    from utils.adapters import ModelAdapter, adapt

    if isinstance(model_or_adapter, ModelAdapter):
        return model_or_adapter
    return adapt(model_or_adapter, config)


def run_tier(tier_checks: Iterable[str], model_or_adapter, config: dict | None = None, *,
             checks: Iterable[str] | None = None, skip: Iterable[str] | None = None,
             options: CheckOptions | None = None, progress: bool = True) -> Report:
    """Run ``tier_checks`` (or ``checks`` among them, minus ``skip``) and return the report."""
    names = select(list(tier_checks), checks, skip)
    return run_checks(as_adapter(model_or_adapter, config), names, options, progress=progress)
