"""What every tier shares: check options, the check registry, and the runner.

A check is one function ``check_<name>(adapter, options) -> CheckResult`` registered under its
bare name with :func:`register`, declaring the threshold keys it reads and, when it measures
the longest length a model runs at, a cheap probe for that length. Checks never print and
never raise on a failed model; the runner times each one, turns a crash into status ``error``
(with the model file's line), and collects the results into a :class:`~utils.report.Report`.
The runner knows no check by name: what it does differently for a check comes from the spec.

The package: :mod:`.registry` (``register``, ``REGISTRY``, ``select``), :mod:`.options`
(``CheckOptions``), :mod:`.execute` (one check, timed and contained), :mod:`.findings` (what the
runner infers across checks, as ordered post-processors), :mod:`.runner` (``run_checks``),
:mod:`.library_warnings`.
"""

from utils.checks.library_warnings import LIBRARY_LOGGERS, LibraryWarnings
from utils.checks.options import CheckOptions
from utils.checks.registry import REGISTRY, CheckSpec, available, register, select
from utils.checks.runner import as_adapter, run_checks, run_tier

__all__ = ["LIBRARY_LOGGERS", "REGISTRY", "CheckOptions", "CheckSpec", "LibraryWarnings",
           "as_adapter", "available", "register", "run_checks", "run_tier", "select"]
