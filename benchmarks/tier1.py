"""Tier 1 speed on the ~7M-parameter reference GPT, as a user runs it.

The figure that matters is a ratio: the whole ``testbench validate <reference> --tier 1``
process (interpreter start, imports, load, adapt, every check, the report) divided by one bare
forward+backward of the same model at batch 8 × 256 — the unit a person already has a feel
for. Target: ≤ 5.5× (issue 11, item 14). The process is started as ``python -m utils``, which
runs the console script's own ``main`` (``testbench = "utils.__main__:main"``) and lets the
"before" side import an older tree's package.

The machine may be shared, so absolute seconds drift; the ratio is measured pairwise: in each
round the unit is timed in this process before and after each whole-process run (median of 3
each), and the round's ratio is the process's seconds over the mean of those two. The result
is the median over the rounds. "Before" is the same measurement, interleaved in the same
rounds, of the tree at ``--before`` (default: the commit before the Tier 1 speed work, checked
out into a temporary ``git worktree`` that is removed afterwards; its subprocesses run from
that tree with it on ``PYTHONPATH``, and the script checks that they import its ``utils``).
Both sides validate the same model folder and are compared with the same unit.

Also reported: each check's seconds (from the report JSON of those runs) and ``import utils``
against ``import torch`` in fresh interpreters, interleaved. The processes keep compiled
bytecode as a user's Python does (in a temporary cache, filled by one untimed run per tree,
even when ``PYTHONDONTWRITEBYTECODE`` is set), so no timed run pays for compiling the package.

    python benchmarks/tier1.py --threads 1 --runs 3   # one torch thread: steadier when shared
    python benchmarks/tier1.py --no-before            # the current tree only
    python benchmarks/tier1.py --model example        # the embedded example (~0.9M parameters)

Writes ``benchmarks/results/tier1.json`` (``ratio`` holds the figure, ``before`` the older
tree's) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reference_gpt import ROOT, summary, write_reference

TARGET_RATIO = 5.5  # whole process / one fwd+bwd at 8 × 256 (issue 11, item 14)
# The parent of d495c4a, the first of the Tier 1 speed commits (d495c4a output_stability reuses
# forwards, 1d30096 inference_speed until its p50 is stable, 384d4d6 fused Adam, dc5ec66
# overfit_one_batch stops once passed).
BEFORE = "c323d4c"
MODELS = {"reference": "reference GPT: 6 layers, width 256, 8 heads, vocab 8192, length 256 "
                       "(~7M parameters)",
          "example": "embedded example TinyGPT: 4 layers, width 128, 4 heads, vocab 1024, "
                     "length 128 (~0.9M parameters)"}


class Unit:
    """One forward+backward of the model at batch 8 × 256 (its max_seq_len if shorter), timed in
    this process."""

    def __init__(self, folder: Path) -> None:
        from utils import adapt, load_model

        self.adapter = adapt(load_model(folder, say=lambda _m: None))
        self.shape = (8, min(256, self.adapter.max_seq_len or 256))
        self.parameters = self.adapter.num_parameters
        self.batch = self.adapter.make_inputs(*self.shape)
        self.once()  # warm-up

    def once(self) -> float:
        self.adapter.model.train()
        start = time.perf_counter()
        self.adapter.loss(self.batch).backward()
        self.adapter.model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def measure(self, n: int = 3) -> float:
        """The median of ``n`` runs: one noisy run must not set a round's ratio."""
        return statistics.median(self.once() for _ in range(n))


class Side:
    """One tree's whole validate processes: its root (cwd and ``PYTHONPATH``) and environment."""

    def __init__(self, label: str, root: Path, env: dict[str, str]) -> None:
        self.label, self.root = label, root
        self.env = {**env, "PYTHONPATH": str(root)}
        self.walls: list[float] = []
        self.ratios: list[float] = []
        self.per_check: dict[str, list[float]] = {}
        self.status: dict[str, str] = {}
        origin = subprocess.run([sys.executable, "-c", "import utils; print(utils.__file__)"],
                                cwd=root, env=self.env, check=True, capture_output=True,
                                text=True).stdout.strip()
        if Path(origin).resolve() != (root / "utils" / "__init__.py").resolve():
            raise RuntimeError(f"the {label} side imports {origin}, not {root}'s utils")
        self.origin = origin

    def command(self, folder: Path, report: Path | None = None) -> list[str]:
        cmd = [sys.executable, "-m", "utils", "validate", str(folder), "--tier", "1"]
        return [*cmd, "--json", str(report)] if report else cmd

    def run(self, folder: Path, report: Path, unit: Unit) -> float:
        """One round: unit → whole validate process → unit; the round's ratio is kept and
        its unit (the mean of the two) returned."""
        before = unit.measure()
        wall = _wall(self.command(folder, report), self.env, self.root)
        after = unit.measure()
        self.walls.append(wall)
        here = (before + after) / 2
        self.ratios.append(wall / here)
        for check in json.loads(report.read_text())["checks"]:
            self.per_check.setdefault(check["name"], []).append(check["seconds"])
            self.status[check["name"]] = check["status"]
        return here

    def result(self) -> dict:
        checks = {name: {"min": min(v), "median": statistics.median(v),
                         "status": self.status[name]} for name, v in self.per_check.items()}
        return {"tree": str(self.root), "utils_imported_from": self.origin,
                "ratio": statistics.median(self.ratios), "ratio_per_round": self.ratios,
                "validate_process_s": summary(self.walls), "checks_s": checks,
                "checks_total_median_s": sum(c["median"] for c in checks.values())}


def _wall(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> float:
    """Wall seconds of one run of ``cmd`` from ``cwd`` (a failing run raises, with its stderr)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: a check failed — still a full run, timed
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


@contextlib.contextmanager
def worktree(commit: str, parent: Path) -> Iterator[Path]:
    """``commit`` checked out (detached) under ``parent``; removed afterwards."""
    path = parent / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT,
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                       capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def import_times(runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    """``import torch`` and ``import utils`` in fresh interpreters, interleaved."""
    env = {**env, "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {"torch": [], "utils": []}
    for _ in range(runs):
        for module in times:
            times[module].append(_wall([sys.executable, "-c", f"import {module}"], env))
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads on both sides (default: torch's own choice)")
    parser.add_argument("--model", choices=sorted(MODELS), default="reference",
                        help="the ~7M-parameter reference GPT (default) or the embedded example")
    parser.add_argument("--before", default=BEFORE,
                        help=f"the commit to compare with (default {BEFORE}, the commit before "
                             "the Tier 1 speed work)")
    parser.add_argument("--no-before", action="store_true", help="measure this tree only")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/tier1.json (tier1_example.json)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "tier1.json" if args.model == "reference" else f"tier1_{args.model}.json")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if args.threads:
        import torch

        env["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        folder = write_reference(tmp / "reference") if args.model == "reference" else \
            ROOT / "utils" / "examples" / "tiny_gpt"
        sides = [Side("after", ROOT, env)]
        if not args.no_before:
            sides.append(Side(f"before ({args.before})",
                              stack.enter_context(worktree(args.before, tmp)), env))
        for side in sides:  # fills the bytecode cache: no timed run compiles
            _wall(side.command(folder), side.env, side.root)
        unit = Unit(folder)
        units = []
        for i in range(args.runs):
            for side in sides if i % 2 == 0 else sides[::-1]:  # alternate who goes first
                units.append(side.run(folder, tmp / f"report{i}.json", unit))
        imports = import_times(args.runs, env)
    after = sides[0].result()
    ratio = after["ratio"]
    result = {
        "model": MODELS[args.model],
        "parameters": unit.parameters,
        "unit": f"one forward+backward at batch {unit.shape[0]} × {unit.shape[1]}",
        "threads": args.threads or "torch default",
        "rounds": args.runs,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        # the target is set for the reference GPT; a smaller model's unit is mostly overhead
        "within_target": ratio <= TARGET_RATIO if args.model == "reference" else None,
        "fwd_bwd_s": summary(units),
        **{k: v for k, v in after.items() if k != "ratio"},
        "before": ({"commit": args.before, **sides[1].result()} if len(sides) > 1 else None),
        "import_torch_s": summary(imports["torch"]),
        "import_utils_s": summary(imports["utils"]),
        "import_ratio_median": statistics.median(
            u / t for u, t in zip(imports["utils"], imports["torch"], strict=True)),
    }
    u = result["fwd_bwd_s"]
    print(f"{MODELS[args.model]}: {unit.parameters:,} parameters; torch threads "
          f"{result['threads']}; {args.runs} rounds")
    print(f"unit, {result['unit']}: median {u['median']:.3f} s (min {u['min']:.3f})")
    for side, res in zip(sides, [after] + ([result["before"]] if result["before"] else []),
                         strict=True):
        v = res["validate_process_s"]
        print(f"{side.label}: validate --tier 1 whole process median {v['median']:.2f} s "
              f"(min {v['min']:.2f}); checks {res['checks_total_median_s']:.2f} s; ratio "
              f"{res['ratio']:.2f}× (rounds {', '.join(f'{x:.2f}' for x in res['ratio_per_round'])})")
        for name, c in sorted(res["checks_s"].items(), key=lambda kv: -kv[1]["median"]):
            print(f"    {name:<26} median {c['median']:.3f} s  (min {c['min']:.3f})  "
                  f"{c['status']}")
    if result["before"]:
        b = result["before"]["ratio"]
        print(f"before → after: {b:.2f}× → {ratio:.2f}× one fwd+bwd "
              f"({result['before']['validate_process_s']['median']:.2f} s → "
              f"{result['validate_process_s']['median']:.2f} s)")
    if result["within_target"] is None:
        print(f"target ≤ {TARGET_RATIO:g}× is set for the reference GPT: not judged here")
    else:
        print(f"target ≤ {TARGET_RATIO:g}×: {'met' if result['within_target'] else 'missed'} "
              f"({ratio:.2f}×)")
    print(f"import torch median {result['import_torch_s']['median']:.2f} s, import utils median "
          f"{result['import_utils_s']['median']:.2f} s (×{result['import_ratio_median']:.2f})")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out}")
    return result


if __name__ == "__main__":
    main()
