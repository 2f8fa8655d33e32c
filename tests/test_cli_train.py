"""``testbench train``: exit codes, the JSON summary on success, on a failed gate and on a
``UserError``, resume by running the same command again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from training.tiny_lm import corpus, write_tiny_lm

from utils.__main__ import main

pytest.importorskip("lightning")

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "tests" / "zoo"
SUMMARY_KEYS = {"schema_version", "tool_version", "source", "model", "error", "steps",
                "tokens", "train_loss", "val_loss", "val_perplexity", "tokens_per_second",
                "resumed_from_step", "skipped_steps", "run_dir", "final_dir", "samples"}
FAST = ["--preset", "smoke", "--max-steps", "6", "--val-every", "3", "--checkpoint-every", "3",
        "--seq-len", "32"]


@pytest.fixture
def model_and_data(tmp_path):
    folder = write_tiny_lm(tmp_path / "tiny")
    data = tmp_path / "corpus.txt"
    data.write_text("\n\n".join(corpus(30)))
    return folder, data


def test_train_writes_the_summary_and_running_again_resumes(tmp_path, model_and_data, capsys):
    folder, data = model_and_data
    out, report = tmp_path / "run", tmp_path / "train.json"
    args = ["train", str(folder), "--data", str(data), *FAST, "--out", str(out),
            "--json", str(report)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"Run      {out}" in printed and "Samples" in printed
    doc = json.loads(report.read_text())
    assert SUMMARY_KEYS <= doc.keys() and doc["error"] is None and doc["steps"] == 6
    assert doc["resumed_from_step"] is None and len(doc["samples"]) == 3
    assert doc["final_dir"] == str(out / "final") and Path(doc["final_dir"]).is_dir()
    assert doc["source"]["kind"] == "folder" and doc["model"]["class"] == "TinyLM"

    assert main([*args[:-4], "--max-steps", "9", "--out", str(out), "--json", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert doc["resumed_from_step"] == 6 and doc["steps"] == 9
    assert "resumed from step 6" in capsys.readouterr().out


def test_a_failed_gate_exits_1_with_the_report_in_the_json(tmp_path, capsys):
    report = tmp_path / "train.json"
    code = main(["train", str(ZOO / "no_causal_mask"), *FAST, "--out", str(tmp_path / "r"),
                 "--json", str(report)])
    assert code == 1
    assert "causal_masking [fail]" in capsys.readouterr().err
    doc = json.loads(report.read_text())
    assert doc["error"]["type"] == "GateFailed" and doc["gate"]["passed"] is False
    assert [c["name"] for c in doc["gate"]["checks"] if c["status"] == "fail"] == [
        "causal_masking"]


@pytest.mark.parametrize("flags,message", [
    (["--preset", "smok"], "Unknown preset 'smok'. Did you mean 'smoke'"),
    (["--preset", "smoke", "--batch-size", "0", "--lr", "-1"], "--batch-size: got 0.*--lr: got -1"),
    (["--preset", "smoke", "--data", "no/such/file.txt"], "no/such/file.txt"),
])
def test_bad_input_exits_2_with_the_message_and_json(tmp_path, model_and_data, capsys, flags,
                                                     message):
    folder, _ = model_and_data
    report = tmp_path / "train.json"
    assert main(["train", str(folder), *flags, "--out", str(tmp_path / "r"),
                 "--json", str(report)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    import re

    assert re.search(message, err, re.S), err
    doc = json.loads(report.read_text())
    assert doc["error"]["type"] in ("UserError", "ConfigError") and doc["model"] is not None


def test_bad_flags_exit_64(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["train", "--max-steps", "many"])
    assert info.value.code == 64


@pytest.mark.slow
def test_the_console_script_trains_from_a_fresh_process(tmp_path, model_and_data):
    folder, data = model_and_data
    script = shutil.which("testbench", path=str(Path(sys.executable).parent))
    proc = subprocess.run([script, "train", str(folder), "--data", str(data), *FAST,
                           "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Final    " in proc.stdout and "Traceback" not in proc.stderr


def _console(tmp_path: Path, *args: str, wait: bool = True):
    script = shutil.which("testbench", path=str(Path(sys.executable).parent))
    cmd = [script, *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp_path, env=os.environ.copy(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_one_command_twice_gives_one_model_and_a_killed_rerun_gives_it_too(tmp_path,
                                                                          model_and_data):
    """From outside, as a user runs it: the seed fixes the initial weights, so two fresh runs
    of one command end with the same bytes, and so does a third one killed (SIGKILL, as a VM
    that disconnects) after its first checkpoint and run again."""
    import signal
    import time

    folder, data = model_and_data
    flags = ["train", str(folder), "--data", str(data), "--preset", "smoke", "--seq-len", "32",
             "--max-steps", "150", "--val-every", "50", "--checkpoint-every", "5", "--seed", "3",
             "--samples", "0"]
    finals = []
    for name in ("first", "second"):
        _console(tmp_path, *flags, "--out", str(tmp_path / name))
        finals.append((tmp_path / name / "final" / "model.safetensors").read_bytes())
    assert finals[0] == finals[1]

    killed = tmp_path / "killed"
    proc = _console(tmp_path, *flags, "--out", str(killed), wait=False)
    deadline = time.monotonic() + 240
    # the manifest is written (atomically) after its checkpoint: a kill between the two leaves a
    # checkpoint the rerun rightly skips, so wait for a manifest, as resuming does
    while not list((killed / "checkpoints").glob("step-*.json")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "final").exists(), "the run ended before it could be killed"
    rerun = _console(tmp_path, *flags, "--out", str(killed))
    assert "Resuming from step" in rerun.stderr
    assert (killed / "final" / "model.safetensors").read_bytes() == finals[0]

    other = _console(tmp_path, *[("4" if f == "3" else f) for f in flags], "--out",
                     str(tmp_path / "seed4"))
    assert other.returncode == 0
    assert (tmp_path / "seed4" / "final" / "model.safetensors").read_bytes() != finals[0]


def test_the_data_flags_reach_the_dataset_and_the_summary_says_how_text_was_cut(
        tmp_path, model_and_data, capsys):
    folder, _ = model_and_data
    poem = tmp_path / "poem.txt"  # no blank line anywhere: one document, trained as written
    poem.write_text("\n".join(f"the king hath {i} crowns and thou art my lord"
                              for i in range(200)) + "\n")
    out, report = tmp_path / "poem-run", tmp_path / "poem.json"
    assert main(["train", str(folder), "--data", str(poem), *FAST, "--out", str(out),
                 "--json", str(report), "--samples", "0"]) == 0
    doc = json.loads(report.read_text())
    assert "each file is one document, as written" in doc["data"]
    assert "validation: the last 5% of every document" in doc["data"]
    assert doc["val_loss"] is not None
    assert "Data     " in capsys.readouterr().out

    csv = tmp_path / "rows.csv"
    csv.write_text("id,body,note\n" + "".join(f"{i},the king hath {i} crowns,x\n"
                                                for i in range(60)))
    args = ["train", str(folder), "--data", str(csv), "--text-column", "body",
            "--val-fraction", "0.1", "--holdout", "documents", *FAST, "--samples", "0"]
    assert main([*args, "--out", str(tmp_path / "csv-run"), "--json", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert "train 54 documents" in doc["data"] and "6 whole documents of 60" in doc["data"]

    assert main(["train", str(folder), "--data", str(poem), "--document", "line",
                 "--val-fraction", "0", *FAST, "--out", str(tmp_path / "lines"), "--json",
                 str(report), "--samples", "0"]) == 0
    doc = json.loads(report.read_text())
    assert "each line is one document" in doc["data"] and "train 200 documents" in doc["data"]
    assert "validation: none" in doc["data"]


@pytest.mark.parametrize("flags, pattern", [
    (["--val-fraction", "0.9"], "validation_fraction=0.9"),
    (["--text-column", "nope"], "The column 'nope'"),
])
def test_bad_data_flags_exit_2_with_the_message(tmp_path, model_and_data, capsys, flags,
                                                pattern):
    folder, data = model_and_data
    code = main(["train", str(folder), "--data", str(data), *flags, *FAST, "--out",
                 str(tmp_path / "r")])
    assert code == 2 and pattern in capsys.readouterr().err


def test_advice_speaks_in_flags_on_the_command_line_and_in_arguments_in_python(
        tmp_path, model_and_data, capsys):
    from utils.errors import UserError
    from utils.training.config import TrainingConfig

    folder, data = model_and_data
    assert main(["train", str(folder), "--data", str(data), *FAST, "--max-steps", "-5"]) == 2
    err = capsys.readouterr().err
    assert "--max-steps: got -5" in err and "testbench train --help" in err
    assert "max_steps=" not in err and "field_docs" not in err
    with pytest.raises(UserError, match=r"(?s)    max_steps: got -5.*field_docs\(\)"):
        TrainingConfig(max_steps=-5)

    out = tmp_path / "run"
    assert main(["train", str(folder), "--data", str(data), *FAST, "--out", str(out),
                 "--samples", "0"]) == 0
    capsys.readouterr()
    assert main(["train", str(folder), "--data", str(data), *FAST, "--out", str(out),
                 "--resume", "never"]) == 2
    err = capsys.readouterr().err
    assert "--resume auto" in err and "--out <another folder>" in err and "resume=" not in err

    with pytest.raises(SystemExit) as info:
        main(["train", "--lr", "fast"])
    assert info.value.code == 64
    err = capsys.readouterr().err
    assert "--lr: 'fast' is not a number; allowed: a number > 0 or 'auto'" in err and "usage:" not in err


def _other_value(field) -> tuple[str, object]:
    """A flag text for ``field`` that differs from its default, and the value it means."""
    import typing

    from utils.training.config import _kinds

    kinds = _kinds(field.annotation)
    if field.choices:
        choice = next(c for c in field.choices if c != field.default)
        return choice, choice
    if bool in kinds:
        return "true", True
    if tuple in kinds:
        return "0.8,0.9", (0.8, 0.9)
    if field.name.endswith("_dir") or field.name == "resume":
        return "some/folder", "some/folder"
    if int in kinds:
        return "3", 3
    if float in kinds:
        return "0.25", 0.25
    raise AssertionError(f"no test value for {field.name}: {typing.get_args(field.annotation)}")


@pytest.mark.parametrize("command", ["train", "search", "benchmark"])
def test_every_config_field_is_a_flag_of_the_training_commands(command):
    """Built from the dataclass: a new TrainingConfig field is a flag without a line here."""
    from utils.__main__ import build_parser
    from utils.cli.common import settings_given
    from utils.training.config import config_fields

    own = {"search": {"resume"}, "benchmark": {"max_steps", "resume", "mirror_dir"}}
    for name, field in config_fields().items():
        text, value = _other_value(field)
        argv = [command, field.flag, text] + (["--trials", "1"] if command == "search" else [])
        if name in own.get(command, set()):
            with pytest.raises(SystemExit):
                build_parser().parse_args(argv)
            continue
        args = build_parser().parse_args(argv)
        assert settings_given(args)[name] == value, name


def test_print_config_writes_what_config_reads_and_flags_beat_the_file(tmp_path, capsys):
    base = ["train", "--preset", "smoke", "--print-config"]
    assert main([*base, "--warmup-steps", "7", "--betas", "0.9,0.99", "--seed", "5"]) == 0
    written = capsys.readouterr().out
    assert "warmup_steps: 7\n" in written and "betas: [0.9, 0.99]\n" in written
    assert "# Steps of linear warm-up" in written  # each field under its doc
    file = tmp_path / "run.yaml"
    file.write_text(written)
    assert main([*base, "--config", str(file)]) == 0
    assert capsys.readouterr().out == written  # the file reproduces the run's settings
    assert main([*base, "--config", str(file), "--warmup-steps", "9"]) == 0
    again = capsys.readouterr().out
    assert "warmup_steps: 9\n" in again and "seed: 5\n" in again  # the file's seed holds too
    (tmp_path / "run.json").write_text(json.dumps({"max_steps": 4, "lr": "auto"}))
    assert main([*base, "--config", str(tmp_path / "run.json")]) == 0
    assert "max_steps: 4\n" in (out := capsys.readouterr().out) and "lr: auto\n" in out


def test_the_config_files_seed_builds_the_model(tmp_path):
    """``--config``'s seed fixes the initial weights as ``--seed`` would (resolved before the
    model is built); the flag beats the file."""
    from utils.__main__ import build_parser
    from utils.cli.common import load_and_adapt

    file = tmp_path / "run.yaml"
    file.write_text("seed: 7\n")

    def weights(*argv):
        args = build_parser().parse_args(["train", "--preset", "smoke", *argv])
        return args, load_and_adapt(args, say=lambda _: None)[1].model.state_dict()

    args, from_file = weights("--config", str(file))
    assert args.seed == 7
    _, from_flag = weights("--seed", "7")
    _, default = weights()
    _, beaten = weights("--config", str(file), "--seed", "0")
    first = next(iter(from_file))
    assert from_file[first].equal(from_flag[first])
    assert not from_file[first].equal(default[first]) and beaten[first].equal(default[first])


@pytest.mark.parametrize("content, says", [
    ("warmup_step: 5\n", "warmup_step: unknown key (did you mean 'warmup_steps'?)"),
    ("- 1\n- 2\n", "holds a list, not a mapping"),
    ("max_steps: [oops\n", "does not parse"),
    ("max_steps: -5\n", "max_steps: got -5"),
    (None, "Cannot read the training config"),
])
def test_a_bad_config_file_is_named_with_its_problem(tmp_path, capsys, content, says):
    file = tmp_path / "run.yaml"
    if content is not None:
        file.write_text(content)
    assert main(["train", "--preset", "smoke", "--config", str(file), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_bad_settings_flag_is_a_usage_error_saying_what_it_takes(capsys):
    for argv, says in ((["--betas", "0.9"], None), (["--compile", "maybe"], "true or false"),
                       (["--precision", "64"], "'64' is not allowed; allowed: one of 'auto', '32'"),
                       (["--warmup-steps", "ten"], "'ten' is not a whole number")):
        with pytest.raises(SystemExit) as info:
            main(["train", *argv])
        assert info.value.code == 64
        err = capsys.readouterr().err
        assert says is None or says in err, err
