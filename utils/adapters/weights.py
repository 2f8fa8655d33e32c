"""Load trained weights into a built model, strictly, with a readable diff on mismatch.

Later tiers then analyse a trained model rather than a random init. Accepts ``.safetensors``
and ``torch.save`` files (``.pt``/``.pth``/``.bin``/``.ckpt``) holding a state dict, or a
checkpoint dict with one under ``state_dict``/``model``/``model_state_dict``. Common wrapper
prefixes (``module.`` from DDP, ``model.`` from Lightning, ``_orig_mod.`` from torch.compile)
are stripped when that makes the keys match.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from utils.environment import require
from utils.errors import UserError

__all__ = ["WEIGHT_SUFFIXES", "load_weights"]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module")
_PREFIXES = ("module.", "model.", "_orig_mod.")
_SHOWN = 8


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            safetensors_torch = require("safetensors.torch", "Loading .safetensors weights")
            return safetensors_torch.load_file(str(path), device="cpu")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"Could not read weights from {path.name}: {type(exc).__name__}: {exc}",
            why="The file is damaged, not a weights file, or holds Python objects that are not "
            "safe to unpickle (only tensors and plain containers are loaded).",
            fix="Save with torch.save(model.state_dict(), path) or safetensors' save_file.",
        ) from None
    for key in _NESTED_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path.name} does not hold a state dict.",
                        why=f"It holds a {type(obj).__name__}, not a name -> tensor mapping.",
                        fix="Save with torch.save(model.state_dict(), path).")
    return obj


def _strip_prefixes(state: dict, expected: set[str]) -> dict:
    for prefix in _PREFIXES:
        if not (state.keys() & expected) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _restore_tied(own: dict[str, torch.Tensor], state: dict) -> dict:
    """Fill names a file left out because they alias another tensor of the model (tied
    weights: safetensors' ``save_model`` stores one copy), from the copy it kept."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in own.items():
        if tensor.numel() == 0:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        groups.setdefault(key, []).append(name)
    state = dict(state)
    for names in groups.values():
        kept = next((n for n in names if n in state), None)
        if kept is not None:
            for name in names:
                state.setdefault(name, state[kept])
    return state


def _listing(names: list[str]) -> str:
    more = f" … and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def load_weights(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Load ``path`` into ``model`` strictly; returns ``{"tensors": n, "parameters": p}``.

    Raises:
        UserError: unreadable file, or keys/shapes that do not match the model (all listed).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No weights file at {path}.", fix="Check the path.")
    state = _strip_prefixes(_read(path), set(model.state_dict()))
    own = model.state_dict()
    state = _restore_tied(own, state)
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the file ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"in the file but not the model ({len(unexpected)}): "
                         f"{_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_listing(shapes)}")
        raise UserError(
            f"The weights in {path.name} do not fit {type(model).__name__}.\n  - "
            + "\n  - ".join(parts),
            why="Weights load only into the exact architecture that produced them.",
            fix="Use the config.json the weights were trained with, or drop the weights file "
            "to analyse the model at random init.")
    model.load_state_dict(state, strict=True)
    return {"tensors": len(state), "parameters": sum(int(t.numel()) for t in state.values())}
