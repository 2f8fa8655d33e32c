"""The shared kernels (task names, atomic files, tensor comparison) and the import graph."""

from __future__ import annotations

import ast
import errno
import os
import re
from pathlib import Path

import pytest
import torch

import utils
import utils.tier1_critical_validation  # importing the tiers registers their checks
import utils.tier2_advanced_analysis
from utils import atomic
from utils.checks import REGISTRY, CheckOptions
from utils.compare import compare, rel_diff
from utils.errors import UserError
from utils.tasks import IGNORE_INDEX, TASKS

PACKAGE = Path(utils.__file__).parent


def _type_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:``: annotations, never run."""
    return {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
            for stmt in node.body for inner in ast.walk(stmt)}


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports from ``utils`` (top-level and inside functions; not the
    imports under ``if TYPE_CHECKING:``, which never run)."""
    found = set()
    tree = ast.parse(path.read_text())
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("utils"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("utils"))
    return found


def _module_graph() -> dict[str, set[str]]:
    files = {".".join(("utils", *p.relative_to(PACKAGE).with_suffix("").parts))
             .removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def test_the_import_graph_has_no_cycle():
    graph = _module_graph()
    # a package importing its own submodule (re-export) is not a cycle of concepts
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle.extend([*path, node, dep])
                return True
            if dep not in state and visit(dep, [*path, node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if module not in state and visit(module, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_module_imports_another_packages_private_module():
    offenders = []
    for module, deps in _module_graph().items():
        for dep in deps:
            parts = dep.split(".")
            private = [i for i, part in enumerate(parts) if part.startswith("_")
                       and part != "__main__"]
            if private and not module.startswith(".".join(parts[: private[0]]) + "."):
                offenders.append(f"{module} imports {dep}")
    assert not offenders


def test_task_names_and_ignore_index_have_one_owner():
    assert TASKS == ("causal_lm", "masked_lm", "seq2seq", "classification", "encoder")
    assert IGNORE_INDEX == -100
    for path in PACKAGE.rglob("*.py"):
        if path.name == "tasks.py":
            continue
        text = path.read_text()
        assert "= -100" not in text, f"{path} defines its own ignore index"
        assert not re.search(r"^TASKS\b", text, re.M), f"{path} defines its own task list"


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic.write_atomic(target, "old")

    def no_space(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_copy_atomic_streams_hashes_and_never_tears_the_target(tmp_path, monkeypatch):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * atomic.CHUNK + 17))
    dst = tmp_path / "mirror" / "big.bin"
    digest = atomic.copy_atomic(src, dst)
    assert digest == atomic.sha256_file(src) == atomic.sha256_file(dst)
    previous = dst.read_bytes()
    src.write_bytes(os.urandom(atomic.CHUNK + 1))

    real_replace = os.replace

    def dropped(a, b):  # Drive's FUSE mount going away mid-rename
        raise OSError(107, "Transport endpoint is not connected")

    monkeypatch.setattr(os, "replace", dropped)
    with pytest.raises(OSError, match="Transport endpoint"):
        atomic.copy_atomic(src, dst)
    monkeypatch.setattr(os, "replace", real_replace)
    assert dst.read_bytes() == previous
    assert sorted(p.name for p in dst.parent.iterdir()) == ["big.bin"]


def test_a_stream_written_over_a_retired_file_reuses_it_and_cuts_it_to_size(tmp_path):
    retired, target = tmp_path / ".spare", tmp_path / "step.ckpt"
    retired.write_bytes(b"x" * (atomic.CHUNK + 100))  # longer than what comes
    inode = retired.stat().st_ino
    payload = os.urandom(1000)
    sha, size = atomic.write_atomic_stream(target, lambda fh: fh.write(payload), reuse=retired)
    assert target.read_bytes() == payload and size == 1000 and sha == atomic.sha256(payload)
    assert target.stat().st_ino == inode  # the same file, written over in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.ckpt"]
    # a missing file to reuse is no error; a failing write consumes it and keeps the target
    atomic.write_atomic_stream(target, lambda fh: fh.write(b"new"), reuse=retired)
    assert target.read_bytes() == b"new"
    retired.write_bytes(b"old bytes")

    def full(fh):
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic.write_atomic_stream(target, full, reuse=retired)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.ckpt"]


def test_a_retired_file_with_another_name_or_not_a_file_is_never_written_over(tmp_path):
    target = tmp_path / "step.ckpt"
    retired, backup = tmp_path / ".spare", tmp_path / "backup.ckpt"
    retired.write_bytes(b"the user's backup")
    os.link(retired, backup)  # e.g. a `cp -al` backup of the run folder
    atomic.write_atomic_stream(target, lambda fh: fh.write(b"new"), reuse=retired)
    assert backup.read_bytes() == b"the user's backup" and retired.exists()
    assert target.read_bytes() == b"new" and target.stat().st_ino != backup.stat().st_ino
    odd = tmp_path / "folder"
    odd.mkdir()
    atomic.write_atomic_stream(target, lambda fh: fh.write(b"newer"), reuse=odd)
    assert odd.is_dir() and target.read_bytes() == b"newer"


@pytest.mark.parametrize("refused", [None, errno.EINVAL, errno.ENOSYS])
def test_an_unhashed_copy_goes_through_the_kernel_or_falls_back_to_reading(
        tmp_path, monkeypatch, refused):
    src, dst = tmp_path / "big.bin", tmp_path / "mirror" / "big.bin"
    src.write_bytes(os.urandom(2 * atomic.CHUNK + 5))
    real, calls = os.sendfile, []

    def sendfile(*args):
        calls.append(args)
        if refused is not None:
            raise OSError(refused, os.strerror(refused))
        return real(*args)

    monkeypatch.setattr(os, "sendfile", sendfile)
    assert atomic.copy_atomic(src, dst, digest=False) is None
    assert dst.read_bytes() == src.read_bytes() and calls
    assert atomic.copy_atomic(src, dst) == atomic.sha256_file(src)  # hashed: read, not sent
    assert len(calls) == (1 if refused else 4)  # 3 chunks + the empty read that ends it


def test_a_kernel_copy_that_fails_midway_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    src, dst = tmp_path / "big.bin", tmp_path / "mirror" / "big.bin"
    src.write_bytes(os.urandom(2 * atomic.CHUNK))
    real = os.sendfile

    def dropped(out_fd, in_fd, offset, count):
        if offset:
            raise OSError(errno.EINVAL, "Invalid argument")  # after bytes went: not a refusal
        return real(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", dropped)
    with pytest.raises(OSError, match="Invalid argument"):
        atomic.copy_atomic(src, dst, digest=False)
    assert not dst.parent.exists() or list(dst.parent.iterdir()) == []


def test_compare_reports_like_assert_close():
    expected = torch.zeros(4, 5)
    actual = expected.clone()
    actual[2, 3] = 0.5
    result = compare(actual, expected)
    assert not result.ok and result.mismatched == 1 and result.total == 20
    assert result.max_abs == pytest.approx(0.5) and result.max_abs_index == (2, 3)
    assert "Mismatched elements: 1 / 20 (5.0%)" in str(result)
    assert "(up to 1e-05 allowed)" in str(result)
    assert compare(expected, expected).ok
    assert compare(expected.half(), expected).rtol == pytest.approx(1e-3)  # fp16 decides
    nan = torch.tensor([float("nan"), 1.0])
    assert compare(nan, nan.clone()).ok
    assert not compare(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0])).ok
    assert "shapes differ" in str(compare(torch.zeros(2), torch.zeros(3)))
    assert rel_diff(torch.ones(3), torch.ones(3) * 1.5) == pytest.approx(0.5)


def test_every_threshold_a_check_reads_is_declared():
    declared = {f"{s.name}.{t}" for s in REGISTRY.values() for t in s.thresholds}
    assert "overfit_one_batch.steps" in declared and "attention_patterns.saturated" in declared
    with pytest.raises(KeyError, match="without declaring"):
        CheckOptions().threshold("overfit_one_batch.undeclared", 1.0)


def test_an_unknown_threshold_key_is_an_error_naming_the_valid_ones():
    options = CheckOptions(thresholds={"overfit_one_batch.stepz": 50})
    with pytest.raises(UserError, match=r"did you mean 'overfit_one_batch.steps'") as info:
        options.validate_thresholds()
    assert "initial_loss.ratio" in str(info.value)
    CheckOptions(thresholds={"overfit_one_batch.steps": 50}).validate_thresholds()


# ---- layers ---------------------------------------------------------------------------------
# DESIGN.md's rows, lowest first: a module may import only from its own row or rows above it
# in this list. A module's row is that of the longest name here it starts with ("utils.tier1"
# covers "utils.tier1.causal"); every module must have one. Differences from DESIGN.md's
# drawing, taught by the code: report (the findings and the JSON envelope) is a kernel the
# adapters' loader and the checks both use; adapters.sources (what a source string names) sits
# below the Colab edge that reads the page's gist id; tokenization sits beside the tiers, which
# never import it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("kernels", ("utils.errors", "utils.tasks", "utils.atomic", "utils.compare", "utils.memory",
                 "utils.gpu_table", "utils.seeding", "utils.environment", "utils.examples")),
    ("report", ("utils.report",)),
    ("source names", ("utils.adapters.sources",)),
    ("Colab edge", ("utils.colab", "utils.install", "utils.handoff")),
    ("adapters", ("utils.adapters",)),
    ("checks", ("utils.checks",)),
    ("tiers 1-2", ("utils.tier1", "utils.tier1_critical_validation", "utils.tier2",
                   "utils.tier2_advanced_analysis")),
    ("tokenization", ("utils.tokenization",)),
    ("training config", ("utils.training.config", "utils.ui.presets")),
    ("training", ("utils.training",)),
    ("tier 3", ("utils.tier3", "utils.tier3_training_utilities")),
    ("facade", ("utils.test_functions",)),
    ("notebook UI", ("utils.ui",)),
    ("CLI", ("utils.cli", "utils.__main__")),
]
# `utils` itself (its __init__): `from utils import __version__` is a constant, and the package's
# own imports are the facade's re-exports, checked for cycles above
ANYONE_MAY_IMPORT = {"utils"}


def layer_of(module: str) -> int:
    best = max(((len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS)
                for prefix in prefixes if module == prefix or module.startswith(prefix + ".")),
               default=None)
    if best is None:
        raise AssertionError(f"{module} has no row in LAYERS: give it one")
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a row below the importer's own, in words."""
    found = []
    for module, deps in sorted(graph.items()):
        if module in ANYONE_MAY_IMPORT:
            continue
        mine = layer_of(module)
        for dep in sorted(deps - ANYONE_MAY_IMPORT):
            if layer_of(dep) > mine:
                found.append(f"{module} ({LAYERS[mine][0]}) imports {dep} "
                             f"({LAYERS[layer_of(dep)][0]})")
    return found


def test_imports_point_down_the_layers():
    assert not upward_imports(_module_graph())


def test_the_layer_test_fails_on_an_upward_import():
    graph = _module_graph()
    graph["utils.training.checkpoint_manager"] |= {"utils.tier3.search"}
    graph["utils.adapters.model_adapter"] |= {"utils.training.training_core"}
    assert upward_imports(graph) == [
        "utils.adapters.model_adapter (adapters) imports utils.training.training_core (training)",
        "utils.training.checkpoint_manager (training) imports utils.tier3.search (tier 3)"]


def test_every_module_the_seed_names_is_at_its_path():
    named = ["test_functions.py", "tier1_critical_validation.py", "tier2_advanced_analysis.py",
             "tier3_training_utilities.py", "adapters/model_adapter.py",
             "tokenization/adaptive_tokenizer.py", "tokenization/bpe_trainer.py",
             "tokenization/data_module.py", "training/training_core.py",
             "training/checkpoint_manager.py", "training/dataset_utilities.py",
             "training/export_utilities.py", "ui/setup_wizard.py", "ui/presets.py"]
    assert [n for n in named if not (PACKAGE / n).is_file()] == []


def test_a_new_cross_check_inference_is_one_function_in_the_findings(monkeypatch):
    """The runner applies utils.checks.findings.FINDINGS in order to every result: an inference
    across checks is a function added there, seeing each result and what the run carries."""
    from utils.checks import findings, run_checks, runner

    seen = []

    def noted(result, run):
        seen.append((result.name, run.crashes == {}, run.inverted_by))
        result.summary += " [noted]"

    monkeypatch.setattr(runner, "FINDINGS", (*findings.FINDINGS, noted))
    adapter = utils.adapt(utils.load_model(say=lambda _: None))
    report = run_checks(adapter, ["shape_robustness", "causal_masking"], progress=False)
    assert seen == [("shape_robustness", True, None), ("causal_masking", True, None)]
    assert all(r.summary.endswith(" [noted]") for r in report.results)
    assert [f.__name__ for f in findings.FINDINGS] == [
        "crash_finding", "inverted_mask_finding", "capped_length_note", "length_cap_finding"]


def test_the_adapter_the_checks_get_is_the_protocols_adapter():
    """The checks, training and export are typed against utils.adapters.protocol.Adapter (mypy
    proves ModelAdapter conforms in `make test`); at run time it is one too, and the tiers do
    not import the Protocol (TYPE_CHECKING only)."""
    import subprocess
    import sys

    from utils.adapters.protocol import Adapter

    assert isinstance(utils.adapt(utils.load_model(say=lambda _: None)), Adapter)
    code = ("import sys, utils, utils.tier1_critical_validation, utils.tier2_advanced_analysis; "
            "print('utils.adapters.protocol' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
