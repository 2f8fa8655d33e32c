"""CheckResult/Report renderings and verdicts; UserError messages and notebook rendering."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import utils.errors
from utils.errors import REPOSITORY, CodeLocation, MissingExtraError, UserError, install_command
from utils.report import CheckResult, Report, register_plot


def result(name, status, **kw):
    return CheckResult(name=name, tier=1, status=status, summary=f"{name} {status}", **kw)


@pytest.mark.parametrize(("statuses", "passed"), [
    (["pass", "pass"], True),
    (["pass", "warn", "skip"], True),
    (["pass", "fail"], False),
    (["error"], False),
    ([], True),
])
def test_passed_means_no_fail_and_no_error(statuses, passed):
    report = Report([result(f"c{i}", s) for i, s in enumerate(statuses)])
    assert report.passed is passed


def test_a_report_with_a_load_error_did_not_pass():
    assert not Report(error={"message": "x"}).passed


def test_unknown_status_is_a_bug():
    with pytest.raises(ValueError, match="status must be one of"):
        result("x", "ok")


def test_renderings():
    report = Report([result("gradient_flow", "pass", metrics={"norm": 1.5, "bad": math.nan},
                            seconds=0.25),
                     result("causal_masking", "fail", threshold={"max_leak": 1e-5})],
                    model={"class": "GPT<script>"})
    data = json.loads(report.to_json())
    assert data["passed"] is False and data["checks"][0]["metrics"] == {"norm": 1.5, "bad": "nan"}
    frame = report.to_frame()
    assert list(frame["status"]) == ["pass", "fail"] and frame.columns[0] == "check"
    text = report.to_text()
    assert "✗ fail  causal_masking" in text and text.endswith("FAILED: 2 checks (1 pass, 1 fail)")
    html = report._repr_html_()
    assert "<table>" in html and "GPT&lt;script&gt;" in html and "<script>" not in html
    assert report["causal_masking"].status == "fail"


def test_the_models_warnings_are_in_every_rendering():
    warning = "config.json keys not taken by GPT.__init__ (not passed): author, learning_rate."
    report = Report([result("gradient_flow", "pass")],
                    model={"class": "GPT", "warnings": [warning, "<b>head</b> too small"]})
    assert report.passed and report.warnings == [warning, "<b>head</b> too small"]
    assert f"warning: {warning}" in report.to_text(width=200).splitlines()
    html = report._repr_html_()
    assert f"Warning: {warning}" in html and "&lt;b&gt;head&lt;/b&gt;" in html
    assert json.loads(report.to_json())["model"]["warnings"][0] == warning
    assert Report().warnings == [] and "warning:" not in Report().to_text()


LONG = ("Future tokens leak into earlier outputs: changing tokens from position 1 on moved "
        "earlier outputs by up to 1.15e-01 (relative; allowed 1e-05); position 0 already sees "
        "later tokens — the causal mask is missing, not applied, or built from the wrong length.")


def test_failing_and_warning_rows_print_in_full_wrapped_to_the_width():
    report = Report([CheckResult("causal_masking", 1, "fail", LONG),
                     CheckResult("padding_invariance", 1, "warn", LONG),
                     CheckResult("determinism", 1, "pass", LONG)], notes=[LONG])
    lines = report.to_text(width=80).splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("✗ fail  causal_masking       0.00s  Future tokens")
    indent = " " * lines[0].index("Future")  # under the summary column
    fail_rows = lines[: lines.index(next(x for x in lines if x.startswith("! warn")))]
    assert len(fail_rows) > 1 and all(x.startswith(indent) for x in fail_rows[1:])
    assert " ".join(x.strip() for x in fail_rows).endswith("built from the wrong length.")
    for words in ("changing tokens", "the causal mask is missing"):  # the diagnosis and the fix
        assert sum(words in x for x in lines) >= 3  # fail, warn and the note: never cut
    passing = next(x for x in lines if x.startswith("✓ pass"))
    assert passing.endswith("…") and lines[lines.index(passing) + 1].startswith("note: ")


def test_a_narrow_terminal_wraps_under_a_short_indent(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    lines = Report([CheckResult("parameter_initialization", 1, "fail", LONG)]).to_text()
    lines = lines.splitlines()
    assert all(len(x) <= 50 for x in lines if " " in x.strip())
    assert lines[1].startswith("    ") and not lines[1].startswith("     ")


@pytest.mark.parametrize(("statuses", "verdict"), [
    (["pass"], "PASSED: 1 check (1 pass)"),
    (["pass", "warn"], "PASSED: 2 checks (1 pass, 1 warn)"),
    (["fail"], "FAILED: 1 check (1 fail)"),
])
def test_verdict_plurals(statuses, verdict):
    assert Report([result(f"c{i}", s) for i, s in enumerate(statuses)]).verdict() == verdict


def test_report_repr_is_one_short_line():
    rows = [{"layer": i, "value": 0.5} for i in range(2000)]
    report = Report([result("gradient_flow", "pass", rows=rows)],
                    model={"class": "TinyGPT", "task": "causal_lm", "evidence": {"x": LONG}},
                    source={"kind": "gist", "gist_id": "abc123", "revision": "0123456789",
                            "owner": "alice"})
    assert repr(report) == ("<Report TinyGPT (causal_lm) from gist abc123 @ 0123456 by @alice: "
                            "PASSED: 1 check (1 pass)>")
    assert repr(Report(error={"message": "x"})).startswith("<Report no model from ")


def test_json_file_is_written_atomically(tmp_path):
    path = tmp_path / "out" / "report.json"
    Report([result("a", "pass")]).to_json(str(path))
    assert json.loads(path.read_text())["checks"][0]["name"] == "a"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_raise_on_failure_lists_the_bad_checks():
    report = Report([result("a", "pass"), result("b", "fail"), result("c", "error")])
    with pytest.raises(UserError, match=r"2 check\(s\) did not pass: b \[fail\].*c \[error\]"):
        report.raise_on_failure()
    assert Report([result("a", "warn")]).raise_on_failure().passed


def test_plots_are_drawn_only_on_request():
    drawn = []

    @register_plot("test_only_check")
    def draw(r):
        drawn.append(r.name)
        return "figure"

    report = Report([result("test_only_check", "pass"), result("other", "pass")])
    assert drawn == []
    assert report.plots() == {"test_only_check": "figure"} and drawn == ["test_only_check"]


def test_user_error_message_has_what_where_why_fix():
    err = UserError("Thing broke.", why="Because.", fix="Do this.",
                    location=CodeLocation("/x/model.py", 12, "    y = f(x)\n"))
    assert str(err) == ("Thing broke.\n  Where: /x/model.py, line 12: y = f(x)\n"
                        "  Why: Because.\n  Fix: Do this.")
    assert err.to_dict()["line"] == 12 and err.to_dict()["file"] == "/x/model.py"


def test_missing_extra_names_the_pip_extra():
    from utils.environment import require

    with pytest.raises(MissingExtraError, match="needs the package 'no_such_pkg_xyz'") as info:
        require("no_such_pkg_xyz", "Testing")
    assert info.value.extra == "all" and "[all]" in info.value.fix


def test_missing_extra_from_a_clone_says_pip_install_e_with_the_clone_path():
    clone = Path(utils.errors.__file__).resolve().parent.parent  # these tests run from one
    with pytest.raises(MissingExtraError, match="Fine-tuning needs the package 'lightning'") as e:
        raise MissingExtraError("lightning", "train", "Fine-tuning")
    assert e.value.fix.startswith(f'pip install -e "{clone}[train]"')
    assert "transformer-testbench[train]" not in e.value.fix  # not on PyPI: that cannot work


def test_missing_extra_outside_a_clone_installs_from_the_repository(monkeypatch):
    monkeypatch.setattr(utils.errors, "_checkout", lambda: None)  # as from site-packages
    err = MissingExtraError("optuna", "train", "Hyperparameter search")
    assert err.fix == f'pip install "transformer-testbench[train] @ git+{REPOSITORY}"'
    assert install_command("data") == (
        f'pip install "transformer-testbench[data] @ git+{REPOSITORY}"')


def test_missing_extra_in_colab_points_to_the_training_notebook(monkeypatch):
    from utils.environment import require

    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    with pytest.raises(MissingExtraError, match=r"In Colab, run training\.ipynb") as info:
        require("no_such_pkg_xyz", "Testing")
    assert "pip install" not in info.value.fix


def test_the_repository_is_the_one_the_notebook_fetches():
    notebook = (Path(__file__).resolve().parent.parent / "template.ipynb").read_text()
    repo = re.search(r'REPO, REF = \\"([\w.-]+/[\w.-]+)\\"', notebook).group(1)
    assert REPOSITORY == f"https://github.com/{repo}"


def test_notebook_shows_the_message_not_a_traceback():
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    with capture_output() as captured:
        outcome = shell.run_cell("from utils.errors import UserError\n"
                                 "raise UserError('Gist abc was not found.', fix='Check the id.')")
    assert not outcome.success  # "Run all" stops here
    shown = captured.stdout + captured.stderr
    assert "Gist abc was not found." in shown and "Check the id." in shown
    assert "Traceback" not in shown and "raise UserError" not in shown


def test_a_librarys_deprecation_of_its_own_internals_is_not_a_note():
    """torch.export's LeafSpec FutureWarning was passed on as an export note: noise the user
    cannot act on. A deprecated call in the user's own code still is one."""
    import warnings

    from utils.checks import LibraryWarnings

    said = LibraryWarnings()
    with said.capture("pt2"):
        warnings.warn_explicit("LeafSpec is deprecated", FutureWarning,
                               "/env/lib/python3.11/site-packages/torch/utils/_pytree.py", 10)
        warnings.warn_explicit("torch.cuda.amp.autocast(args...) is deprecated", FutureWarning,
                               "/content/model.py", 12)
        warnings.warn_explicit("the axis name will not be used", UserWarning,
                               "/env/lib/python3.11/site-packages/torch/onnx/_x.py", 3)
    notes = said.notes()
    assert not any("LeafSpec" in n for n in notes)
    assert any("autocast" in n for n in notes) and any("axis name" in n for n in notes)
