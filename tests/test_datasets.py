"""load_text_dataset: sources, column detection, cleaning, the split by document, bad input."""

from __future__ import annotations

import json
import sys
import types

import pytest

pytest.importorskip("datasets")

from utils.errors import UserError
from utils.training.dataset_utilities import load_text_dataset
from utils.training.text_sources import example_corpus


def test_shipped_corpus_loads_with_a_source_note():
    files = sorted(example_corpus().glob("*.txt"))
    assert len(files) == 18
    assert (example_corpus().parent / "SOURCE.txt").read_text().count("public domain") == 1
    data = load_text_dataset(files[0])
    assert data.stats["train"].documents > 500 and data.stats["validation"].documents > 10
    assert all(t.strip() for t in list(data.train["text"]))


def test_split_is_by_document_deterministic_and_disjoint():
    docs = [f"document {i} " + "word " * (i % 7) for i in range(200)]
    a = load_text_dataset(docs, validation_fraction=0.1, seed=3)
    b = load_text_dataset(docs, validation_fraction=0.1, seed=3)
    c = load_text_dataset(docs, validation_fraction=0.1, seed=4)
    assert list(a.validation["text"]) == list(b.validation["text"]) != list(c.validation["text"])
    assert len(a.validation) == 20 and len(a.train) == 180
    assert not set(list(a.train["text"])) & set(list(a.validation["text"]))
    assert sorted(list(a.train["text"]) + list(a.validation["text"])) == sorted(docs)


def test_blank_documents_dropped_and_dedup(tmp_path):
    # WikiText's blank lines (" \n") crashed the reference project
    (tmp_path / "w.txt").write_text(" = Title = \n \n\nfirst line\n \nfirst line\nsecond\n")
    data = load_text_dataset(tmp_path / "w.txt", document="line", dedup=True,
                             validation_fraction=0.25)
    texts = list(data.train["text"]) + list(data.validation["text"])
    assert sorted(texts) == sorted([" = Title = ", "first line", "second"])
    assert data.dropped["duplicates"] == 1 and data.dropped["blank documents"] == 3
    assert "documents" in data.summary()


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "folder"])
def test_local_formats_and_column_detection(tmp_path, kind):
    rows = [{"id": i, "review": f"text number {i}", "label": ["neg", "pos"][i % 2]}
            for i in range(40)]
    if kind == "csv":
        import pandas as pd

        path = tmp_path / "d.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
    elif kind == "parquet":
        import pandas as pd

        path = tmp_path / "d.parquet"
        pd.DataFrame(rows).to_parquet(path)
    else:
        path = tmp_path / "d.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows))
        path = tmp_path if kind == "folder" else path
    data = load_text_dataset(path, task="classification", validation_fraction=0.1)
    assert data.text_column == "review" and data.label_column == "label"
    assert data.label_names == ["neg", "pos"] and data.num_classes == 2
    assert set(list(data.train["label"])) == {0, 1}


def test_seq2seq_pairs_detected():
    rows = [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(10)]
    data = load_text_dataset(rows, task="seq2seq")
    assert (data.text_column, data.target_column) == ("question", "answer")


def test_colab_upload_reads_the_uploaded_files(monkeypatch):
    files = types.SimpleNamespace(upload=lambda: {"mine.txt": b"one\n\ntwo\n\nthree"})
    colab = types.ModuleType("google.colab")
    colab.files = files
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    data = load_text_dataset("upload", validation_fraction=0.34)
    assert sorted(list(data.train["text"]) + list(data.validation["text"])) == ["one", "three", "two"]


# ---- bad input ---------------------------------------------------------------------------
def test_empty_dataset(tmp_path):
    (tmp_path / "e.txt").write_text("\n\n   \n")
    with pytest.raises(UserError, match="has no text"):
        load_text_dataset(tmp_path / "e.txt")


def test_not_utf8(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\u00e9 ol\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.txt is not UTF-8 text: byte 3 (.|\n)*iconv"):
        load_text_dataset(tmp_path / "latin.txt")


def test_missing_column_lists_the_columns():
    with pytest.raises(UserError, match=r"'body'.*not in the dataset(.|\n)*text \(string\)"):
        load_text_dataset([{"text": "a"}, {"text": "b"}], text_column="body")
    with pytest.raises(UserError, match="label column for classification"):
        load_text_dataset(["a", "b"], task="classification")
    with pytest.raises(UserError, match="which column holds the text"):
        load_text_dataset([{"a": "x", "b": "y"}, {"a": "z", "b": "w"}])


def test_hub_unreachable_suggests_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match=r"reach the Hugging Face Hub(.|\n)*local path"):
        load_text_dataset("wikitext", config="wikitext-2-raw-v1")


def test_bad_arguments_reported_together(tmp_path):
    with pytest.raises(UserError, match=r"task='lm'.*validation_fraction=0.9"):
        load_text_dataset(["a"], task="lm", validation_fraction=0.9)
    with pytest.raises(UserError, match="File not found"):
        load_text_dataset(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="too few for a train/validation"):
        load_text_dataset(["only one"])
