"""Which gist a notebook runs (form field → page URL → GIST_ID), the hand-off file, the link."""

from __future__ import annotations

import json

import pytest

from utils import environment
from utils.errors import UserError
from utils.handoff import (
    ENV_VAR,
    FORM_FIELD,
    PAGE_URL,
    gist_id_of,
    handoff_path,
    read_handoff,
    resolve_gist_id,
    training_notebook_url,
    write_handoff,
)

GID = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
REV = "a" * 40
COLAB = "https://colab.research.google.com/github/org/repo/blob/main/template.ipynb"

# (form value, page URL, environment, expected id, expected source)
RESOLVE_CASES = [
    (GID, None, {}, GID, FORM_FIELD),
    (f"  {GID.upper()}\n", None, {}, GID, FORM_FIELD),
    (f"https://gist.github.com/alice/{GID}", None, {}, GID, FORM_FIELD),
    (f"https://gist.github.com/alice/{GID}/{REV}", None, {}, GID, FORM_FIELD),
    (f"{COLAB}?gist_id={GID}", None, {}, GID, FORM_FIELD),
    (f"{COLAB}#gist_id={GID}", None, {}, GID, FORM_FIELD),
    (GID, f"{COLAB}?gist_id={OTHER}", {"GIST_ID": OTHER}, GID, FORM_FIELD),  # form wins
    ("", f"{COLAB}?gist_id={GID}", {"GIST_ID": OTHER}, GID, PAGE_URL),  # then the URL
    ("   ", f"{COLAB}#scrollTo=x&gist_id={GID}", {}, GID, PAGE_URL),
    ("", COLAB, {"GIST_ID": GID}, GID, ENV_VAR),  # a URL without gist_id is passed over
    ("", None, {"GIST_ID": f"https://gist.github.com/bob/{GID}"}, GID, ENV_VAR),
    ("", "", {"GIST_ID": GID}, GID, ENV_VAR),
]


@pytest.mark.parametrize(("form", "url", "env", "gist_id", "found_in"), RESOLVE_CASES)
def test_resolve_gist_id_first_found_wins(form, url, env, gist_id, found_in):
    assert resolve_gist_id(form, page_url=url, env=env) == (gist_id, found_in)


def test_resolve_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("GIST_ID", GID)
    assert resolve_gist_id() == (GID, ENV_VAR)


@pytest.mark.parametrize("env", [{}, {"GIST_ID": ""}, {"GIST_ID": "  "}])
def test_no_id_anywhere_says_where_to_paste_it(env):
    with pytest.raises(UserError, match=r"No gist id was given(.|\n)*the page URL could not be "
                       r"read(.|\n)*Paste your gist id or URL into the GIST_ID field at the top "
                       r"of this cell and run again"):
        resolve_gist_id("", page_url=None, env=env)
    with pytest.raises(UserError, match=r"all were empty\.\n"):
        resolve_gist_id("", page_url=COLAB, env=env)


@pytest.mark.parametrize("value", ["hello", "https://example.com/page", "12345678901234567890x",
                                   f"{COLAB}?gist_id=nothex", "./my_model", "utils"])
def test_a_form_value_that_is_no_gist_says_what_was_received(value):
    with pytest.raises(UserError, match=r"The GIST_ID form field holds '" + value[:20]):
        resolve_gist_id(value, page_url=f"{COLAB}?gist_id={GID}", env={"GIST_ID": GID})


def test_a_long_bad_form_value_is_shortened_in_the_message():
    with pytest.raises(UserError, match=r"holds 'x{117}\.\.\.', which is not a gist id"):
        resolve_gist_id("x" * 500, env={})


def test_a_bad_environment_variable_is_named():
    with pytest.raises(UserError, match=r"The GIST_ID environment variable holds 'oops'(.|\n)*"
                       r"Fix: Copy the id"):
        resolve_gist_id("", page_url=None, env={"GIST_ID": "oops"})


def test_gist_id_of_is_none_for_paths_and_junk(tmp_path):
    (tmp_path / "model.py").write_text("x = 1\n")
    assert gist_id_of(str(tmp_path)) is None
    assert gist_id_of(str(tmp_path / "model.py")) is None
    assert gist_id_of("") is None
    assert gist_id_of(f"gist.github.com/alice/{GID}") == GID


# ---- the hand-off file ---------------------------------------------------------------------
def test_handoff_round_trip_under_testbench_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBENCH_HOME", str(tmp_path / "home"))
    assert read_handoff() is None  # nothing written yet: no warning, no error
    path = write_handoff(GID, REV)
    assert path == tmp_path / "home" / "handoff.json" == handoff_path()
    data = json.loads(path.read_text())
    assert set(data) == {"gist_id", "revision", "written_at", "tool_version"}
    assert (data["gist_id"], data["revision"]) == (GID, REV)
    assert read_handoff() == data
    write_handoff(OTHER, None)  # a newer hand-off replaces the old one, atomically
    assert read_handoff()["gist_id"] == OTHER
    assert sorted(p.name for p in path.parent.iterdir()) == ["handoff.json"]  # no temp files


@pytest.mark.parametrize(("content", "why"), [
    (b"{not json", "cannot be read"),
    (b"\xff\xfe\x00garbage", "cannot be read"),
    (b"[1, 2]", "holds no valid gist_id"),
    (b'{"gist_id": "not a gist"}', "holds no valid gist_id"),
    (b'{"revision": "abc"}', "holds no valid gist_id"),
])
def test_a_corrupt_handoff_is_ignored_with_a_warning(content, why):
    path = handoff_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with pytest.warns(UserWarning, match=why):
        assert read_handoff() is None
    assert path.parent == environment.testbench_home()


# ---- the link to training.ipynb ------------------------------------------------------------
def test_training_notebook_url():
    assert training_notebook_url(GID, "org/repo") == (
        f"https://colab.research.google.com/github/org/repo/blob/main/training.ipynb?gist_id={GID}")
    assert training_notebook_url(f"https://gist.github.com/a/{GID}", "my-org/my.repo",
                                 "release/v1 beta") == (
        "https://colab.research.google.com/github/my-org/my.repo/blob/release/v1%20beta/"
        f"training.ipynb?gist_id={GID}")


@pytest.mark.parametrize(("gist_id", "repo", "ref", "pattern"), [
    (GID, "repo-without-owner", "main", r"REPO is 'repo-without-owner'(.|\n)*'owner/name'"),
    (GID, "<org>/<repo>", "main", r"REPO is '<org>/<repo>'"),
    (GID, "org/repo", " ", r"REF is empty"),
    ("zzz", "org/repo", "main", r"gist id for the training link holds 'zzz'"),
])
def test_training_notebook_url_errors(gist_id, repo, ref, pattern):
    with pytest.raises(UserError, match=pattern):
        training_notebook_url(gist_id, repo, ref)
