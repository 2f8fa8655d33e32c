"""CheckResult/Report renderings and verdicts; UserError messages and notebook rendering."""

from __future__ import annotations

import json
import math

import pytest

from utils.errors import CodeLocation, MissingExtraError, UserError
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
    assert 'pip install "transformer-testbench[all]"' in info.value.fix
    err = MissingExtraError("lightning", "train", "Fine-tuning")
    assert 'transformer-testbench[train]' in err.fix


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
