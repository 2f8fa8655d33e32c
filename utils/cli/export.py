"""``testbench export SOURCE_OR_RUN_DIR --formats folder,pt2,onnx,int8 --out DIR [--json PATH]``.

Exit codes: 0 every format passed parity; 1 a format failed (its artifact kept and marked); 2
the source could not be loaded or an extra is missing; 64 a usage error (an unknown format).
``--json`` holds the shared envelope plus each format's file, size and parity figures.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, source: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``export`` on the CLI's subparsers; ``source`` is the shared parent parser."""
    from utils.training.export_utilities import DEFAULT_FORMATS, FORMATS

    e = sub.add_parser("export", parents=[source],
                       help="export the model (folder, torch.export, ONNX, int8), each "
                       "checked against eager",
                       description="Export a model — any source validate takes, or a training "
                       "run folder (its final/) — as a rebuildable safetensors folder with a "
                       "model card, a torch.export program, an ONNX file and dynamic int8. "
                       "Each artifact is loaded back from disk and compared with the eager "
                       "model on a new batch and length; one that does not match is kept, "
                       "marked PARITY_FAILED and makes the command exit 1.")
    e.add_argument("--formats", default=",".join(DEFAULT_FORMATS), metavar="A,B",
                   help=f"among {', '.join(FORMATS)}, or all (default "
                   f"{','.join(DEFAULT_FORMATS)})")
    e.add_argument("--out", metavar="DIR", help="where the artifacts go (default: the run's "
                   "export/, else $TESTBENCH_HOME/exports/<class>)")
    return e


def run(args: argparse.Namespace) -> int:
    """The ``export`` command: load (with the override flags), export, print, write JSON."""
    from utils.atomic import write_json
    from utils.cli.common import (
        EXIT_FAILED,
        EXIT_OK,
        EXIT_SOURCE,
        EXIT_USAGE,
        load_and_adapt,
        requested_source,
    )
    from utils.environment import versions
    from utils.errors import UserError
    from utils.report import envelope
    from utils.training.export.origin import find_run, from_adapter
    from utils.training.export_utilities import export_origin, parse_formats

    try:
        parse_formats(args.formats)
    except UserError as err:
        print(f"usage error: {err.message}", file=sys.stderr)
        return EXIT_USAGE
    source = requested_source(args)
    asked = source["input"]
    doc: dict[str, Any] = {}
    model = error = None

    def record(loaded) -> None:
        source.update({**requested_source(args, loaded), "input": asked})

    try:
        run_dir = None
        if args.source:
            found = find_run(args.source)
            if found:
                run_dir, final = found
                args.source = str(final)
        loaded, adapter = load_and_adapt(args, on_load=record)
        model = adapter.describe()
        result = export_origin(from_adapter(adapter, loaded, run_dir=run_dir), args.formats,
                               args.out, seed=args.seed)
        doc.update(result.to_dict())
        print(result.to_text())
        code = EXIT_OK if result.ok else EXIT_FAILED
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        code, error = EXIT_SOURCE, err
    if args.json:
        write_json(args.json, {**envelope(source, model, error.to_dict() if error else None),
                               "command": "export", **doc, "environment": versions()})
    return code
