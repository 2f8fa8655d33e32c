"""``testbench push DIR --repo user/name``: an exported folder to the Hugging Face Hub.

Exit codes: 0 pushed; 2 a ``UserError`` (the message on stderr). ``--json`` holds the shared
envelope plus the repository, its URL, the commit and the files, either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from utils.errors import UserError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register ``testbench push DIR --repo user/name`` on the CLI's subparsers."""
    p = sub.add_parser("push", parents=list(parents),
                       help="push an exported model folder to the Hugging Face Hub",
                       description="Create the repository (private unless --public) and commit "
                       "the exported folder — model card, weights, config.json, model.py, "
                       "tokenizer. The token comes from HF_TOKEN, Colab's secret HF_TOKEN or "
                       "`hf auth login`; it is never printed or written.")
    p.add_argument("dir", metavar="DIR", help="an export output (holding folder/) or the "
                   "folder itself")
    p.add_argument("--repo", required=True, metavar="USER/NAME", help="the Hub repository")
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=True,
                     help="create the repository private (default)")
    vis.add_argument("--public", dest="private", action="store_false",
                     help="create the repository public")
    p.add_argument("--force", action="store_true",
                   help="push even if the export failed parity")
    p.add_argument("--message", metavar="TEXT", help="the commit message")
    p.add_argument("--json", metavar="PATH", help="write the result as JSON here")


def run(args: argparse.Namespace) -> int:
    """``testbench push``: 0 pushed, 2 a UserError (message on stderr); ``--json`` either way."""
    from utils.atomic import write_json
    from utils.environment import versions
    from utils.report import envelope

    source: dict[str, Any] = {"input": str(args.dir), "kind": "export", "gist_id": None, "revision": None,
              "sha256": {}}
    result, error = None, None
    try:
        from utils.training.hub import push_to_hub

        result = push_to_hub(args.dir, args.repo, private=args.private, force=args.force,
                             commit_message=args.message)
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        error = err
    if result is not None:
        print(f"Pushed   {len(result.files)} files to {result.url} "
              f"({'private' if result.private else 'public'})")
        for note in result.notes:
            print(f"  note: {note}")
    if args.json:
        doc = result.to_dict() if result else {"repo": args.repo, "url": None,
                                                "commit_url": None, "files": [], "notes": []}
        write_json(args.json, {**envelope(source, None, error.to_dict() if error else None),
                               "command": "push", **doc, "environment": versions()})
    return 0 if error is None else 2
