"""Command line: ``testbench validate|train|search|benchmark|export [SOURCE] [options]`` and
``testbench push DIR --repo user/name``.

``testbench`` is the console script the package installs. ``python -m utils`` runs the same
commands as a fallback, with one caveat: Python looks in the current folder first, so where a
``utils.py`` or ``utils/`` of your own sits there, ``python -m utils`` runs *that* (and prints
nothing); ``python -P -m utils`` (Python ≥ 3.11) or the console script avoid it.

Exit codes (a contract other tools rely on): 0 nothing failed; 1 a check failed or errored;
2 the source could not be loaded or adapted (the message on stderr, no traceback); 64 a usage
error; 70 an internal bug. ``--json PATH`` writes the report (schema_version 1) in every case
that gets past argument parsing, including exit 2.

Every command that loads a model shares :func:`source_parser`'s options and turns them into a
model with :func:`load_and_adapt`; every JSON document starts with
:func:`utils.report.envelope`.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from utils import __version__
from utils.cli.common import (
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_SOURCE,
    EXIT_USAGE,
    PROG,
    add_settings,
    load_and_adapt,
    requested_source,
    settings_given,
    source_parser,
)
from utils.cli.common import Parser as _Parser
from utils.cli.common import say_stderr as _stderr
from utils.errors import UserError, cli_surface
from utils.report import Report, envelope, source_label

__all__ = ["COMMANDS", "EXIT_FAILED", "EXIT_INTERNAL", "EXIT_OK", "EXIT_SOURCE", "EXIT_USAGE",
           "build_parser", "envelope", "load_and_adapt", "main", "requested_source",
           "source_parser"]

def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG,
                     description="Transformer Testbench: check a transformer, then train it.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add_parser, _run in COMMANDS.values():
        add_parser(sub)
    return parser


def _validate_parser(sub) -> None:
    v = sub.add_parser("validate", parents=[source_parser()],
                       help="load a model, adapt it and run the checks",
                       description="Load a model from a gist, URL, folder or model.py, work out "
                       "how to drive it, and run the checks. With no SOURCE, the embedded "
                       "example model is used.")
    v.add_argument("--tier", choices=["1", "2", "all"], default="1",
                   help="which tier to run (default 1)")
    v.add_argument("--checks", type=_names, metavar="A,B", help="run only these checks")
    v.add_argument("--skip", type=_names, metavar="C,D", default=[], help="skip these checks")


def _data_flags(parser: argparse.ArgumentParser) -> None:
    """The data options of every command that trains: what ``load_text_dataset`` takes."""
    from utils.training.text_sources import DOCUMENT_MODES

    d = parser.add_argument_group("data")
    d.add_argument("--data", metavar="PATH|NAME", help="a .txt/.csv/.jsonl/.parquet file or "
                   "folder, or a Hugging Face dataset name (default: the shipped corpus)")
    d.add_argument("--data-config", metavar="NAME", help="the Hub dataset's configuration")
    d.add_argument("--document", choices=list(DOCUMENT_MODES), help="how text files are cut "
                   "into documents: file (default: each file as written, blank lines kept), "
                   "paragraph (blank lines separate documents) or line (one per line)")
    d.add_argument("--val-fraction", type=float, metavar="F", help="share of the text held out "
                   "for validation, 0 to 0.5 (default 0.05; 0: no validation)")
    d.add_argument("--holdout", choices=["auto", "documents", "tail"], help="hold out whole "
                   "documents, or the tail of every document (default auto: the tail when "
                   "fewer than 20 documents would be held out)")
    d.add_argument("--text-column", metavar="NAME", help="the column holding the text "
                   "(csv/jsonl/parquet/Hub data)")


def _train_parser(sub) -> None:
    t = sub.add_parser("train", parents=[source_parser()],
                       help="train the model (Tier 1 gate, checkpoints, resume)",
                       description="Train the model on text with Lightning. The Tier 1 gate "
                       "runs first; checkpoints go to the run folder (and --mirror, e.g. Google "
                       "Drive); running the same command again resumes the run.")
    _data_flags(t)
    t.add_argument("--preset", metavar="NAME", help="smoke, cpu, colab-t4 or colab-a100 "
                   "(default: sized to this device's memory)")
    t.add_argument("--force", action="store_true", help="train even if the Tier 1 gate fails")
    t.add_argument("--samples", type=int, default=3, metavar="N",
                   help="text samples to print at the end (causal LMs; default 3)")
    add_settings(t, helps={"out_dir": "the run folder (default: derived from the source, "
                           "under $TESTBENCH_HOME/runs)",
                           "mirror_dir": "a second copy of the run (Google Drive)"})


def _search_parser(sub) -> None:
    s = sub.add_parser("search", parents=[source_parser()],
                       help="search hyperparameters with Optuna (pruning, shared studies)",
                       description="Search the learning rate, warm-up, weight decay, batch size "
                       "and dropout with Optuna's TPE: every trial trains from the same initial "
                       "weights and is scored by its validation loss; lagging trials are "
                       "pruned. Running the same command again continues the study; processes "
                       "on several machines given the same --storage and --study-name share it.")
    _data_flags(s)
    s.add_argument("--trials", type=int, required=True, metavar="N",
                   help="the study's total number of trials, across all its workers")
    s.add_argument("--steps-per-trial", type=int, metavar="M",
                   help="optimizer steps per trial (default: the preset's max_steps)")
    s.add_argument("--storage", metavar="URL", help="journal:PATH, sqlite:///PATH or "
                   "postgresql://user:password@host/db (default: a SQLite file in the search "
                   "folder, copied to --mirror after each trial)")
    s.add_argument("--study-name", metavar="NAME", help="the study to create or join "
                   "(default: named after the model and the settings)")
    s.add_argument("--pruner", choices=["hyperband", "halving", "median", "none"],
                   default="hyperband", help="how lagging trials are stopped (default "
                   "hyperband; halving is its most aggressive bracket alone)")
    s.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                   help="database storages: a trial silent for twice this long is marked "
                   "failed and run again (default 60)")
    s.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="start no trial after this long")
    s.add_argument("--preset", metavar="NAME", help="smoke, cpu, colab-t4 or colab-a100 "
                   "(default: sized to this device's memory)")
    s.add_argument("--force", action="store_true", help="search even if the Tier 1 gate fails")
    add_settings(s, exclude=("resume",), helps={
        "batch_size": "micro-batch (the middle of the searched choices)",
        "out_dir": "the search folder (default: $TESTBENCH_HOME/searches/<study>)",
        "mirror_dir": "where the study's database is copied after each trial (Google Drive); a "
                      "new VM continues from it"})


def _describe(report: Report) -> str:
    model = report.model or {}
    lines = [f"Source  {source_label(report.source)}",
             f"Model   {model.get('class')}: {model.get('parameters', 0):,} parameters "
             f"({model.get('size_mb')} MB); forward: {model.get('forward')}"]
    for prop, ev in model.get("evidence", {}).items():
        if prop != "forward":
            lines.append(f"  {prop:<13} {ev['value']!s:<11} {ev['method']}: {ev['detail']}")
    return "\n".join(lines)  # the model's warnings are printed with the report


def _check_names(args: argparse.Namespace) -> list[str]:
    """The checks the flags ask for; an unknown name is a usage error (a UserError)."""
    from utils.checks import select
    from utils.tier1_critical_validation import TIER1_CHECKS
    from utils.tier2_advanced_analysis import TIER2_CHECKS

    tiers = {"1": list(TIER1_CHECKS), "2": list(TIER2_CHECKS),
             "all": [*TIER1_CHECKS, *TIER2_CHECKS]}
    return select(tiers[args.tier], args.checks, args.skip, cli=True)


def validate(args: argparse.Namespace) -> int:
    from utils.checks import CheckOptions, run_checks
    from utils.environment import versions

    try:
        names = _check_names(args)
    except UserError as err:
        print(f"usage error: {err.message}", file=sys.stderr)
        return EXIT_USAGE
    source = requested_source(args)

    def record(loaded) -> None:
        source.update(requested_source(args, loaded))

    try:
        _loaded, adapter = load_and_adapt(args, on_load=record)
        report = run_checks(adapter, names,
                            CheckOptions(seed=args.seed, device=str(adapter.device)),
                            progress=sys.stderr.isatty())
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if args.json:
            Report(source=source, environment=versions(), error=err.to_dict()).to_json(args.json)
        return EXIT_SOURCE
    report.source = source
    print(_describe(report))
    print(report.to_text())
    if args.json:
        report.to_json(args.json)
    return EXIT_OK if report.passed else EXIT_FAILED


def _train_config(args: argparse.Namespace, adapter: Any):
    """The ``TrainingConfig`` the command line asks for: ``--preset`` (its length capped at the
    model's), else a preset sized to the device, with ``--config``'s fields and then every
    settings flag given on top."""
    from utils.ui.presets import fit_length, preset, preset_for

    given = settings_given(args)
    if args.device != "auto":
        given.setdefault("accelerator", "cpu" if args.device == "cpu" else "gpu")
    if args.preset:
        return fit_length(preset(args.preset, **given), adapter, explicit="seq_len" in given)
    return preset_for(adapter, None if args.device == "auto" else args.device, **given)


# data flag (argparse dest) -> load_text_dataset's keyword
_DATA_OPTIONS = {"data_config": "config", "document": "document",
                 "val_fraction": "validation_fraction", "holdout": "holdout",
                 "text_column": "text_column"}


def _data(args: argparse.Namespace, adapter: Any) -> Any:
    """``--data`` as ``train()`` takes it: loaded here when a data option is given."""
    given = {kw: getattr(args, flag) for flag, kw in _DATA_OPTIONS.items()
             if getattr(args, flag, None) is not None}
    if not given:
        return args.data
    from utils.training.dataset_utilities import load_text_dataset

    return load_text_dataset(args.data, task=adapter.task, **given)


def _training_command(args: argparse.Namespace, command: str,
                      work: Callable[[Any, Any, dict[str, Any]], int]) -> int:
    """Load and adapt the source, then ``work(loaded, adapter, doc) -> exit code``.

    One contract for every command that trains: a failed Tier 1 gate exits 1 with its report
    in the JSON, a ``UserError`` exits 2 with the message on stderr, and ``--json`` gets the
    shared envelope plus what ``work`` put into ``doc``, whatever the outcome.
    """
    from utils.environment import versions
    from utils.training.gate import GateFailed

    source = requested_source(args)
    doc: dict[str, Any] = {}
    model = None
    error: UserError | None = None

    def record(loaded) -> None:
        source.update(requested_source(args, loaded))

    try:
        loaded, adapter = load_and_adapt(args, on_load=record)
        model = adapter.describe()
        if args.print_config:  # what would train, as a file --config takes; nothing runs
            print(_train_config(args, adapter).to_yaml(), end="")
            return EXIT_OK
        code = work(loaded, adapter, doc)
    except GateFailed as err:
        print(f"error: {err.message}", file=sys.stderr)
        doc["gate"] = err.report.to_dict()
        code, error = EXIT_FAILED, err
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        code, error = EXIT_SOURCE, err
    if args.json:
        from utils.atomic import write_json

        write_json(args.json, {**envelope(source, model, error.to_dict() if error else None),
                               "command": command, **doc, "environment": versions()})
    return code


def _print_run(result: Any, samples: list[str]) -> None:
    m = result.metrics
    resumed = ""
    if result.resumed_from:
        how = ("already complete at" if result.resumed_from.get("complete") else
               "resumed from")
        resumed = f" ({how} step {result.resumed_from['step']})"
    print(f"Run      {result.run_dir}{resumed}")
    tps = f", {result.tokens_per_second:,.0f} tokens/s" if result.tokens_per_second else ""
    print(f"Steps    {result.steps:,} ({result.tokens:,} tokens{tps})")
    if result.data:
        print(f"Data     {result.data}")
    parts = [f"{label} {m[k]:.4g}" for k, label in (
        ("train_loss", "train loss"), ("val_loss", "val loss"),
        ("val_perplexity", "perplexity"), ("val_accuracy", "accuracy")) if k in m]
    print("Metrics  " + " · ".join(parts))
    for note in result.notes:
        print(f"  note: {note}")
    if result.final_dir:
        print(f"Final    {result.final_dir}   (testbench validate {result.final_dir})")
    if samples:
        print("Samples")
        for text in samples:
            print("  > " + " ".join(text.split())[:300])


def _print_search(result: Any) -> None:
    counts = result.trials["state"].value_counts().to_dict() if len(result.trials) else {}
    states = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
    print(f"Study    {result.study_name} in {result.storage}")
    print(f"Trials   {len(result.trials)} of {result.n_trials} ({states or 'none'}); "
          f"{result.steps_trained:,} steps trained, {result.steps_per_trial} per trial")
    if result.best_value is not None:
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in result.best_params.items())
        print(f"Best     val loss {result.best_value:.4g} (trial {result.best_trial}): {shown}")
    if result.best_run_dir is not None:
        print(f"Final    {result.best_run_dir / 'final'}")
    for note in result.notes:
        print(f"  note: {note}")


def search(args: argparse.Namespace) -> int:
    if args.trials < 1 or args.heartbeat < 1:
        print(f"usage error: --trials and --heartbeat must be >= 1 (got {args.trials} and "
              f"{args.heartbeat}).", file=sys.stderr)
        return EXIT_USAGE

    def work(loaded: Any, adapter: Any, doc: dict[str, Any]) -> int:
        from utils.tier3.search import hyperparameter_search

        try:
            result = hyperparameter_search(
                adapter, _data(args, adapter), n_trials=args.trials, storage=args.storage,
                study_name=args.study_name, pruner=args.pruner, timeout=args.timeout,
                config=_train_config(args, adapter), steps_per_trial=args.steps_per_trial,
                heartbeat=args.heartbeat, force=args.force, progress=sys.stderr.isatty(),
                say=_stderr)
        except KeyboardInterrupt:
            print("Interrupted: run the same command again to continue the study.",
                  file=sys.stderr)
            return 130
        doc.update(result.to_dict())
        _print_search(result)
        if result.best_value is None:
            print("No trial completed, so there is no best configuration.", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

    return _training_command(args, "search", work)


def train(args: argparse.Namespace) -> int:
    def work(loaded: Any, adapter: Any, doc: dict[str, Any]) -> int:
        from utils.training.training_core import train as run_training

        result = run_training(adapter, _data(args, adapter), _train_config(args, adapter),
                              force=args.force, say=_stderr)
        samples = []
        if adapter.task == "causal_lm" and not result.interrupted:
            samples = [result.sample("", n_tokens=60, seed=i)
                       for i in range(max(args.samples, 0))]
        doc.update(result.summary())
        doc["samples"] = samples
        _print_run(result, samples)
        if result.interrupted:
            print("Interrupted: a checkpoint was saved; run the same command again to resume.",
                  file=sys.stderr)
            return 130
        return EXIT_OK

    return _training_command(args, "train", work)


def _benchmark_parser(sub) -> None:
    b = sub.add_parser("benchmark", parents=[source_parser()],
                       help="train the model and a baseline of matched size; compare",
                       description="Train the model (after the Tier 1 gate) and a plain pre-LN "
                       "transformer whose parameter count is within 10% of it — a GPT for a "
                       "causal LM, an encoder for masked LM and classification — on the same "
                       "data, tokenizer, steps, seed and optimizer settings; print a table and "
                       "which is better, against the seed-to-seed noise of the baseline. "
                       "Exit 0 when the benchmark ran, whichever model won.")
    _data_flags(b)
    b.add_argument("--steps", type=int, default=300, metavar="N",
                   help="optimizer steps per model (default 300)")
    b.add_argument("--seeds", type=int, default=2, metavar="N",
                   help="baseline runs with different seeds, to measure the noise (default 2)")
    b.add_argument("--preset", metavar="NAME", help="smoke, cpu, colab-t4 or colab-a100 "
                   "(default: sized to this device's memory)")
    b.add_argument("--force", action="store_true", help="train even if the Tier 1 gate fails")
    add_settings(b, exclude=("max_steps", "resume", "mirror_dir"), helps={
        "out_dir": "the benchmark's folder (default: beside the model's training run, under "
                   "$TESTBENCH_HOME/runs)"})


def benchmark(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.seeds < 1:
        print(f"usage error: --steps and --seeds must be >= 1 (got {args.steps} and "
              f"{args.seeds}).", file=sys.stderr)
        return EXIT_USAGE

    def work(loaded: Any, adapter: Any, doc: dict[str, Any]) -> int:
        from utils.tier3.benchmark import benchmark_comparison

        result = benchmark_comparison(adapter, _data(args, adapter), steps=args.steps,
                                      config=_train_config(args, adapter), seeds=args.seeds,
                                      force=args.force, say=_stderr)
        doc.update(result.to_dict())
        print(result.to_text())
        return EXIT_OK

    return _training_command(args, "benchmark", work)


def _export_parser(sub) -> None:
    from utils.cli.export import add_parser

    add_parser(sub, source_parser())


def _export(args: argparse.Namespace) -> int:
    from utils.cli.export import run

    return run(args)


def _push_parser(sub) -> None:
    from utils.cli.push import add_parser

    add_parser(sub)


def _push(args: argparse.Namespace) -> int:
    from utils.cli.push import run

    return run(args)


# command -> (adds its parser to the subparsers, runs it: exit code); --help lists them in order
COMMANDS: dict[str, tuple[Callable[[Any], None], Callable[[argparse.Namespace], int]]] = {
    "validate": (_validate_parser, validate), "train": (_train_parser, train),
    "search": (_search_parser, search), "benchmark": (_benchmark_parser, benchmark),
    "export": (_export_parser, _export), "push": (_push_parser, _push)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with cli_surface():  # every message from here on speaks in flags
            return COMMANDS[args.command][1](args)
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
