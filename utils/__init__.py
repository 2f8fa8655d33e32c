"""Transformer Testbench: find out whether the transformer you designed is right, then train it.

The zero-install path — this package, the adapters, Tier 1 and Tier 2 — needs only what Google
Colab ships (torch, numpy, pandas, matplotlib, seaborn, scipy). Training, data, tracking and
export extras are imported inside the functions that need them.

Example:
    >>> import utils
    >>> loaded = utils.load_model("0123456789abcdef0123456789abcdef")   # a gist id
    >>> adapter = utils.adapt(loaded)
    >>> from utils.test_functions import run_all_tier1_tests
    >>> report = run_all_tier1_tests(adapter, options=utils.CheckOptions(seed=1))
"""

__version__ = "0.1.0"

from utils.adapters import LoadedModel, ModelAdapter, adapt, load_model
from utils.checks import CheckOptions
from utils.errors import UserError

__all__ = ["CheckOptions", "LoadedModel", "ModelAdapter", "UserError", "__version__", "adapt",
           "load_model"]
