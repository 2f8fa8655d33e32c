"""Tier 1 speed on the ~7M-parameter reference GPT, as a user runs it.

Measures, each several times (the machine may be shared: min and median are reported):
- the whole ``python -m utils validate <reference> --tier 1`` process, imports included;
- each check's seconds, from the report JSON of those runs;
- one bare forward+backward at batch 8 × 256 (the unit Tier 1 is expressed in);
- ``import utils`` against ``import torch`` in fresh interpreters.

    python benchmarks/tier1.py            # 5 runs each
    python benchmarks/tier1.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reference_gpt import ROOT, summary, time_command, write_reference


def bare_unit(folder: Path, runs: int) -> list[float]:
    """Seconds of one forward+backward of the reference at batch 8 × 256 (after a warm-up)."""
    from utils import adapt, load_model

    adapter = adapt(load_model(folder, say=lambda _m: None))
    adapter.model.train()
    batch = adapter.make_inputs(8, 256)
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        adapter.loss(batch).backward()
        adapter.model.zero_grad(set_to_none=True)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    return times


def validate_runs(folder: Path, runs: int, out: Path) -> tuple[list[float], dict[str, list]]:
    """Wall seconds of whole validate processes, and each check's seconds per run."""
    walls, per_check = [], {}
    for i in range(runs):
        report = out / f"report{i}.json"
        wall = time_command([sys.executable, "-m", "utils", "validate", str(folder), "--tier",
                             "1", "--json", str(report)], 1)[0]
        walls.append(wall)
        data = json.loads(report.read_text())
        for check in data["checks"]:
            per_check.setdefault(check["name"], []).append(check["seconds"])
            per_check.setdefault("_status_" + check["name"], []).append(check["status"])
    return walls, per_check


def import_times(module: str, runs: int) -> list[float]:
    return time_command([sys.executable, "-c", f"import {module}"], runs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "tier1.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_reference(Path(tmp) / "reference")
        walls, per_check = validate_runs(folder, args.runs, Path(tmp))
        unit = bare_unit(folder, args.runs)
    torch_import, utils_import = import_times("torch", args.runs), import_times("utils",
                                                                                 args.runs)
    unit_s = summary(unit)
    checks = {name: {"min": min(v), "median": statistics.median(v),
                     "status": per_check["_status_" + name][-1]}
              for name, v in per_check.items() if not name.startswith("_")}
    result = {
        "model": "reference GPT: 6 layers, width 256, 8 heads, vocab 8192, length 256",
        "validate_process_s": summary(walls),
        "fwd_bwd_8x256_s": unit_s,
        "validate_in_units": {"min": min(walls) / unit_s["min"],
                              "median": statistics.median(walls) / unit_s["median"]},
        "checks_s": checks,
        "import_torch_s": summary(torch_import),
        "import_utils_s": summary(utils_import),
        "import_ratio_median": statistics.median(utils_import) / statistics.median(torch_import),
        "targets": {"validate_process_s": 7.0, "never_above_s": 15.0, "import_ratio": 1.3},
    }
    v = result["validate_process_s"]
    print(f"validate --tier 1 (whole process): min {v['min']:.2f} s, median {v['median']:.2f} s "
          f"over {v['runs']} runs (target ≤ 7 s, never above 15 s)")
    print(f"one forward+backward at 8×256: min {unit_s['min']:.3f} s, median "
          f"{unit_s['median']:.3f} s → Tier 1 = {result['validate_in_units']['min']:.1f}× "
          f"(min) / {result['validate_in_units']['median']:.1f}× (median) of that unit")
    for name, c in sorted(checks.items(), key=lambda kv: -kv[1]["median"]):
        print(f"  {name:<26} median {c['median']:.3f} s  (min {c['min']:.3f})  {c['status']}")
    print(f"import torch median {result['import_torch_s']['median']:.2f} s, import utils median "
          f"{result['import_utils_s']['median']:.2f} s (×{result['import_ratio_median']:.2f}; "
          "target ≤ 1.3)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()
