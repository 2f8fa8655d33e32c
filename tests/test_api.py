"""The Python API a notebook user guesses at: options, check names, reprs, and a facade that
stays out of the user's own pytest run."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import utils
from utils import CheckOptions, UserError
from utils.test_functions import run_all_tier1_tests, run_all_tier2_tests, test_initial_loss
from utils.tier1_critical_validation import run_tier1


@pytest.fixture(scope="module")
def loaded():
    return utils.load_model(say=lambda _: None)


def test_check_options_is_exported():
    assert "CheckOptions" in utils.__all__ and utils.CheckOptions is CheckOptions


def test_options_object_keywords_or_both(loaded):
    ratio5 = {"initial_loss.ratio": 5.0}
    default = test_initial_loss(loaded)
    as_object = test_initial_loss(loaded, options=CheckOptions(seed=1, thresholds=ratio5))
    as_keywords = test_initial_loss(loaded, seed=1, thresholds=ratio5)
    both = test_initial_loss(loaded, options=CheckOptions(seed=0, thresholds=ratio5), seed=1)
    assert default.threshold["fail_above_ratio"] == 2.0
    for r in (as_object, as_keywords, both):  # keywords override the fields of options
        assert r.threshold["fail_above_ratio"] == 5.0
        assert r.metrics["loss"] == as_object.metrics["loss"] != default.metrics["loss"]


def test_tier_runners_take_options(loaded):
    options = CheckOptions(thresholds={"initial_loss.ratio": 4.0})
    tier1 = run_all_tier1_tests(loaded, options=options)
    assert tier1["initial_loss"].threshold["fail_above_ratio"] == 4.0
    tier2 = run_all_tier2_tests(loaded, options=options, seed=2)
    assert tier2.results and all(r.status != "error" for r in tier2.results)


def test_bad_options_are_user_errors(loaded):
    with pytest.raises(UserError, match=r"(?s)Unknown option\(s\): 'sede' "
                       r"\(did you mean 'seed'\?\).*Check options are: seed"):
        test_initial_loss(loaded, sede=1)
    with pytest.raises(UserError, match="options must be a CheckOptions, got a dict"):
        test_initial_loss(loaded, options={"seed": 1})
    with pytest.raises(UserError, match="Unknown threshold key"):
        test_initial_loss(loaded, thresholds={"overfit_one_batch.stepz": 3})


@pytest.mark.parametrize(("kwargs", "fix"), [
    ({"checks": ["shape_robustnes"]}, "checks=['shape_robustness']"),
    ({"checks": ["nope"]}, "checks=['shape_robustness']"),
    ({"skip": ["determinsm"]}, "skip=['determinism']"),
])
def test_unknown_check_name_shows_the_python_form(loaded, kwargs, fix):
    with pytest.raises(UserError, match=r"(?s)Unknown check name\(s\).*Tier 1 checks: "
                       r"shape_robustness, causal_masking") as info:
        run_tier1(loaded, **kwargs)
    assert info.value.fix == f"Use the bare names above, e.g. {fix}."
    assert "--checks" not in info.value.message  # the CLI form is for the CLI


def test_reprs_are_short(loaded):
    adapter = utils.adapt(loaded)
    text = repr(loaded)
    assert text.startswith("<LoadedModel TinyGPT: ") and "from folder " in text
    assert "class TinyGPT" not in text and len(text) < 200  # not the code
    text = repr(adapter)
    assert text.startswith("<ModelAdapter TinyGPT: causal_lm, vocab_size 1024") and len(text) < 200
    report = run_tier1(adapter, checks=["determinism"], progress=False)
    assert repr(report).startswith("<Report TinyGPT (causal_lm) from folder ")
    assert repr(report).endswith(": PASSED: 1 check (1 pass)>")


def test_importing_the_facade_into_a_users_test_file_adds_no_tests(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        from utils.test_functions import *  # every entry point, as a notebook user might
        from utils.test_functions import run_all_tier1_tests, test_shape_robustness


        def test_my_model():
            assert callable(test_shape_robustness) and callable(run_all_tier1_tests)
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_mine.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed" in out and "error" not in out.lower() and "fixture" not in out
