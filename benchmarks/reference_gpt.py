"""The reference model every benchmark measures: a GPT of about 7M parameters.

6 pre-LayerNorm blocks, width 256, 8 heads, vocab 8192, length 256 — the embedded example's
architecture at a size people actually design in a builder. ``write_reference(folder)`` writes
it as a gist-like folder (``model.py`` + ``config.json``) so a benchmark can time the whole
``python -m utils validate`` process on it, exactly as a user would run it.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"vocab_size": 8192, "max_seq_len": 256, "d_model": 256, "n_layer": 6, "n_head": 8,
          "dropout": 0.1}


def write_reference(folder: Path) -> Path:
    """Write the reference GPT as ``folder/model.py`` + ``folder/config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "utils" / "examples" / "tiny_gpt" / "model.py", folder / "model.py")
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    return folder


def time_command(cmd: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` executions of ``cmd`` (a failing run raises)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """min and median: the machine is shared, so the minimum is the cleanest figure."""
    return {"min": min(times), "median": statistics.median(times), "runs": len(times)}


def python() -> str:
    return sys.executable
