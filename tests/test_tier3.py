"""Tier 3: fine_tune behind the Tier 1 gate with its learning-sanity checks, the baselines of
matched size, benchmark_comparison end to end, and ``testbench benchmark``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from training.tiny_lm import corpus

import utils
from utils.errors import UserError

pytest.importorskip("lightning")

from utils.__main__ import main
from utils.tier1_critical_validation import run_tier1
from utils.tier3.baselines import baseline_for, detected_depth
from utils.tier3.benchmark import validation_interval
from utils.tier3.benchmark_report import Arm, verdict
from utils.tier3.learning_checks import LearningRun, run_learning_checks
from utils.tier3_training_utilities import TIER3_CHECKS, benchmark_comparison, fine_tune
from utils.training.config import TrainingConfig
from utils.training.training_core import GateFailed

ZOO = Path(__file__).parent / "zoo"
QUIET = {"say": lambda m: None, "progress": False}


def load(case: str):
    return utils.load_model(ZOO / case, say=lambda m: None)


def tiny_config(tmp_path: Path, name: str = "run", **changes) -> TrainingConfig:
    base = dict(max_steps=24, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, val_every=8,
                val_batches=2, checkpoint_every=0, log_every=4, out_dir=str(tmp_path / name))
    return TrainingConfig(**{**base, **changes})


# ---- fine_tune ------------------------------------------------------------------------------
def test_the_tier1_gate_stops_a_causal_leak_before_fine_tuning(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(GateFailed, match="causal_masking") as info:
        fine_tune(load("no_causal_mask"), corpus(20), config, **QUIET)
    assert not info.value.report.passed
    assert not list(Path(config.out_dir).glob("checkpoints/*.ckpt"))  # no step was trained


def test_the_learning_checks_pass_on_a_healthy_model(tmp_path):
    result = fine_tune(load("flat_gpt"), corpus(40), tiny_config(tmp_path), **QUIET)
    report = result.report
    assert [r.name for r in report.results] == list(TIER3_CHECKS)
    assert {r.tier for r in report.results} == {3} and report.passed, report.to_text()
    statuses = {r.name: r.status for r in report.results}
    assert statuses == {"first_loss": "pass", "loss_decrease": "pass", "train_val_gap": "pass",
                        "skipped_steps": "pass", "throughput": "skip"}, report.to_text()
    first = report["first_loss"]
    assert first.metrics["expected"] == pytest.approx(math.log(512))
    assert 0.8 < first.metrics["ratio"] < 1.2 and first.threshold["fail_above_ratio"] == 2.0
    assert "no peak FLOP/s is known for CPUs" in report["throughput"].summary
    assert report["throughput"].metrics["tokens_per_second"] > 0
    assert result.gate is not None and result.gate.passed  # the Tier 1 gate ran first
    assert len(report["loss_decrease"].rows) == 24  # one loss per step, for a plot


@pytest.mark.parametrize("case,changes,check,summary", [
    # a learning rate of ~0: the loss cannot fall
    ("flat_gpt", {"lr": 1e-9, "max_steps": 12}, "loss_decrease", "the model is not learning"),
    # every weight matrix with std 1.0: logits far too large before any training
    ("exploding_init", {"max_steps": 4, "val_every": 4}, "first_loss", "confidently wrong"),
])
def test_a_planted_defect_fails_its_learning_check(tmp_path, case, changes, check, summary):
    result = fine_tune(load(case), corpus(40), tiny_config(tmp_path, **changes), gate=False,
                       **QUIET)
    found = result.report[check]
    assert found.status == "fail" and summary in found.summary, result.report.to_text()
    assert not result.report.passed


def test_thresholds_are_checked_before_any_training(tmp_path):
    with pytest.raises(UserError, match=r"did you mean 'loss_decrease.fraction'") as info:
        fine_tune(load("flat_gpt"), corpus(20), tiny_config(tmp_path),
                  thresholds={"loss_decrease.fractoin": 0.5}, **QUIET)
    assert "first_loss.fail_ratio" in str(info.value)
    assert not Path(tmp_path / "run").exists()


def _run(losses, **changes) -> LearningRun:
    base = dict(task="causal_lm", chance=(math.log(512), "ln(vocab)"),
                losses=list(enumerate(losses)), steps=len(losses), warmup_steps=0)
    return LearningRun(**{**base, **changes})


def _history(train: list[float], val: list[float], every: int = 10) -> pd.DataFrame:
    rows = [{"step": (i + 1) * every, "train_loss": t} for i, t in enumerate(train)]
    rows += [{"step": (i + 1) * every, "val_loss": v} for i, v in enumerate(val)]
    return pd.DataFrame(rows)


FALLING = [6.2 - 0.05 * i for i in range(40)]
# (the run, thresholds, check, expected status, a phrase of the summary)
CASES = [
    (_run([6.2] * 40), {}, "loss_decrease", "fail", "not learning"),
    (_run([6.2 - 0.02 * i for i in range(40)]), {}, "loss_decrease", "warn", "slowly"),
    (_run([6.2 - 0.02 * i for i in range(40)]), {"loss_decrease.min_drop": 0.01},
     "loss_decrease", "pass", "≥ 1%"),
    (_run(FALLING[:5]), {}, "loss_decrease", "skip", "at least 8"),
    (_run(FALLING, resumed_from=20), {}, "first_loss", "skip", "resumed at step 20"),
    (_run([20.0, *FALLING]), {}, "first_loss", "fail", "×3.21"),
    (_run([2.0, *FALLING]), {}, "first_loss", "warn", "leak"),
    (_run([math.inf, *FALLING]), {}, "first_loss", "fail", "overflows before any update"),
    (_run(FALLING, history=_history([4.0, 3.0, 2.0, 1.5], [4.1, 3.2, 2.8, 2.9])), {},
     "train_val_gap", "fail", "overfitting"),
    (_run(FALLING, history=_history([4.0, 3.0], [4.1, 3.25])), {}, "train_val_gap", "pass",
     "no sign of overfitting"),
    (_run(FALLING, history=_history([4.0, 3.0], [4.1, 3.4])), {}, "train_val_gap", "warn",
     "overfitting is starting"),
    (_run(FALLING, history=_history([4.0, 3.0], [4.1, 3.4])), {"train_val_gap.warn_gap": 0.2},
     "train_val_gap", "pass", "no sign"),
    (_run(FALLING, history=_history([4.0], [])), {}, "train_val_gap", "skip", "val_every"),
    (_run([*FALLING[:39], math.nan], skipped_steps=1, steps=400), {}, "skipped_steps", "warn",
     "skipped 1 of 400"),
    (_run(FALLING, skipped_steps=3, rollbacks=1), {}, "skipped_steps", "fail",
     "rolled back 1 time"),
    (_run(FALLING, val_losses=[(10, 4.0), (20, math.nan)]), {}, "skipped_steps", "fail",
     "NaN/Inf at step(s) [20]"),
    (_run(FALLING, tokens_per_second=5e4, flops_per_token=6e6, device="Tesla T4",
          precision="16-mixed", peak_flops=65e12), {}, "throughput", "warn", "utilisation 0.5%"),
    (_run(FALLING, tokens_per_second=1e6, flops_per_token=6e6, device="Tesla T4",
          precision="16-mixed", peak_flops=65e12), {}, "throughput", "pass", "9.2% of the 65"),
    (_run(FALLING, tokens_per_second=5e4, flops_per_token=6e6, device="NVIDIA Mystery"), {},
     "throughput", "skip", "not in utils/gpu_table.py"),
    (_run(FALLING, tokens_per_second=900.0, flops_per_token=6e6), {}, "throughput", "skip",
     "900 tokens/s on cpu"),
]


@pytest.mark.parametrize("run,thresholds,check,status,phrase", CASES)
def test_each_learning_check_on_runs_whose_verdict_is_known(run, thresholds, check, status,
                                                            phrase):
    result = run_learning_checks(run, thresholds, checks=[check]).results[0]
    assert (result.status, result.tier) == (status, 3), result.summary
    assert phrase in result.summary
    assert result.threshold or status == "skip"


# ---- baselines ------------------------------------------------------------------------------
def _zoo(tasks: tuple[str, ...]) -> list[str]:
    cases = []
    for folder in sorted(ZOO.iterdir()):
        expected = json.loads((folder / "expected.json").read_text())
        if expected["task"] in tasks and expected["exit_code"] == 0:
            cases.append(folder.name)
    return cases


DECODERS, ENCODERS = _zoo(("causal_lm",)), _zoo(("masked_lm", "classification"))


def test_the_zoo_has_decoders_and_encoders_to_match():
    assert len(DECODERS) >= 4 and "flat_gpt" in DECODERS
    assert {"masked_lm_encoder", "encoder_classifier"} <= set(ENCODERS)


@pytest.mark.parametrize("case", DECODERS + ENCODERS)
def test_the_baseline_lands_within_10_percent_of_the_parameters(case):
    adapter = utils.adapt(load(case))
    spec = baseline_for(adapter)
    base = spec.adapter_for(adapter, seed=0)
    assert abs(base.num_parameters / adapter.num_parameters - 1) <= 0.10, spec.describe()
    assert base.num_parameters == spec.parameters  # the closed form is exact
    assert (base.task, base.vocab_size, base.max_seq_len) == (
        adapter.task, adapter.vocab_size, adapter.max_seq_len)
    assert spec.kind == ("gpt" if adapter.task == "causal_lm" else "encoder")
    if detected_depth(adapter.model):
        assert spec.n_layer == detected_depth(adapter.model)  # the user's depth, when counted
    batch = base.make_inputs(2, 16)
    assert torch.isfinite(base.loss(batch))
    if adapter.task == "classification":
        assert base.num_classes == adapter.num_classes


@pytest.mark.parametrize("case", ["flat_gpt", "masked_lm_encoder"])
def test_the_baselines_pass_tier1_invariances(case):
    adapter = utils.adapt(load(case))
    base = baseline_for(adapter).adapter_for(adapter, seed=0)
    report = run_tier1(base, checks=["causal_masking", "batch_independence",
                                     "padding_invariance"], progress=False)
    assert report.passed, report.to_text()


def test_no_baseline_for_seq2seq_and_clear_errors_for_bad_requests(tmp_path):
    with pytest.raises(UserError, match="No baseline is offered for an encoder-decoder"):
        benchmark_comparison(load("torch_seq2seq"), corpus(10), steps=4,
                             config=tiny_config(tmp_path), **QUIET)
    gpt = utils.adapt(load("flat_gpt"))
    with pytest.raises(UserError, match="baseline='llama' is not a baseline"):
        baseline_for(gpt, "llama")
    with pytest.raises(UserError, match="cannot be compared with a causal LM"):
        baseline_for(gpt, "encoder")
    with pytest.raises(UserError, match=r"steps=0 \(need an integer >= 1\)"):
        benchmark_comparison(gpt, corpus(10), steps=0, **QUIET)


# ---- benchmark_comparison -------------------------------------------------------------------
def test_validation_lands_on_the_final_step():
    assert validation_interval(16) == 4 and validation_interval(300, 100) == 100
    assert validation_interval(300, 7) == 60 and validation_interval(7) == 1
    assert validation_interval(307) == 307  # a prime: one validation, at the end


def _arm(name: str, role: str, val_loss: float, seed: int = 0, tps: float = 100.0) -> Arm:
    return Arm(name=name, role=role, seed=seed, parameters=1000,
               metrics={"val_loss": val_loss, "val_perplexity": math.exp(val_loss)},
               tokens_per_second=tps, peak_memory_mb=1.0, memory_measured=False,
               wall_seconds=1.0, steps=10, run_dir="")


@pytest.mark.parametrize("mine,seeds,start", [
    (3.00, (3.10, 3.20), "Your model is probably better"),  # 0.15 lower: 1.5× the spread
    (3.00, (3.30, 3.32), "Your model is better"),        # 0.31 lower, 15× the spread
    (3.50, (3.30, 3.32), "Your model is worse"),
    (3.20, (3.10, 3.30), "No clear difference"),          # 0.0 apart, spread 0.2
    (3.00, (3.30,), "Your model is better"),              # one seed: the noise is unknown
])
def test_the_verdict_weighs_the_difference_against_the_seed_noise(mine, seeds, start):
    base = [_arm(f"b{i}", "baseline", v, seed=i, tps=200.0) for i, v in enumerate(seeds)]
    words, diff, noise = verdict(_arm("mine", "model", mine), base)
    assert words.startswith(start), words
    assert diff == pytest.approx(mine - sum(seeds) / len(seeds))
    assert (noise is None) == (len(seeds) == 1)
    assert "0.50× the baseline's tokens/s" in words
    if len(seeds) == 1:
        assert "noise level was not measured" in words


@pytest.mark.slow  # three and two training runs
def test_a_short_benchmark_gives_a_table_curves_and_a_verdict(tmp_path):
    config = tiny_config(tmp_path, "bench", log_every=2, val_every=3)  # 3 does not divide 8
    bench = benchmark_comparison(load("flat_gpt"), corpus(40), steps=8, config=config, **QUIET)
    table = bench.table
    assert list(table.index) == ["your model (GPT)", "baseline (seed 0)", "baseline (seed 1)"]
    for column in ("parameters", "val_loss", "perplexity", "tokens_per_second",
                   "peak_memory_mb", "wall_seconds"):
        assert table[column].notna().all(), column
    assert abs(table["parameters"].iloc[1] / table["parameters"].iloc[0] - 1) <= 0.10
    assert bench.verdict.startswith(("Your model is", "No clear difference")), bench.verdict
    assert bench.noise == pytest.approx(abs(table["val_loss"].iloc[1] -
                                            table["val_loss"].iloc[2]))
    assert all(a.steps == 8 for a in bench.arms) and bench.config.val_every == 2
    fig = bench.plot()
    assert [ax.get_title() for ax in fig.axes] == ["Training loss", "Validation loss"]
    assert len(fig.axes[1].lines) == 3
    assert "<table" in bench._repr_html_() and bench.verdict.split(":")[0] in bench.to_text()
    saved = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert saved["verdict"] == bench.verdict and len(saved["rows"]) == 3
    # running it again (a new VM after a disconnect) reuses the finished runs
    again = benchmark_comparison(load("flat_gpt"), corpus(40), steps=8, config=config, **QUIET)
    assert again.verdict == bench.verdict and any("reused" in n for n in again.notes)


# ---- testbench benchmark --------------------------------------------------------------------
@pytest.mark.slow  # two training runs
def test_the_benchmark_cli_prints_the_table_and_writes_the_json(tmp_path, capsys):
    data = tmp_path / "texts.txt"
    data.write_text("\n\n".join(corpus(40)))
    report = tmp_path / "bench.json"
    code = main(["benchmark", str(ZOO / "flat_gpt"), "--data", str(data), "--steps", "4",
                 "--seeds", "1", "--preset", "smoke", "--seq-len", "32",
                 "--out", str(tmp_path / "b"), "--json", str(report)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Baseline  pre-LN GPT" in printed and "baseline (seed 0)" in printed
    doc = json.loads(report.read_text())
    assert doc["schema_version"] == 1 and doc["command"] == "benchmark" and doc["error"] is None
    assert doc["source"]["kind"] == "folder" and doc["model"]["class"] == "GPT"
    assert [r["model"] for r in doc["rows"]] == ["your model (GPT)", "baseline (seed 0)"]
    assert doc["steps"] == 4 and doc["verdict"] and doc["noise"] is None
    assert abs(doc["baseline"]["relative_difference"]) <= 0.10


@pytest.mark.parametrize("case,flags,code,message", [
    ("no_causal_mask", [], 1, "causal_masking [fail]"),
    ("torch_seq2seq", [], 2, "No baseline is offered"),
    ("flat_gpt", ["--steps", "0"], 64, "--steps and --seeds must be >= 1"),
])
def test_the_benchmark_cli_exit_codes(tmp_path, capsys, case, flags, code, message):
    report = tmp_path / "bench.json"
    # no --seq-len: the smoke preset's 64 is capped at no_causal_mask's max_seq_len of 48
    args = ["benchmark", str(ZOO / case), "--preset", "smoke", "--steps", "4", "--out",
            str(tmp_path / "b"), "--json", str(report), *flags]
    assert main(args) == code
    assert message in capsys.readouterr().err
    if code == 64:
        assert not report.exists()
        return
    doc = json.loads(report.read_text())
    assert doc["command"] == "benchmark" and doc["error"]["message"]
    if code == 1:
        assert doc["gate"]["passed"] is False and doc["error"]["type"] == "GateFailed"


def test_the_benchmark_cli_rejects_a_malformed_flag_as_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "--steps", "many"])
    assert info.value.code == 64


# ---- entry points ---------------------------------------------------------------------------
def test_the_facade_names_reach_tier3(tmp_path):
    from utils import test_functions as facade

    for name in ("test_fine_tuning", "test_benchmark_comparison", "test_hyperparameter_search"):
        assert name in facade.__all__ and getattr(facade, name).__test__ is False
    with pytest.raises(UserError, match="No baseline is offered"):
        facade.test_benchmark_comparison(load("torch_seq2seq"), corpus(10), steps=4, **QUIET)
    with pytest.raises(UserError, match="Unknown Tier 3 threshold"):
        facade.test_fine_tuning(load("flat_gpt"), corpus(10), tiny_config(tmp_path),
                                thresholds={"initial_loss.ratio": 3}, **QUIET)


def test_tier3_stays_out_of_import_utils_and_the_zero_install_path():
    code = ("import sys, utils, utils.test_functions, utils.__main__\n"
            "loaded = sorted(m for m in sys.modules if m.startswith('utils.tier3'))\n"
            "assert not loaded, loaded\n"
            "import utils.tier3_training_utilities as t3\n"
            "heavy = sorted(m for m in ('lightning', 'optuna') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
