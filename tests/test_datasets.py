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
    data = load_text_dataset(files[0])  # one play: one document, its last 5% held out
    assert data.stats["train"].documents == data.stats["validation"].documents == 1
    assert 0.04 < data.stats["validation"].characters / 88_927 < 0.06
    paragraphs = load_text_dataset(files[0], document="paragraph")
    assert paragraphs.stats["train"].documents > 500
    assert paragraphs.stats["validation"].documents > 10
    assert all(t.strip() for t in list(paragraphs.train["text"]))


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
                             validation_fraction=0.25, holdout="documents")
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
    data = load_text_dataset("upload", validation_fraction=0.34, document="paragraph",
                             holdout="documents")
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
    with pytest.raises(UserError, match=r"too few for a train/validation(.|\n)*holdout='tail'"):
        load_text_dataset(["only one"], holdout="documents")
    with pytest.raises(UserError, match=r"holdout='every'"):
        load_text_dataset(["a"], holdout="every")
    with pytest.raises(UserError, match=r"holdout='tail' cuts documents in two.*classification"):
        load_text_dataset([{"text": "a b", "label": 0}] * 4, task="classification",
                          holdout="tail")
    with pytest.raises(UserError, match=r"document='page'(.|\n)*--document"):
        load_text_dataset(tmp_path, document="page")


# ---- text as written ---------------------------------------------------------------------
PLAY = ("ACT I\n\nSCENE I. A heath.\n\nKING:\nWho goes there?\nStand and unfold.\n\n"
        "QUEEN:\nA friend.\n\n") * 40


def test_a_text_file_reaches_the_model_as_written(tmp_path):
    """Blank lines and line breaks are text: the train and validation parts of a file, put
    back together, are the file, byte for byte (the validation part begins at a line start)."""
    (tmp_path / "play.txt").write_text(PLAY)
    data = load_text_dataset(tmp_path / "play.txt")
    head, tail = list(data.train["text"]), list(data.validation["text"])
    assert len(head) == len(tail) == 1 and head[0] + tail[0] == PLAY
    assert "\n\n" in head[0] and head[0].endswith("\n")
    assert 0.04 < len(tail[0]) / len(PLAY) < 0.06
    assert "as written" in data.describe() and "last 5% of every document" in data.describe()


def test_a_file_without_blank_lines_trains_and_tiny_files_keep_a_line_to_score(tmp_path):
    (tmp_path / "poem.txt").write_text("line one of a poem\nline two of it\nline three\n")
    data = load_text_dataset(tmp_path / "poem.txt")
    assert list(data.train["text"]) == ["line one of a poem\nline two of it\n"]
    assert list(data.validation["text"]) == ["line three\n"]
    assert load_text_dataset(tmp_path / "poem.txt", validation_fraction=0).stats[
        "validation"].documents == 0


def test_auto_holds_out_tails_for_few_long_documents_and_documents_otherwise(tmp_path):
    few = [PLAY * 10, PLAY.lower() * 10, PLAY.upper() * 10]  # tails of 1,500 characters
    data = load_text_dataset(few)
    assert data.stats["train"].documents == data.stats["validation"].documents == 3
    assert "last 5%" in data.split_by
    short = [PLAY[:200 + i] for i in range(40)]  # tails of 10 characters: too short to score
    data = load_text_dataset(short)
    assert (data.stats["train"].documents, data.stats["validation"].documents) == (38, 2)
    many = [f"document {i}\nwith two lines" for i in range(400)]  # 20 held out: by document
    data = load_text_dataset(many)
    assert (data.stats["train"].documents, data.stats["validation"].documents) == (380, 20)
    assert "whole documents" in data.split_by
    assert not set(list(data.train["text"])) & set(list(data.validation["text"]))


def test_a_folder_of_plays_keeps_every_play_in_training(tmp_path):
    for i in range(4):
        (tmp_path / f"play{i}.txt").write_text(f"PLAY {i}\n\n" + PLAY * 5)
    data = load_text_dataset(tmp_path, validation_fraction=0.1)
    assert sorted(t.split("\n")[0] for t in data.train["text"]) == [f"PLAY {i}" for i in range(4)]
    assert all(t.startswith(("QUEEN", "KING", "A friend", "ACT", "SCENE", "Who", "Stand", "\n"))
               for t in data.validation["text"])


def test_no_network_without_offline_variables_fails_fast_with_what_to_do(tmp_path):
    """The Hub libraries retry for ~27 s without a network; the one connection test answers at
    once, and the message says what to do (a local path, or the shipped corpus)."""
    import os
    import subprocess
    import time

    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing listens, as offline
    env["TESTBENCH_HOME"] = str(tmp_path)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", (
        "from utils.training.dataset_utilities import load_text_dataset\n"
        "from utils.errors import UserError\n"
        "try:\n"
        "    load_text_dataset('wikitext', config='wikitext-2-raw-v1')\n"
        "except UserError as e:\n"
        "    print(e)\n")], capture_output=True, text=True, env=env, timeout=120)
    seconds = time.monotonic() - started
    assert "Offline: 127.0.0.1 could not be reached" in proc.stdout, proc.stdout + proc.stderr
    assert "local path" in proc.stdout and "Retrying" not in proc.stderr
    print(f"failed in {seconds:.1f} s, imports included")
