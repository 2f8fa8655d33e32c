"""Command line: ``python -m utils validate [SOURCE] [options]``.

Exit codes (a contract other tools rely on): 0 nothing failed; 1 a check failed or errored;
2 the source could not be loaded or adapted (the message on stderr, no traceback); 64 a usage
error; 70 an internal bug. ``--json PATH`` writes the report (schema_version 1) in every case
that gets past argument parsing, including exit 2.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from utils import __version__
from utils.errors import UserError
from utils.report import Report
from utils.tasks import TASKS

EXIT_OK, EXIT_FAILED, EXIT_SOURCE, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 64, 70


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default exit code 2 is ours for bad sources
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m utils",
                     description="Transformer Testbench: check a transformer, then train it.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    v = sub.add_parser("validate", help="load a model, adapt it and run the checks",
                       description="Load a model from a gist, URL, folder or model.py, work out "
                       "how to drive it, and run the checks. With no SOURCE, the embedded "
                       "example model is used.")
    v.add_argument("source", nargs="?", help="gist id or URL, Colab URL with gist_id, folder, "
                   "or model.py (default: the embedded example)")
    v.add_argument("--tier", choices=["1", "2", "all"], default="1",
                   help="which tier to run (default 1)")
    v.add_argument("--json", metavar="PATH", help="write the report as JSON here")
    v.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    v.add_argument("--checks", type=_names, metavar="A,B", help="run only these checks")
    v.add_argument("--skip", type=_names, metavar="C,D", default=[], help="skip these checks")
    v.add_argument("--seed", type=int, default=0, help="random seed for generated inputs")
    over = v.add_argument_group("overrides (beat everything inferred)")
    over.add_argument("--task", choices=TASKS)
    over.add_argument("--vocab-size", type=int, metavar="N")
    over.add_argument("--max-seq-len", type=int, metavar="N")
    over.add_argument("--num-classes", type=int, metavar="N")
    over.add_argument("--model-class", metavar="NAME", help="the class to build")
    over.add_argument("--weights", metavar="PATH", help="a .safetensors/.pt state dict to load")
    return parser


def _describe(report: Report) -> str:
    src, model = report.source, report.model or {}
    if src.get("kind") == "gist":
        origin = f"gist {src.get('gist_id')} @ {str(src.get('revision'))[:7]}"
        origin += f" by @{src['owner']}" if src.get("owner") else ""
    else:
        origin = f"{src.get('kind')} {src.get('path')}"
    lines = [f"Source  {origin}",
             f"Model   {model.get('class')}: {model.get('parameters', 0):,} parameters "
             f"({model.get('size_mb')} MB); forward: {model.get('forward')}"]
    for prop, ev in model.get("evidence", {}).items():
        if prop != "forward":
            lines.append(f"  {prop:<13} {ev['value']!s:<11} {ev['method']}: {ev['detail']}")
    lines += [f"  note: {w}" for w in model.get("warnings", [])]
    return "\n".join(lines)


def _check_names(args: argparse.Namespace) -> list[str]:
    """The checks the flags ask for; a bad tier or check name is a usage error."""
    from utils.checks import select
    from utils.tier1_critical_validation import TIER1_CHECKS
    from utils.tier2_advanced_analysis import TIER2_CHECKS

    tiers = {"1": list(TIER1_CHECKS), "2": list(TIER2_CHECKS)}
    if args.tier not in tiers and args.tier != "all":
        raise UserError(f"Tier {args.tier} is not part of Transformer Testbench {__version__}.",
                        why=f"Available tiers: {', '.join(tiers)}.",
                        fix="Use --tier 1, --tier 2 or --tier all.")
    wanted = [n for tier in sorted(tiers) for n in tiers[tier]] if args.tier == "all" else \
        tiers[args.tier]
    return select(wanted, args.checks, args.skip)


def validate(args: argparse.Namespace) -> int:
    from utils.adapters import adapt, load_model
    from utils.checks import CheckOptions, run_checks
    from utils.environment import resolve_device, versions

    try:
        names = _check_names(args)
    except UserError as err:
        print(f"usage error: {err.message}", file=sys.stderr)
        return EXIT_USAGE
    report = Report(source={"input": args.source or "(embedded example)", "kind": None,
                            "gist_id": None, "revision": None, "sha256": {}},
                    environment=versions())
    try:
        device = resolve_device(args.device)
        loaded = load_model(args.source, model_class=args.model_class, weights=args.weights,
                            say=lambda m: print(m, file=sys.stderr))
        report.source = {**loaded.source, "input": args.source or "(embedded example)"}
        adapter = adapt(loaded, task=args.task, vocab_size=args.vocab_size,
                        max_seq_len=args.max_seq_len, num_classes=args.num_classes,
                        device=device)
        source = report.source
        report = run_checks(adapter, names, CheckOptions(seed=args.seed, device=str(device)),
                            progress=sys.stderr.isatty())
        report.source = source
    except UserError as err:
        report.error = err.to_dict()
        print(f"error: {err.message}", file=sys.stderr)
        if args.json:
            report.to_json(args.json)
        return EXIT_SOURCE
    print(_describe(report))
    print(report.to_text())
    if args.json:
        report.to_json(args.json)
    return EXIT_OK if report.passed else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"validate": validate}[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"internal error: this is a bug in Transformer Testbench {__version__}, not in "
              "your model. Please report it with the traceback above.", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
