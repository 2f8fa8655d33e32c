"""Benchmark: Tier 2 on the ~7M-parameter reference GPT, as a user runs it.

Times ``python -m utils validate <folder> --tier 2`` as a whole process (interpreter start,
import, load, adapt, every analysis) several times and reports the minimum and the median — the
machine is shared, so the minimum is the cleanest figure. From the last run's ``--json`` it
reports each analysis's seconds and the forward/backward passes it spent. Target: ≤ 20 s for
the whole process on a 2-core CPU, never above 60 s.

Usage:
    python benchmarks/tier2.py [--runs 3]
    python benchmarks/tier2.py --model example   # the embedded example (~0.9M parameters)

Writes ``benchmarks/results/tier2.json`` (``tier2_example.json``) and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_gpt import ROOT, python, summary, time_command, write_reference

TARGET_S, LIMIT_S = 20.0, 60.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="whole-process runs (default 3)")
    parser.add_argument("--model", choices=["reference", "example"], default="reference",
                        help="the ~7M-parameter reference GPT (default) or the embedded example")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_reference(Path(tmp) / "reference_gpt") if args.model == "reference" \
            else ROOT / "utils" / "examples" / "tiny_gpt"
        report_path = Path(tmp) / "report.json"
        cmd = [python(), "-m", "utils", "validate", str(folder), "--tier", "2", "--json",
               str(report_path)]
        times = time_command(cmd, args.runs)
        report = json.loads(report_path.read_text())
    analyses = {c["name"]: {"status": c["status"], "seconds": round(c["seconds"], 3),
                            "forward_passes": c["metrics"].get("forward_passes"),
                            "backward_passes": c["metrics"].get("backward_passes")}
                for c in report["checks"]}
    whole = summary(times)
    result = {"model": {k: report["model"][k] for k in ("class", "parameters", "task")},
              "whole_process_s": {**whole, "all": times},
              "analyses": analyses,
              "analyses_total_s": round(sum(a["seconds"] for a in analyses.values()), 3),
              "target_s": TARGET_S, "limit_s": LIMIT_S,
              "within_target": whole["min"] <= TARGET_S, "within_limit": whole["min"] <= LIMIT_S}
    out = ROOT / "benchmarks" / "results" / (
        "tier2.json" if args.model == "reference" else f"tier2_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{report['model']['class']}: {report['model']['parameters']:,} parameters")
    print(f"python -m utils validate --tier 2: min {whole['min']:.2f} s, median "
          f"{statistics.median(times):.2f} s over {whole['runs']} runs (target ≤ {TARGET_S:g} s: "
          f"{'met' if result['within_target'] else 'missed'}; never above {LIMIT_S:g} s: "
          f"{'met' if result['within_limit'] else 'missed'})")
    for name, a in analyses.items():
        print(f"  {name:<24} {a['status']:<5} {a['seconds']:6.2f} s  "
              f"forward {a['forward_passes']}, backward {a['backward_passes']}")
    print(f"wrote {out.relative_to(ROOT)}")
    return result


if __name__ == "__main__":
    main()
