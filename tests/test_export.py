"""Export: every format of every task, loaded back from disk in its runtime, matches the eager
model at a batch and length it was not exported with; the folder rebuilds with identical
logits; a planted mismatch is a parity failure (figures, marker, exit 1); bad input and a
missing extra are clear errors.

Every task is covered in every format, seq2seq included (the teacher-forced forward is the
graph); the fast set is one causal LM in all formats and a masked LM (a padded mask) in the
folder and torch.export; classification (a padded mask through ONNX and int8), seq2seq and a
tied-weights LM are behind ``slow``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from training.tiny_lm import CONFIG as TINY_CONFIG
from training.tiny_lm import write_tiny_lm

import utils
from utils.__main__ import main
from utils.errors import MissingExtraError, UserError

for _extra in ("onnx", "onnxruntime", "onnxscript", "torchao", "safetensors"):
    pytest.importorskip(_extra)

from utils.training.export_utilities import export, parse_formats  # noqa: E402

ZOO = Path(__file__).parent / "zoo"
ALL = ("folder", "pt2", "onnx", "int8", "int8_torch")
FILES = {"folder": "folder", "pt2": "model.pt2", "onnx": "model.onnx",
         "int8": "model.int8.onnx", "int8_torch": "model.int8.pt"}

# A model whose exported graph differs from eager: torch.export runs the other branch.
PLANTED_PY = '''
import torch
from torch import nn


class Planted(nn.Module):
    def __init__(self, vocab_size=64, d_model=16, max_seq_len=32):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_seq_len, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        h = self.tok(input_ids) + self.pos(torch.arange(t, device=input_ids.device))
        out = self.head(h)
        if torch.compiler.is_exporting():  # the planted fault: only the export sees this
            out = out + 0.5
        return out
'''


def _source(name: str, tmp_path: Path) -> Path:
    return write_tiny_lm(tmp_path / "tiny") if name == "tiny_lm" else ZOO / name


def _fresh(adapter, batch: int, length: int) -> dict[str, torch.Tensor]:
    """Inputs neither the export example (2 x 8) nor the parity check used."""
    inputs = adapter.make_inputs(batch, length, seed=7, device="cpu")
    if adapter.spec.takes_mask:
        inputs["attention_mask"][-1, length // 2:] = 0
    names = ["input_ids"] + (["attention_mask"] if adapter.spec.takes_mask else []) + (
        ["decoder_input_ids"] if adapter.task == "seq2seq" else [])
    return {n: inputs[n] for n in names}


def _reloaded(name: str, out: Path, adapter, feed: dict[str, torch.Tensor]) -> torch.Tensor:
    """The artifact loaded from disk here, independently of the exporter's own check."""
    args = tuple(feed.values())
    if name == "pt2":
        return torch.export.load(str(out / "model.pt2")).module()(*args)
    if name in ("onnx", "int8"):
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / FILES[name]),
                                       providers=["CPUExecutionProvider"])
        taken = {i.name for i in session.get_inputs()}
        arrays = {k: v.numpy() for k, v in feed.items() if k in taken}
        return torch.from_numpy(session.run(None, arrays)[0])
    if name == "folder":
        rebuilt = utils.adapt(utils.load_model(out / "folder", say=lambda m: None),
                              task=adapter.task)
        rebuilt.model.eval()
        return rebuilt.logits(**feed)
    raise AssertionError(name)


CASES = [
    pytest.param("flat_gpt", ALL, id="causal_lm-flat_gpt"),
    pytest.param("masked_lm_encoder", ("folder", "pt2"), id="masked_lm-padded_mask"),
    pytest.param("encoder_classifier", ALL, id="classification", marks=pytest.mark.slow),
    pytest.param("torch_seq2seq", ALL, id="seq2seq", marks=pytest.mark.slow),
    # tied embedding and head: safetensors keeps one tensor, torchao unties them
    pytest.param("tiny_lm", ("folder", "int8_torch"), id="causal_lm-tied", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "formats"), CASES)
def test_every_format_matches_eager_when_reloaded_at_a_new_batch_and_length(
        name, formats, tmp_path):
    torch.manual_seed(0)
    adapter = utils.adapt(utils.load_model(_source(name, tmp_path), say=lambda m: None))
    out = tmp_path / "out"
    result = export(adapter, formats, out)

    assert result.ok, result.to_text()
    assert list(result.formats) == list(formats)
    doc = json.loads((out / "export.json").read_text())
    assert doc["ok"] is True and doc["schema_version"] == 1
    for fmt in formats:
        f = result[fmt]
        assert f.path == out / FILES[fmt] and f.path.exists() and f.size_bytes > 0
        assert not (out / f"{FILES[fmt]}.PARITY_FAILED.txt").exists()
        shapes = f.parity["inputs"]["input_ids"]
        assert shapes[0] == 3 and shapes[1] != 8  # not the exported example's 2 x 8
        assert doc["formats"][fmt]["status"] == "ok"
        if fmt.startswith("int8"):
            assert f.parity["top1_agreement"] >= 0.9 and f.metrics["size_ratio_vs_fp32"] < 1
    if adapter.spec.takes_mask:
        assert "attention_mask" in result[formats[0]].parity["inputs"]

    adapter.model.eval()
    feed = _fresh(adapter, 4, 11)
    with torch.no_grad():
        expected = adapter.logits(**feed)
        for fmt in set(formats) & {"folder", "pt2", "onnx"}:
            actual = _reloaded(fmt, out, adapter, feed)
            if fmt == "folder":
                assert torch.equal(actual, expected)  # identical, not merely close
            else:
                torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
        if "pt2" in formats:  # batch 1 and the longest length exported run; one more does not
            program = torch.export.load(str(out / "model.pt2")).module()
            top = result.dims["seq"][1]
            assert top in (adapter.max_seq_len, adapter.max_seq_len - 1)
            longest = _fresh(adapter, 1, top)
            torch.testing.assert_close(program(*longest.values()), adapter.logits(**longest))
            with pytest.raises(Exception, match=str(top)):
                program(*_fresh(adapter, 1, top + 1).values())
        if "int8" in formats:
            agree = (_reloaded("int8", out, adapter, feed).argmax(-1) == expected.argmax(-1))
            assert agree.float().mean() >= 0.75
    if "folder" in formats:
        card = (out / "folder" / "README.md").read_text()
        for heading in ("## Model", "## Provenance", "## Tier 1", "## Parity", "## Use it"):
            assert heading in card
        assert "passed parity" in card and "sha256 model.py" in card
        assert str(tmp_path) not in card and str(ZOO) not in card  # no local path is published


def _planted(tmp_path: Path) -> Path:
    folder = tmp_path / "planted"
    folder.mkdir()
    (folder / "model.py").write_text(PLANTED_PY)
    (folder / "config.json").write_text(json.dumps({"task": "causal_lm", "vocab_size": 64,
                                                    "max_seq_len": 32}))
    return folder


def test_a_re_export_with_fewer_formats_lists_what_the_earlier_one_left(tmp_path):
    adapter = utils.adapt(utils.load_model(ZOO / "flat_gpt", say=lambda m: None))
    out = tmp_path / "out"
    assert export(adapter, ("folder", "pt2"), out, say=lambda m: None).ok
    again = export(adapter, ("folder",), out, say=lambda m: None)
    doc = json.loads((out / "export.json").read_text())
    assert list(doc["formats"]) == ["folder"]
    assert doc["earlier"]["pt2"]["stale"] is True
    assert doc["earlier"]["pt2"]["file"] == str(out / "model.pt2")
    assert any("Left from an earlier export, not checked by this one: model.pt2 (pt2)" in n
               for n in again.notes)
    export(adapter, ("folder",), out, say=lambda m: None)  # still listed the time after
    assert json.loads((out / "export.json").read_text())["earlier"]["pt2"]["stale"] is True
    (out / "model.pt2").unlink()  # once it is gone, nothing is listed
    export(adapter, ("folder",), out, say=lambda m: None)
    assert json.loads((out / "export.json").read_text())["earlier"] == {}


def test_a_planted_mismatch_is_a_parity_failure_kept_marked_and_exit_1(tmp_path, capsys):
    out, report = tmp_path / "out", tmp_path / "export.json"
    code = main(["export", str(_planted(tmp_path)), "--formats", "folder,pt2", "--out",
                 str(out), "--json", str(report)])
    assert code == 1
    printed = capsys.readouterr().out
    assert "pt2         failed" in printed and "Mismatched elements:" in printed
    doc = json.loads(report.read_text())
    assert doc["command"] == "export" and doc["error"] is None and doc["ok"] is False
    assert doc["failed"] == ["pt2"] and doc["model"]["class"] == "Planted"
    pt2 = doc["formats"]["pt2"]
    parity = pt2["parity"]
    assert pt2["status"] == "failed" and parity["mismatched"] == parity["total"] > 0
    assert parity["max_abs_diff"] == pytest.approx(0.5, abs=1e-5)
    assert len(parity["max_abs_index"]) == 3 and parity["atol"] == 1e-5
    assert parity["rtol"] == 1.3e-6 and "max_rel_diff" in parity
    assert (out / "model.pt2").is_file()  # kept for inspection, and marked
    marker = out / "model.pt2.PARITY_FAILED.txt"
    assert Path(pt2["marker"]) == marker and "do not ship" in marker.read_text()
    assert doc["formats"]["folder"]["status"] == "ok"
    assert not (out / "folder" / "PARITY_FAILED.txt").exists()
    card = (out / "folder" / "README.md").read_text()
    assert "pt2 failed parity" in card and "FAILED parity — do not use" in card
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk["formats"]["pt2"]["status"] == "failed"


class DataDependent(torch.nn.Module):
    """Branches on a value: torch.export cannot trace it (a failed format, not a crash)."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 50)

    def forward(self, input_ids):
        out = self.head(self.tok(input_ids))
        return out if out.sum() > 0 else -out


def test_a_model_that_cannot_be_exported_is_a_failed_format_with_the_error(tmp_path):
    (tmp_path / "model.pt2").write_text("left by an earlier export")
    adapter = utils.adapt(DataDependent(), task="causal_lm", max_seq_len=16)
    result = export(adapter, "pt2", tmp_path)
    assert not result.ok and result["pt2"].status == "failed" and result["pt2"].path is None
    assert "data-dependent" in result["pt2"].error.lower() or "guard" in result["pt2"].error
    assert "earlier export" in (tmp_path / "model.pt2.PARITY_FAILED.txt").read_text()
    assert "exporting raised" in result.to_text()
    assert "exporting raised" in result._repr_html_() and "color:red" in result._repr_html_()


def _fake_run(tmp_path: Path) -> Path:
    """A run folder as training leaves it: final/ (save_model_folder), summary, Tier 1."""
    from utils.atomic import write_json
    from utils.training.runs import save_model_folder

    torch.manual_seed(0)
    loaded = utils.load_model(write_tiny_lm(tmp_path / "tiny"), say=lambda m: None)
    run = tmp_path / "run"
    provenance = {"kind": "gist", "gist_id": "0123456789abcdef0123456789abcdef",
                  "revision": "f" * 40, "sha256": {"model.py": "a" * 64}}
    save_model_folder(loaded.model, loaded, run / "final",
                      extra={"source": provenance, "steps": 6, "metrics": {"val_loss": 4.5}})
    (run / "final" / "tokenizer.json").write_text("{}")
    write_json(run / "summary.json", {"steps": 6, "tokens": 768, "train_loss": 5.1,
                                      "val_loss": 4.5, "config": {"seq_len": 32, "lr": 3e-4},
                                      "data": "corpus.txt (train 38 documents, validation 2 "
                                              "documents; split by documents)"})
    write_json(run / "tier1.json", {"passed": True, "checks": [
        {"name": "shape_robustness", "status": "pass", "summary": "all shapes ran"}]})
    return run


def test_a_run_folder_exports_its_final_model_with_the_run_on_the_card(tmp_path, capsys):
    run = _fake_run(tmp_path)
    assert main(["export", str(run), "--formats", "folder", "--out", str(tmp_path / "x")]) == 0
    assert "folder      ok" in capsys.readouterr().out
    folder = tmp_path / "x" / "folder"
    assert (folder / "tokenizer.json").is_file()
    card = (folder / "README.md").read_text()
    assert "0123456789abcdef0123456789abcdef" in card and "f" * 40 in card
    assert "| shape_robustness | pass | all shapes ran |" in card and "**passed**" in card
    assert "| val_loss | 4.5 |" in card and "| tokens | 768 |" in card
    assert "| data | corpus.txt (train 38 documents, validation 2 documents; split by " in card
    testbench = json.loads((folder / "testbench.json").read_text())
    assert testbench["source"]["gist_id"] == "0123456789abcdef0123456789abcdef"

    torch.manual_seed(1)  # the rebuilt folder holds the trained weights, not a new init
    final = utils.adapt(utils.load_model(run / "final", say=lambda m: None))
    again = utils.adapt(utils.load_model(folder, say=lambda m: None))
    ids = final.make_inputs(2, 12, seed=3)["input_ids"]
    final.model.eval()
    again.model.eval()
    with torch.no_grad():
        assert torch.equal(final.logits(ids), again.logits(ids))
    assert TINY_CONFIG["max_seq_len"] == final.max_seq_len


def test_bad_input_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"(?s)Unknown export format.*tflite.*folder, pt2, onnx"):
        parse_formats("folder,tflite")
    assert parse_formats("int8") == ["onnx", "int8"]  # int8 is quantized from the ONNX file
    assert parse_formats("all") == list(ALL)
    interrupted = tmp_path / "run"
    (interrupted / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="training run with no final/"):
        export(interrupted, "folder", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        export(ZOO / "flat_gpt", "folder", tmp_path / "file")
    with pytest.raises(UserError, match="cannot export a dict"):
        export({"not": "a model"}, "folder", tmp_path / "out")


def test_a_missing_extra_names_the_export_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(MissingExtraError, match=r"onnxruntime.*\n.*'export' extra"):
        export(ZOO / "flat_gpt", "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_cli_usage_and_source_errors(tmp_path, capsys):
    assert main(["export", str(ZOO / "flat_gpt"), "--formats", "tflite"]) == 64
    assert "Unknown export format" in capsys.readouterr().err
    report = tmp_path / "e.json"
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--json", str(report)]) == 2
    doc = json.loads(report.read_text())
    assert doc["error"]["type"] == "UserError" and doc["command"] == "export"
