"""template.ipynb, executed for real: a kernel from this environment runs every cell against the
loopback Gist API server, for a healthy zoo model, a broken one, no gist id at all, and with the
project's extras blocked. Plus the notebook's hygiene, its Colab edge and its display helpers."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import time
import types
from pathlib import Path

import nbformat
import pytest
from conftest import ZOO
from test_zero_install import BLOCKED, BLOCKER

from utils import colab
from utils.errors import UserError
from utils.ui import notebook as ui

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "template.ipynb"
CELL_ORDER = ["intro", "setup-lead", "setup", "gist-lead", "gist-id", "load-lead", "load",
              "tier1-lead", "tier1", "tier2-lead", "tier2", "next-lead", "next-step"]
TRACEBACK = "Traceback (most recent call last)"
# Appended in tests only: what the kernel really ran on, and which extras it imported.
PROBE = textwrap.dedent(f"""
    import json, sys
    blocked = {BLOCKED!r}
    print("PROBE" + json.dumps({{"executable": sys.executable,
        "leaked": sorted(m for m in sys.modules if m.split(".")[0] in blocked)}}))
""")


def read_notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def outputs_text(c) -> str:
    """Everything a cell showed, as one string (streams, HTML, plain text, errors)."""
    parts = []
    for out in c.get("outputs", []):
        parts.append(out.get("text", ""))
        data = out.get("data", {})
        parts += [data.get("text/html", ""), data.get("text/plain", "")]
        parts += [out.get("ename", ""), out.get("evalue", ""), *out.get("traceback", [])]
    return "\n".join(parts)


def execute(nb, monkeypatch, env: dict[str, str], *, timeout: int = 600):
    """Run ``nb`` in a fresh kernel with ``env`` added to the kernel's environment.

    Returns ``(nb, error or None, seconds)``; the notebook is mutated in place with outputs.
    """
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    base = {"MPLBACKEND": "Agg", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    for key, value in {**base, **env}.items():
        monkeypatch.setenv(key, value)
    # The async manager: nbclient's check that the kernel is alive runs while a cell waits
    # (with a blocking client it never does, and a dead kernel hangs the run).
    km = AsyncKernelManager(kernel_name="python3")
    if km.kernel_spec.argv[0] not in ("python", "python3", sys.executable):
        # The python3 kernelspec points elsewhere: run this environment's interpreter instead.
        km.kernel_spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f",
                               "{connection_file}"]
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    start = time.perf_counter()
    try:
        client.execute()
        error = None
    except (CellExecutionError, DeadKernelError) as exc:
        error = exc
    return nb, error, time.perf_counter() - start


def probe(nb) -> dict:
    text = outputs_text(nb.cells[-1])
    line = next(x for x in text.splitlines() if x.startswith("PROBE"))
    return json.loads(line.removeprefix("PROBE"))


def assert_healthy_run(nb, error, gist_id: str, revision: str) -> None:
    assert error is None, f"a cell raised: {error}"
    for c in nb.cells:
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", outputs_text(c)
        assert TRACEBACK not in outputs_text(c)
    assert "found in the GIST_ID environment variable" in outputs_text(cell(nb, "gist-id"))
    load = outputs_text(cell(nb, "load"))
    for shown in (gist_id, revision, "sha256 model.py", "vocab_size", "512", "max_seq_len",
                  "causal_lm", "parameters", "MB of weights", "ln_f", "<span style="):
        assert shown in load, shown
    for tier in ("tier1", "tier2"):
        c = cell(nb, tier)
        assert "Testbench report" in outputs_text(c) and "PASSED" in outputs_text(c), tier
        pngs = [o for o in c.outputs if "image/png" in o.get("data", {})]
        assert pngs, f"{tier} showed no plots"
    assert "attention_patterns" in outputs_text(cell(nb, "tier2"))
    handoff = Path(os.environ["TESTBENCH_HOME"]) / "handoff.json"
    data = json.loads(handoff.read_text())
    assert (data["gist_id"], data["revision"]) == (gist_id, revision)
    link = re.search(r"href='([^']+)'", outputs_text(cell(nb, "next-step"))).group(1)
    assert link.endswith(f"/blob/main/training.ipynb?gist_id={gist_id}")
    assert link.startswith("https://colab.research.google.com/github/")
    assert probe(nb)["executable"] == sys.executable


# ---- hygiene -------------------------------------------------------------------------------
def assert_thin_cells(nb, max_lines: int) -> None:
    """Every code cell: a few lines calling utils — no stored outputs, no definitions, no
    shell or pip (comments may say "pip"), no `install -U`; a form cell is a Colab form."""
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        lines = c.source.splitlines()
        assert c.outputs == [] and c.execution_count is None, f"{c.id} has stored outputs"
        assert len(lines) <= max_lines, f"{c.id} has {len(lines)} lines"
        code = "\n".join(line.split("#")[0] for line in lines)
        assert not re.search(r"^\s*(class|def|async def) |globals\(\)|\bpip\b|^\s*[!%]|"
                             r"install\s+-U", code, re.M), c.id
        is_form = "#@param" in c.source
        assert (c.metadata.get("cellView") == "form") == is_form, c.id
        if is_form:
            assert c.source.startswith("#@title "), c.id


def test_notebook_hygiene():
    nb = read_notebook()
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3" and "colab" in nb.metadata
    assert [c.id for c in nb.cells] == CELL_ORDER  # a markdown lead before each code cell
    assert [c.cell_type for c in nb.cells] == ["markdown"] + ["markdown", "code"] * 6
    assert_thin_cells(nb, max_lines=15)
    assert re.search(r'^GIST_ID = ""  #@param \{type:"string"\}$', cell(nb, "gist-id").source,
                     re.M)
    assert re.search(r"^RUN_TIER2 = True  #@param \{type:\"boolean\"\}$",
                     cell(nb, "tier2").source, re.M)
    setup = cell(nb, "setup").source
    assert setup.count("REPO, REF = ") == 1 and "utils.__file__" in setup
    assert "codeload.github.com/{REPO}/tar.gz/{REF}" in setup


def test_tier2_can_be_skipped(capsys):
    """Unticking RUN_TIER2 skips the analyses without touching the (absent) model."""
    source = cell(read_notebook(), "tier2").source.replace("RUN_TIER2 = True", "RUN_TIER2 = False")
    exec(compile(source, "tier2-cell", "exec"), {})  # no `adapter` defined: it must not be used
    assert "Tier 2 skipped" in capsys.readouterr().out


# ---- the notebook, executed ----------------------------------------------------------------
@pytest.mark.slow
def test_healthy_gist_runs_end_to_end(gist_server, monkeypatch):
    gid = gist_server.add_folder(ZOO / "flat_gpt")
    nb = read_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nb, error, seconds = execute(nb, monkeypatch, {"GIST_ID": gid})
    print(f"healthy headless run: {seconds:.1f} s")
    assert_healthy_run(nb, error, gid, gist_server.revisions(gid)[0])


@pytest.mark.slow
def test_zero_install_notebook_runs_with_extras_blocked(gist_server, monkeypatch, tmp_path):
    """The kernel starts with an import hook refusing every extra; Tier 1 and 2 still run."""
    hook = tmp_path / "blocker"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    gid = gist_server.add_folder(ZOO / "flat_gpt")
    nb = read_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(PROBE + textwrap.dedent("""
        try:
            import lightning
        except ImportError as exc:
            print("BLOCKER ACTIVE" if "blocked for the zero-install test" in str(exc) else exc)
    """)))
    nb, error, _ = execute(nb, monkeypatch, {"GIST_ID": gid, "PYTHONPATH": path})
    assert_healthy_run(nb, error, gid, gist_server.revisions(gid)[0])
    assert "BLOCKER ACTIVE" in outputs_text(nb.cells[-1])
    assert probe(nb)["leaked"] == []


def test_broken_gist_shows_the_message_and_no_traceback(gist_server, monkeypatch):
    gid = gist_server.add_folder(ZOO / "syntax_error")
    nb, error, _ = execute(read_notebook(), monkeypatch, {"GIST_ID": gid})
    assert error is not None and error.ename == "UserError"
    load = cell(nb, "load")
    errors = [o for o in load.outputs if o["output_type"] == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "UserError"
    assert "model.py has a syntax error at line 50" in "\n".join(errors[0]["traceback"])
    assert all(TRACEBACK not in outputs_text(c) for c in nb.cells)
    assert cell(nb, "tier1").execution_count is None  # "Run all" stopped at the load
    assert not (Path(os.environ["TESTBENCH_HOME"]) / "handoff.json").exists()


def test_no_gist_id_says_where_to_paste_it(monkeypatch):
    monkeypatch.delenv("GIST_ID", raising=False)
    nb, error, _ = execute(read_notebook(), monkeypatch, {})
    assert error is not None and error.ename == "UserError"
    shown = outputs_text(cell(nb, "gist-id"))
    assert "No gist id was given" in shown
    assert "Paste your gist id or URL into the GIST_ID field at the top of this cell" in shown
    assert all(TRACEBACK not in outputs_text(c) for c in nb.cells)
    assert cell(nb, "load").execution_count is None


def run_setup_as_in_colab(tmp_path: Path, setup: str, files: tuple[str, ...] = ("utils",),
                          after: str = "") -> tuple[subprocess.CompletedProcess, Path]:
    """Run a notebook's setup cell where `utils` is importable only from what the cell fetches
    (as in Colab): ``urlopen`` serves a tarball of this repository's ``files`` + README.md.
    Returns the process and the folder the cell extracted to."""
    tarball = io.BytesIO()
    with tarfile.open(fileobj=tarball, mode="w:gz") as tar:
        for name in (*files, "README.md"):
            tar.add(ROOT / name, f"repo-main/{name}",
                    filter=lambda t: None if "__pycache__" in t.name else t)
    (tmp_path / "repo.tar.gz").write_bytes(tarball.getvalue())
    src = tmp_path / "content" / "testbench_src"
    setup = setup.replace('"/content/testbench_src"', repr(str(src)))
    harness = textwrap.dedent(f"""
        import importlib.machinery, sys, urllib.request
        SRC = {str(src)!r}
        class OnlyFetched:  # `utils` is importable only from the fetched copy, as in Colab
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name != "utils":
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path
                                                                       if p.startswith(SRC)])
                if spec is None:
                    raise ImportError("no utils outside the fetched copy", name=name)
                return spec
        sys.meta_path.insert(0, OnlyFetched)
        urls = []
        def urlopen(url, *a, **k):
            urls.append(url)
            return open({str(tmp_path / "repo.tar.gz")!r}, "rb")
        urllib.request.urlopen = urlopen
    """) + setup + textwrap.dedent("""
        print("URLS", urls)
        print("FILE", utils.__file__)
    """) + after
    proc = subprocess.run([sys.executable, "-c", harness], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    return proc, src / "repo-main"


@pytest.mark.slow
def test_setup_cell_fetches_utils_when_it_is_not_importable(tmp_path):
    """Where `utils` cannot be imported (Colab), the setup cell downloads this repository's
    tarball, extracts only utils/, puts it on sys.path and imports it — no pip install."""
    proc, repo = run_setup_as_in_colab(tmp_path, cell(read_notebook(), "setup").source)
    assert proc.returncode == 0, proc.stderr
    assert "URLS ['https://codeload.github.com/transformer-testbench/" in proc.stdout
    assert f"FILE {repo / 'utils' / '__init__.py'}" in proc.stdout
    assert "Transformer Testbench 0.1.0 from" in proc.stdout
    assert sorted(p.name for p in repo.iterdir()) == ["utils"]  # only utils/


# ---- the Colab edge ------------------------------------------------------------------------
def fake_colab(monkeypatch, **submodules) -> None:
    package = types.ModuleType("google.colab")
    for name, module in submodules.items():
        setattr(package, name, module)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", package)


def test_outside_colab_page_url_is_none_and_the_rest_needs_colab(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", None)  # import google.colab → ImportError
    assert colab.page_url() is None
    with pytest.raises(UserError, match=r"Mounting Google Drive works only in Google Colab"):
        colab.mount_drive()
    with pytest.raises(UserError, match=r"Uploading files works only in Google Colab(.|\n)*"
                       r"file picker"):
        colab.upload_files()


def test_page_url_prefers_an_answer_carrying_a_gist_id(monkeypatch):
    gid = "0123456789abcdef0123456789abcdef"
    answers = {colab.PAGE_URL_SCRIPTS[0]: "https://x.googleusercontent.com/outputframe.html",
               colab.PAGE_URL_SCRIPTS[1]: f"https://colab.research.google.com/a.ipynb#gist_id={gid}"}
    calls = []

    def eval_js(script, timeout_sec=None):
        calls.append(script)
        if script not in answers:
            raise RuntimeError("frame refused")
        return answers[script]

    fake_colab(monkeypatch, output=types.SimpleNamespace(eval_js=eval_js))
    assert colab.page_url() == answers[colab.PAGE_URL_SCRIPTS[1]]
    del answers[colab.PAGE_URL_SCRIPTS[1]]
    assert colab.page_url() == "https://x.googleusercontent.com/outputframe.html"
    answers.clear()
    assert colab.page_url() is None  # every script failed: best effort, never an error
    assert set(calls) == set(colab.PAGE_URL_SCRIPTS)


def test_mount_drive_and_upload_call_colab(monkeypatch):
    mounted = []
    fake_colab(monkeypatch,
               drive=types.SimpleNamespace(mount=lambda p, force_remount: mounted.append(p)),
               files=types.SimpleNamespace(upload=lambda: {"a.txt": b"hi"}))
    assert colab.mount_drive("/tmp/drive") == Path("/tmp/drive") and mounted == ["/tmp/drive"]
    assert colab.upload_files() == {"a.txt": b"hi"}


# ---- display helpers -----------------------------------------------------------------------
def test_model_html_shows_provenance_evidence_size_config_and_code(gist_server):
    import utils

    gid = gist_server.add_folder(ZOO / "flat_gpt")
    loaded = utils.load_model(gid, say=lambda m: None)
    page = ui.model_html(loaded, utils.adapt(loaded))
    for shown in (gid, gist_server.revisions(gid)[0], "sha256 config.json", "decided by",
                  "vocab_size", "max_seq_len", "parameters", "config.json", "<span style="):
        assert shown in page, shown
    assert "&lt;" in ui.code_html("a < b") and "<b>" not in ui.code_html("<b>")


def test_small_renderings():
    assert ui.human_size(1_234_567) == "1.23 M" and ui.human_size(512) == "512"
    assert ui.human_size(3_000_000_000) == "3 B" and ui.human_size(2500, "B") == "2.5 kB"
    page = ui.next_step_html("https://x/y?gist_id=1&a='b'", "/tmp/h.json")
    assert "href='https://x/y?gist_id=1&amp;a=&#x27;b&#x27;'" in page and "/tmp/h.json" in page
