"""What every ``testbench`` command shares: exit codes, the source options, loading.

Command modules (``utils.cli.export``, ``utils.training.hub``) import these from here,
never from ``utils.__main__``, which imports them: the import graph stays a tree.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from utils.tasks import TASKS

__all__ = ["EMBEDDED", "EXIT_FAILED", "EXIT_INTERNAL", "EXIT_OK", "EXIT_SOURCE", "EXIT_USAGE",
           "PROG", "Parser", "add_settings", "load_and_adapt", "requested_source", "resolve_seed",
           "say_stderr", "settings_given", "source_parser"]

PROG = "testbench"
EXIT_OK, EXIT_FAILED, EXIT_SOURCE, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 64, 70
EMBEDDED = "(embedded example)"


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default exit code 2 is ours for bad sources
        # the message and where to read more, not a screenful of usage
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def say_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def source_parser() -> argparse.ArgumentParser:
    """The options of every command that loads a model: ``parents=[source_parser()]``.

    SOURCE, ``--json``, ``--device``, ``--seed`` and the overrides ``--task``,
    ``--vocab-size``, ``--max-seq-len``, ``--num-classes``, ``--model-class``, ``--weights``.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("source", nargs="?", help="gist id or URL, Colab URL with gist_id, "
                        "folder, or model.py (default: the embedded example)")
    parser.add_argument("--json", metavar="PATH",
                        help="write the result as JSON here (also when loading fails)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--seed", type=int, help="seeds the model's initial weights, "
                        "the checks' inputs and training (default 0, or --config's seed): the "
                        "same command with the same seed gives the same model and numbers")
    over = parser.add_argument_group("overrides (beat everything inferred)")
    over.add_argument("--task", choices=TASKS)
    over.add_argument("--vocab-size", type=int, metavar="N")
    over.add_argument("--max-seq-len", type=int, metavar="N")
    over.add_argument("--num-classes", type=int, metavar="N")
    over.add_argument("--model-class", metavar="NAME", help="the class to build")
    over.add_argument("--weights", metavar="PATH", help="a .safetensors/.pt state dict to load")
    return parser


# TrainingConfig fields whose flag has a short form too, and those source_parser owns
_ALIASES = {"out_dir": "--out", "mirror_dir": "--mirror"}
_OWNED_BY_SOURCE = ("seed",)


def add_settings(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = (),
                 helps: dict[str, str] | None = None) -> None:
    """A flag for every ``TrainingConfig`` field (``--warmup-steps``, ``--betas 0.9,0.99`` …)
    but ``exclude``, built from the dataclass (:func:`~utils.training.config.config_fields`),
    plus ``--config FILE`` and ``--print-config``. ``helps`` replaces a field's help text."""
    from utils.training.config import config_fields

    group = parser.add_argument_group(
        "training settings (beat --config, which beats the preset; each is a TrainingConfig "
        "field)")
    group.add_argument("--config", metavar="FILE", help="a YAML or JSON file of training "
                       "settings (--print-config writes one)")
    group.add_argument("--print-config", action="store_true", help="print the settings this "
                       "command would train with, as YAML, and exit")
    for field in config_fields().values():
        if field.name in exclude or field.name in _OWNED_BY_SOURCE:
            continue
        text = (helps or {}).get(field.name) or field.doc
        group.add_argument(*filter(None, (_ALIASES.get(field.name), field.flag)),
                           dest=field.name, type=_flag_type(field), choices=field.choices,
                           metavar=field.metavar, help=text.replace("%", "%%"))


def _flag_type(field: Any) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return field.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = field.name  # argparse names the type in its fallback message
    return parse


def settings_given(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainingConfig`` fields this command line sets: ``--config``'s, then every
    settings flag given on top (and ``--seed``)."""
    from utils.training.config import config_fields

    given = dict(_config_file(args))
    given.update({name: value for name in config_fields()
                  if (value := getattr(args, name, None)) is not None})
    return given


def resolve_seed(args: argparse.Namespace) -> None:
    """``--seed`` when given, else ``--config``'s seed, else 0 — before the model is built, so
    the file's seed fixes the initial weights as the flag's would."""
    if getattr(args, "seed", 0) is not None:
        return
    stored = _config_file(args).get("seed")
    args.seed = 0 if stored is None else stored


def _config_file(args: argparse.Namespace) -> dict[str, Any]:
    """``--config``'s fields (empty without it), read and checked once per command line."""
    if not getattr(args, "config", None):
        return {}
    if getattr(args, "_config_fields", None) is None:
        from utils.training.config import load_config_file

        args._config_fields = load_config_file(args.config)
    return args._config_fields


def requested_source(args: argparse.Namespace, loaded=None) -> dict[str, Any]:
    """The ``source`` of a JSON document: what was asked for, and once the model is loaded,
    its provenance (kind, gist id, revision, sha256 of each file)."""
    asked = args.source or EMBEDDED
    if loaded is None:
        return {"input": asked, "kind": None, "gist_id": None, "revision": None, "sha256": {}}
    return {**loaded.source, "input": asked}


def load_and_adapt(args: argparse.Namespace, *, say: Callable[[str], None] = say_stderr,
                   on_load: Callable[[Any], None] | None = None) -> tuple[Any, Any]:
    """Load ``args.source`` and adapt it with the override flags of :func:`source_parser`.

    Args:
        args: Parsed arguments of a command built on :func:`source_parser`.
        say: Where notices go (which gist and revision runs); stderr by default, so stdout
            stays the command's output.
        on_load: Called with the ``LoadedModel`` before it is adapted, so a caller can record
            its provenance even when adapting fails.

    Returns:
        ``(loaded, adapter)``, the adapter on the device ``--device`` names.

    Raises:
        UserError: an unusable device, or a source that cannot be loaded or adapted (exit 2).
    """
    from utils.adapters import adapt, load_model
    from utils.environment import resolve_device

    resolve_seed(args)
    device = resolve_device(args.device)
    loaded = load_model(args.source, model_class=args.model_class, weights=args.weights,
                        seed=args.seed, say=say)
    if on_load is not None:
        on_load(loaded)
    adapter = adapt(loaded, task=args.task, vocab_size=args.vocab_size,
                    max_seq_len=args.max_seq_len, num_classes=args.num_classes, device=device)
    return loaded, adapter
