"""What the user typed → which source: a table of every accepted form, and the refusals."""

from __future__ import annotations

import pytest

from utils.adapters.sources import gist_id_from_url, parse_source
from utils.errors import UserError

GID = "0123456789abcdef0123456789abcdef"
REV = "a" * 40

GIST_FORMS = [
    (GID, GID, None),
    (GID.upper(), GID, None),
    ("aa5a315d61ae9438b18d", "aa5a315d61ae9438b18d", None),  # 20-hex ids of older gists
    (f"https://gist.github.com/alice/{GID}", GID, None),
    (f"https://gist.github.com/alice/{GID}/{REV}", GID, REV),
    (f"gist.github.com/alice/{GID}", GID, None),
    (f"https://gist.github.com/{GID}", GID, None),
    (f"https://gist.github.com/alice/{GID}.git", GID, None),
    (f"https://gist.github.com/alice/{GID}#file-model-py", GID, None),
    (f"https://gist.githubusercontent.com/alice/{GID}/raw/{REV}/model.py", GID, REV),
    (f"https://api.github.com/gists/{GID}", GID, None),
    (f"https://api.github.com/gists/{GID}/{REV}", GID, REV),
    (f"https://colab.research.google.com/github/org/repo/blob/main/template.ipynb?gist_id={GID}",
     GID, None),
    (f"https://colab.research.google.com/github/org/repo/blob/main/template.ipynb#gist_id={GID}",
     GID, None),
    (f"https://colab.research.google.com/drive/1x#scrollTo=abc&gist_id={GID}", GID, None),
    ("https://colab.research.google.com/github/o/r/blob/main/template.ipynb?gist_id="
     f"https%3A%2F%2Fgist.github.com%2Falice%2F{GID}", GID, None),
    (f"  {GID}\n", GID, None),
]


@pytest.mark.parametrize(("text", "gist_id", "revision"), GIST_FORMS)
def test_gist_forms(text, gist_id, revision):
    spec = parse_source(text)
    assert (spec.kind, spec.gist_id, spec.revision) == ("gist", gist_id, revision)


@pytest.mark.parametrize("url", [
    "https://colab.research.google.com/github/org/repo/blob/main/template.ipynb",
    "https://example.com/?q=1",
    "https://github.com/alice/repo",
    "",
])
def test_urls_without_a_gist(url):
    assert gist_id_from_url(url) is None


def test_local_folder_and_file(tmp_path):
    (tmp_path / "model.py").write_text("x = 1\n")
    assert parse_source(tmp_path).kind == "folder"
    spec = parse_source(tmp_path / "model.py")
    assert spec.kind == "file" and spec.path == (tmp_path / "model.py").resolve()


def test_a_folders_config_json_names_the_folder_and_other_files_are_refused(tmp_path):
    (tmp_path / "model.py").write_text("x = 1\n")
    for name in ("config.json", "notes.txt", "run.json"):
        (tmp_path / name).write_text("{}")
    spec = parse_source(tmp_path / "config.json")
    assert spec.kind == "folder" and spec.path == tmp_path.resolve()
    for name, kind in (("notes.txt", "a text file"), ("run.json", "a JSON file")):
        with pytest.raises(UserError, match=f"{name} is {kind}, not Python model code") as info:
            parse_source(tmp_path / name)
        assert f"Pass the folder instead: {tmp_path.resolve()}" in info.value.fix


def test_a_local_folder_named_like_a_gist_id_is_the_folder(tmp_path, monkeypatch):
    (tmp_path / GID).mkdir()
    monkeypatch.chdir(tmp_path)
    assert parse_source(GID).kind == "folder"


@pytest.mark.parametrize(("text", "pattern"), [
    ("", "No model source was given"),
    ("   ", "No model source was given"),
    ("./missing/model.py", r"No file or folder at '\./missing/model\.py'"),
    ("models/gpt", "No file or folder"),
    ("not a gist", "not a model source I can read"),
    ("https://example.com/page", "not a model source I can read"),
    ("0123456789abcdef", "not a model source"),  # 16 hex digits: no gist has that
])
def test_refusals_say_what_is_accepted(text, pattern):
    with pytest.raises(UserError, match=pattern) as info:
        parse_source(text)
    assert info.value.fix


def test_text_too_long_to_be_a_path_is_a_user_error_not_an_os_error():
    with pytest.raises(UserError, match="is not a model source I can read"):
        parse_source("x" * 5000)
    with pytest.raises(UserError, match="is not a model source I can read"):
        parse_source("bad\x00name")
