"""TrainingConfig (validation, round trips, resume merge), the step-memory model, and presets."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import adapt
from utils.checks import CheckOptions
from utils.errors import UserError
from utils.memory import activation_fit, estimate_train_memory, max_batch_size
from utils.tier1_critical_validation import run_tier1
from utils.training.config import (
    RESUME_OVERRIDABLE,
    ConfigError,
    TrainingConfig,
    effective_precision,
    field_docs,
    merge_for_resume,
)
from utils.ui import presets
from utils.ui.presets import PRESETS, preset, preset_for

ROOT = Path(__file__).resolve().parent.parent


class LM(nn.Module):
    """A small causal LM; ``attention=True`` adds a (B, T, T) score map saved for backward."""

    def __init__(self, vocab=64, d=16, max_len=128, attention=False):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.mix, self.head = nn.Linear(d, d), nn.Linear(d, vocab)
        self.attention, self.calls = attention, 0

    def forward(self, input_ids):
        self.calls += 1
        t = input_ids.shape[1]
        h = self.mix(self.tok(input_ids) + self.pos(torch.arange(t)))
        if self.attention:
            scores = (h @ h.transpose(1, 2)).masked_fill(torch.ones(t, t).triu(1).bool(), -1e9)
            h = scores.softmax(-1) @ h
        return self.head(F.layer_norm(torch.tanh(h), h.shape[-1:]))


# ---- TrainingConfig ------------------------------------------------------------------------
def test_defaults_are_valid_and_every_field_is_documented():
    config = TrainingConfig()
    assert (config.max_steps, config.batch_size, config.lr, config.betas, config.keep_last,
            config.precision, config.resume, config.logger) == (
        1000, 8, 3e-4, (0.9, 0.95), 2, "auto", "auto", "csv")
    docs = field_docs()
    assert list(docs) == [f.name for f in dataclasses.fields(TrainingConfig)]
    assert all(len(text) > 10 for text in docs.values())
    assert "Trash" in docs["keep_last"]


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(UserError, match=r"5 field\(s\) are wrong") as info:
        TrainingConfig(batch_size=0, lr=-1, betas=(0.9, 1.5), precision="fp16", logger="tb")
    message = str(info.value)
    for name in ("batch_size", "lr", "betas", "precision", "logger"):
        assert f"{name}: got" in message
    assert "'16-mixed'" in message  # what is allowed is named
    assert isinstance(info.value, ConfigError)
    assert set(info.value.problems) == {"batch_size", "lr", "betas", "precision", "logger"}


BAD = [  # (field, value): each one alone is an error naming that field
    ("max_steps", 0), ("max_steps", 2.5), ("epochs", 0), ("batch_size", True),
    ("grad_accum", 0), ("seq_len", 0), ("lr", 0), ("lr", "fast"), ("lr", float("nan")),
    ("min_lr_ratio", 1.5), ("warmup_steps", -1), ("weight_decay", -0.1), ("betas", (0.9,)),
    ("betas", (1.0, 0.9)), ("eps", 0), ("grad_clip", -1), ("precision", "16"),
    ("compile", "yes"), ("seed", -1), ("val_every", -1), ("val_batches", 0),
    ("checkpoint_every", -5), ("keep_last", 0), ("early_stopping_patience", -1),
    ("log_every", 0), ("out_dir", ""), ("resume", ""), ("logger", "tensorboard"),
    ("devices", 0), ("devices", "all"), ("num_nodes", 0), ("strategy", "deepspeed"),
    ("accelerator", "tpu"), ("num_workers", -1), ("spike_factor", 1.0), ("max_bad_steps", 0),
    ("rollback_lr_factor", 1.0), ("dropout", 1.0),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_each_bad_value_names_its_field(name, value):
    with pytest.raises(ConfigError, match=rf"{name}: got") as info:
        TrainingConfig(**{name: value})
    assert list(info.value.problems) == [name]


@pytest.mark.parametrize(("changes", "name", "pattern"), [
    ({"max_steps": -1}, "max_steps", "epochs is None"),
    ({"early_stopping_patience": 3, "val_every": 0}, "early_stopping_patience", "val_every=0"),
    ({"strategy": "fsdp", "accelerator": "cpu"}, "strategy", "GPUs only"),
    ({"strategy": "single_device", "devices": 2}, "strategy", "use 'ddp'"),
])
def test_fields_that_contradict_each_other(changes, name, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        TrainingConfig(**changes)
    assert list(info.value.problems) == [name]


def test_what_files_and_the_cli_hand_in_is_normalised():
    config = TrainingConfig(max_steps=-1, epochs=2, lr="3e-4", eps="1e-8", betas=[0.9, 0.99],
                            precision=32, devices="2", out_dir=Path("/tmp/run"), resume="auto")
    assert config.lr == 3e-4 and config.eps == 1e-8 and config.betas == (0.9, 0.99)
    assert config.precision == "32" and config.devices == 2 and config.out_dir == "/tmp/run"
    assert TrainingConfig(lr="auto", devices="auto", resume="/x/ckpt.pt").lr == "auto"


@pytest.mark.parametrize("config", [TrainingConfig(), *PRESETS.values(), TrainingConfig(
    max_steps=-1, epochs=3, lr="auto", betas=(0.8, 0.9), out_dir="/tmp/r", mirror_dir="/drive/r",
    resume="never", devices="auto", strategy="ddp", val_batches=5, dropout=0.1, seq_len=32)])
def test_to_dict_and_from_dict_round_trip_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert isinstance(data["betas"], list)
    assert TrainingConfig.from_dict(data) == config


def test_unknown_keys_are_all_reported_with_the_nearest_valid_one():
    with pytest.raises(ConfigError, match=r"'batchsize' \(did you mean 'batch_size'\?\)") as info:
        TrainingConfig.from_dict({"batchsize": 4, "warmup": 10, "zzz": 1})
    assert "'warmup' (did you mean 'warmup_steps'?)" in str(info.value)
    assert set(info.value.problems) == {"batchsize", "warmup", "zzz"}
    with pytest.raises(ConfigError, match=r"did you mean 'grad_clip'"):
        TrainingConfig().replace(grad_clipp=1.0)
    with pytest.raises(UserError, match="must be a mapping"):
        TrainingConfig.from_dict([("lr", 1e-3)])


def test_replace_validates_and_leaves_the_original_alone():
    config = TrainingConfig()
    assert config.replace(lr=1e-3).lr == 1e-3 and config.lr == 3e-4
    with pytest.raises(ConfigError, match="batch_size: got 0"):
        config.replace(batch_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


def test_merge_for_resume_keeps_the_stored_config_but_the_budget_and_devices():
    assert RESUME_OVERRIDABLE == (
        "max_steps", "epochs", "val_every", "checkpoint_every", "log_every", "val_batches",
        "devices", "num_nodes", "strategy", "accelerator", "logger", "num_workers", "out_dir",
        "mirror_dir", "resume")
    stored = TrainingConfig(lr=3e-4, batch_size=8, max_steps=1000)
    requested = stored.replace(max_steps=2000, val_every=50, lr=1e-3, batch_size=16,
                               mirror_dir="/drive/run")
    merged, notes = merge_for_resume(stored, requested)
    assert merged == stored.replace(max_steps=2000, val_every=50, mirror_dir="/drive/run")
    assert notes == [
        "max_steps changed from 1000 to 2000 on resume.",
        "batch_size=16 was ignored: a resumed run keeps its stored batch_size=8.",
        "lr=0.001 was ignored: a resumed run keeps its stored lr=0.0003.",
        "val_every changed from 200 to 50 on resume.",
        "mirror_dir changed from None to '/drive/run' on resume.",
    ]
    assert merge_for_resume(stored, stored) == (stored, [])


@pytest.mark.parametrize(("precision", "device", "bf16", "expected"), [
    ("auto", "cpu", False, "32"), ("auto", "cpu", True, "32"), ("auto", "mps", False, "32"),
    ("auto", "cuda", True, "bf16-mixed"), ("auto", "cuda", False, "16-mixed"),
    ("16-mixed", "cuda", True, "16-mixed"), ("bf16-mixed", "cpu", False, "bf16-mixed"),
    ("32", "cuda", True, "32"),
])
def test_effective_precision(precision, device, bf16, expected):
    assert TrainingConfig(precision=precision).effective_precision(device, bf16) == expected
    assert effective_precision(device, bf16, precision) == expected


def test_seq_len_for_a_model():
    assert TrainingConfig().seq_len_for(1024) == 256
    assert TrainingConfig().seq_len_for(32) == 32
    assert TrainingConfig().seq_len_for(None) == 256
    assert TrainingConfig(seq_len=64).seq_len_for(128) == 64
    with pytest.raises(UserError, match="seq_len=64 is longer than the model's max_seq_len=32"):
        TrainingConfig(seq_len=64).seq_len_for(32)


def test_config_and_presets_do_not_import_lightning():
    code = ("import sys, utils.training.config, utils.ui.presets; "
            "assert not any(m.split('.')[0] in ('lightning', 'pytorch_lightning', 'optuna', "
            "'torchmetrics') for m in sys.modules), 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---- the memory model ----------------------------------------------------------------------
def test_estimate_grows_with_batch_and_length():
    adapter = adapt(LM(attention=True), max_seq_len=128)
    small = estimate_train_memory(adapter, 2, 32)
    assert estimate_train_memory(adapter, 4, 32).activations == pytest.approx(2 * small.activations)
    longer = estimate_train_memory(adapter, 2, 128)
    assert longer.activations > 4 * small.activations  # the T² score map
    assert longer.params == small.params and small.optimizer == 2 * small.grads
    half = estimate_train_memory(adapter, 2, 32, precision="16-mixed")
    assert half.activations == pytest.approx(small.activations / 2)
    assert small.fits(small.total) and not small.fits(small.total - 1)
    with pytest.raises(ValueError, match="effective_precision"):
        estimate_train_memory(adapter, 2, 32, precision="auto")


def test_estimate_matches_memory_footprint():
    adapter = adapt(LM(), max_seq_len=128)
    result = run_tier1(adapter, checks=["memory_footprint"], options=CheckOptions(),
                       progress=False).results[0]
    fit = (result.metrics["activation_bytes_per_token"],
           result.metrics["activation_bytes_per_token_sq"])
    assert activation_fit(adapter) == fit
    for row in result.rows:
        est = estimate_train_memory(adapter, row["batch"], row["seq_len"])
        assert est.total / 2**20 == row["train_total_mb"]
        assert est.activations / 2**20 == row["activations_mb"]
    budget = 15 * 2**30
    assert max_batch_size(adapter, 128, budget) == result.metrics["max_batch_colab_t4_fp32"]


def test_activation_fit_is_measured_once_and_leaves_the_model_as_it_was():
    model = LM()
    adapter = adapt(model, max_seq_len=128)
    model.eval()
    state = torch.get_rng_state()
    calls = model.calls
    first = activation_fit(adapter, seed=3)
    assert model.calls == calls + 2 and not model.training
    assert torch.equal(torch.get_rng_state(), state)
    assert activation_fit(adapter, seed=3) == first and model.calls == calls + 2


# ---- presets -------------------------------------------------------------------------------
def test_presets_are_valid_and_smoke_is_tiny():
    assert {"smoke", "cpu", "colab-t4", "colab-a100"} <= set(PRESETS)
    smoke = preset("smoke")
    assert smoke.max_steps <= 20 and smoke.batch_size <= 4 and smoke.seq_len <= 64
    assert smoke.accelerator == "cpu" and 0 < smoke.val_every < smoke.max_steps
    assert 0 < smoke.checkpoint_every < smoke.max_steps
    assert preset("colab-t4").precision == "16-mixed"
    assert preset("colab-a100").precision == "bf16-mixed"
    assert preset("smoke", max_steps=5).max_steps == 5 and PRESETS["smoke"].max_steps == 20


def test_an_unknown_preset_lists_the_names():
    with pytest.raises(UserError, match=r"Unknown preset 'colab-t5'. Did you mean 'colab-t4'\?"):
        preset("colab-t5")
    with pytest.raises(UserError, match="smoke, cpu, colab-t4, colab-a100"):
        preset("gpu")
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        preset("smoke", max_step=3)


def _budget_for(adapter, batch: int, seq: int, precision: str = "32") -> int:
    """Bytes that fit ``batch`` samples but not one more."""
    return int(estimate_train_memory(adapter, batch + 1, seq, precision=precision).total) - 1


def test_preset_for_shrinks_the_micro_batch_and_keeps_the_effective_batch():
    adapter = adapt(LM(), max_seq_len=128)
    t4 = preset("colab-t4")
    budget = _budget_for(adapter, 5, 128, "16-mixed")
    sized = preset_for(adapter, "cpu", name="colab-t4", memory_bytes=budget)
    assert (sized.batch_size, sized.grad_accum) == (4, 8)  # the largest divisor of 32 that fits
    assert sized.effective_batch_size == t4.effective_batch_size == 32
    assert sized.replace(batch_size=t4.batch_size, grad_accum=t4.grad_accum) == t4
    roomy = preset_for(adapter, "cpu", name="colab-t4", memory_bytes=2**40)
    assert (roomy.batch_size, roomy.grad_accum) == (32, 1)  # fewer, larger micro-batches
    own = preset_for(adapter, "cpu", name="colab-t4", memory_bytes=2**40, batch_size=2)
    assert (own.batch_size, own.grad_accum) == (2, 4)  # an explicit micro-batch that fits stays
    with pytest.raises(UserError, match="One training sample of length 128 needs"):
        preset_for(adapter, "cpu", memory_bytes=1)


def test_preset_for_reads_the_cpu_budget(monkeypatch):
    adapter = adapt(LM(), max_seq_len=128)
    cpu = PRESETS["cpu"]
    free = _budget_for(adapter, 2, cpu.seq_len) / presets.CPU_MEMORY_SHARE
    monkeypatch.setattr(presets, "free_memory_bytes", lambda device: int(free))
    sized = preset_for(adapter, "cpu")
    assert sized.max_steps == cpu.max_steps  # name=None picks "cpu" on a CPU
    assert (sized.batch_size, sized.grad_accum) == (2, 4)
    monkeypatch.setattr(presets, "free_memory_bytes", lambda device: None)
    assert preset_for(adapter, "cpu") == cpu  # nothing known: the preset as it is
