"""``python -m utils validate``: exit codes, the JSON contract, and what a person sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.__main__ import main
from utils.tier1_critical_validation import TIER1_CHECKS

ROOT = Path(__file__).resolve().parent.parent
CONTRACT_KEYS = {"schema_version", "tool_version", "source", "model", "checks", "passed"}
SOURCE_KEYS = {"input", "kind", "gist_id", "revision", "sha256"}
MODEL_KEYS = {"class", "task", "vocab_size", "max_seq_len", "num_classes", "pad_token_id",
              "parameters", "evidence"}


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "utils", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_embedded_example_by_default(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["validate", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TinyGPT" in printed and "causal_lm" in printed
    report = json.loads(out.read_text())
    assert CONTRACT_KEYS <= set(report) and report["schema_version"] == 1
    assert SOURCE_KEYS <= set(report["source"]) and MODEL_KEYS <= set(report["model"])
    assert report["model"]["evidence"]["task"]["method"] == "config"
    assert report["passed"] is True
    assert [c["name"] for c in report["checks"]] == list(TIER1_CHECKS)
    assert all(c["status"] == "pass" for c in report["checks"])
    assert report["source"]["kind"] == "folder"


def test_overrides_reach_the_adapter(tmp_path):
    out = tmp_path / "r.json"
    assert main(["validate", "--max-seq-len", "64", "--json", str(out)]) == 0
    evidence = json.loads(out.read_text())["model"]["evidence"]["max_seq_len"]
    assert evidence == {"value": 64, "method": "override", "detail": "max_seq_len=64 given "
                        "explicitly"}


def test_unloadable_source_exits_2_with_json_error(tmp_path, write_model, capsys):
    folder = write_model("import torch\nclass Broken(:\n    pass\n")
    out = tmp_path / "r.json"
    assert main(["validate", str(folder), "--json", str(out)]) == 2
    assert "syntax error at line 2" in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["model"] is None and report["checks"] == [] and report["passed"] is False
    assert report["error"]["line"] == 2 and report["error"]["type"] == "UserError"
    assert SOURCE_KEYS <= set(report["source"])


@pytest.mark.parametrize("argv", [["validate", "--bogus"], ["validate", "--tier", "7"],
                                  ["frobnicate"], []])
def test_usage_errors_exit_64(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 64


def test_cuda_asked_for_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["validate", "--device", "cuda"]) == 2
    assert "no usable CUDA GPU" in capsys.readouterr().err


def test_internal_bug_exits_70(monkeypatch, capsys):
    import utils.adapters

    def boom(*a, **k):
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(utils.adapters, "load_model", boom)
    assert main(["validate"]) == 70
    assert "bug in Transformer Testbench" in capsys.readouterr().err


def test_real_process_exit_codes_and_no_traceback(tmp_path):
    ok = run_cli("validate")
    assert ok.returncode == 0, ok.stderr
    assert "PASSED" in ok.stdout
    bad = run_cli("validate", str(tmp_path / "missing" / "model.py"))
    assert bad.returncode == 2
    assert "No file or folder" in bad.stderr and "Traceback" not in bad.stderr
    usage = run_cli("validate", "--nope")
    assert usage.returncode == 64


@pytest.mark.parametrize("argv", [["validate", "--checks", "nope"],
                                  ["validate", "--skip", "shape_robustness,nope"]])
def test_unknown_check_names_are_usage_errors(argv, capsys):
    assert main(argv) == 64
    assert "Unknown check name(s): nope" in capsys.readouterr().err


def test_checks_and_skip_select(tmp_path):
    out = tmp_path / "r.json"
    assert main(["validate", "--checks", "determinism,initial_loss", "--skip", "initial_loss",
                 "--json", str(out)]) == 0
    assert [c["name"] for c in json.loads(out.read_text())["checks"]] == ["determinism"]
