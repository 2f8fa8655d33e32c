"""training.ipynb, executed for real: a kernel from this environment runs every cell against the
loopback Gist API on the smoke preset and the shipped corpus; then the kernel is SIGKILLed in the
middle of a run and "Run all" again resumes it. Plus the notebook's hygiene and its settings."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ZOO
from test_template_notebook import TRACEBACK, assert_thin_cells, execute, outputs_text

from utils.errors import UserError
from utils.handoff import write_handoff
from utils.ui import training_notebook as tn

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "training.ipynb"
CELL_ORDER = ["intro", "setup-lead", "setup", "install", "gist-lead", "gist-id", "load-lead", "load",
              "data-lead", "data", "settings-lead", "settings", "train-lead", "train",
              "extras-lead", "extras", "tier2", "hpo", "benchmark", "export"]
PARAM = re.compile(r'^(\w+) = (.+?)  #@param (.+)$', re.M)


def read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


# ---- hygiene -------------------------------------------------------------------------------
def test_notebook_hygiene():
    nb = read_notebook()
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3" and "colab" in nb.metadata
    assert [c.id for c in nb.cells] == CELL_ORDER
    assert_thin_cells(nb, max_lines=15)
    setup = cell(nb, "setup").source
    assert "codeload.github.com/{REPO}/tar.gz/{REF}" in setup and "pyproject.toml" in setup
    assert "install_extras([\"train\", \"data\", \"mlops\"])" in cell(nb, "install").source


def test_form_fields_match_the_settings_table():
    """Every #@param in the notebook is a field of FORM_FIELDS with the same default, and every
    field has a form in the notebook: the environment-variable names are the form's names."""
    params = {}
    for c in read_notebook().cells:
        for name, value, _ in PARAM.findall(c.source):
            params[name] = eval(value)  # the literal defaults of the form
    assert set(params) == set(tn.FORM_FIELDS)
    for name, default in params.items():
        assert default == tn.FORM_FIELDS[name].default, name


def test_the_template_links_to_this_notebook():
    from utils.handoff import training_notebook_url

    url = training_notebook_url("0123456789abcdef0123456789abcdef", "org/repo")
    assert NOTEBOOK.is_file() and url.split("?")[0].endswith(f"/blob/main/{NOTEBOOK.name}")


# ---- settings ------------------------------------------------------------------------------
def test_settings_precedence_and_types():
    env = {"MAX_STEPS": "50", "USE_WANDB": "yes", "DATA": "wikitext", "PRESET": "cpu"}
    s = tn.settings(env=env, MAX_STEPS=0, USE_WANDB=False, DATA="my.txt", PRESET="")
    assert (s.MAX_STEPS, s.USE_WANDB, s.DATA, s.PRESET) == (50, True, "my.txt", "cpu")
    assert s.sources["MAX_STEPS"] == "MAX_STEPS environment variable"
    assert s.sources["DATA"] == "form field" and s.sources["HUB_REPO"] == "default"
    assert "MAX_STEPS = 50 (MAX_STEPS environment variable)" in s.described()
    assert tn.settings(env={}).RUN_HPO is False


@pytest.mark.parametrize(("env", "match"), [
    ({"MAX_STEPS": "fifty"}, r"MAX_STEPS is 'fifty' in the MAX_STEPS environment variable"),
    ({"MAX_STEPS": "-3"}, r"MAX_STEPS is '-3'"),
    ({"RUN_HPO": "maybe"}, r"RUN_HPO is 'maybe'.*not a valid value"),
    ({"PRESET": "colab-t5"}, r"Unknown preset 'colab-t5'. Did you mean 'colab-t4'"),
    ({"HUB_REPO": "just-a-name"}, r"HUB_REPO is 'just-a-name', which is not a Hub repository"),
])
def test_bad_settings_name_the_field(env, match):
    with pytest.raises(UserError, match=match):
        tn.settings(env=env)


def test_unknown_setting_is_an_error():
    with pytest.raises(UserError, match=r"Unknown notebook setting.*MAX_STEP"):
        tn.settings(env={}, MAX_STEP=5)


def test_gist_comes_from_the_handoff_with_its_validated_revision():
    gid, rev = "0123456789abcdef0123456789abcdef", "a" * 40
    write_handoff(gid, rev)
    gist = tn.training_gist("", env={})
    assert (gist.gist_id, gist.revision) == (gid, rev)
    assert gist.found_in.startswith("hand-off file") and gist.source.endswith(f"{gid}/{rev}")
    assert "validated" in str(gist)
    other = "fedcba9876543210fedcba9876543210"
    named = tn.training_gist(other, env={})  # the form wins; not the validated gist
    assert (named.gist_id, named.revision, named.found_in) == (other, None, "form field")
    assert "not validated" in str(named)
    env_named = tn.training_gist("", env={"GIST_ID": gid})  # same gist: the validated revision
    assert env_named.revision == rev and env_named.found_in == "GIST_ID environment variable"


def test_no_gist_anywhere_says_where_it_looked():
    with pytest.raises(UserError, match="No gist id was given"):
        tn.training_gist("", env={})
    with pytest.raises(UserError, match="not a gist id"):
        tn.training_gist("my model", env={})


def test_an_optional_step_runs_when_ticked_and_says_how_otherwise(capsys):
    assert tn.optional_step(False, "Export") is False
    assert "Export: skipped (tick its box to run it)." in capsys.readouterr().out
    assert tn.optional_step(True, "Export") is True
    assert capsys.readouterr().out == ""


def test_run_location_outside_colab(capsys):
    gist = tn.TrainingGist("0123456789abcdef0123456789abcdef", "b" * 40, "form field")
    out, mirror = tn.run_location(gist)
    assert mirror is None and out.name == "0123456789ab-bbbbbbb"
    assert out.parent == Path(os.environ["TESTBENCH_HOME"]) / "runs"


# ---- the notebook, executed ----------------------------------------------------------------
def _env(gid: str, **more: str) -> dict[str, str]:
    return {"GIST_ID": gid, "PRESET": "smoke", "TQDM_DISABLE": "1", **more}


def _run_dir(gid: str, revision: str) -> Path:
    return Path(os.environ["TESTBENCH_HOME"]) / "runs" / f"{gid[:12]}-{revision[:7]}"


def _assert_no_tracebacks(nb) -> None:
    for c in nb.cells:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", outputs_text(c)
        assert TRACEBACK not in outputs_text(c), c.id


@pytest.mark.slow
def test_trains_end_to_end_then_resumes_after_the_kernel_is_killed(gist_server, monkeypatch):
    gid = gist_server.add_folder(ZOO / "flat_gpt")
    revision = gist_server.revisions(gid)[0]
    write_handoff(gid, revision)  # template.ipynb validated this revision
    gist_server.add_folder(ZOO / "flat_gpt", gist_id=gid)  # then the gist changed
    run_dir = _run_dir(gid, revision)
    latest = run_dir / "checkpoints" / "latest.json"

    # First "Run all": killed (SIGKILL of the kernel process) once the first checkpoint exists.
    nb = read_notebook()
    killed = threading.Event()

    def killer():
        import psutil

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not latest.is_file():
            time.sleep(0.05)
        kernels = [p for p in psutil.Process().children(recursive=True)
                   if "ipykernel_launcher" in " ".join(p.cmdline())]
        if latest.is_file() and kernels:
            for kernel in kernels:
                os.kill(kernel.pid, signal.SIGKILL)
            killed.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    env = _env("", MAX_STEPS="150")  # the hand-off names the gist; long enough to be killed
    nb, error, seconds = execute(nb, monkeypatch, env)
    thread.join(5)
    assert killed.is_set(), f"the kernel was not killed (error: {error})"
    assert type(error).__name__ == "DeadKernelError", error
    assert not (run_dir / "final").exists()
    print(f"first run, killed after {seconds:.1f} s at {json.loads(latest.read_text())}")

    # Second "Run all": finds the run, resumes from the checkpoint, finishes.
    step = json.loads(latest.read_text()).get("step")
    nb2, error2, seconds2 = execute(read_notebook(), monkeypatch, {**env, "EXPORT": "1"})
    assert error2 is None, f"a cell raised: {error2}"
    _assert_no_tracebacks(nb2)
    gist_text = outputs_text(cell(nb2, "gist-id"))
    assert "found in the hand-off file" in gist_text and revision[:7] in gist_text
    load = outputs_text(cell(nb2, "load"))
    assert "newer revision" in load and "Tier 1 gate passed" in load
    assert "Installed" in outputs_text(cell(nb2, "install")) or \
        "already installed" in outputs_text(cell(nb2, "install"))
    data = outputs_text(cell(nb2, "data"))
    assert "Tokenizer: the run's own" in data
    train = outputs_text(cell(nb2, "train"))
    assert re.search(rf"Resum\w+ from step {step}\b", train), train[-2000:]
    assert "Training config" in train and "150 steps" in train and "needs ≈" in train
    assert any("image/png" in o.get("data", {}) for o in cell(nb2, "train").outputs)
    assert "Sample 1:" in train
    assert (run_dir / "final" / "model.safetensors").is_file()
    for optional in ("tier2", "hpo", "benchmark"):
        assert "skipped (tick its box" in outputs_text(cell(nb2, optional)), optional
    exported = outputs_text(cell(nb2, "export"))
    assert "failed" not in exported.lower() or "0 failed" in exported.lower(), exported
    assert (run_dir / "export" / "folder" / "model.safetensors").is_file(), exported
    assert "Push to the Hub" not in exported  # no HUB_REPO
    nbformat.write(nb2, run_dir.parent / "training-executed.ipynb")  # to look at (nbconvert)
    print(f"second run (resumed from step {step}): {seconds2:.1f} s")


@pytest.mark.slow
def test_a_gist_that_fails_the_gate_stops_before_training(gist_server, monkeypatch):
    gid = gist_server.add_folder(ZOO / "no_causal_mask")
    nb, error, _ = execute(read_notebook(), monkeypatch, _env(gid))
    assert error is not None and error.ename == "GateFailed"
    load = outputs_text(cell(nb, "load"))
    assert "Tier 1 gate FAILED" in load and "causal_masking" in load
    assert cell(nb, "train").execution_count is None
    assert TRACEBACK not in load


def test_in_colab_the_run_is_mirrored_to_drive(monkeypatch, tmp_path, capsys):
    """In Colab, Drive is mounted (through utils.colab, the edge) and the run's mirror lives
    below it under the same name as the local run folder."""
    import types

    from test_template_notebook import fake_colab

    mounted = []

    def mount(mountpoint, force_remount=False):
        mounted.append(mountpoint)

    fake_colab(monkeypatch, drive=types.SimpleNamespace(mount=mount))
    gist = tn.TrainingGist("0123456789abcdef0123456789abcdef", "c" * 40, "page URL")
    out, mirror = tn.run_location(gist)
    assert mounted == ["/content/drive"]
    assert mirror == Path("/content/drive") / tn.DRIVE_FOLDER / out.name
    assert out.name == "0123456789ab-ccccccc" and "mirrored to Google Drive" in capsys.readouterr().out
    assert tn.run_location(gist, drive=False)[1] is None  # opted out: local only


@pytest.mark.slow
def test_setup_cell_in_colab_reads_the_extras_from_the_fetched_repository(tmp_path):
    """Where `utils` is not importable, the setup cell fetches utils/ and pyproject.toml, and the
    extras' requirements come from that fetched pyproject (the package is not on PyPI); here
    everything is installed already, so nothing changes."""
    from test_template_notebook import run_setup_as_in_colab

    nb = read_notebook()
    proc, repo = run_setup_as_in_colab(tmp_path, cell(nb, "setup").source + "\n"
                                       + cell(nb, "install").source,
                                       ("utils", "pyproject.toml"),
                                       after="print('SOURCE', installed.source)\n")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["pyproject.toml", "utils"]
    assert f"SOURCE {repo / 'pyproject.toml'}" in proc.stdout
    assert "were already installed; nothing changed" in proc.stdout
