"""What the runner infers across checks, as ordered post-processors of each result.

Each finding is a function ``finding(result, run)`` that may rewrite the result it is given
(its status and summary) and update what the run carries to the checks after it
(:class:`CheckRun`). The runner calls :data:`FINDINGS` in order on every result, so a new
inference is a new function in that tuple, not a new branch in the runner:

1. :func:`crash_finding` — a crash in the model's own code is a ``fail`` at the user's line
   for the first check it stops; later checks stopped by the same line depend on it.
2. :func:`inverted_mask_finding` — once a check found the padding mask applied inverted, a later
   failure is asked again with the mask flipped; one that then passes depends on that finding.
3. :func:`capped_length_note` — a result measured under a length cap says so.
4. :func:`length_cap_finding` — a check that finds the model fails past some length caps the
   checks after it, so one bug is reported once instead of crashing every later check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from utils.checks.execute import run_one
from utils.checks.options import CheckOptions
from utils.report import CheckResult, Report

__all__ = ["FINDINGS", "CheckRun", "capped_length_note", "crash_finding",
           "inverted_mask_finding", "length_cap_finding"]


@dataclass
class CheckRun:
    """What one run of checks carries from a result to the checks after it."""

    adapter: Any
    options: CheckOptions  # replaced (a shorter max_len_cap) when a length cap is found
    report: Report
    crashes: dict[tuple, str] = field(default_factory=dict)  # (type, file, line) -> first check
    inverted_by: str | None = None  # the check that found the mask applied inverted
    capped_by: str | None = None  # what capped the lengths (a probe or a check)


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


def crash_finding(result: CheckResult, run: CheckRun) -> None:
    """A crash in the model's own code is a finding about the model: the first check it stops
    is a ``fail`` at the user's line, with a diagnosis where the message is known; every later
    check stopped by the same line says it depends on that one (``skip``)."""
    first_of = run.crashes
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


def inverted_mask_finding(result: CheckResult, run: CheckRun) -> None:
    """A failure after a check found the mask applied inverted is asked again with the mask
    fed the other way round; when it then passes it only follows from that finding and says
    it depends on it (``skip``), as the checks a crash stops do. The first check that finds
    the mask inverted (``metrics["inverted_mask"]``) starts this for the checks after it."""
    first = run.inverted_by
    if first is None:
        if result.status == "fail" and result.metrics.get("inverted_mask"):
            run.inverted_by = result.name
        return
    if result.status != "fail":
        return
    with run.adapter.mask_flipped() as flipped:
        if not flipped:
            return
        again = run_one(result.name, run.adapter, run.options)
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


def capped_length_note(result: CheckResult, run: CheckRun) -> None:
    """A result measured within a length cap found earlier says so, and where."""
    if run.capped_by is not None:
        result.summary += (f" [Lengths capped at {run.options.max_len_cap}: the model fails "
                           f"beyond — see {run.capped_by}.]")


def length_cap_finding(result: CheckResult, run: CheckRun) -> None:
    """A check that finds the model breaks past some length caps the later ones, so one bug
    is reported once instead of crashing every check after it."""
    runnable = result.metrics.get("runnable_max_len")
    if isinstance(runnable, int) and 0 < runnable < run.options.max_len(run.adapter):
        run.options = dataclasses.replace(run.options, max_len_cap=runnable)
        run.capped_by = result.name
        run.report.notes.append(f"{result.name} found that the model fails beyond length "
                                f"{runnable}; the checks after it stay within that length.")


Finding = Callable[[CheckResult, CheckRun], None]
FINDINGS: tuple[Finding, ...] = (crash_finding, inverted_mask_finding, capped_length_note,
                                 length_cap_finding)
