"""Fetching gists over real HTTP from a loopback server that speaks the Gist API's JSON."""

from __future__ import annotations

import hashlib
import json

import pytest

from utils import environment, load_model
from utils.adapters.gist_client import fetch_gist
from utils.errors import UserError

MODEL = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, vocab_size, width=8):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, input_ids):
        return self.head(self.emb(input_ids))
"""
CONFIG = json.dumps({"vocab_size": 37})


def quiet(_msg):
    pass


def fetch(gist_id, revision=None, **kw):
    return fetch_gist(gist_id, revision, backoff=0.01, say=quiet, **kw)


def test_fetch_writes_files_and_provenance(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": CONFIG}, owner="alice")
    got = fetch(gid)
    assert got.owner == "alice" and got.revision == gist_server.revisions(gid)[0]
    assert (got.folder / "model.py").read_text() == MODEL
    assert got.files["model.py"] == hashlib.sha256(MODEL.encode()).hexdigest()
    assert got.folder.is_relative_to(environment.testbench_home())
    prov = json.loads((got.folder / ".provenance.json").read_text())
    assert prov["gist_id"] == gid and prov["revision"] == got.revision
    assert not [p for p in got.folder.parent.iterdir() if p.name.endswith(".tmp")]


def test_load_model_by_url_says_whose_code_runs(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": CONFIG}, owner="alice")
    notes = []
    loaded = load_model(f"https://gist.github.com/alice/{gid}", say=notes.append)
    assert loaded.model.emb.num_embeddings == 37
    rev = gist_server.revisions(gid)[0]
    assert loaded.source["gist_id"] == gid and loaded.source["revision"] == rev
    assert any(f"gist {gid} by @alice, revision {rev[:7]}" in n for n in notes)


def test_a_revision_is_fetched_as_it_was(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": CONFIG})
    old = gist_server.revisions(gid)[0]
    gist_server.add_gist({"model.py": MODEL, "config.json": json.dumps({"vocab_size": 99})},
                         gist_id=gid)
    assert load_model(gid, say=quiet).model.emb.num_embeddings == 99
    loaded = load_model(f"https://gist.github.com/alice/{gid}/{old}", say=quiet)
    assert loaded.model.emb.num_embeddings == 37 and loaded.source["revision"] == old


def test_cached_revision_needs_no_network(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": CONFIG})
    rev = gist_server.revisions(gid)[0]
    fetch(gid, rev)
    seen = len(gist_server.requests)
    again = fetch(gid, rev)
    assert again.from_cache and len(gist_server.requests) == seen


def test_truncated_files_come_from_raw_url(gist_server):
    big = MODEL + "\n" + "# padding\n" * 500
    gid = gist_server.add_gist({"model.py": big, "config.json": CONFIG}, truncate={"model.py"})
    got = fetch(gid)
    assert (got.folder / "model.py").read_text() == big
    assert any("/raw/" in r["path"] for r in gist_server.requests)


def test_all_python_files_are_fetched_for_sibling_imports(gist_server):
    model = MODEL.replace("from torch import nn\n", "from torch import nn\nfrom layers import W\n")
    model = model.replace("width=8", "width=W")
    gid = gist_server.add_gist({"model.py": model, "layers.py": "W = 5\n", "config.json": CONFIG})
    assert load_model(gid, say=quiet).model.emb.embedding_dim == 5


def test_weights_in_the_gist_are_loaded(gist_server, tmp_path):
    import io

    import torch

    from utils.adapters.config_mapping import build_model

    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "model.py").write_text(MODEL)
    loaded = load_model(folder, config={"vocab_size": 37}, say=quiet)
    trained, _ = build_model(loaded.model_class, loaded.module, {"vocab_size": 37})
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": CONFIG,
                                "weights.pt": buffer.getvalue()})
    got = load_model(gid, say=quiet)
    assert torch.equal(got.model.head.weight, trained.head.weight)
    assert got.source["weights"]["file"] == "weights.pt"


# ---- errors ------------------------------------------------------------------------------------
def test_not_found(gist_server):
    with pytest.raises(UserError, match=r"Gist 0{32} was not found \(HTTP 404\)") as info:
        fetch("0" * 32)
    assert "copy it again" in info.value.fix


def test_rate_limit_says_when_it_resets_and_how_a_token_helps(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL})
    gist_server.rate_limit(reset_in=1200)
    with pytest.raises(UserError, match=r"rate limit was reached") as info:
        fetch(gid)
    assert "in about 20 min" in info.value.why
    assert "GITHUB_TOKEN" in info.value.fix and "5,000" in info.value.fix


def test_token_is_sent_and_never_shown(gist_server, monkeypatch):
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": CONFIG})
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret123")
    notes = []
    load_model(gid, say=notes.append)
    assert gist_server.requests[-1]["headers"].get("Authorization") == "Bearer ghp_secret123"
    gist_server.rate_limit()
    with pytest.raises(UserError) as info:
        fetch(gid)
    assert "ghp_secret123" not in info.value.message + "".join(notes)
    assert "limit is used up" in info.value.fix


def test_server_errors_are_retried(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": CONFIG})
    gist_server.fail_next(502, count=2)
    assert fetch(gid, retries=3).gist_id == gid


def test_persistent_server_errors_give_up_clearly(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL})
    gist_server.fail_next(503, count=5)
    with pytest.raises(UserError, match=r"Could not reach the GitHub API .*HTTP 503") as info:
        fetch(gid, retries=2)
    assert "2 attempts failed" in info.value.why


def test_timeouts_are_retried_then_reported(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL})
    gist_server.stall_next(1.0, count=2)
    with pytest.raises(UserError, match=r"Could not reach the GitHub API"):
        fetch(gid, retries=2, timeout=0.2)


def test_offline_falls_back_to_the_newest_cached_revision(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": CONFIG})
    fetch(gid)
    gist_server.fail_next(500, count=10)
    notes = []
    got = fetch_gist(gid, backoff=0.01, retries=2, say=notes.append)
    assert got.from_cache and "using the cached copy" in notes[0]


def test_unreachable_api(monkeypatch):
    monkeypatch.setenv("GIST_API_URL", "http://127.0.0.1:9")  # nothing listens on discard
    with pytest.raises(UserError, match=r"Could not reach the GitHub API at http://127\.0\.0\.1:9"):
        fetch("a" * 32, retries=1)


def test_missing_model_py(gist_server):
    gid = gist_server.add_gist({"README.md": "# my model", "config.json": CONFIG})
    with pytest.raises(UserError, match=rf"Gist {gid} has no model\.py\.") as info:
        load_model(gid, say=quiet)
    assert "README.md" in info.value.why and "config.json" in info.value.why


def test_non_utf8_file_in_gist(gist_server):
    gid = gist_server.add_gist({"model.py": b"# \xff\xfe broken\n", "config.json": CONFIG})
    with pytest.raises(UserError, match=r"model\.py is not UTF-8 text \(byte 0xff at line 1\)"):
        load_model(gid, say=quiet)


def test_bad_json_in_gist(gist_server):
    gid = gist_server.add_gist({"model.py": MODEL, "config.json": "{'vocab_size': 3}"})
    with pytest.raises(UserError, match=r"config\.json is not valid JSON: .*line 1, column 2"):
        load_model(gid, say=quiet)


def test_a_server_that_is_not_the_gist_api(gist_server, monkeypatch):
    monkeypatch.setenv("GIST_API_URL", gist_server.url + "/raw")
    with pytest.raises(UserError, match=r"(not a gist|was not found)"):
        fetch("a" * 32)
