"""push_to_hub / ``testbench push`` against a loopback Hub (tests/hub_server.py).

Each push runs in a subprocess with ``HF_HUB_OFFLINE`` unset and ``HF_ENDPOINT`` set before
``huggingface_hub`` is imported, as a user's shell would have them; ``HF_HOME`` is a temporary
folder, so no saved login is found.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubServer
from training.tiny_lm import write_tiny_lm

pytest.importorskip("huggingface_hub")

TOKEN = "hf_testTOKENnotreal0123456789abcdef"
READ_TOKEN = "hf_readONLYtoken0123456789abcdef"
WRONG_TOKEN = "hf_wrongTOKEN0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]

# Runs pushes one after another in one process (importing utils costs seconds): each case
# sets its own HF_TOKEN / HF_ENDPOINT first — push_to_hub reads both at every call.
PUSHES = """
import json, os, sys
from utils.errors import UserError
from utils.training.hub import push_to_hub
for case in json.loads(sys.argv[1]):
    for key, value in case.get("env", {}).items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    try:
        r = push_to_hub(case["folder"], case["repo"], private=case.get("private", True),
                        force=case.get("force", False))
        print(json.dumps(r.to_dict()))
    except UserError as e:
        print(json.dumps({"error": e.message}))
"""


def export_dir(root: Path, *, parity: str | None = None, card: bool = True) -> Path:
    """An export output: ``folder/`` (card, weights, config, model.py) and ``export.json``."""
    from safetensors.torch import save_file
    from torch import randn

    folder = write_tiny_lm(root / "folder")
    save_file({"tok.weight": randn(300, 32)}, str(folder / "model.safetensors"))
    if card:
        (folder / "README.md").write_text("---\nlibrary_name: pytorch\n---\n# TinyLM\n")
    if parity is not None:
        (root / "export.json").write_text(json.dumps({  # as export_utilities writes it
            "ok": False, "failed": ["onnx"], "formats": {
                "folder": {"status": "ok"}, "onnx": {"status": parity}}}))
    return root


def run(args: list[str], hub_url: str, tmp_path: Path, token: str | None = TOKEN,
        extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "HF_HUB_DISABLE_XET")}
    env.update({"HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf-home"),
                "PYTHONPATH": str(ROOT), **(extra_env or {})})
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)


def pushes(hub_url: str, tmp_path: Path, cases: list[dict], **kw) -> list[dict]:
    """Each case's result (``to_dict()``) or ``{"error": message}``; the token in no output."""
    proc = run(["-c", PUSHES, json.dumps(cases, default=str)], hub_url, tmp_path, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for secret in (TOKEN, READ_TOKEN, WRONG_TOKEN):
        assert secret not in proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(cases), proc.stdout + proc.stderr[-2000:]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def hub():
    with HubServer(tokens={TOKEN: "alice", READ_TOKEN: "alice"}, read_only={READ_TOKEN}) as s:
        yield s


def _refused_url() -> str:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def outcomes(hub, tmp_path_factory):
    """Every push case below, run in one subprocess against the module's Hub; what the Hub
    recorded for each case is kept beside its outcome."""
    tmp = tmp_path_factory.mktemp("hub")
    good, failed = export_dir(tmp / "good"), export_dir(tmp / "failed", parity="failed")
    cases = {
        "push": {"folder": good, "repo": "alice/tiny-lm"},
        "public": {"folder": good / "folder", "repo": "alice/pub", "private": False},
        "again": {"folder": good, "repo": "alice/pub", "private": False},
        "no_token": {"folder": good, "repo": "alice/a", "env": {"HF_TOKEN": None}},
        "401": {"folder": good, "repo": "alice/b", "env": {"HF_TOKEN": WRONG_TOKEN}},
        "403": {"folder": good, "repo": "alice/c", "env": {"HF_TOKEN": READ_TOKEN}},
        "namespace": {"folder": good, "repo": "bob/tiny-lm", "env": {"HF_TOKEN": TOKEN}},
        "refused": {"folder": good, "repo": "alice/d", "env": {"HF_ENDPOINT": _refused_url()}},
        "parity": {"folder": failed, "repo": "alice/e", "env": {"HF_ENDPOINT": hub.url}},
        "forced": {"folder": failed / "folder", "repo": "alice/f", "force": True},
    }
    seen = {}

    def second_card():  # "again" pushes a changed card
        (good / "folder" / "README.md").write_text("# TinyLM, second version\n")

    first = list(cases)[:2]
    out = pushes(hub.url, tmp, [cases[k] for k in first])
    second_card()
    out += pushes(hub.url, tmp, [cases[k] for k in list(cases)[2:]])
    for key, result in zip(cases, out, strict=True):
        seen[key] = result
    return seen


def test_push_creates_the_repo_and_commits_card_and_weights(hub, outcomes, tmp_path_factory):
    out = outcomes["push"]
    assert out["url"] == f"{hub.url}/alice/tiny-lm" and out["private"] is True
    repo = hub.repos["alice/tiny-lm"]
    assert repo["visibility"] == "private"
    assert set(repo["files"]) == {"README.md", "config.json", "model.py", "model.safetensors"}
    assert sorted(out["files"]) == sorted(repo["files"])
    assert repo["commits"][0]["summary"] == "Upload folder from Transformer Testbench"
    # the first case: the requests up to its commit (README.md is checked by validate-yaml;
    # agent-harnesses is the client's own telemetry)
    paths = [r["path"].split("?")[0] for r in hub.requests]
    upto = paths.index("/api/models/alice/tiny-lm/commit/main") + 1
    requests = [r for r in hub.requests[:upto] if r["path"] != "/api/agent-harnesses"]
    assert [r["path"] for r in requests] == [
        "/api/repos/create", "/api/validate-yaml", "/api/models/alice/tiny-lm/preupload/main",
        "/api/models/alice/tiny-lm/commit/main"]
    # every request carried the token, and only in the Authorization header
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in requests)


def test_the_committed_bytes_are_the_folders(hub, outcomes, tmp_path):
    from safetensors.torch import load

    files = hub.repos["alice/tiny-lm"]["files"]
    assert load(files["model.safetensors"])["tok.weight"].shape == (300, 32)
    assert json.loads(files["config.json"])["model_name"] == "TinyLM"
    assert files["README.md"].startswith(b"---\nlibrary_name")


def test_pushing_again_reuses_the_repo_and_public_is_honoured(hub, outcomes):
    assert outcomes["public"]["private"] is False and "error" not in outcomes["again"]
    repo = hub.repos["alice/pub"]
    assert repo["visibility"] == "public"
    assert len(repo["commits"]) == 2  # the second create_repo answered 409: exist_ok
    assert repo["files"]["README.md"] == b"# TinyLM, second version\n"


def test_weights_go_through_lfs_when_the_hub_asks(tmp_path):
    # hf_xet would send LFS files to Xet storage, which this double does not emulate; without
    # it huggingface_hub uses the LFS batch API and a PUT of the bytes
    with HubServer(tokens={TOKEN: "alice"}, lfs_patterns=("*.safetensors",)) as hub:
        exp = export_dir(tmp_path / "exp")
        pushes(hub.url, tmp_path, [{"folder": exp, "repo": "alice/lfs"}],
               extra_env={"HF_HUB_DISABLE_XET": "1"})
        commit = hub.repos["alice/lfs"]["commits"][-1]
        assert commit["kinds"]["model.safetensors"] == "lfsFile"
        assert commit["kinds"]["README.md"] == "file"
        assert [r["path"] for r in hub.requests if r["method"] == "PUT"]
        weights = (exp / "folder" / "model.safetensors").read_bytes()
        assert hub.repos["alice/lfs"]["files"]["model.safetensors"] == weights


def test_cli_push_writes_the_envelope_and_never_the_token(hub, tmp_path):
    exp = export_dir(tmp_path / "exp")
    proc = run(["-m", "utils", "push", str(exp), "--repo", "alice/cli", "--public",
                "--json", str(tmp_path / "push.json")], hub.url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"to {hub.url}/alice/cli (public)" in proc.stdout
    doc = json.loads((tmp_path / "push.json").read_text())
    assert doc["command"] == "push" and doc["error"] is None and doc["schema_version"] == 1
    assert doc["url"] == f"{hub.url}/alice/cli" and "model.safetensors" in doc["files"]
    assert hub.repos["alice/cli"]["visibility"] == "public"
    written = [p.read_text(errors="replace") for p in tmp_path.rglob("*")
               if p.is_file() and p.suffix != ".safetensors"]
    assert not any(TOKEN in text for text in [proc.stdout, proc.stderr, *written])


def test_cli_errors_exit_2_with_the_error_in_the_json(hub, tmp_path):
    proc = run(["-m", "utils", "push", str(export_dir(tmp_path / "exp")), "--repo", "alice/x",
                "--json", str(tmp_path / "e.json")], hub.url, tmp_path, token=WRONG_TOKEN)
    assert proc.returncode == 2 and "401" in proc.stderr
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["error"]["type"] == "UserError" and doc["url"] is None
    assert WRONG_TOKEN not in (tmp_path / "e.json").read_text() + proc.stderr + proc.stdout


def test_cli_usage_error_is_64(capsys):
    from utils.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["push", "somewhere"])
    assert exit_.value.code == 64 and "--repo" in capsys.readouterr().err


# ---- one test per error a user can meet --------------------------------------------------
def test_no_token(outcomes):
    error = outcomes["no_token"]["error"]
    assert "No Hugging Face token" in error and "secret HF_TOKEN" in error


def test_a_rejected_token_is_401(outcomes):
    assert "rejected the token (401 Unauthorized)" in outcomes["401"]["error"]


def test_a_read_only_token_is_403(outcomes):
    assert "may not write to alice/c (403 Forbidden)" in outcomes["403"]["error"]


def test_another_users_namespace_is_403(outcomes):
    error = outcomes["namespace"]["error"]
    assert "403" in error and "'bob'" in error


def test_connection_refused(outcomes):
    assert "could not be reached" in outcomes["refused"]["error"]


def test_offline_mode(hub, tmp_path):
    before = len(hub.requests)
    [out] = pushes(hub.url, tmp_path, [{"folder": export_dir(tmp_path / "exp"),
                                         "repo": "alice/off"}],
                   extra_env={"HF_HUB_OFFLINE": "1"})
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in out["error"]
    assert len(hub.requests) == before


@pytest.mark.parametrize("repo", ["tiny-lm", "alice/tiny/lm", "alice/", "alice/tiny lm",
                                  "alice/-x", "alice/a--b"])
def test_a_repo_id_that_is_not_user_name(repo, tmp_path):
    from utils.errors import UserError
    from utils.training.hub import push_to_hub

    with pytest.raises(UserError, match="is not a Hub repository id"):
        push_to_hub(export_dir(tmp_path / "exp"), repo, token=TOKEN)


def test_a_folder_that_is_not_an_export(tmp_path):
    from utils.errors import UserError
    from utils.training.hub import push_to_hub

    write_tiny_lm(tmp_path / "plain")  # model.py + config.json, no weights
    with pytest.raises(UserError, match=r"not an exported model folder: it has no "
                       r"model\.safetensors"):
        push_to_hub(tmp_path / "plain", "alice/x", token=TOKEN)
    with pytest.raises(UserError, match="is not a folder"):
        push_to_hub(tmp_path / "missing", "alice/x", token=TOKEN)


def test_an_export_that_failed_parity_is_refused_unless_forced(hub, outcomes):
    assert "failed parity: onnx" in outcomes["parity"]["error"]
    assert "alice/e" not in hub.repos
    assert "failed parity" in outcomes["forced"]["notes"][0]
    assert "model.safetensors" in hub.repos["alice/f"]["files"]


def test_a_folder_marked_by_the_export_is_refused(tmp_path):
    from utils.errors import UserError
    from utils.training.hub import push_to_hub

    folder = export_dir(tmp_path / "exp") / "folder"
    (folder / "PARITY_FAILED.txt").write_text("parity failed")
    with pytest.raises(UserError, match="failed parity: folder"):
        push_to_hub(folder, "alice/x", token=TOKEN)


def test_the_token_is_in_no_result(outcomes):
    text = json.dumps(outcomes)
    assert all(t not in text for t in (TOKEN, READ_TOKEN, WRONG_TOKEN))
