"""The zero-install path runs on what Colab ships: the project's extras are blocked outright."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ["lightning", "pytorch_lightning", "optuna", "optuna_integration", "torchmetrics",
           "wandb", "huggingface_hub", "datasets", "tokenizers", "transformers", "ipywidgets",
           "onnx", "onnxruntime", "onnxscript", "safetensors", "accelerate"]

BLOCKER = textwrap.dedent(f"""
    import sys
    BLOCKED = {BLOCKED!r}

    class Block:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for the zero-install test: {{name}}", name=name)
            return None

    sys.meta_path.insert(0, Block)
""")


def run_blocked(body: str) -> subprocess.CompletedProcess:
    code = BLOCKER + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_blocker_really_blocks():
    proc = run_blocked("import lightning")
    assert proc.returncode != 0 and "blocked for the zero-install test" in proc.stderr


def test_load_adapt_and_cli_without_extras():
    proc = run_blocked("""
        import utils
        from utils.__main__ import main
        loaded = utils.load_model(say=lambda m: None)
        adapter = utils.adapt(loaded)
        batch = adapter.make_inputs(2, 16)
        adapter.loss(batch).backward()
        assert main(["validate"]) == 0
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("OK", adapter.task)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "OK causal_lm" in proc.stdout


def test_import_utils_stays_light():
    proc = run_blocked("""
        import utils
        heavy = sorted(m for m in ("pandas", "matplotlib", "scipy", "seaborn") if m in sys.modules)
        assert not heavy, heavy
    """)
    assert proc.returncode == 0, proc.stderr


def test_missing_extra_is_a_clear_error():
    proc = run_blocked("""
        from utils.adapters.weights import load_weights
        from utils.errors import MissingExtraError
        import torch, tempfile, pathlib
        p = pathlib.Path(tempfile.mkdtemp()) / "w.safetensors"
        p.write_bytes(b"x")
        try:
            load_weights(torch.nn.Linear(2, 2), p)
        except MissingExtraError as e:
            print(e.extra)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "train"  # safetensors comes with the train extra


def test_tier1_and_tier2_run_without_extras():
    proc = run_blocked("""
        import utils
        from utils.tier1_critical_validation import run_tier1
        from utils.tier2_advanced_analysis import run_tier2
        adapter = utils.adapt(utils.load_model(say=lambda m: None))
        reports = [run_tier1(adapter, progress=False), run_tier2(adapter, progress=False)]
        errors = [r.name for rep in reports for r in rep.results if r.status == "error"]
        assert not errors, [rep.to_text() for rep in reports]
        assert [r.name for r in reports[1].results][0] == "attention_patterns"
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        print("OK", len(reports[0].results), len(reports[1].results))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


@pytest.mark.parametrize("argv, extra", [
    (["train", "--preset", "smoke"], "train,data"),
    (["search", "--trials", "2", "--preset", "smoke"], "train,data"),
    (["benchmark", "--steps", "2", "--preset", "smoke"], "train,data"),
    (["export", "--formats", "onnx", "--out", "OUT"], "export"),
    (["push", "DIR", "--repo", "alice/tiny-gpt"], "mlops"),
])
def test_every_command_names_its_missing_extra(tmp_path, argv, extra):
    """In a base install (what `make demo` makes) each command that needs an extra exits 2
    with the extra's name and the command that installs it — no traceback, not a 'bug'."""
    argv = [str(tmp_path / a) if a in ("OUT", "DIR") else a for a in argv]
    (tmp_path / "DIR").mkdir()  # an exported folder, as far as push's first look goes
    (tmp_path / "DIR" / "config.json").write_text("{}")
    (tmp_path / "DIR" / "model.safetensors").write_bytes(b"")
    proc = run_blocked(f"""
        from utils.__main__ import main
        sys.exit(main({argv!r}))
    """)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert f"[{extra}]" in proc.stderr or f"'{extra}' extra" in proc.stderr, proc.stderr
