"""The familiar entry points, by stable names, for notebooks and custom scripts.

Each takes ``(model, config=None, **options)`` — a bare ``nn.Module`` and an optional config
dict, as a custom notebook has them (a ``LoadedModel`` or ``ModelAdapter`` works too) — and
returns a :class:`~utils.report.CheckResult` or :class:`~utils.report.Report`. ``options`` are
:class:`~utils.checks.CheckOptions` fields (``seed``, ``device``, ``batch_size``, …).

Example:
    >>> from utils.test_functions import run_all_tier1_tests
    >>> report = run_all_tier1_tests(model, {"vocab_size": 1000, "max_seq_len": 128})
"""

from __future__ import annotations

from utils.checks import REGISTRY, CheckOptions, as_adapter
from utils.report import CheckResult, Report
from utils.tier1_critical_validation import run_tier1
from utils.tier2_advanced_analysis import run_tier2

__test__ = False  # pytest: these are not tests
__all__ = ["run_all_tier1_tests", "run_all_tier2_tests", "test_attention_patterns",
           "test_attribution_analysis", "test_batch_independence", "test_causal_masking",
           "test_determinism", "test_generation_consistency", "test_gradient_flow",
           "test_inference_speed", "test_initial_loss", "test_memory_footprint",
           "test_mixed_precision", "test_output_stability", "test_overfit_one_batch",
           "test_padding_invariance", "test_parameter_initialization", "test_robustness",
           "test_shape_robustness"]


def _one(name: str, model, config: dict | None, options: dict) -> CheckResult:
    """One check or analysis of either tier, by its registered name."""
    run = run_tier1 if REGISTRY[name].tier == 1 else run_tier2
    report = run(as_adapter(model, config), checks=[name], options=CheckOptions(**options),
                 progress=False)
    return report.results[0]


def test_shape_robustness(model, config: dict | None = None, **options) -> CheckResult:
    """Batch × length sweep up to max_seq_len, with the output shape each task needs."""
    return _one("shape_robustness", model, config, options)


def test_gradient_flow(model, config: dict | None = None, **options) -> CheckResult:
    """One backward pass: every parameter gets a finite gradient; no layer vanishes."""
    return _one("gradient_flow", model, config, options)


def test_parameter_initialization(model, config: dict | None = None, **options) -> CheckResult:
    """Weights at the scale common init schemes produce (gain = std × sqrt(fan_in) near 1)."""
    return _one("parameter_initialization", model, config, options)


def test_output_stability(model, config: dict | None = None, **options) -> CheckResult:
    """NaN/Inf in outputs and loss across lengths and extreme token ids; logit scale."""
    return _one("output_stability", model, config, options)


def test_initial_loss(model, config: dict | None = None, **options) -> CheckResult:
    """The loss at init against chance (ln(vocab) for LMs, ln(classes) for classifiers)."""
    return _one("initial_loss", model, config, options)


def test_determinism(model, config: dict | None = None, **options) -> CheckResult:
    """Same input, eval mode → identical output, whatever the random seed."""
    return _one("determinism", model, config, options)


def test_memory_footprint(model, config: dict | None = None, **options) -> CheckResult:
    """Training memory per batch at full length, and whether it fits a 16 GB Colab T4."""
    return _one("memory_footprint", model, config, options)


def test_inference_speed(model, config: dict | None = None, **options) -> CheckResult:
    """Forward latency percentiles and tokens/s after warm-up (share of peak on a GPU)."""
    return _one("inference_speed", model, config, options)


def test_causal_masking(model, config: dict | None = None, **options) -> CheckResult:
    """Changing token t must not move any output before t (causal LMs, seq2seq decoders)."""
    return _one("causal_masking", model, config, options)


def test_batch_independence(model, config: dict | None = None, **options) -> CheckResult:
    """A sample's outputs are the same alone, in a batch, and in a reordered batch."""
    return _one("batch_independence", model, config, options)


def test_padding_invariance(model, config: dict | None = None, **options) -> CheckResult:
    """Masked padding must not move the outputs at real positions."""
    return _one("padding_invariance", model, config, options)


def test_overfit_one_batch(model, config: dict | None = None, **options) -> CheckResult:
    """Two dozen optimizer steps on one tiny batch must cut the loss clearly; weights restored."""
    return _one("overfit_one_batch", model, config, options)


def test_mixed_precision(model, config: dict | None = None, **options) -> CheckResult:
    """The forward under fp16/bf16 autocast: finite, and close to fp32."""
    return _one("mixed_precision", model, config, options)


def run_all_tier1_tests(model, config: dict | None = None, **options) -> Report:
    """Every Tier 1 check; the report renders as a table in notebooks."""
    return run_tier1(as_adapter(model, config), options=CheckOptions(**options))


# ---- Tier 2: understanding the model -----------------------------------------------------
def test_attention_patterns(model, config: dict | None = None, **options) -> CheckResult:
    """Per-head attention statistics and classes (previous-token, sink, local, uniform, mixed)."""
    return _one("attention_patterns", model, config, options)


def test_attribution_analysis(model, config: dict | None = None, **options) -> CheckResult:
    """Integrated Gradients and gradient × input per input token, with the completeness delta."""
    return _one("attribution_analysis", model, config, options)


def test_robustness(model, config: dict | None = None, **options) -> CheckResult:
    """Top-1 agreement, KL and loss increase under token substitution and embedding noise."""
    return _one("robustness", model, config, options)


def test_generation_consistency(model, config: dict | None = None, **options) -> CheckResult:
    """Greedy decoding step by step (and with a KV cache) equals one full forward pass."""
    return _one("generation_consistency", model, config, options)


def run_all_tier2_tests(model, config: dict | None = None, **options) -> Report:
    """Every Tier 2 analysis; ``report.plots()`` draws heatmaps, attribution bars and curves."""
    return run_tier2(as_adapter(model, config), options=CheckOptions(**options))
