"""benchmarks/gpu_check.py's CPU-side logic: its flags, the comparison of a figure with its
target, the time budget and a crashing section, the JSON record, and the clear skip (exit 0)
on a machine without CUDA. The GPU sections themselves need a GPU (``make gpu-check``)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("measured,target,kind,ok", [
    (0.10, 0.15, "within", True), (-0.14, 0.15, "within", True),
    (-0.20, 0.15, "within", False), (0.98, 0.97, "at_least", True),
    (0.90, 0.97, "at_least", False), (1.0, 1.0, "at_most", True), (1.2, 1.0, "at_most", False),
    (None, 0.97, "at_least", None),
])
def test_a_figure_is_compared_with_its_target(gpu_check, measured, target, kind, ok):
    assert gpu_check.compare(measured, target, kind) == {"measured": measured, "target": target,
                                                         "kind": kind, "ok": ok}


def test_an_unknown_comparison_is_refused(gpu_check):
    with pytest.raises(ValueError, match="kind='near': one of 'within'"):
        gpu_check.compare(1.0, 1.0, "near")


def test_relative_error_is_positive_when_the_estimate_is_generous(gpu_check):
    assert gpu_check.relative_error(115, 100) == pytest.approx(0.15)
    assert gpu_check.relative_error(85, 100) == pytest.approx(-0.15)


def test_flags(gpu_check, tmp_path):
    args = gpu_check.parse_args(["--json", str(tmp_path / "r.json"), "--only",
                                 "tiers, resume", "--budget", "60"])
    assert (args.json, args.only, args.budget) == (tmp_path / "r.json", ["tiers", "resume"], 60)
    assert gpu_check.parse_args([]).only == list(gpu_check.SECTIONS)
    assert gpu_check.parse_args([]).budget == 300  # the 5 minutes


@pytest.mark.parametrize("argv,match", [
    (["--only", "tiers,speed"], r"unknown section\(s\) speed; known: tiers"),
    (["--budget", "0"], r"--budget must be > 0"),
    (["--steps", "5"], r"--steps >= 20 \(got 300 and 5\)"),
])
def test_bad_flags_are_usage_errors(gpu_check, argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        gpu_check.parse_args(argv)
    assert info.value.code == 2
    assert re.search(match, capsys.readouterr().err)


def test_sections_run_within_the_budget_and_a_crash_is_recorded(gpu_check):
    now = [0.0]

    def clock():
        return now[0]

    def slow():
        now[0] += 200
        return {"x": gpu_check.compare(1.0, 0.97, "at_least")}

    def broken():
        now[0] += 50
        raise RuntimeError("CUDA error: an illegal memory access")

    out = gpu_check.run_sections({"slow": slow, "broken": broken, "late": lambda: {}},
                                 budget=240, clock=clock)
    assert out["slow"] == {"result": {"x": {"measured": 1.0, "target": 0.97,
                                            "kind": "at_least", "ok": True}}, "seconds": 200}
    assert out["broken"] == {"error": "RuntimeError: CUDA error: an illegal memory access",
                             "seconds": 50}
    assert out["late"] == {"skipped": "out of time (budget 240 s)"}
    found = gpu_check.verdicts(out)
    assert [(v["where"], v["ok"]) for v in found] == [("slow.result.x", True)]


def test_verdicts_are_found_in_lists_too(gpu_check):
    record = {"memory_model": {"result": {"rows": [
        {"batch": 4, "error": gpu_check.compare(0.3, 0.15, "within")}]}}}
    assert [(v["where"], v["ok"]) for v in gpu_check.verdicts(record)] == [
        ("memory_model.result.rows[0].error", False)]


def test_without_cuda_it_says_so_writes_the_record_and_exits_0(gpu_check, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    report = tmp_path / "out" / "gpu.json"
    assert gpu_check.main(["--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "No CUDA GPU here" in printed and "nothing was measured" in printed
    doc = json.loads(report.read_text())
    assert doc["skipped"].startswith("No CUDA GPU here") and "sections" not in doc
    assert doc["environment"]["torch"]


def test_the_record_is_written_atomically_and_readable(gpu_check, tmp_path):
    path = gpu_check.write_record(tmp_path / "a" / "r.json", {"x": Path("/p"), "y": 1.5})
    assert json.loads(path.read_text()) == {"x": "/p", "y": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left
