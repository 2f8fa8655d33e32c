"""The on-disk format of a checkpoints folder: names, manifests, verification, rotation rule.

::

    step-00000050.ckpt   torch.save of the training state
    step-00000050.json   its manifest {"step", "file", "size", "sha256", "val_loss", "created"}
    latest.json          {"step": 50, "file": "step-00000050.ckpt"} (file relative to the folder)
    .spare.ckpt          a rotated-out checkpoint the next save writes over (local folder only)

The same layout is used in the run folder and in its mirror (Drive has no symlinks, so the
pointer is a small JSON file). A checkpoint is valid only if its manifest exists and the file's
size and sha256 match it; names are never trusted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from utils import atomic
from utils.atomic import read_json

__all__ = ["LATEST", "SPARE", "CheckpointInfo", "ckpt_name", "keep_set", "make_manifest",
           "manifest_name", "read_manifests", "step_of", "verify"]

LATEST = "latest.json"
SPARE = ".spare.ckpt"
_STEP_FILE = re.compile(r"^step-(\d{8,})\.(ckpt|json)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint that verified against its manifest, or a file the user named
    (``location="given"``: no manifest, so ``sha256`` is empty; its step read from the file)."""

    path: Path
    step: int
    sha256: str
    size: int
    val_loss: float | None
    location: str  # "local" | "mirror" | "given"


def ckpt_name(step: int) -> str:
    return f"step-{step:08d}.ckpt"


def manifest_name(step: int) -> str:
    return f"step-{step:08d}.json"


def step_of(path: Path) -> int | None:
    """The step in a checkpoint's or manifest's file name; None for any other file."""
    match = _STEP_FILE.match(Path(path).name)
    return int(match.group(1)) if match else None


def make_manifest(step: int, sha256: str, size: int, val_loss) -> dict:
    """A manifest; ``val_loss`` may be a float or a 0-d tensor, and a non-finite one is None."""
    loss = None if val_loss is None else float(val_loss)
    return {"step": step, "file": ckpt_name(step), "size": size, "sha256": sha256,
            "val_loss": loss if loss is not None and math.isfinite(loss) else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def read_manifests(folder: Path) -> dict[int, dict]:
    """Every readable manifest in ``folder`` by step (not verified against its file)."""
    out = {}
    for path in Path(folder).glob("step-*.json"):
        step, manifest = step_of(path), read_json(path)
        if step is not None and isinstance(manifest, dict) and manifest.get("step") == step:
            out[step] = manifest
    return out


def keep_set(manifests: dict[int, dict], keep_last: int, keep_best: bool) -> set[int]:
    """The steps rotation keeps: the newest ``keep_last``, plus the lowest ``val_loss`` (the
    newest of equals) when ``keep_best``."""
    keep = set(sorted(manifests)[-keep_last:])
    scored = [(m["val_loss"], -step) for step, m in manifests.items()
              if isinstance(m.get("val_loss"), (int, float)) and math.isfinite(m["val_loss"])]
    if keep_best and scored:
        keep.add(-min(scored)[1])
    return keep


def verify(folder: Path, step: int, location: str) -> CheckpointInfo | str:
    """The checkpoint of ``step`` in ``folder`` if it matches its manifest, else why not."""
    path, manifest_path = folder / ckpt_name(step), folder / manifest_name(step)
    if not manifest_path.is_file():
        return "it has no manifest (its save was interrupted)"
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or not {"size", "sha256"} <= manifest.keys():
        return f"its manifest {manifest_path.name} is unreadable"
    try:
        size = path.stat().st_size
        if size != manifest["size"]:
            return f"it is truncated: {size} bytes, its manifest says {manifest['size']}"
        if atomic.sha256_file(path) != manifest["sha256"]:
            return "it is corrupt: its sha256 does not match its manifest"
    except FileNotFoundError:
        return f"its manifest {manifest_path.name} names a file that does not exist"
    except OSError as exc:
        return f"it cannot be read ({exc})"
    loss = manifest.get("val_loss")
    return CheckpointInfo(path, step, manifest["sha256"], size,
                          float(loss) if isinstance(loss, (int, float)) else None, location)
