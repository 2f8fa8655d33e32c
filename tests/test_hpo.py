"""Hyperparameter search: workers sharing one study exactly, a killed worker's trial retried, a
search continued after a disconnect (from the mirror on a new VM), pruning, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from training.tiny_lm import corpus, write_tiny_lm

import utils
from utils.__main__ import main
from utils.errors import UserError

pytest.importorskip("optuna")
pytest.importorskip("optuna_integration")
pytest.importorskip("lightning")

import optuna
from optuna.trial import TrialState

from utils.tier3.search import hyperparameter_search
from utils.tier3.search_space import SearchSpace
from utils.tier3.search_trials import counted, duplicate_of, surplus
from utils.tier3.study_storage import recover_running_trials
from utils.training.config import ConfigError, TrainingConfig

SCRIPT = Path(__file__).parent / "training" / "run_search.py"
QUIET = {"say": lambda m: None, "progress": False}
# trials of 8 steps, validated every 2 (the smoke preset's 2 validation batches)
FAST = ["--preset", "smoke", "--seq-len", "32", "--steps-per-trial", "8", "--heartbeat", "1"]


@pytest.fixture
def model_and_data(tmp_path):
    folder = write_tiny_lm(tmp_path / "tiny")
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(corpus(40)))
    return folder, data


@pytest.fixture
def one_thread():
    """Training a model this small is fastest on one thread, and the workers use the other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def worker(args: list[str], kill: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kill:
        env["TB_KILL_IN_TRIAL"] = kill
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=Path(__file__).parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=400)
    return proc.returncode, err


def load(storage: str, name: str):
    return optuna.load_study(study_name=name, storage=storage)


def assert_no_duplicates(trials) -> None:
    sets = [tuple(sorted(t.params.items())) for t in counted(trials)]
    assert len(sets) == len(set(sets)), sets


def survivor_and_doomed(common: list[str], tmp_path: Path) -> tuple[int, int]:
    """Two workers of one study, one SIGKILLed in its 2nd trial; ``(doomed pid, survivor pid)``
    once the survivor has finished (exit 0) the study."""
    survivor = worker([*common, "--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json")])
    doomed = worker([*common, "--out", str(tmp_path / "a")], kill="2:1")  # in its 2nd trial
    code_a, err_a = finish(doomed)
    code_b, err_b = finish(survivor)
    assert code_a == -signal.SIGKILL, err_a[-3000:]
    assert code_b == 0, err_b[-3000:]
    return doomed.pid, survivor.pid


def assert_shared_and_rerun(trials, total: int, killed_pid: int, survivor_pid: int):
    """Two workers shared one study: exactly ``total`` counted trials, none twice, both did real
    work, and the killed worker's trial was failed by the heartbeat and run again, with the
    same parameters, by the survivor. Returns ``(killed trial, its retry)``."""
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(counted(trials)) == total  # the study's total, exactly: no overshoot
    assert_no_duplicates(trials)
    by = {pid: [t for t in counted(trials) if t.user_attrs["worker"].endswith(f":{pid}")]
          for pid in (killed_pid, survivor_pid)}
    assert by[killed_pid] and by[survivor_pid]  # both did real work
    killed = [t for t in trials if t.state == TrialState.FAIL
              and t.user_attrs.get("worker", "").endswith(f":{killed_pid}")]
    assert len(killed) == 1, "the heartbeat marks the killed worker's trial failed"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retries) == 1 and retries[0].params == killed[0].params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].user_attrs["worker"].endswith(f":{survivor_pid}")
    return killed[0], retries[0]


@pytest.mark.slow
def test_two_workers_share_one_study_and_the_survivor_retries_the_killed_ones_trial(
        tmp_path, model_and_data):
    folder, data = model_and_data
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    common = [str(folder), "--data", str(data), "--trials", "8", "--storage", storage,
              "--study-name", "shared", *FAST]
    doomed, survivor = survivor_and_doomed(common, tmp_path)

    trials = load(storage, "shared").get_trials()
    killed, retry = assert_shared_and_rerun(trials, 8, doomed, survivor)

    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["command"] == "search" and doc["error"] is None
    assert doc["best_value"] == min(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert set(doc["best_params"]) == {"lr", "warmup_steps", "weight_decay", "batch_size",
                                       "dropout"}
    rows = {r["number"]: r for r in doc["trials"]}
    assert killed.number not in rows  # replaced by its retry, which says so
    assert rows[retry.number]["retry_of"] == killed.number
    assert {"number", "state", "value", "params"} <= rows[retry.number].keys()


@pytest.mark.slow
def test_a_killed_search_continues_when_called_again_and_on_a_new_vm_from_the_mirror(
        tmp_path, model_and_data, one_thread, capsys):
    folder, data = model_and_data
    local, mirror = tmp_path / "search", tmp_path / "drive"
    args = [str(folder), "--data", str(data), "--study-name", "s", "--out", str(local),
            "--mirror", str(mirror), *FAST]
    code, err = finish(worker([*args, "--trials", "3"], kill="2:1"))  # before any pruning
    assert code == -signal.SIGKILL, err[-3000:]
    db = f"sqlite:///{local / 'study.db'}"
    before = load(db, "s").get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]

    # called again on the same machine: the killed trial is failed by the heartbeat, run again
    assert main(["search", *args, "--trials", "3", "--json", str(tmp_path / "again.json")]) == 0
    trials = load(db, "s").get_trials()
    assert len(counted(trials)) == 3 and trials[0].value == before[0].value
    assert trials[1].state == TrialState.FAIL
    assert [t.number for t in trials if t.system_attrs.get("failed_trial") == 1]

    # a new VM: the local disk is gone, the mirror (Drive) has the study
    import shutil

    shutil.rmtree(local)
    assert main(["search", *args, "--trials", "4", "--json", str(tmp_path / "vm.json")]) == 0
    assert "Continuing the study from the mirror's copy" in capsys.readouterr().err
    doc = json.loads((tmp_path / "vm.json").read_text())
    assert len(doc["trials"]) == 4 and doc["n_trials"] == 4
    assert doc["trials"][0]["value"] == before[0].value
    new = [t for t in load(db, "s").get_trials() if t.user_attrs.get("worker")]
    assert len({t.user_attrs["worker"] for t in new}) >= 2
    assert_no_duplicates(load(db, "s").get_trials())


def test_pruning_prunes_bad_learning_rates_and_trials_start_from_the_same_weights(
        tmp_path, model_and_data, one_thread):
    from utils.training.training_core import train

    folder, data = model_and_data
    loaded = utils.load_model(folder, say=lambda m: None)
    initial = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    config = TrainingConfig(max_steps=12, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2,
                            val_batches=2, log_every=4, precision="32", accelerator="cpu",
                            out_dir=str(tmp_path / "search"))
    result = hyperparameter_search(loaded, str(data), {"lr": (1e-6, 1e-2)}, n_trials=8,
                                   config=config, **QUIET)
    frame = result.trials
    assert len(frame) == 8 and set(frame["state"]) <= {"COMPLETE", "PRUNED"}
    pruned, complete = frame[frame.state == "PRUNED"], frame[frame.state == "COMPLETE"]
    assert len(pruned) >= 2 and (pruned.steps < 12).all() and (complete.steps == 12).all()
    assert result.steps_trained < 8 * 12
    assert result.best_config.lr == result.best_params["lr"] > 1e-4
    assert result.best_config.out_dir is None and result.best_run_dir is not None
    assert (result.best_run_dir / "final" / "model.safetensors").is_file()
    assert set(result.plots()) == {"optimization_history", "param_importances",
                                   "parallel_coordinate"}
    for key, tensor in loaded.model.state_dict().items():  # the caller's model is as it came
        assert torch.equal(tensor, initial[key]), key

    # the objective is the validation loss of a run from the initial weights
    again = train(loaded, str(data), config.replace(
        lr=result.best_params["lr"], val_every=2,  # as the trials (12 steps, 6 validations)
        checkpoint_every=0, out_dir=str(tmp_path / "again")), gate=False, **QUIET)
    assert again.metrics["val_loss"] == pytest.approx(result.best_value, rel=1e-5)

    with pytest.raises(UserError, match=r"belongs to another search:\n.*steps_per_trial"):
        hyperparameter_search(loaded, str(data), {"lr": (1e-6, 1e-2)}, n_trials=8,
                              config=config, steps_per_trial=6, **QUIET)


def test_a_finite_space_caps_the_total_and_never_repeats_a_set(tmp_path, model_and_data,
                                                               one_thread):
    folder, data = model_and_data
    config = TrainingConfig(max_steps=4, batch_size=4, seq_len=32, val_batches=1, log_every=2,
                            precision="32", accelerator="cpu", out_dir=str(tmp_path / "s"))
    result = hyperparameter_search(utils.load_model(folder, say=lambda m: None), str(data),
                                   SearchSpace(batch_size=(2, 4)), n_trials=3, pruner=None,
                                   config=config, **QUIET)
    assert sorted(result.trials.batch_size) == [2, 4] and result.n_trials == 2
    assert any("2 distinct parameter set(s)" in note for note in result.notes)


def _trial(number, state, params, **system):
    return SimpleNamespace(number=number, state=state, params=params, user_attrs={},
                           system_attrs=system)


def test_the_total_is_counted_in_trial_order_without_failed_and_retried_trials():
    c, f, r = TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING
    trials = [_trial(0, c, {"lr": 1}), _trial(1, f, {"lr": 2}), _trial(2, r, {"lr": 3}),
              _trial(3, r, {"lr": 2}, failed_trial=1, retry_history=[1])]
    skipped = _trial(4, f, {"lr": 1})
    skipped.user_attrs["skipped"] = "same parameters as trial 0"
    trials.append(skipped)
    assert [t.number for t in counted(trials)] == [0, 2, 3]  # 1 was retried by 3
    assert not surplus(trials, 3, 3) and surplus(trials, 5, 3)
    assert duplicate_of(trials, 5, {"lr": 2}) == 3 and duplicate_of(trials, 5, {"lr": 9}) is None
    assert duplicate_of(trials, 0, {"lr": 1}) is None  # only earlier trials count


@pytest.mark.parametrize("kwargs,match", [
    ({"storage": "redis://localhost/0"}, r"storage='redis://localhost/0' is not a storage"),
    ({"storage": "study.db"}, r"is not a storage Optuna can open"),
    ({"storage": "sqlite://study.db"}, r"three slashes"),
    ({"storage": "journal:"}, r"names no file"),
    ({"n_trials": 0}, r"n_trials=0: the study's total, an integer >= 1"),
    ({"pruner": "asha"}, r"pruner='asha': one of 'hyperband', 'halving', 'median'"),
    ({"heartbeat": 0, "timeout": -1}, r"timeout=-1.*\n.*heartbeat=0"),
])
def test_bad_arguments_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        hyperparameter_search(torch.nn.Linear(2, 2), **{"n_trials": 2, **kwargs})


def test_a_total_below_one_is_a_usage_error(capsys):
    assert main(["search", "--trials", "0"]) == 64
    assert "--trials and --heartbeat must be >= 1" in capsys.readouterr().err


def test_a_database_that_cannot_be_opened_is_exit_2_with_the_error_in_the_json(
        tmp_path, model_and_data, capsys):
    folder, data = model_and_data
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    report = tmp_path / "r.json"
    code = main(["search", str(folder), "--data", str(data), "--trials", "2", *FAST,
                 "--storage", f"sqlite:///{blocker}/sub/study.db", "--json", str(report)])
    assert code == 2 and "error:" in capsys.readouterr().err
    doc = json.loads(report.read_text())
    assert doc["command"] == "search" and "storage" in doc["error"]["what"]


def test_search_space_reports_every_bad_field():
    with pytest.raises(ConfigError, match=r"3 field\(s\)") as info:
        SearchSpace(lr=(0.0, 1e-3), batch_size=(4, 4), dropout=(0.1, 1.0))
    assert set(info.value.problems) == {"lr", "batch_size", "dropout"}
    with pytest.raises(ConfigError, match="nothing is searched"):
        SearchSpace()
    with pytest.raises(ConfigError, match="Unknown search space key"):
        SearchSpace.from_dict({"learning_rate": (1e-4, 1e-2)})


def test_a_journal_studys_running_trial_is_recovered_by_hand(tmp_path):
    storage = f"journal:{tmp_path / 'hpo.log'}"
    from utils.tier3.study_storage import open_storage

    backend = open_storage(storage, tmp_path, None, 60, lambda m: None).storage
    study = optuna.create_study(study_name="j", storage=backend)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)  # its worker dies here
    assert recover_running_trials(storage, "j") == [0]
    states = [(t.number, t.state, t.system_attrs.get("failed_trial")) for t in study.get_trials()]
    assert states == [(0, TrialState.FAIL, None), (1, TrialState.WAITING, 0)]
