"""Tier 2 analyses on models whose answer is known, the runner, the facade and the CLI."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ZOO, zoo_cases, zoo_expected
from torch import nn

from utils import adapt, load_model
from utils import test_functions as facade
from utils.__main__ import _check_names as check_names
from utils.__main__ import build_parser, main
from utils.checks import CheckOptions
from utils.tier1_critical_validation import TIER1_CHECKS
from utils.tier2.capture import capture_attention
from utils.tier2_advanced_analysis import TIER2_CHECKS, run_tier2

HEALTHY = [c for c in zoo_cases() if zoo_expected(c)["exit_code"] == 0]


def run(model, *names, **options):
    return run_tier2(model, checks=list(names) or None, options=CheckOptions(**options),
                     progress=False)


def one(model, name, **options):
    return run(model, name, **options).results[0]


# ---- attention: a hand-made module whose pattern is forced --------------------------------
def pattern_bias(kind: str, t: int) -> torch.Tensor:
    """Scores (T, T) that force a pattern under a causal mask: large where it should look."""
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    target = {"previous": j == i - 1, "sink": j == 0, "uniform": torch.zeros(t, t, dtype=bool),
              "window": torch.zeros(t, t, dtype=bool), "diagonal": j == i}[kind]
    bias = torch.where(target, 30.0, 0.0)
    if kind == "window":  # uniform over the last 4 keys: a sliding-window head
        bias = bias.masked_fill(j <= i - 4, float("-inf"))
    return bias.masked_fill(j > i, float("-inf"))


class ForcedAttention(nn.Module):
    """Embedding -> one causal attention layer with fixed scores per head -> head.

    ``mechanism`` is how attention is computed: a hand-written softmax over q @ k^T,
    F.scaled_dot_product_attention, or nn.MultiheadAttention (asked for no weights).
    """

    def __init__(self, patterns=("previous", "uniform"), mechanism="softmax", vocab=50, d=16):
        super().__init__()
        self.patterns, self.mechanism, self.h = patterns, mechanism, len(patterns)
        self.emb = nn.Embedding(vocab, d)
        self.v = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)
        self.mha = nn.MultiheadAttention(d, self.h, batch_first=True)

    def forward(self, input_ids):
        x = self.emb(input_ids)
        b, t, d = x.shape
        bias = torch.stack([pattern_bias(p, t) for p in self.patterns])  # (H, T, T)
        if self.mechanism == "mha":
            zero = x * 0  # zero queries and keys: the scores are the mask alone
            mask = bias[None].expand(b, -1, -1, -1).reshape(b * self.h, t, t)
            y, _ = self.mha(zero, zero, x, attn_mask=mask, need_weights=False)
            return self.head(y)
        v = self.v(x).view(b, t, self.h, d // self.h).transpose(1, 2)  # (B, H, T, hs)
        q = torch.zeros_like(v)
        if self.mechanism == "sdpa":
            y = F.scaled_dot_product_attention(q, v, v, attn_mask=bias)
        else:
            y = torch.softmax(q @ v.transpose(-2, -1) + bias, dim=-1) @ v
        return self.head(y.transpose(1, 2).reshape(b, t, d))


def forced(patterns=("previous", "uniform"), mechanism="softmax"):
    return adapt(ForcedAttention(patterns, mechanism), task="causal_lm", max_seq_len=24)


@pytest.mark.parametrize(("mechanism", "label"), [
    ("softmax", "softmax"), ("sdpa", "scaled_dot_product_attention"),
    ("mha", "nn.MultiheadAttention")])
def test_forced_patterns_are_classified_whatever_the_mechanism(mechanism, label):
    result = one(forced(("previous", "sink", "uniform", "diagonal"), mechanism),
                 "attention_patterns")
    assert result.metrics["mechanism"] == label and label in result.summary
    classes = [r["class"] for r in result.rows]
    assert classes == ["previous-token", "sink-dominated", "uniform", "positional/local"]
    prev = result.rows[0]
    assert prev["previous"] > 0.99 and abs(prev["distance"] - 1) < 0.01
    assert result.rows[2]["norm_entropy"] > 0.99
    assert result.status == "warn" and "saturated" in result.summary  # the sink head is hard


def test_uniform_heads_under_any_mask_are_uniform_not_duplicates():
    """Entropy is normalised by the keys each query sees, read off the map: a head uniform over
    a sliding window is uniform, and two such heads are not 'near-identical' capacity."""
    result = one(forced(("window", "window", "uniform", "uniform")), "attention_patterns")
    assert [r["class"] for r in result.rows] == ["uniform"] * 4
    assert result.metrics["duplicate_pairs"] == 0 and result.status == "pass", result.summary


def test_duplicate_heads_are_flagged():
    result = one(forced(("previous", "previous")), "attention_patterns")
    assert result.status == "warn" and result.metrics["duplicate_pairs"] == 1
    assert "near-identical" in result.summary
    clean = one(forced(("previous", "uniform")), "attention_patterns")
    assert clean.status == "pass" and clean.metrics["duplicate_pairs"] == 0


def test_non_finite_attention_fails():
    class AllMasked(ForcedAttention):
        def forward(self, input_ids):
            x = self.emb(input_ids)
            t = x.shape[1]
            scores = torch.full((x.shape[0], 1, t, t), float("-inf"))  # every key masked
            return self.head(torch.softmax(scores, dim=-1)[:, 0] @ x)

    result = one(adapt(AllMasked(), task="causal_lm", vocab_size=50, max_seq_len=24),
                 "attention_patterns")
    assert result.status == "fail" and "non-finite" in result.summary


class ReturnsAttentions(ForcedAttention):
    """Hugging Face style: forward(output_attentions=...) returns the maps itself."""

    def forward(self, input_ids, output_attentions=False):
        logits = super().forward(input_ids)
        t = input_ids.shape[1]
        maps = torch.stack([pattern_bias(p, t).softmax(-1) for p in self.patterns])
        maps = maps[None].expand(input_ids.shape[0], -1, -1, -1) * self.scale
        return {"logits": logits, "attentions": (maps,) if output_attentions else None}

    scale = 1.0


def test_returned_attentions_are_used_and_must_be_normalised():
    result = one(adapt(ReturnsAttentions(), task="causal_lm", max_seq_len=24),
                 "attention_patterns")
    assert result.metrics["mechanism"] == "output_attentions"
    assert [r["class"] for r in result.rows] == ["previous-token", "uniform"]
    bad = ReturnsAttentions()
    bad.scale = 2.0  # rows sum to 2
    result = one(adapt(bad, task="causal_lm", max_seq_len=24), "attention_patterns")
    assert result.status == "fail" and "do not form distributions" in result.summary


class NoAttention(nn.Module):
    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)

    def forward(self, input_ids):
        h = self.emb(input_ids).cumsum(1)
        return self.head(h / torch.arange(1, h.shape[1] + 1)[:, None])


def test_no_attention_is_a_skip_that_says_why():
    result = one(adapt(NoAttention(), task="causal_lm", max_seq_len=24), "attention_patterns")
    assert result.status == "skip" and "no attention weights could be captured" in result.summary


def test_capture_restores_every_patch_even_when_the_model_raises():
    originals = (F.scaled_dot_product_attention, F.softmax, torch.softmax)
    fastpath = torch.backends.mha.get_fastpath_enabled()

    class Raises(ForcedAttention):
        def forward(self, input_ids):
            super().forward(input_ids)
            raise RuntimeError("planted")

    for model in (ForcedAttention(mechanism="mha"), Raises(mechanism="mha")):
        adapter = adapt(ForcedAttention(mechanism="mha"), task="causal_lm", max_seq_len=24)
        adapter.model = model
        with contextlib.suppress(RuntimeError):
            capture_attention(adapter, adapter.make_inputs(2, 8))
        assert (F.scaled_dot_product_attention, F.softmax, torch.softmax) == originals
        assert "softmax" not in vars(torch.Tensor) and "forward" not in vars(model.mha)
        assert torch.backends.mha.get_fastpath_enabled() == fastpath
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_transformer_encoder_layer_fast_path_is_captured():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)

    class Encoder(NoAttention):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

        def forward(self, input_ids):
            return self.head(self.enc(self.emb(input_ids)))

    result = one(adapt(Encoder(), task="masked_lm", max_seq_len=24), "attention_patterns")
    assert result.metrics["mechanism"] == "nn.MultiheadAttention"
    assert result.metrics["heads"] == 4 and result.status in ("pass", "warn")


# ---- attribution -----------------------------------------------------------------------
class LinearLM(nn.Module):
    """logits_t = W · Σ_{s≤t} e_s + b: IG from a zero baseline is exactly e_s · W[c]."""

    def __init__(self, vocab=40, d=8):
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab, d), nn.Linear(d, vocab)

    def forward(self, input_ids):
        return self.out(self.emb(input_ids).cumsum(1))


def test_integrated_gradients_match_the_closed_form_on_a_linear_model():
    model = LinearLM()
    result = one(adapt(model, task="causal_lm", max_seq_len=16), "attribution_analysis")
    assert result.status == "pass", result.summary
    assert result.metrics["convergence_delta"] < 1e-4
    batch = adapt(model, task="causal_lm", max_seq_len=16).make_inputs(2, 16, seed=0)
    ids = batch["input_ids"]
    with torch.no_grad():
        predicted = model(ids)[:, -1].argmax(-1)
        exact = (model.emb(ids) * model.out.weight[predicted][:, None]).sum(-1)  # (N, T)
    for r in result.rows:
        assert r["token_id"] == int(ids[r["sample"], r["position"]])
        assert r["ig"] == pytest.approx(float(exact[r["sample"], r["position"]]), abs=1e-5)
        assert r["grad_x_input"] == pytest.approx(r["ig"], abs=1e-5)  # linear: identical


def test_batched_ig_spends_few_passes():
    result = one(adapt(LinearLM(), task="causal_lm", max_seq_len=16), "attribution_analysis",
                 batch_size=2)
    m = result.metrics
    chunks = math.ceil(m["samples"] * (m["steps"] + 2) / 16)  # chunk = 8 × batch rows
    assert m["backward_passes"] == chunks and m["forward_passes"] == chunks + 1


class Deaf(LinearLM):
    """Calls its embedding but ignores it: the prediction cannot depend on the tokens."""

    def __init__(self):
        super().__init__()
        self.const = nn.Parameter(torch.randn(8))

    def forward(self, input_ids):
        e = self.emb(input_ids)
        return self.out(self.const.expand_as(e) + 0 * e)


def test_a_model_that_ignores_its_input_gets_zero_attribution():
    result = one(adapt(Deaf(), task="causal_lm", vocab_size=40, max_seq_len=16),
                 "attribution_analysis")
    assert result.status == "warn" and "does not depend on the input" in result.summary
    assert all(r["ig"] == 0 and r["grad_x_input"] == 0 for r in result.rows)


def test_a_detached_output_is_a_warning_not_a_crash():
    class Detached(LinearLM):
        def forward(self, input_ids):
            return super().forward(input_ids).detach()

    result = one(adapt(Detached(), task="causal_lm", max_seq_len=16), "attribution_analysis")
    assert result.status == "warn" and "no gradient path" in result.summary
    assert result.metrics["gradient_path"] is False and result.metrics["backward_passes"] == 0


def test_ig_converges_through_normalisation_layers():
    class Normed(LinearLM):  # RMSNorm right after the embedding: scale-invariant near 0
        def forward(self, input_ids):
            e = self.emb(input_ids) * 0.02
            return self.out(F.rms_norm(e, (8,), eps=1e-6).cumsum(1))

    result = one(adapt(Normed(), task="causal_lm", max_seq_len=16), "attribution_analysis")
    assert result.status == "pass" and result.metrics["relative_delta"] < 0.05, result.summary


class OneHot(nn.Module):
    """No nn.Embedding: tokens enter as one-hot vectors times a weight matrix."""

    def __init__(self, vocab=40):
        super().__init__()
        self.w = nn.Parameter(torch.randn(vocab, 8) * 0.1)
        self.out = nn.Linear(8, vocab)

    def forward(self, input_ids):
        return self.out((F.one_hot(input_ids, 40).float() @ self.w).cumsum(1))


def test_no_embedding_skips_attribution_and_noise_but_not_substitution():
    adapter = adapt(OneHot(), {"vocab_size": 40}, task="causal_lm", max_seq_len=16)
    assert adapter.token_embedding is None
    report = run(adapter, "attribution_analysis", "robustness")
    assert report["attribution_analysis"].status == "skip"
    assert "no nn.Embedding receives the token ids" in report["attribution_analysis"].summary
    rob = report["robustness"]
    assert rob.status == "pass" and {r["perturbation"] for r in rob.rows} == {
        "token substitution"}


# ---- robustness ----------------------------------------------------------------------------
class Chaotic(LinearLM):
    def forward(self, input_ids):
        return self.out(torch.sin(1e4 * self.emb(input_ids)))  # any noise scrambles it


class SqrtEmbedding(LinearLM):
    def __init__(self):
        super().__init__()
        nn.init.uniform_(self.emb.weight, 0.5, 1.0)

    def forward(self, input_ids):
        return self.out(self.emb(input_ids).sqrt())  # NaN once noise makes an entry negative


def test_robustness_verdicts():
    healthy = one(adapt(LinearLM(), task="causal_lm", max_seq_len=16), "robustness")
    assert healthy.status == "pass", healthy.summary
    agree = healthy.metrics["noise_agreement"]
    assert len(agree) == 5 and agree[0] > 0.9 and agree[-1] < agree[0]
    assert healthy.metrics["noise_kl"][0] < healthy.metrics["noise_kl"][-1]
    chaotic = one(adapt(Chaotic(), task="causal_lm", max_seq_len=16), "robustness")
    assert chaotic.status == "warn" and "flip under tiny noise" in chaotic.summary
    broken = one(adapt(SqrtEmbedding(), task="causal_lm", max_seq_len=16), "robustness")
    assert broken.status == "fail" and "Non-finite" in broken.summary


def test_robustness_compares_classes_for_classifiers():
    class Classifier(LinearLM):
        def forward(self, input_ids):
            return self.out(self.emb(input_ids).mean(1))[:, :3]

    result = one(adapt(Classifier(), task="classification", max_seq_len=16), "robustness")
    assert result.status in ("pass", "warn") and result.metrics["forward_passes"] >= 3
    assert all(0 <= a <= 1 for a in result.metrics["substitution_agreement"])


# ---- generation consistency ------------------------------------------------------------
class PeeksAhead(LinearLM):
    def forward(self, input_ids):
        e = self.emb(input_ids)
        return self.out(e + e.mean(1, keepdim=True))  # every position sees the whole sequence


def test_generation_consistency():
    good = one(adapt(LinearLM(), task="causal_lm", max_seq_len=16), "generation_consistency")
    assert good.status == "pass" and good.metrics["argmax_agreement"] == 1.0
    assert good.metrics["forward_passes"] == good.metrics["new_tokens"] + 1
    bad = one(adapt(PeeksAhead(), task="causal_lm", max_seq_len=16), "generation_consistency")
    assert bad.status == "fail" and "depends on later tokens" in bad.summary
    skip = one(adapt(LinearLM(), task="masked_lm", max_seq_len=16), "generation_consistency")
    assert skip.status == "skip" and "masked_lm" in skip.summary


class CachedLM(LinearLM):
    """A running sum is its KV cache; ``forgetful`` drops the cached prefix (a planted bug)."""

    forgetful = False

    def forward(self, input_ids, past_key_values=None, use_cache=False):
        h = self.emb(input_ids).cumsum(1)
        if past_key_values is not None and not self.forgetful:
            h = h + past_key_values
        return {"logits": self.out(h), "past_key_values": h[:, -1:] if use_cache else None}


def test_cached_decoding_must_match_uncached():
    good = one(adapt(CachedLM(), task="causal_lm", max_seq_len=16), "generation_consistency")
    assert good.status == "pass" and "cached decoding agrees" in good.summary
    assert good.metrics["cached_max_rel_logit_diff"] < 1e-5
    bad = CachedLM()
    bad.forgetful = True
    result = one(adapt(bad, task="causal_lm", max_seq_len=16), "generation_consistency")
    assert result.status == "fail" and "cached decoding does not" in result.summary


# ---- the runner, facade, CLI and the report --------------------------------------------
def test_embedded_example_runs_tier2_and_draws_every_figure():
    import matplotlib

    matplotlib.use("Agg")
    model = load_model(say=lambda m: None)
    model.model.train()
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    report = run(adapt(model))
    assert [r.name for r in report.results] == list(TIER2_CHECKS)
    assert report.passed and {r.status for r in report.results} == {"pass"}, report.to_text()
    assert all("Random init" in r.summary for r in report.results[:3])
    assert model.model.training and all(p.requires_grad and p.grad is None
                                        for p in model.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.model.state_dict().items())
    for r in report.results:
        assert r.metrics["forward_passes"] >= 1 and r.metrics["backward_passes"] >= 0
    maps = [r["map"] for r in report["attention_patterns"].rows]
    assert all(len(m) <= 32 and len(m[0]) <= 32 for m in maps)
    json.loads(report.to_json(rows=True))
    figures = report.plots()
    assert set(figures) == set(TIER2_CHECKS)


def test_loaded_weights_are_named_in_the_summary(write_model, tmp_path):
    model = load_model(say=lambda m: None).model
    folder = write_model((ZOO.parent.parent / "utils/examples/tiny_gpt/model.py").read_text(),
                         json.loads((ZOO.parent.parent / "utils/examples/tiny_gpt/config.json")
                                    .read_text()))
    torch.save(model.state_dict(), folder / "weights.pt")
    result = one(adapt(load_model(folder, say=lambda m: None)), "attention_patterns")
    assert "Weights loaded from weights.pt" in result.summary
    assert result.metrics["weights_loaded"] is True
    bare = one(LinearLM(), "attribution_analysis")
    assert "No weights were loaded by the testbench" in bare.summary


def test_facade_and_cli_names():
    for name in TIER2_CHECKS:
        assert callable(getattr(facade, f"test_{name}")), name
    assert facade.test_generation_consistency(LinearLM(), {"task": "causal_lm"}).status == "pass"
    args = build_parser().parse_args(["validate", "--tier", "all"])
    assert check_names(args) == [*TIER1_CHECKS, *TIER2_CHECKS]
    args = build_parser().parse_args(["validate", "--tier", "2", "--skip", "robustness"])
    assert check_names(args) == [n for n in TIER2_CHECKS if n != "robustness"]


def test_cli_tier2_writes_the_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["validate", "--tier", "2", "--json", str(out)]) == 0, capsys.readouterr().err
    checks = json.loads(out.read_text())["checks"]
    assert [c["name"] for c in checks] == list(TIER2_CHECKS)
    assert all(c["metrics"]["forward_passes"] >= 1 for c in checks)


# ---- the zoo and Hugging Face models -------------------------------------------------------
@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_zoo_models_run_tier2_without_error(name):
    report = run(adapt(load_model(ZOO / name, say=lambda m: None)))
    bad = [r for r in report.results if r.status in ("error", "fail")]
    assert not bad, report.to_text()
    assert report["attention_patterns"].status != "skip", report["attention_patterns"].summary


transformers = pytest.importorskip("transformers")


def hf_model(build: str, attn: str = "sdpa"):
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "attn_implementation": attn}
    return {
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
            attn_implementation=attn)),
        "bert": lambda: transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=320, max_position_embeddings=48, **small)),
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=256, max_position_embeddings=80, num_key_value_heads=2, **small)),
    }[build]()


@pytest.mark.parametrize("build", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", pytest.param("eager", marks=pytest.mark.slow)])
def test_hugging_face_models_run_tier2(build, attn):
    report = run(adapt(hf_model(build, attn)))
    assert not [r for r in report.results if r.status in ("fail", "error")], report.to_text()
    attention = report["attention_patterns"]
    assert attention.metrics["heads"] == 8  # 2 layers × 4 heads (Llama: 2 kv heads shared)
    assert attention.metrics["mechanism"] == ("scaled_dot_product_attention" if attn == "sdpa"
                                              else "softmax")
    if build != "bert":
        assert "cached_max_rel_logit_diff" in report["generation_consistency"].metrics


def test_tier2_alone_stays_within_the_length_the_model_runs_at(capsys):
    """Tier 1's shape_robustness finds a length bug; Tier 2 alone probes for it and caps."""
    report = run_tier2(load_model(ZOO / "short_position_table", say=lambda m: None),
                       progress=False)
    assert not [r for r in report.results if r.status == "error"], report.to_text()
    assert all("Lengths capped at 32" in r.summary for r in report.results
               if r.status != "skip")
    assert main(["validate", str(ZOO / "short_position_table"), "--tier", "2"]) == 0
    assert "note: The model fails beyond length 32" in capsys.readouterr().out
