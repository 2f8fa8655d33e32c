"""SetupWizard: its logic without a browser, and its widgets driven headless through ``.value``
and ``Button.click()`` (ipywidgets 7.7.1, what Colab ships, is the version the dev extra pins)."""

from __future__ import annotations

import sys

import pytest
import torch

from utils.errors import MissingExtraError, UserError
from utils.training.config import ConfigError, TrainingConfig
from utils.ui.presets import PRESETS, fit_length
from utils.ui.setup_wizard import FIELDS, PresetChoice, SetupWizard, settings_form
from utils.ui.training_notebook import settings

# ipywidgets 7 creates its comms through ipykernel's deprecated Comm class
pytestmark = pytest.mark.filterwarnings("ignore:The `ipykernel.comm.Comm` class:DeprecationWarning")


@pytest.fixture(scope="module")
def adapter():
    from conftest import ZOO

    import utils

    return utils.adapt(utils.load_model(ZOO / "flat_gpt"))


def test_starts_from_the_preset_with_overrides(adapter):
    wizard = SetupWizard(adapter, "smoke", overrides={"max_steps": 7}, device="cpu")
    smoke = PRESETS["smoke"]
    assert wizard.config == smoke.replace(max_steps=7)
    assert wizard.values["batch_size"] == smoke.batch_size and wizard.errors == {}


def test_apply_builds_the_config_from_typed_text(adapter):
    wizard = SetupWizard(adapter, "cpu", device="cpu")
    wizard.set(max_steps="1,500", batch_size="4", seq_len="", lr="auto", precision="32",
               checkpoint_every="250", use_wandb=True)
    assert wizard.apply() and wizard.errors == {}
    config = wizard.config
    assert (config.max_steps, config.batch_size, config.seq_len, config.lr) == (1500, 4, None,
                                                                                "auto")
    assert config.checkpoint_every == 250 and config.logger == "wandb"
    assert config.warmup_steps == PRESETS["cpu"].warmup_steps  # the rest from the preset


def test_every_bad_field_is_reported_at_once(adapter):
    wizard = SetupWizard(adapter, "smoke", device="cpu")
    wizard.set(max_steps="ten", batch_size="0", lr="fast", checkpoint_every="-5")
    assert not wizard.apply()
    assert set(wizard.errors) == {"max_steps", "batch_size", "lr", "checkpoint_every"}
    assert "'ten' is not a whole number" in wizard.errors["max_steps"]
    assert "'fast' is not a number" in wizard.errors["lr"]
    with pytest.raises(ConfigError, match="invalid field") as err:
        _ = wizard.config
    assert set(err.value.problems) == set(wizard.errors)


def test_a_length_beyond_the_model_is_an_error_on_that_field(adapter):
    wizard = SetupWizard(adapter, "smoke", device="cpu")
    wizard.set(seq_len=str(adapter.max_seq_len + 1))
    assert not wizard.apply() and "longer than the model's max_seq_len" in wizard.errors["seq_len"]


def test_config_applies_entries_that_were_never_applied(adapter):
    wizard = SetupWizard(adapter, "smoke", device="cpu")
    wizard.set(batch_size="2")  # no Apply pressed
    assert wizard.config.batch_size == 2


def test_unknown_field_and_preset(adapter):
    wizard = SetupWizard(adapter, "smoke", device="cpu")
    with pytest.raises(UserError, match="no field batchsize"):
        wizard.set(batchsize=3)
    with pytest.raises(UserError, match="Unknown preset 'colab-t5'"):
        SetupWizard(adapter, "colab-t5", device="cpu")


def test_memory_estimate_warns_when_a_t4_is_too_small(adapter):
    wizard = SetupWizard(adapter, "smoke", device="cpu")
    text, fits = wizard.estimate()
    assert fits and "needs ≈" in text and "on the CPU" in text
    wizard.set(batch_size="200000", seq_len="64")
    text, fits = wizard.estimate()
    assert not fits and "will not fit a T4 (15 GB usable of 16 GB" in text
    wizard.set(batch_size="x")
    assert wizard.estimate() == ("The memory estimate needs a valid batch size and sequence "
                                 "length.", True)


# ---- the widget layer, headless ----------------------------------------------------------
def test_widgets_drive_the_form(adapter):
    import ipywidgets

    wizard = SetupWizard(adapter, "smoke", device="cpu")
    form = wizard.widget()
    assert isinstance(form, ipywidgets.VBox)
    made = wizard._widgets
    assert made["max_steps"].value == str(PRESETS["smoke"].max_steps)
    made["max_steps"].value = "33"
    made["lr"].value = "2e-3"
    made["use_wandb"].value = True
    made["apply"].click()
    assert wizard.errors == {} and wizard.config.max_steps == 33 and wizard.config.lr == 2e-3
    assert wizard.config.logger == "wandb" and "Applied." in made["status"].value
    made["batch_size"].value = "zero"
    made["apply"].click()
    assert "not a whole number" in made["batch_size_error"].value
    assert "1 field(s) to correct" in made["status"].value
    made["preset"].value = "cpu"  # a new preset refills the form
    assert made["max_steps"].value == str(PRESETS["cpu"].max_steps)
    made["apply"].click()
    assert wizard.errors == {} and wizard.config == fit_length(PRESETS["cpu"], adapter)
    assert made["batch_size_error"].value == ""


def test_the_notebook_form_uses_the_settings(adapter, capsys, monkeypatch):
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    form = settings_form(adapter, settings(env={"MAX_STEPS": "12", "PRESET": "smoke"}),
                         device="cpu")
    assert isinstance(form, SetupWizard) and form.config.max_steps == 12


def test_without_ipywidgets_the_preset_is_used(adapter, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails as if not installed
    form = settings_form(adapter, settings(env={"PRESET": "smoke", "USE_WANDB": "1"}),
                         device="cpu")
    assert isinstance(form, PresetChoice)
    assert form.config == PRESETS["smoke"].replace(logger="wandb")
    out = capsys.readouterr().out
    assert "needs ipywidgets" in out and "'smoke' preset" in out
    with pytest.raises(MissingExtraError, match="ipywidgets"):
        SetupWizard(adapter, "smoke", device="cpu").widget()


def test_fields_are_training_config_fields():
    names = {f for f in FIELDS if f != "use_wandb"}
    assert names <= set(TrainingConfig().to_dict())
    assert torch.__version__  # the wizard's estimate runs on the installed torch
