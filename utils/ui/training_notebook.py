"""What training.ipynb's cells call: its settings, its gist, where its runs live, and its views.

Every cell of the notebook is a few lines calling this module (and ``utils``), so all of it runs
and is tested outside Colab too. Colab-only calls stay in :mod:`utils.colab`.

Settings: each form field of the notebook can also be set from an environment variable of the
same name, so the notebook runs headless (CI) without editing it. Precedence: a form field
changed from its default > the page URL (the gist id only) > the environment variable > the
hand-off file template.ipynb wrote (the gist id only) > the default.

Example:
    >>> s = settings(DATA="", MAX_STEPS=0, env={"MAX_STEPS": "50"})
    >>> s.MAX_STEPS, s.sources["MAX_STEPS"]
    (50, 'MAX_STEPS environment variable')
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import UserError
from utils.ui.notebook import _display_html  # the package's one HTML display helper

__all__ = [
    "DRIVE_FOLDER",
    "FORM_FIELDS",
    "NotebookSettings",
    "TrainingGist",
    "gpu_notice",
    "newer_revision",
    "optional_step",
    "prepare_data",
    "run_location",
    "settings",
    "show_config",
    "show_gate",
    "show_training",
    "training_gist",
]

DRIVE_FOLDER = "MyDrive/transformer-testbench/runs"  # below Drive's mount point
_TRUE, _FALSE = {"1", "true", "yes", "on", "y"}, {"0", "false", "no", "off", "n", ""}
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class _Field:
    kind: type
    default: Any
    help: str


# The notebook's form fields: the names, types and defaults of its #@param lines (a test keeps
# the notebook and this table in step).
FORM_FIELDS: dict[str, _Field] = {
    "GIST_ID": _Field(str, "", "the gist id or URL (else the page URL, else the hand-off)"),
    "SEED": _Field(int, 0, "seeds the model's initial weights and training: the same seed "
                   "gives the same model"),
    "DATA": _Field(str, "", "a file or folder path, a Hugging Face dataset name, 'upload', or "
                   "empty for the shipped Shakespeare corpus"),
    "DATA_CONFIG": _Field(str, "", "the Hugging Face dataset's configuration"),
    "PRESET": _Field(str, "", "smoke, cpu, colab-t4 or colab-a100; empty: colab-t4 on a GPU, "
                     "smoke on the CPU"),
    "MAX_STEPS": _Field(int, 0, "optimizer steps (0: the preset's)"),
    "USE_WANDB": _Field(bool, False, "log to Weights & Biases"),
    "RUN_TIER2": _Field(bool, False, "Tier 2 analyses on the trained weights"),
    "RUN_HPO": _Field(bool, False, "hyperparameter search"),
    "RUN_BENCHMARK": _Field(bool, False, "benchmark against a baseline"),
    "EXPORT": _Field(bool, False, "export the trained model"),
    "HUB_REPO": _Field(str, "", "push the export to this Hugging Face repo (user/name)"),
}


def _parse(name: str, value: Any, where: str) -> Any:
    spec = FORM_FIELDS[name]
    bad = UserError(f"{name} is {value!r} in the {where}, which is not a valid value.",
                    why=f"{name}: {spec.help}.",
                    fix=f"Set {name} to {_example(spec)} (or leave it empty for the default).")
    if spec.kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise bad
    if spec.kind is int:
        try:
            number = int(str(value).strip() or 0)
        except ValueError:
            raise bad from None
        if number < 0:
            raise bad
        return number
    return str(value).strip()


def _example(spec: _Field) -> str:
    return {bool: "true or false", int: "a whole number ≥ 0"}.get(spec.kind, "a string")


@dataclass
class NotebookSettings:
    """The notebook's settings, each with where it came from (``sources``)."""

    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def described(self) -> str:
        """One line per setting that is not its default: ``NAME = value (where)``."""
        lines = [f"{k} = {v!r} ({self.sources[k]})" for k, v in self.values.items()
                 if self.sources.get(k) != "default"]
        return "\n".join(lines) or "All settings at their defaults."


def settings(env: Mapping[str, str] | None = None, **form: Any) -> NotebookSettings:
    """Resolve the form fields: a form value changed from its default wins, then the environment
    variable of the same name, then the default. ``GIST_ID`` is resolved by
    :func:`training_gist`, which also reads the page URL and the hand-off file.

    Raises:
        UserError: an unknown field (a typo in the cell), or a value that does not parse (the
            message names the field and where the value came from).
    """
    env = os.environ if env is None else env
    unknown = sorted(set(form) - set(FORM_FIELDS))
    if unknown:
        raise UserError(f"Unknown notebook setting(s): {', '.join(unknown)}.",
                        why=f"The settings are: {', '.join(FORM_FIELDS)}.",
                        fix="Correct the name in the cell.")
    out = NotebookSettings({})
    for name, spec in FORM_FIELDS.items():
        value, where = spec.default, "default"
        if name in form and form[name] != spec.default and form[name] is not None:
            value, where = _parse(name, form[name], "form field"), "form field"
        elif (env.get(name) or "").strip():
            value, where = _parse(name, env[name], f"{name} environment variable"), \
                f"{name} environment variable"
        out.values[name], out.sources[name] = value, where
    if out.PRESET:
        from utils.ui.presets import preset

        preset(out.PRESET)  # an unknown name: the preset's own message, with a suggestion
    if out.HUB_REPO and not _REPO.match(out.HUB_REPO):
        raise UserError(f"HUB_REPO is {out.HUB_REPO!r}, which is not a Hub repository name.",
                        why="A Hugging Face repository is named 'user/name' (or 'org/name').",
                        fix="Set HUB_REPO to your user name and a model name, e.g. "
                        "'alice/my-gpt', or leave it empty to skip the push.")
    return out


# ---- the gist ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingGist:
    """The gist training.ipynb trains: its id, the revision, and what to tell the person."""

    gist_id: str
    revision: str | None
    found_in: str
    notes: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """What :func:`utils.load_model` takes: the revision pinned when one is known."""
        if self.revision:
            return f"https://gist.github.com/{self.gist_id}/{self.revision}"
        return self.gist_id

    def __str__(self) -> str:
        rev = f" at revision {self.revision[:7]}" if self.revision else " (newest revision)"
        return "\n".join([f"Gist {self.gist_id}{rev}, found in the {self.found_in}.",
                          *self.notes])


def training_gist(form_value: str = "", *, page_url: str | None = None,
                  env: Mapping[str, str] | None = None) -> TrainingGist:
    """The gist to train: the form field, the page URL, ``GIST_ID``, then the hand-off file.

    When the hand-off names the same gist, its revision — the one template.ipynb validated — is
    the one trained. A gist that was not validated on this machine is trained at its newest
    revision, and the notes say so.

    Raises:
        UserError: nothing names a gist, or a field holds something that is not a gist id.
    """
    from utils.adapters.sources import gist_id_from_url
    from utils.handoff import read_handoff, resolve_gist_id

    env = os.environ if env is None else env
    handoff = read_handoff()
    try:
        gist_id, found_in = resolve_gist_id(form_value, page_url=page_url, env=env)
    except UserError as exc:
        if handoff is None or (form_value or "").strip() or (env.get("GIST_ID") or "").strip():
            raise
        if "No gist id was given" not in exc.message:
            raise
        gist_id, found_in = str(handoff["gist_id"]), "hand-off file template.ipynb wrote"
    notes: list[str] = []
    asked = gist_id_from_url(form_value) if (form_value or "").strip() else None
    revision = asked[1] if asked and asked[1] else None
    if revision is None and handoff and handoff.get("gist_id") == gist_id:
        revision = handoff.get("revision")
        if revision:
            notes.append(f"Revision {revision[:7]} is the one template.ipynb validated "
                         f"(hand-off written {handoff.get('written_at', '?')}).")
    elif revision is None:
        notes.append("This gist was not validated by template.ipynb on this machine: the "
                      "newest revision is trained, after the Tier 1 gate below.")
    return TrainingGist(gist_id, revision, found_in, tuple(notes))


def newer_revision(gist: TrainingGist, loaded: Any) -> str | None:
    """A sentence naming a newer revision of the gist than the one loaded, or None.

    Best effort: no network, a rate limit, or no revision pinned all give None.
    """
    if not gist.revision:
        return None
    from utils.adapters.gist_client import fetch_gist

    try:
        newest = fetch_gist(gist.gist_id, say=lambda _: None)
    except UserError:
        return None
    if newest.revision == gist.revision or newest.from_cache:
        return None
    return (f"The gist has a newer revision, {newest.revision[:7]}, than the validated "
            f"{gist.revision[:7]}; this notebook trains {gist.revision[:7]}. To train the newer "
            "one, validate it in template.ipynb first (its link brings you back here).")


# ---- the device and where runs live ------------------------------------------------------------
def gpu_notice() -> str | None:
    """A warning when no GPU is attached (said before anything slow), else None."""
    import torch

    from utils.environment import in_colab

    if torch.cuda.is_available():
        return None
    where = ("Runtime → Change runtime type → T4 GPU, then run all again"
             if in_colab() else "use a machine with a CUDA GPU")
    return ("No GPU is attached: training runs on the CPU, about 20–50× slower, so only the "
            f"'smoke' or 'cpu' presets are practical. For real training, {where}.")


def run_location(gist: TrainingGist, *, drive: bool | None = None,
                 say: Callable[[str], None] = print) -> tuple[Path, Path | None]:
    """``(out_dir, mirror_dir)`` of this gist's run: derived from the gist id and revision, so
    "Run all" again finds and resumes it.

    In Colab the run is written on the VM's disk and mirrored to Google Drive (mounted here),
    which outlives the VM: after a disconnect, the new VM resumes from Drive. Elsewhere (or
    with ``drive=False``) the run lives in ``$TESTBENCH_HOME/runs`` with no mirror.
    """
    from utils.environment import in_colab, testbench_home

    name = gist.gist_id[:12] + (f"-{gist.revision[:7]}" if gist.revision else "")
    local = testbench_home() / "runs" / name
    if drive is None:
        drive = in_colab()
    if not drive:
        say(f"Runs live in {local} (this machine's disk).")
        return local, None
    from utils import colab

    mirror = colab.mount_drive() / DRIVE_FOLDER / name
    say(f"Runs are written to {local} and mirrored to Google Drive at {mirror}: after a "
        "disconnect, Run all again resumes from there.")
    return local, mirror


# ---- data --------------------------------------------------------------------------------------
def prepare_data(s: NotebookSettings, adapter: Any, out_dir: Path):
    """``(dataset, tokenizer)``: the data the settings name, and the tokenizer for the model
    (the run's own when the run exists, so a resumed run tokenizes as before)."""
    from utils.tokenization import AdaptiveTokenizer, tokenizer_for_model
    from utils.training.dataset_utilities import load_text_dataset

    data = load_text_dataset(s.DATA or None, config=s.DATA_CONFIG or None, task=adapter.task)
    print(data.summary())
    own = Path(out_dir) / "tokenizer"
    if (own / "tokenizer.json").is_file():
        tokenizer = AdaptiveTokenizer.load(own)
        print(f"Tokenizer: the run's own ({tokenizer.strategy}, {tokenizer.vocab_size:,} ids), "
              "so the resumed run reads the data as before.")
    else:
        tokenizer = tokenizer_for_model(adapter, data)
        print(f"Tokenizer: {tokenizer.strategy}, {tokenizer.vocab_size:,} ids — "
              f"{tokenizer.reason}.")
    return data, tokenizer


# ---- views ---------------------------------------------------------------------------------------
def show_config(config: Any, adapter: Any) -> None:
    """The chosen ``TrainingConfig`` as a table (changed fields first, bold) and the memory
    estimate of one training step on the device it will run on (with the T4 verdict)."""
    from utils.environment import resolve_device
    from utils.training.config import TrainingConfig
    from utils.ui.setup_wizard import memory_note

    device = resolve_device("cpu" if config.accelerator == "cpu" else None)
    estimate, _ = memory_note(adapter, config.batch_size, config.seq_len_for(
        adapter.max_seq_len), config.precision, device)

    default = TrainingConfig()
    rows = sorted(config.to_dict().items(), key=lambda kv: getattr(default, kv[0]) == kv[1])
    body = "".join(
        f"<tr><td>{'<b>' + k + '</b>' if getattr(default, k) != v else k}</td>"
        f"<td><code>{html.escape(repr(v))}</code></td></tr>" for k, v in rows)
    note = f"<p>{html.escape(estimate)}</p>"
    _display_html("<div class='testbench-config'><p><b>Training config</b> (bold: not the "
                  "default)</p><table style='border-collapse:collapse'>"
                  f"{body}</table>{note}</div>")


def show_training(result: Any, *, samples: int = 2) -> None:
    """After training: where it resumed from, the curves, the final metrics, a few samples."""
    from IPython.display import display

    from utils.ui.notebook import figure_png

    if result.resumed_from:
        print(f"Resumed from step {result.resumed_from['step']}.")
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items()
                        if isinstance(v, float))
    print(f"{result.steps} steps, {result.tokens:,} tokens. {metrics}")
    for note in result.notes:
        print(f"  · {note}")
    if result.final_dir:
        print(f"Trained model: {result.final_dir} (utils.load_model rebuilds it).")
    if len(result.history):
        import matplotlib.pyplot as plt

        figure = result.plot()
        display(figure_png(figure))
        plt.close(figure)
    if result.adapter is not None and result.adapter.task == "causal_lm" and result.tokenizer:
        for seed in range(samples):
            text = result.sample("", 40, seed=seed).replace("\n", " ⏎ ")
            print(f"Sample {seed + 1}: {text}")


def optional_step(flag: bool, name: str) -> bool:
    """Whether an optional cell should run: its box is ticked (else it says how to run it)."""
    if not flag:
        print(f"{name}: skipped (tick its box to run it).")
    return bool(flag)


def show_gate(report: Any, out_dir: Path) -> None:
    """The Tier 1 gate: its verdict in one line, the full report one click away (collapsed).

    Raises:
        GateFailed: a gate check failed — "Run all" stops here, before any GPU time is spent.
    """
    from utils.training.gate import run_gate

    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n)
    verdict = "passed" if report.passed else "FAILED"
    _display_html(f"<p><b>Tier 1 gate {verdict}</b> ({html.escape(counts)}): "
                  f"{', '.join(r.name for r in report.results)}.</p>"
                  "<details><summary>The full report</summary>"
                  f"{report._repr_html_()}</details>")
    if not report.passed:  # the gate's own stop: tier1.json beside the run, then GateFailed
        run_gate(None, out_dir, force=False, say=print, report=report)


def show_result(result: Any) -> None:
    """A Tier 3 or export result: its HTML table (or its text), then its figures, each once."""
    from IPython.display import display

    from utils.ui.notebook import figure_png

    if hasattr(result, "_repr_html_"):
        display(result)
    else:
        print(result.to_text() if hasattr(result, "to_text") else repr(result))
    figures: list[Any] = []
    try:
        if hasattr(result, "plots"):
            figures = list(result.plots().values())
        elif hasattr(result, "plot"):
            figures = [result.plot()]
    except Exception as exc:  # a plot bug must not hide the result above
        print(f"(The figures could not be drawn: {type(exc).__name__}: {exc})")
    import matplotlib.pyplot as plt

    for figure in figures:
        display(figure_png(figure))
        plt.close(figure)
