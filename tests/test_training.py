"""The training core in-process: every task of the public zoo learns, the loss guard, the Tier 1
gate, the run folder and what it leaves behind."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from training.tiny_lm import CONFIG, corpus, write_tiny_lm

import utils
from utils.errors import UserError

pytest.importorskip("lightning")

from utils.training.config import TrainingConfig
from utils.training.training_core import GateFailed, train

ZOO = Path(__file__).parent / "zoo"
QUIET = {"say": lambda m: None, "progress": False}


def tiny_config(tmp_path: Path, **changes) -> TrainingConfig:
    base = dict(max_steps=30, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, val_every=10,
                val_batches=2, checkpoint_every=10, log_every=5, out_dir=str(tmp_path / "run"))
    return TrainingConfig(**{**base, **changes})


@pytest.fixture
def tiny_lm(tmp_path):
    folder = write_tiny_lm(tmp_path / "tiny")
    return folder


def _labelled(tmp_path: Path, task: str) -> Path:
    """A small learnable dataset: the class is the first word; the target is the text reversed."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    rows = []
    for _ in range(160):
        text = " ".join(rng.choice(words) for _ in range(8))
        if task == "classification":
            rows.append({"text": text, "label": words.index(text.split()[0]) % 5})
        else:
            rows.append({"source": text, "target": " ".join(reversed(text.split()))})
    path = tmp_path / f"{task}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


# all four in CI; `make test-fast` keeps the causal LM as the smoke test
@pytest.mark.parametrize("case,task", [
    ("flat_gpt", "causal_lm"),
    pytest.param("masked_lm_encoder", "masked_lm", marks=pytest.mark.slow),
    pytest.param("encoder_classifier", "classification", marks=pytest.mark.slow),
    pytest.param("torch_seq2seq", "seq2seq", marks=pytest.mark.slow)])
def test_each_task_of_the_zoo_learns(tmp_path, case, task):
    from utils.training.dataset_utilities import load_text_dataset

    loaded = utils.load_model(ZOO / case, say=lambda m: None)
    if task in ("classification", "seq2seq"):
        data = load_text_dataset(_labelled(tmp_path, task), task=task)
    else:
        data = load_text_dataset(None, task=task, max_documents=400)  # shipped Shakespeare
    result = train(loaded, data, tiny_config(tmp_path, max_steps=40, val_every=8), **QUIET)
    val = result.history.dropna(subset=["val_loss"])
    assert len(val) == 5
    first, last = float(val["val_loss"].iloc[0]), float(val["val_loss"].iloc[-1])
    assert last < first, f"{case}: validation loss did not fall ({first:.3f} -> {last:.3f})"
    assert result.steps == 40 and result.skipped_steps == 0
    keys = {"train_loss", "val_loss", "lr", "tokens_per_second"}
    assert keys <= result.metrics.keys()
    if task in ("causal_lm", "masked_lm", "seq2seq"):
        assert result.metrics["val_perplexity"] == pytest.approx(
            math.exp(result.metrics["val_loss"]), rel=0.05)
    assert 0 <= result.metrics["val_accuracy"] <= 1


def test_run_folder_final_rebuilds_and_samples(tmp_path, tiny_lm):
    loaded = utils.load_model(tiny_lm, say=lambda m: None)
    result = train(loaded, corpus(40), tiny_config(tmp_path), **QUIET)
    run = result.run_dir
    for name in ("checkpoints/latest.json", "tokenizer/tokenizer.json", "metrics.csv",
                 "summary.json", "tier1.json", "config.json", "fingerprint.json",
                 "final/model.safetensors", "final/config.json", "final/model.py",
                 "final/tokenizer.json"):
        assert (run / name).is_file(), name
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 30 and (run / "checkpoints" / latest["file"]).is_file()
    rebuilt = utils.load_model(run / "final", say=lambda m: None)
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, rebuilt.model.state_dict()[key]), key
    assert rebuilt.model.head.weight is rebuilt.model.tok.weight  # the tie survives
    text = result.sample("the king", n_tokens=12)
    assert isinstance(text, str) and len(text) > 0
    fig = result.plot()
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Validation perplexity",
                                                  "Learning rate"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["final_dir"] == str(run / "final")
    assert summary["data"] == result.data and summary["data"].startswith(
        "40 records in memory (train 38 documents (")
    assert "each row is one document; validation: 2 whole documents of 40" in summary["data"]


def test_running_again_resumes_and_a_longer_budget_continues(tmp_path, tiny_lm):
    loaded = utils.load_model(tiny_lm, say=lambda m: None)
    config = tiny_config(tmp_path, max_steps=20)
    train(loaded, corpus(40), config, **QUIET)
    again = train(utils.load_model(tiny_lm, say=lambda m: None), corpus(40),
                  config.replace(max_steps=30, lr=1e-2), **QUIET)
    assert again.resumed_from["step"] == 20 and again.steps == 30
    assert again.config.lr == 3e-3  # the stored config wins
    assert any("lr" in note for note in again.notes)


def test_a_checkpoint_of_another_model_is_refused(tmp_path, tiny_lm):
    config = tiny_config(tmp_path, max_steps=10)
    train(utils.load_model(tiny_lm, say=lambda m: None), corpus(40), config, **QUIET)
    wider = utils.load_model(tiny_lm, config={**CONFIG, "d_model": 48}, say=lambda m: None)
    with pytest.raises(UserError, match=r"do not belong to this model.*reshaped"):
        train(wider, corpus(40), config.replace(max_steps=20), **QUIET)


def test_resume_never_refuses_to_overwrite_a_run(tmp_path, tiny_lm):
    config = tiny_config(tmp_path, max_steps=10)
    train(utils.load_model(tiny_lm, say=lambda m: None), corpus(40), config, **QUIET)
    with pytest.raises(UserError, match="resume='never' would overwrite it"):
        train(utils.load_model(tiny_lm, say=lambda m: None), corpus(40),
              config.replace(resume="never"), **QUIET)


@pytest.mark.parametrize("content, says", [
    (lambda path: torch.save({"weights": torch.zeros(2)}, path), "holds no global_step"),
    (lambda path: path.write_bytes(b"not a checkpoint"), "truncated or corrupt"),
    (None, "no such checkpoint file or run folder")])
def test_resume_from_a_named_file_that_is_no_checkpoint_says_so(tmp_path, tiny_lm, content,
                                                                 says):
    file = tmp_path / "mine.ckpt"
    if content is not None:
        content(file)
    config = tiny_config(tmp_path, max_steps=4, resume=str(file))
    with pytest.raises(UserError, match=says):
        train(utils.load_model(tiny_lm, say=lambda m: None), corpus(40), config, **QUIET)


def test_nan_steps_are_skipped_then_rolled_back_at_a_lower_lr(tmp_path, tiny_lm):
    faulty = {**CONFIG, "nan_at_call": 14}  # training calls 14, 15, 16 return NaN
    loaded = utils.load_model(tiny_lm, config=faulty, say=lambda m: None)
    result = train(loaded, corpus(40), tiny_config(tmp_path, max_steps=24, max_bad_steps=3),
                   gate=False, **QUIET)
    assert result.skipped_steps == 3 and result.rollbacks == 1
    assert any("rolled back to the checkpoint of step 10" in n for n in result.notes)
    for p in loaded.model.parameters():
        assert torch.isfinite(p).all()
    assert math.isfinite(result.metrics["val_loss"])
    summary = result.summary()
    assert summary["skipped_steps"] == 3 and summary["rollbacks"] == 1


@pytest.mark.parametrize(("case", "check"), [("no_causal_mask", "causal_masking"),
                                             ("no_mlp_residual", "residual_paths"),
                                             ("rope_constant_positions", "position_information"),
                                             ("diagonal_only_mask", "context_use")])
def test_the_tier1_gate_stops_a_silent_bug_before_training(tmp_path, case, check):
    loaded = utils.load_model(ZOO / case, say=lambda m: None)
    config = tiny_config(tmp_path)
    with pytest.raises(GateFailed, match=check) as info:
        train(loaded, corpus(20), config, **QUIET)
    assert not info.value.report.passed
    assert (Path(config.out_dir) / "tier1.json").is_file()
    assert not (Path(config.out_dir) / "checkpoints").exists() or not any(
        (Path(config.out_dir) / "checkpoints").glob("*.ckpt"))


def test_lr_auto_runs_the_finder_and_the_config_stays_the_source_of_truth(tmp_path, tiny_lm):
    loaded = utils.load_model(tiny_lm, say=lambda m: None)
    result = train(loaded, corpus(40), tiny_config(tmp_path, lr="auto", max_steps=10), **QUIET)
    assert isinstance(result.config.lr, float) and 1e-6 <= result.config.lr <= 1.0
    stored = json.loads((result.run_dir / "config.json").read_text())
    assert stored["lr"] == result.config.lr  # a resumed run trains at the same rate
    assert any("learning-rate finder" in n for n in result.notes)
    assert result.config.batch_size == 4  # the finder did not resize the batch


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path, tiny_lm):
    loaded = utils.load_model(tiny_lm, say=lambda m: None)
    config = tiny_config(tmp_path, max_steps=60, val_every=3, early_stopping_patience=2,
                         lr=1e-9, warmup_steps=0)  # nothing is learnt: no improvement
    result = train(loaded, corpus(40), config, **QUIET)
    assert result.steps < 60
    assert result.final_dir is not None


def test_the_default_run_folder_names_the_source_and_config(tmp_path, monkeypatch):
    from utils.training.runs import default_run_dir

    adapter = utils.adapt(utils.load_model(ZOO / "flat_gpt", say=lambda m: None))
    config = TrainingConfig()
    first = default_run_dir(adapter, config)
    assert first.parent.name == "runs" and first.name.startswith(type(adapter.model).__name__)
    assert default_run_dir(adapter, config.replace(max_steps=5, val_every=1)) == first
    assert default_run_dir(adapter, config.replace(lr=1e-3)) != first
    gist = dict(adapter.source, kind="gist", gist_id="a" * 32, revision="1" * 40)
    monkeypatch.setattr(adapter, "source", gist)
    a = default_run_dir(adapter, config)
    assert a.name.startswith("a" * 32) and a != first
    monkeypatch.setattr(adapter, "source", {**gist, "revision": "2" * 40})
    assert default_run_dir(adapter, config) != a  # a new revision starts a new run


def test_final_folder_of_a_multi_file_model_rebuilds(tmp_path):
    loaded = utils.load_model(ZOO / "multi_file", say=lambda m: None)
    result = train(loaded, corpus(40), tiny_config(tmp_path, max_steps=4, val_every=2,
                                                   checkpoint_every=2), **QUIET)
    assert sorted(p.name for p in result.final_dir.glob("*.py")) == ["layers.py", "model.py"]
    rebuilt = utils.load_model(result.final_dir, say=lambda m: None)
    assert rebuilt.source["weights"]["file"] == "model.safetensors"
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, rebuilt.model.state_dict()[key]), key


def test_the_gradient_scaler_state_survives_a_checkpoint(tmp_path):
    """fp16 + GradScaler is what a T4 runs; on CPU Lightning turns 16-mixed into bf16, so the
    scaler's save/restore is tested here, at unit level."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from utils.training.checkpoint_manager import CheckpointManager

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([weight], lr=0.1)
    for _ in range(4):  # three good steps double the scale; the fourth counts towards more
        scaler.scale((weight * 2).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    with CheckpointManager(tmp_path / "run") as manager:
        manager.save({"precision": plugin.state_dict(), "global_step": 1}, 1)
        state = manager.load(manager.latest_valid())
    fresh = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    fresh.load_state_dict(state["precision"])
    assert fresh.scaler.get_scale() == scaler.get_scale() == 2048.0
    assert fresh.scaler.state_dict() == scaler.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a scaler needs a GPU")
def test_fp16_with_a_scaler_trains_on_a_gpu(tmp_path, tiny_lm):
    loaded = utils.load_model(tiny_lm, say=lambda m: None)
    result = train(loaded, corpus(40), tiny_config(tmp_path, precision="16-mixed"), **QUIET)
    assert math.isfinite(result.metrics["val_loss"])


def test_an_adapter_with_overrides_trains_as_adapted_and_keeps_the_code(tmp_path):
    """train(adapter) uses the adapter as made (its overrides: here a shorter max_seq_len) and
    still writes the LoadedModel's code files and config into final/."""
    loaded = utils.load_model(ZOO / "multi_file", say=lambda m: None)
    adapter = utils.adapt(loaded, max_seq_len=16)
    result = train(adapter, corpus(40), tiny_config(tmp_path, max_steps=2, seq_len=None,
                                                    val_every=1, checkpoint_every=2), **QUIET)
    assert result.adapter is adapter and result.config.seq_len_for(adapter.max_seq_len) == 16
    assert sorted(p.name for p in result.final_dir.glob("*.py")) == ["layers.py", "model.py"]
    saved = json.loads((result.final_dir / "config.json").read_text())
    assert {k: saved[k] for k in loaded.config} == loaded.config


SPEECHES = "".join(f"{who}:\n{line}\n\n" for who, line in [
    ("KING", "Who goes there?"), ("QUEEN", "A friend, my lord."), ("KING", "Then stand."),
    ("QUEEN", "I stand and wait.")] * 60)


@pytest.mark.slow
@pytest.mark.parametrize("document", ["file", "paragraph"])
def test_a_char_model_trained_on_a_text_file_samples_its_blank_lines(tmp_path, document):
    """Text as written: a blank line between speeches is text the model learns to write. When
    blank lines are taken as document boundaries instead, they become eos and never appear."""
    from utils.training.dataset_utilities import load_text_dataset

    model = write_tiny_lm(tmp_path / "chars", {**CONFIG, "vocab_size": 48, "dropout": 0.0})
    (tmp_path / "play.txt").write_text(SPEECHES)
    data = load_text_dataset(tmp_path / "play.txt", document=document)
    result = train(utils.load_model(model, say=lambda m: None), data,
                   tiny_config(tmp_path, max_steps=120, val_every=60, batch_size=8),
                   gate=False, **QUIET)
    assert result.tokenizer.strategy == "char"
    text = "".join(result.sample("KING:\n", n_tokens=120, seed=s) for s in range(3))
    if document == "file":
        assert "\n\nQUEEN:\n" in text or "\n\nKING:\n" in text, repr(text)
    else:
        assert "\n\n" not in text, repr(text)


def test_what_a_person_sees_at_the_end_of_short_finished_and_unvalidated_runs(tmp_path, tiny_lm):
    """A run shorter than val_every is validated once at its end; a warm-up longer than the run
    is a note; running a finished run again says it is complete; no validation text is a
    note, not a Lightning warning."""
    import warnings

    loaded = utils.load_model(tiny_lm, say=lambda m: None)
    config = tiny_config(tmp_path, max_steps=6, val_every=50, warmup_steps=20,
                         checkpoint_every=0)
    result = train(loaded, corpus(40), config, gate=False, **QUIET)
    assert result.metrics.get("val_loss") is not None
    val_rows = result.history.dropna(subset=["val_loss"])
    assert list(val_rows["step"]) == [6]
    assert any("warmup_steps=20 is not shorter than the run (6 steps)" in n
               for n in result.notes)

    said: list[str] = []
    again = train(utils.load_model(tiny_lm, say=lambda m: None), corpus(40), config,
                  gate=False, say=said.append, progress=False)
    assert again.resumed_from["complete"] and again.steps == 6
    assert any("already complete" in m and "max_steps=6" in m for m in said)
    assert not any(m.startswith("Resuming") for m in said)
    assert list(again.history.dropna(subset=["val_loss"])["step"]) == [6]  # not validated twice

    from utils.training.dataset_utilities import load_text_dataset

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # Lightning's "length ... is zero"
        bare = train(loaded, load_text_dataset(corpus(40), validation_fraction=0),
                     tiny_config(tmp_path / "bare", max_steps=4, val_every=2), gate=False,
                     **QUIET)
    assert "val_loss" not in bare.metrics
    assert any("No validation text" in n for n in bare.notes)


@pytest.mark.slow
def test_a_pretrained_tokenizer_that_could_not_be_had_is_said_on_screen(tmp_path, monkeypatch):
    """Offline, a 50,304-row model cannot get GPT-2's tokenizer: the screen says so, not only
    tokenizer_config.json."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = write_tiny_lm(tmp_path / "wide", {**CONFIG, "vocab_size": 50304})
    said: list[str] = []
    train(utils.load_model(folder, say=lambda m: None), corpus(40),
          tiny_config(tmp_path, max_steps=1, val_every=0, checkpoint_every=0), gate=False,
          say=said.append, progress=False)
    tokenizer_lines = [m for m in said if m.startswith(("Tokenizer:", "  note:"))]
    assert tokenizer_lines[0].startswith("Tokenizer: bpe")
    assert any("gpt2" in m.lower() and "unavailable" in m for m in tokenizer_lines[1:]), said
