"""The public zoo as a table of cases: each model through the folder path, the loopback Gist API
and the CLI gives the expected task, vocab size, max length, exit code and error message."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ZOO, zoo_cases, zoo_expected

from utils import adapt, load_model
from utils.__main__ import main
from utils.errors import UserError

CASES = zoo_cases()
HEALTHY = [c for c in CASES if zoo_expected(c)["exit_code"] == 0]
DEFECTIVE = [c for c in CASES if zoo_expected(c)["exit_code"] == 1]  # load, then fail checks
BROKEN = [c for c in CASES if zoo_expected(c)["exit_code"] == 2]


def quiet(_msg):
    pass


def test_the_zoo_has_healthy_and_broken_models():
    assert len(HEALTHY) >= 7 and len(BROKEN) >= 4 and len(DEFECTIVE) >= 9


def check_adapter(adapter, expected):
    assert adapter.task == expected["task"], adapter.evidence["task"]
    assert adapter.vocab_size == expected["vocab_size"], adapter.evidence["vocab_size"]
    assert adapter.max_seq_len == expected["max_seq_len"], adapter.evidence["max_seq_len"]
    if expected.get("num_classes") is not None:
        assert adapter.num_classes == expected["num_classes"]
    batch = adapter.make_inputs(2, min(8, adapter.max_seq_len or 8))
    if expected.get("crashes_in_training"):  # its defect: what Tier 1 must report once
        adapter.model.eval()
    loss = adapter.loss(batch)
    assert loss.isfinite()
    if loss.requires_grad:  # the detached_output defect has none, by design
        loss.backward()


@pytest.mark.parametrize("name", HEALTHY + DEFECTIVE)
def test_adapts_from_folder(name):
    check_adapter(adapt(load_model(ZOO / name, say=quiet)), zoo_expected(name))


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_from_gist(name, gist_server):
    gid = gist_server.add_folder(ZOO / name)
    loaded = load_model(f"https://gist.github.com/octocat/{gid}", say=quiet)
    assert loaded.source["gist_id"] == gid
    check_adapter(adapt(loaded), zoo_expected(name))


def load_and_adapt(source):
    return adapt(load_model(source, say=quiet))


@pytest.mark.parametrize("name", BROKEN)
def test_broken_from_folder_and_gist(name, gist_server):
    pattern = zoo_expected(name)["error_pattern"]
    with pytest.raises(UserError) as from_folder:
        load_and_adapt(ZOO / name)
    assert re.search(pattern, from_folder.value.message, re.IGNORECASE | re.DOTALL), \
        from_folder.value.message
    gid = gist_server.add_folder(ZOO / name)
    with pytest.raises(UserError) as from_gist:
        load_and_adapt(gid)
    assert re.search(pattern, from_gist.value.message, re.IGNORECASE | re.DOTALL)


# the whole zoo runs in CI; `make test-fast` keeps one case of each outcome as a smoke test
SMOKE = {HEALTHY[0], DEFECTIVE[0], BROKEN[0]}


@pytest.mark.parametrize("name", [pytest.param(c, marks=() if c in SMOKE else pytest.mark.slow)
                                  for c in CASES])
def test_cli_on_each(name, tmp_path, capsys):
    expected = zoo_expected(name)
    out = tmp_path / "report.json"
    code = main(["validate", str(ZOO / name), "--json", str(out)])
    assert code == expected["exit_code"], capsys.readouterr().err
    report = json.loads(out.read_text())
    if code == 2:
        assert report["model"] is None
        assert re.search(expected["error_pattern"], report["error"]["message"],
                         re.IGNORECASE | re.DOTALL)
    else:
        model = report["model"]
        assert (model["task"], model["vocab_size"], model["max_seq_len"]) == (
            expected["task"], expected["vocab_size"], expected["max_seq_len"])
        checks = {c["name"]: c for c in report["checks"]}
        failing = sorted(n for n, c in checks.items() if c["status"] in ("fail", "error"))
        assert failing == sorted(expected["failing_checks"])
        # each finding says what is wrong in the user's terms, not only that something is
        diagnosis = expected.get("diagnosis", {})
        assert sorted(diagnosis) == failing, "every failing check of a zoo case has a diagnosis"
        for name, pattern in diagnosis.items():
            assert re.search(pattern, checks[name]["summary"], re.DOTALL), checks[name]["summary"]
        # one defect, one finding: the checks it also stopped (a crash, an inverted mask) say
        # they depend on it
        dependents = sorted(n for n, c in checks.items() if c["status"] == "skip"
                            and c["summary"].startswith("Depends on "))
        assert dependents == sorted(expected.get("dependents", []))
        for name in dependents:
            assert any(checks[name]["summary"].startswith(f"Depends on {first}: ")
                       for first in failing), checks[name]["summary"]
