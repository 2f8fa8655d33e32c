"""``testbench validate``: exit codes, the JSON contract, and what a person sees."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils import __version__
from utils.__main__ import build_parser, envelope, load_and_adapt, main, source_parser
from utils.tier1_critical_validation import TIER1_CHECKS

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "tests" / "zoo"
CONSOLE_SCRIPT = shutil.which("testbench", path=str(Path(sys.executable).parent))
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
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses.pop("position_shift") == "skip"  # TinyGPT has an absolute position table
    assert statuses.pop("model_loss") == "skip"  # and no labels argument
    assert set(statuses.values()) == {"pass"}
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


@pytest.mark.parametrize(("argv", "fix"), [
    (["validate", "--checks", "nope"], "--checks shape_robustness"),
    (["validate", "--skip", "shape_robustness,nope"], "--skip shape_robustness"),
    (["validate", "--checks", "gradient_flw"], "--checks gradient_flow"),
])
def test_unknown_check_names_are_usage_errors(argv, fix, capsys):
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert "Unknown check name(s): '" in err and f"e.g. {fix}." in err
    assert "Tier 1 checks: " + ", ".join(TIER1_CHECKS) + "." in err
    assert "checks=[" not in err  # the Python form is for Python callers


def test_unknown_check_name_lists_the_tier_asked_for(capsys):
    assert main(["validate", "--tier", "2", "--checks", "attention"]) == 64
    err = capsys.readouterr().err
    assert "Tier 2 checks: attention_patterns, attribution_analysis" in err
    assert "did you mean 'attention_patterns'?" in err and "shape_robustness" not in err
    assert main(["validate", "--tier", "all", "--checks", "nope"]) == 64
    assert "Tier 1 and 2 checks: shape_robustness" in capsys.readouterr().err


def test_checks_and_skip_select(tmp_path):
    out = tmp_path / "r.json"
    assert main(["validate", "--checks", "determinism,initial_loss", "--skip", "initial_loss",
                 "--json", str(out)]) == 0
    assert [c["name"] for c in json.loads(out.read_text())["checks"]] == ["determinism"]


@pytest.mark.skipif(CONSOLE_SCRIPT is None, reason="the testbench console script is not installed")
def test_console_script_is_not_shadowed_by_a_users_utils_py(tmp_path):
    # `python -m utils` here would run this file, print nothing and exit 0: a silent pass.
    (tmp_path / "utils.py").write_text("raise SystemExit(0)\n")
    proc = subprocess.run([CONSOLE_SCRIPT, "validate", str(ZOO / "no_causal_mask"),
                           "--checks", "causal_masking,determinism"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "✗ fail  causal_masking" in proc.stdout and "FAILED: 2 checks" in proc.stdout
    version = subprocess.run([CONSOLE_SCRIPT, "--version"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"testbench {__version__}"


def test_help_names_the_console_script(capsys):
    with pytest.raises(SystemExit) as info:
        main(["validate", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: testbench validate ")


def test_every_command_shares_the_source_options():
    shared = {a.dest for a in source_parser()._actions}
    assert {"source", "task", "vocab_size", "max_seq_len", "num_classes", "model_class",
            "weights", "seed", "json", "device"} <= shared
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        if name == "push":  # takes an export folder, not a model source
            assert {"json", "repo"} <= {a.dest for a in command._actions}
            continue
        assert shared <= {a.dest for a in command._actions}, name


def test_load_and_adapt_applies_the_overrides():
    args = build_parser().parse_args(["validate", "--max-seq-len", "64", "--device", "cpu"])
    seen, said = [], []
    loaded, adapter = load_and_adapt(args, say=said.append, on_load=seen.append)
    assert seen == [loaded] and type(loaded.model).__name__ == "TinyGPT"
    assert adapter.max_seq_len == 64 and adapter.device.type == "cpu"


def test_envelope_starts_every_json_document():
    doc = envelope({"input": "x"}, None, {"type": "UserError"})
    assert list(doc) == ["schema_version", "tool_version", "source", "model", "error"]
    assert doc["schema_version"] == 1 and doc["tool_version"] == __version__


def test_an_adapt_failure_keeps_the_loaded_provenance(tmp_path, write_model, capsys):
    folder = write_model("import torch\nclass NoTokens(torch.nn.Module):\n"
                         "    def __init__(self):\n        super().__init__()\n"
                         "        self.lin = torch.nn.Linear(3, 3)\n"
                         "    def forward(self, x):\n        return self.lin(x)\n")
    out = tmp_path / "r.json"
    assert main(["validate", str(folder), "--json", str(out)]) == 2
    report = json.loads(out.read_text())
    assert report["error"]["type"] == "UserError" and report["model"] is None
    assert report["source"]["kind"] == "folder" and "model.py" in report["source"]["sha256"]


def test_a_source_that_is_not_python_exits_2_and_config_json_means_its_folder(tmp_path, capsys):
    folder = tmp_path / "flat_gpt"
    shutil.copytree(ZOO / "flat_gpt", folder)
    (folder / "notes.txt").write_text("d_model 48\n")
    out = tmp_path / "r.json"
    assert main(["validate", str(folder / "notes.txt"), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt is a text file, not Python model code" in err and str(folder) in err
    assert json.loads(out.read_text())["error"]["type"] == "UserError"
    assert main(["validate", str(folder / "config.json"), "--checks", "shape_robustness"]) == 0
    assert f"loading the folder {folder}" in capsys.readouterr().err


def test_a_misspelt_config_key_exits_2_and_unused_keys_are_report_warnings(tmp_path, capsys):
    folder = tmp_path / "flat_gpt"
    shutil.copytree(ZOO / "flat_gpt", folder)
    config = json.loads((folder / "config.json").read_text())  # has author, learning_rate
    out = tmp_path / "r.json"
    assert main(["validate", str(folder), "--checks", "shape_robustness", "--json",
                 str(out)]) == 0
    warning = "config.json keys not taken by GPT.__init__ (not passed): author, learning_rate."
    assert f"warning: {warning}" in capsys.readouterr().out
    assert json.loads(out.read_text())["model"]["warnings"] == [warning]
    config["n_layers_"] = config.pop("n_layer")
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["validate", str(folder), "--json", str(out)]) == 2
    assert "'n_layers_' → 'n_layers' (taken as 'n_layer')" in capsys.readouterr().err
    assert json.loads(out.read_text())["error"]["message"].startswith("config.json has key(s)")


@pytest.mark.parametrize(("flags", "said"), [
    (["--num-classes", "3"], "num_classes=3 was given, but the model's task is 'causal_lm'"),
    (["--vocab-size", "8192"], "vocab_size=8192 was given, but the model's token embedding has "
     "384 rows"),
])
def test_an_override_that_cannot_apply_exits_2_naming_the_override_and_the_model(
        flags, said, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["validate", str(ZOO / "nanogpt_dataclass"), *flags, "--json", str(out)]) == 2
    assert said in capsys.readouterr().err
    assert said in json.loads(out.read_text())["error"]["message"]


def test_a_smaller_vocab_override_is_a_truthful_warning(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["validate", str(ZOO / "nanogpt_dataclass"), "--vocab-size", "256",
                 "--checks", "shape_robustness", "--json", str(out)]) == 0
    warnings = json.loads(out.read_text())["model"]["warnings"]
    assert any("vocab_size=256 given explicitly, but the model has 384" in w for w in warnings)
    assert not any("has 256 rows" in w for w in warnings)
    assert "vocab_size=256 given explicitly" in capsys.readouterr().out


def test_validate_with_one_seed_gives_the_same_numbers_and_verdicts(tmp_path):
    """The seed fixes the model's initial weights too, so a metric near a threshold cannot flip
    between two runs of one command (initial_loss was 6.253, then 6.244)."""
    docs = []
    for name in ("a", "b", "c"):
        seed = "2" if name == "c" else "1"
        main(["validate", "--seed", seed, "--checks", "initial_loss,output_stability",
              "--json", str(tmp_path / f"{name}.json")])
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        docs.append({c["name"]: (c["status"], c["metrics"]) for c in doc["checks"]})
    assert docs[0] == docs[1]
    assert docs[0]["initial_loss"][1] != docs[2]["initial_loss"][1]
