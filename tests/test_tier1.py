"""Tier 1 checks on models whose verdict is known, the runner's contract, and the facade."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import adapt
from utils import test_functions as facade
from utils.checks import CheckOptions
from utils.errors import UserError
from utils.tier1_critical_validation import TIER1_CHECKS, run_tier1


class LM(nn.Module):
    """A small healthy causal LM; subclasses plant one defect each."""

    def __init__(self, vocab=64, d=16, max_len=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02)

    def hidden(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        return torch.tanh(self.mix(h.cumsum(1) / torch.arange(1, ids.shape[1] + 1)[:, None]))

    def forward(self, input_ids):
        h = self.hidden(input_ids) + self.tok(input_ids)  # a residual path, normalised as in
        return self.head(F.layer_norm(h, h.shape[-1:]))  # real blocks: it can learn quickly


def run(model, *names, **options):
    return run_tier1(model, checks=list(names) or None, options=CheckOptions(**options),
                     progress=False)


def test_healthy_model_passes_everything():
    report = run(LM())
    assert [r.name for r in report.results] == list(TIER1_CHECKS)
    assert report.passed and {r.status for r in report.results} == {"pass", "skip"}
    skipped = [r for r in report.results if r.status == "skip"]
    # an absolute position table; no stack of blocks; no labels argument, so no own loss
    assert [r.name for r in skipped] == ["position_shift", "residual_paths", "model_loss"]
    assert "Absolute positions" in skipped[0].summary


class DropoutInEval(LM):
    def forward(self, input_ids):
        return self.head(F.dropout(self.hidden(input_ids), 0.5))  # training=True always


class Stateful(LM):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, input_ids):
        self.calls += 1
        return self.head(self.hidden(input_ids)) * self.calls


@pytest.mark.parametrize(("model", "pattern"), [
    (DropoutInEval(), "depend on the random seed"),
    (Stateful(), "different outputs twice"),
])
def test_determinism_fails_on_its_defects(model, pattern):
    result = run(model, "determinism").results[0]
    assert result.status == "fail" and pattern in result.summary


class Overconfident(LM):
    def forward(self, input_ids):
        return super().forward(input_ids) * 500  # a huge output scale at init


def test_initial_loss_fails_far_above_chance():
    result = run(Overconfident(), "initial_loss").results[0]
    assert result.status == "fail" and result.metrics["ratio"] > 2
    assert result.threshold["fail_above_ratio"] == 2.0


def test_initial_loss_threshold_can_be_overridden():
    result = run(Overconfident(), "initial_loss",
                 thresholds={"initial_loss.ratio": 1e9, "initial_loss.warn_ratio": 1e9})
    assert result.results[0].status == "pass"


def test_initial_loss_skips_encoders():
    class Encoder(LM):
        def forward(self, input_ids):
            return self.hidden(input_ids)  # hidden states, no head

    result = run(adapt(Encoder(), task="encoder"), "initial_loss").results[0]
    assert result.status == "skip" and "encoder" in result.summary


class HugeLogits(LM):
    def forward(self, input_ids):
        return super().forward(input_ids) * 1e6


def test_output_stability_warns_on_huge_but_finite_logits():
    result = run(HugeLogits(), "output_stability").results[0]
    assert result.status == "warn" and result.metrics["max_abs_logit"] > 1e3


class Counted(LM):
    """Records the input shape of every forward."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, input_ids):
        self.shapes.append(tuple(input_ids.shape))
        return super().forward(input_ids)


def test_output_stability_reuses_the_forwards_shape_robustness_ran():
    model = Counted()
    adapter = adapt(model)
    alone = run(adapter, "output_stability").results[0]
    run(adapter, "shape_robustness")
    model.shapes.clear()
    after = run(adapter, "output_stability").results[0]
    # its random probes (batch 4, as in shape_robustness's grid) were not run again; the
    # extreme-id probes, one forward of 2 rows per length, were
    assert not [s for s in model.shapes if s[0] == 4]
    assert sum(s[0] == 2 for s in model.shapes) == len(after.metrics["lengths_tested"])
    assert after.status == alone.status == "pass" and after.rows == alone.rows


def test_remembered_forwards_are_forgotten_when_the_weights_change():
    model = Counted()
    adapter = adapt(model)
    run(adapter, "shape_robustness")
    with torch.no_grad():
        model.head.bias.add_(1.0)  # in place, as an optimizer step or load_state_dict writes
    model.shapes.clear()
    run(adapter, "output_stability")
    assert [s for s in model.shapes if s[0] == 4]


class SeqFirstOutput(LM):
    def forward(self, input_ids):
        out = super().forward(input_ids)
        return out.transpose(0, 1) if input_ids.shape[0] == 1 else out  # wrong at batch 1


def test_shape_robustness_names_the_wrong_shape():
    result = run(SeqFirstOutput(), "shape_robustness").results[0]
    assert result.status == "fail" and "batch 1 × length 2" in result.summary
    assert "expected [1, 2, 64]" in result.summary


class CrashesLate(LM):
    def forward(self, input_ids):
        if input_ids.shape[0] == 1 and input_ids.shape[1] > 20:
            raise RuntimeError("planted crash")
        return super().forward(input_ids)


def test_a_crashing_check_is_an_error_with_the_line_and_the_run_goes_on():
    report = run(CrashesLate())
    by_name = {r.name: r for r in report.results}
    assert by_name["shape_robustness"].status == "fail"
    assert "planted crash" in by_name["shape_robustness"].summary
    assert __file__ in by_name["shape_robustness"].summary
    assert by_name["determinism"].status == "pass" and not report.passed


def test_runner_turns_exceptions_into_error_results(monkeypatch):
    from utils import checks

    # a check's own bug: compiled outside this file, which also holds the model's code
    scope: dict = {}
    exec(compile("def broken(adapter, options):\n    raise ValueError('boom')\n",
                 "utils/some_check.py", "exec"), scope)
    broken = scope["broken"]

    monkeypatch.setitem(checks.REGISTRY, "determinism",
                        dataclasses.replace(checks.REGISTRY["determinism"], fn=broken))
    result = run(LM(), "determinism").results[0]
    assert result.status == "error" and result.error["type"] == "ValueError"
    assert result.error["line"] > 0 and result.seconds >= 0


def test_unknown_check_and_bad_options():
    with pytest.raises(UserError, match="Unknown check name"):
        run(LM(), "gradient_magic")
    with pytest.raises(UserError, match=r"batch_size must be >= 1.*time_budget must be > 0"):
        CheckOptions(batch_size=0, time_budget=0)


def test_checks_leave_the_model_as_they_found_it():
    model = LM().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_facade_takes_a_bare_module_and_config():
    report = facade.run_all_tier1_tests(LM(), {"task": "causal_lm"}, seed=3)
    assert report.passed and "<table>" in report._repr_html_()
    assert facade.test_shape_robustness(LM()).status == "pass"
    assert facade.test_initial_loss(Overconfident()).status == "fail"


def test_facade_is_not_collected_by_pytest():
    assert facade.__test__ is False


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("build", ["gpt2", "bert", "llama"])
def test_hugging_face_models_pass_tier1(build):
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64}
    model = {
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4)),
        "bert": lambda: transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=320, max_position_embeddings=48, **small)),
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=256, max_position_embeddings=80, num_key_value_heads=2, **small)),
    }[build]()
    report = run(adapt(model))
    assert not [r for r in report.results if r.status in ("fail", "error")], report.to_text()


class KeyBias(LM):
    """Separate q/k/v projections with biases: the key bias's gradient is zero by construction."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(16, 16), nn.Linear(16, 16)
        for p in (*self.q_proj.parameters(), *self.k_proj.parameters()):
            nn.init.normal_(p, std=0.3)

    def forward(self, input_ids):
        h = F.layer_norm(self.hidden(input_ids), (16,))  # unit scale, as real blocks have
        scores = self.q_proj(h) @ self.k_proj(h).transpose(1, 2)
        causal = torch.ones(h.shape[1], h.shape[1], dtype=torch.bool).triu(1)
        return self.head(scores.masked_fill(causal, float("-inf")).softmax(-1) @ h)


def test_gradient_flow_knows_key_biases_get_no_gradient():
    result = run(KeyBias(), "gradient_flow").results[0]
    assert result.status == "pass", result.summary
    states = {r["parameter"]: r["state"] for r in result.rows}
    assert states["k_proj.bias"] in ("zero (expected)", "ok")


class Unused(LM):
    def __init__(self):
        super().__init__()
        self.spare = nn.Linear(16, 16)


def test_gradient_flow_fails_on_unused_parameters():
    result = run(Unused(), "gradient_flow").results[0]
    assert result.status == "fail" and "spare.weight, spare.bias" in result.summary


class Vanishing(LM):
    def forward(self, input_ids):
        return self.head(self.hidden(input_ids * 1) * 1e-7 + self.tok(input_ids))


def test_gradient_flow_warns_when_a_layer_vanishes():
    result = run(Vanishing(), "gradient_flow").results[0]
    assert result.status == "warn" and result.metrics["layer_spread"] > 1e4


@pytest.mark.parametrize(("std", "status"), [(0.02, "pass"), (1.0, "fail"), (0.25, "fail"),
                                           (0.17, "warn")])
def test_parameter_initialization_by_gain(std, status):
    model = LM(d=256)
    nn.init.normal_(model.mix.weight, std=std)  # gain = std × 16
    result = run(model, "parameter_initialization").results[0]
    assert result.status == status, result.summary
    row = next(r for r in result.rows if r["parameter"] == "mix.weight")
    assert abs(row["gain"] - std * 16) < 0.1 * std * 16


def test_parameter_initialization_accepts_pytorch_defaults_and_norms():
    class Defaults(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 32)  # N(0, 1): fine for a lookup table
            self.norm = nn.LayerNorm(32)
            self.lin = nn.Linear(32, 50)

        def forward(self, x):
            return self.lin(self.norm(self.emb(x)).cumsum(1))

    assert run(Defaults(), "parameter_initialization").results[0].status == "pass"


def test_plots_draw_from_results():
    import matplotlib

    matplotlib.use("Agg")
    figures = run(LM()).plots()
    assert set(figures) == {"gradient_flow", "parameter_initialization", "output_stability",
                            "memory_footprint", "inference_speed", "overfit_one_batch",
                            "causal_masking"}
    assert all(len(f.axes) == 1 for f in figures.values())


class Plain(nn.Module):
    """Embedding -> Linear -> head; no attention, so activations grow linearly in T."""

    def __init__(self, vocab=100, d=32, attention=False):
        super().__init__()
        self.emb, self.lin, self.head = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, vocab)
        self.attention = attention

    def forward(self, input_ids):
        h = self.lin(self.emb(input_ids))
        if self.attention:  # an explicit (B, T, T) map, saved for backward: grows with T²
            t = h.shape[1]
            scores = (h @ h.transpose(1, 2)).masked_fill(torch.ones(t, t).triu(1).bool(), -1e9)
            h = scores.softmax(-1) @ h
        return self.head(torch.tanh(h.cumsum(1)))


def test_memory_activations_scale_as_measured():
    linear = run(adapt(Plain(), max_seq_len=64), "memory_footprint").results[0]
    quadratic = run(adapt(Plain(attention=True), max_seq_len=64), "memory_footprint").results[0]
    per_token = linear.metrics["activation_bytes_per_token"]
    # at least the fp32 hidden states (32 floats) and logits (100 floats) of each token
    assert 4 * (32 + 100) <= per_token <= 4 * 10 * (32 + 100)
    assert linear.metrics["activation_bytes_per_token_sq"] < 1.0
    assert quadratic.metrics["activation_bytes_per_token_sq"] >= 4  # one fp32 score per pair
    row = linear.rows[0]
    params_mb = sum(p.numel() * 4 for p in Plain().parameters()) / 2**20
    assert abs(row["params_mb"] - params_mb) < 1e-9 and abs(row["optimizer_mb"] - 2 * params_mb) < 1e-9
    assert linear.status == "pass" and linear.metrics["max_batch_colab_t4_fp32"] > 1000


def test_memory_warns_when_batch_one_does_not_fit_a_t4():
    result = run(adapt(Plain(attention=True), max_seq_len=1_000_000), "memory_footprint")
    assert result.results[0].status == "warn" and "Colab T4 offers (16 GB card, 15 GB usable)" in result.results[0].summary


def test_inference_speed_reports_percentiles():
    result = run(LM(), "inference_speed", time_budget=1.0).results[0]
    m = result.metrics
    assert result.status == "pass" and m["runs"] >= 5 and len(result.rows) == m["runs"]
    assert 0 < m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"] and m["tokens_per_s"] > 0


def test_inference_speed_times_until_its_median_is_stable():
    from utils.tier1.resources import _until_stable

    steady = iter([0.010] * 100)
    times, why = _until_stable(lambda: next(steady), 10.0)
    assert len(times) == 5 and "stable" in why  # the minimum, once the median stops moving
    swinging = itertools.cycle([0.010, 0.030, 0.012, 0.050])  # the median keeps jumping
    times, why = _until_stable(lambda: next(swinging), 10.0)
    assert len(times) == 30 and "at most 30" in why
    times, why = _until_stable(lambda: next(swinging), 0.05)  # a slow model: time runs out
    assert len(times) == 5 and "s of runs" in why


def test_a_length_limit_is_found_exactly_and_caps_the_later_checks():
    report = run(CrashesLate())  # raises at batch 1 beyond length 20
    shapes = report["shape_robustness"]
    assert shapes.status == "fail" and shapes.metrics["runnable_max_len"] == 20
    assert "runs up to length 20 of max_seq_len 32" in shapes.summary
    later = [r for r in report.results if r.name != "shape_robustness"]
    assert all(r.status in ("pass", "warn", "skip") for r in later), report.to_text()
    assert all("Lengths capped at 20" in r.summary for r in later)


def test_batch_sizes_shrink_for_big_models():
    class Big:
        def __init__(self, n):
            self.num_parameters = n

    options = CheckOptions(batch_size=8)
    assert [options.batch(Big(n)) for n in (1e6, 100e6, 1e9)] == [8, 2, 1]
    assert options.batch(Big(1e6), at_most=2) == 2


def test_facade_has_every_tier1_check():
    for name in TIER1_CHECKS:
        assert callable(getattr(facade, f"test_{name}")), name
