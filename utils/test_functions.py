"""The familiar entry points, by stable names, for notebooks and custom scripts.

Each takes ``(model, config=None, *, options=None, **fields)`` — a bare ``nn.Module`` and an
optional config dict, as a custom notebook has them (a ``LoadedModel`` or ``ModelAdapter`` works
too) — and returns a :class:`~utils.report.CheckResult` or :class:`~utils.report.Report`.
``options`` is a :class:`~utils.checks.CheckOptions`; ``fields`` are its fields as keywords
(``seed``, ``device``, ``batch_size``, ``thresholds``, …), which override those of ``options``.

The Tier 3 names train, so they take data and a ``TrainingConfig`` instead:
``test_fine_tuning(model, data, config=None, **overrides)``,
``test_benchmark_comparison(model, data, steps=...)`` and
``test_hyperparameter_search(model, data, n_trials=...)`` (the training extras are imported when
one is called).

None of these is a test of yours: each carries ``__test__ = False``, so importing one into a
test file does not make pytest collect it.

Example:
    >>> from utils.test_functions import run_all_tier1_tests
    >>> report = run_all_tier1_tests(model, {"vocab_size": 1000, "max_seq_len": 128}, seed=1)
    >>> report = run_all_tier1_tests(model, options=CheckOptions(batch_size=2), seed=1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from utils.checks import REGISTRY, CheckOptions, as_adapter
from utils.errors import UserError
from utils.report import CheckResult, Report
from utils.tier1_critical_validation import run_tier1
from utils.tier2_advanced_analysis import run_tier2

__test__ = False  # pytest: this module holds no tests
__all__ = [
    "run_all_tier1_tests",
    "run_all_tier2_tests",
    "test_attention_patterns",
    "test_attribution_analysis",
    "test_batch_independence",
    "test_benchmark_comparison",
    "test_causal_masking",
    "test_context_use",
    "test_determinism",
    "test_fine_tuning",
    "test_generation_consistency",
    "test_gradient_flow",
    "test_hyperparameter_search",
    "test_inference_speed",
    "test_initial_loss",
    "test_memory_footprint",
    "test_mixed_precision",
    "test_model_loss",
    "test_output_stability",
    "test_overfit_one_batch",
    "test_padding_invariance",
    "test_parameter_initialization",
    "test_position_information",
    "test_position_shift",
    "test_residual_paths",
    "test_robustness",
    "test_shape_robustness",
]


F = TypeVar("F", bound=Callable[..., Any])


def _not_a_test(fn: F) -> F:
    # pytest collects any ``test_*`` function in a test module's namespace, imported or not,
    # unless it says otherwise.
    setattr(fn, "__test__", False)  # noqa: B010  # pytest: not a test
    return fn


def _options(options: CheckOptions | None, fields: dict[str, Any]) -> CheckOptions:
    """``options`` with ``fields`` replacing some of its values (all defaults when None)."""
    if options is not None and not isinstance(options, CheckOptions):
        raise UserError(f"options must be a CheckOptions, got a {type(options).__name__}.",
                        fix="Pass options=utils.CheckOptions(...), or the fields as keywords "
                        "(seed=1, batch_size=2).")
    valid = [f.name for f in dataclasses.fields(CheckOptions)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        import difflib

        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(
            k, valid, n=1)) else repr(k) for k in unknown]
        raise UserError(f"Unknown option(s): {', '.join(hints)}.",
                        why=f"Check options are: {', '.join(valid)}.",
                        fix="Use one of the names above, e.g. seed=1 or batch_size=2.")
    return dataclasses.replace(options or CheckOptions(), **fields)


def _one(name: str, model, config: dict | None, options: CheckOptions | None,
         fields: dict[str, Any]) -> CheckResult:
    """One check or analysis of either tier, by its registered name."""
    run = run_tier1 if REGISTRY[name].tier == 1 else run_tier2
    report = run(as_adapter(model, config), checks=[name], options=_options(options, fields),
                 progress=False)
    return report.results[0]


@_not_a_test
def test_shape_robustness(model, config: dict | None = None, *,
                          options: CheckOptions | None = None, **fields) -> CheckResult:
    """Batch × length sweep up to max_seq_len, with the output shape each task needs."""
    return _one("shape_robustness", model, config, options, fields)


@_not_a_test
def test_gradient_flow(model, config: dict | None = None, *,
                       options: CheckOptions | None = None, **fields) -> CheckResult:
    """One backward pass: every parameter gets a finite gradient; no layer vanishes."""
    return _one("gradient_flow", model, config, options, fields)


@_not_a_test
def test_parameter_initialization(model, config: dict | None = None, *,
                                  options: CheckOptions | None = None, **fields) -> CheckResult:
    """Weights at the scale common init schemes produce (gain = std × sqrt(fan_in) near 1)."""
    return _one("parameter_initialization", model, config, options, fields)


@_not_a_test
def test_output_stability(model, config: dict | None = None, *,
                          options: CheckOptions | None = None, **fields) -> CheckResult:
    """NaN/Inf in outputs and loss across lengths and extreme token ids; logit scale."""
    return _one("output_stability", model, config, options, fields)


@_not_a_test
def test_initial_loss(model, config: dict | None = None, *,
                      options: CheckOptions | None = None, **fields) -> CheckResult:
    """The loss at init against chance (ln(vocab) for LMs, ln(classes) for classifiers)."""
    return _one("initial_loss", model, config, options, fields)


@_not_a_test
def test_determinism(model, config: dict | None = None, *,
                     options: CheckOptions | None = None, **fields) -> CheckResult:
    """Same input, eval mode → identical output, whatever the random seed."""
    return _one("determinism", model, config, options, fields)


@_not_a_test
def test_memory_footprint(model, config: dict | None = None, *,
                          options: CheckOptions | None = None, **fields) -> CheckResult:
    """Training memory per batch at full length, and whether it fits a 16 GB Colab T4."""
    return _one("memory_footprint", model, config, options, fields)


@_not_a_test
def test_inference_speed(model, config: dict | None = None, *,
                         options: CheckOptions | None = None, **fields) -> CheckResult:
    """Forward latency percentiles and tokens/s after warm-up (share of peak on a GPU)."""
    return _one("inference_speed", model, config, options, fields)


@_not_a_test
def test_causal_masking(model, config: dict | None = None, *,
                        options: CheckOptions | None = None, **fields) -> CheckResult:
    """Changing token t must not move any output before t (causal LMs, seq2seq decoders)."""
    return _one("causal_masking", model, config, options, fields)


@_not_a_test
def test_batch_independence(model, config: dict | None = None, *,
                            options: CheckOptions | None = None, **fields) -> CheckResult:
    """A sample's outputs are the same alone, in a batch, and in a reordered batch."""
    return _one("batch_independence", model, config, options, fields)


@_not_a_test
def test_padding_invariance(model, config: dict | None = None, *,
                            options: CheckOptions | None = None, **fields) -> CheckResult:
    """Masked padding must not move the outputs at real positions."""
    return _one("padding_invariance", model, config, options, fields)


@_not_a_test
def test_model_loss(model, config: dict | None = None, *,
                    options: CheckOptions | None = None, **fields) -> CheckResult:
    """A loss the model computes itself must equal the task loss from its logits."""
    return _one("model_loss", model, config, options, fields)


@_not_a_test
def test_position_shift(model, config: dict | None = None, *,
                        options: CheckOptions | None = None, **fields) -> CheckResult:
    """RoPE / ALiBi / relative positions: a left shift with masked pads must not move outputs."""
    return _one("position_shift", model, config, options, fields)


@_not_a_test
def test_context_use(model, config: dict | None = None, *,
                     options: CheckOptions | None = None, **fields) -> CheckResult:
    """Outputs must move when other tokens change: each position reads its context."""
    return _one("context_use", model, config, options, fields)


@_not_a_test
def test_position_information(model, config: dict | None = None, *,
                              options: CheckOptions | None = None, **fields) -> CheckResult:
    """Positions must reach the output: word order matters, one repeated token differs by place."""
    return _one("position_information", model, config, options, fields)


@_not_a_test
def test_residual_paths(model, config: dict | None = None, *,
                        options: CheckOptions | None = None, **fields) -> CheckResult:
    """Every block of the stack adds to the residual stream instead of replacing it."""
    return _one("residual_paths", model, config, options, fields)


@_not_a_test
def test_overfit_one_batch(model, config: dict | None = None, *,
                           options: CheckOptions | None = None, **fields) -> CheckResult:
    """Two dozen optimizer steps on one tiny batch must cut the loss clearly; weights restored."""
    return _one("overfit_one_batch", model, config, options, fields)


@_not_a_test
def test_mixed_precision(model, config: dict | None = None, *,
                         options: CheckOptions | None = None, **fields) -> CheckResult:
    """The forward under fp16/bf16 autocast: finite, and close to fp32."""
    return _one("mixed_precision", model, config, options, fields)


@_not_a_test
def run_all_tier1_tests(model, config: dict | None = None, *,
                        options: CheckOptions | None = None, **fields) -> Report:
    """Every Tier 1 check; the report renders as a table in notebooks."""
    return run_tier1(as_adapter(model, config), options=_options(options, fields))


# ---- Tier 2: understanding the model -----------------------------------------------------
@_not_a_test
def test_attention_patterns(model, config: dict | None = None, *,
                            options: CheckOptions | None = None, **fields) -> CheckResult:
    """Per-head attention statistics and classes (previous-token, sink, local, uniform, mixed)."""
    return _one("attention_patterns", model, config, options, fields)


@_not_a_test
def test_attribution_analysis(model, config: dict | None = None, *,
                              options: CheckOptions | None = None, **fields) -> CheckResult:
    """Integrated Gradients and gradient × input per input token, with the completeness delta."""
    return _one("attribution_analysis", model, config, options, fields)


@_not_a_test
def test_robustness(model, config: dict | None = None, *,
                    options: CheckOptions | None = None, **fields) -> CheckResult:
    """Top-1 agreement, KL and loss increase under token substitution and embedding noise."""
    return _one("robustness", model, config, options, fields)


@_not_a_test
def test_generation_consistency(model, config: dict | None = None, *,
                                options: CheckOptions | None = None, **fields) -> CheckResult:
    """Greedy decoding step by step (and with a KV cache) equals one full forward pass."""
    return _one("generation_consistency", model, config, options, fields)


@_not_a_test
def run_all_tier2_tests(model, config: dict | None = None, *,
                        options: CheckOptions | None = None, **fields) -> Report:
    """Every Tier 2 analysis; ``report.plots()`` draws heatmaps, attribution bars and curves."""
    return run_tier2(as_adapter(model, config), options=_options(options, fields))


# ---- Tier 3: training (the extras are imported when one is called) ------------------------
@_not_a_test
def test_fine_tuning(model, data: Any = None, config: Any = None, **kwargs) -> Any:
    """Fine-tune behind the Tier 1 gate; ``result.report`` holds the learning-sanity checks.
    See :func:`utils.tier3.fine_tune.fine_tune`."""
    from utils.tier3.fine_tune import fine_tune

    return fine_tune(model, data, config, **kwargs)


@_not_a_test
def test_benchmark_comparison(model, data: Any = None, baseline: str = "gpt", *, steps: int,
                              config: Any = None, **kwargs) -> Any:
    """Train the model and a baseline of matched size on the same data and budget; compare.
    See :func:`utils.tier3.benchmark.benchmark_comparison`."""
    from utils.tier3.benchmark import benchmark_comparison

    return benchmark_comparison(model, data, baseline, steps=steps, config=config, **kwargs)


@_not_a_test
def test_hyperparameter_search(model, data: Any = None, space: Any = None, **kwargs) -> Any:
    """An Optuna study over the training hyperparameters.
    See :func:`utils.tier3.search.hyperparameter_search`."""
    from utils.tier3.search import hyperparameter_search

    return hyperparameter_search(model, data, space, **kwargs)
