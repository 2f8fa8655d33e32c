"""The one module that knows what is installed and where things live.

Optional dependencies are imported through :func:`require` inside the function that needs them,
so the zero-install path (``import utils``, adapters, Tier 1, Tier 2) runs on what Colab ships.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import platform
import sys
from pathlib import Path
from types import ModuleType

from utils.errors import MissingExtraError, UserError

__all__ = [
    "EXTRA_OF",
    "free_memory_bytes",
    "hub_reachable",
    "in_colab",
    "is_available",
    "require",
    "require_all",
    "resolve_device",
    "testbench_home",
    "versions",
]

# Top-level module -> the pip extra of transformer-testbench that installs it.
EXTRA_OF: dict[str, str] = {
    "lightning": "train",
    "torchmetrics": "train",
    "optuna": "train",
    "optuna_integration": "train",
    "datasets": "data",
    "tokenizers": "data",
    "transformers": "data",
    "wandb": "mlops",
    "huggingface_hub": "mlops",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "torchao": "export",
    "safetensors": "train",
    "yaml": "train",  # PyYAML: training configs (--config run.yaml); Colab ships it
    "ipywidgets": "notebook",
    "nbclient": "notebook",
}


def require(module: str, feature: str) -> ModuleType:
    """Import an optional dependency, or raise a :class:`MissingExtraError` naming its extra.

    Args:
        module: The importable name, e.g. ``"lightning"`` or ``"optuna_integration"``.
        feature: What needs it, in the user's words (``"Fine-tuning"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but broken: its own error is the useful one
        raise MissingExtraError(top, EXTRA_OF.get(top, "all"), feature, colab=in_colab()) from None


def require_all(modules: list[str] | tuple[str, ...], feature: str) -> None:
    """Raise one :class:`MissingExtraError` naming every missing module of ``modules`` and
    every extra that installs them (``pip install -e ".[train,data]"``), before any work."""
    missing = [m for m in modules if not is_available(m)]
    if missing:
        extras = list(dict.fromkeys(EXTRA_OF.get(m.split(".")[0], "all") for m in missing))
        raise MissingExtraError(", ".join(missing), ",".join(extras), feature,
                                colab=in_colab())


_TRUE = ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 2.0) -> tuple[bool, str]:
    """``(True, "")`` when the Hugging Face Hub answers, else ``(False, why)``: in about
    ``timeout`` seconds at most, decided once per process and endpoint — one HTTP ``HEAD`` of
    ``HF_ENDPOINT`` (default https://huggingface.co), any answer counting, not the Hub
    libraries' retries (27 s here without a network). ``HF_HUB_OFFLINE`` /
    ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` answer without trying."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return False, f"{var} is set"
    return _answers((os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/"),
                    timeout)


@functools.lru_cache(maxsize=8)
def _answers(endpoint: str, timeout: float) -> tuple[bool, str]:
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    host = urlsplit(endpoint).hostname or endpoint
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"),
                               timeout=timeout).close()
    except urllib.error.HTTPError:
        return True, ""  # it answered (a 4xx/5xx is still the Hub there)
    except (OSError, ValueError) as exc:  # URLError, a timeout, a refused connection, no DNS
        reason = getattr(exc, "reason", exc)
        return False, f"{host} could not be reached ({type(reason).__name__}: {reason})"
    return True, ""


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    if sys.modules.get(module) is not None:  # imported already (optuna_integration's lazy
        return True                          # module has __spec__ None: find_spec raises)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def in_colab() -> bool:
    """Whether this process is a Google Colab runtime."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def testbench_home() -> Path:
    """Root folder for caches and hand-off files: ``$TESTBENCH_HOME`` or a per-user cache.

    In Colab this lives on the VM's disk, which survives "Restart runtime".
    """
    env = os.environ.get("TESTBENCH_HOME")
    if env:
        return Path(env).expanduser()
    if in_colab():
        return Path("/content/.testbench")
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "transformer-testbench"


def resolve_device(device: str | None = None):
    """``"auto"``/None → cuda when available, else cpu; an unavailable explicit device is an error."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"Unknown device {device!r}.", why="Devices are 'cpu', 'cuda', 'cuda:N' or 'auto'.",
            fix="Pass --device cpu or --device cuda.",
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"Device {device!r} was asked for, but this machine has no usable CUDA GPU.",
            why="torch.cuda.is_available() is False.",
            fix="Use --device cpu, or in Colab pick Runtime > Change runtime type > GPU.",
        )
    return dev


def free_memory_bytes(device) -> int | None:
    """Bytes that can still be allocated on ``device``: the GPU's free memory, or the host's
    ``MemAvailable`` for the CPU; None when it cannot be told (non-Linux hosts)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def versions() -> dict[str, str]:
    """Versions of what a report depends on: python, torch, numpy, utils, and the platform."""
    import numpy
    import torch

    from utils import __version__

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "utils": __version__,
        "platform": platform.platform(terse=True),
        "cuda": torch.version.cuda or "none",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
