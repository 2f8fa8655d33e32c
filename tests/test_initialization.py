"""``parameter_initialization`` at every width: std 1.0 fails from width 16 up whatever the seed,
healthy inits pass, and a small matrix's sampling noise never decides the verdict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import adapt
from utils.checks import CheckOptions
from utils.tier1_critical_validation import run_tier1

INITS = {
    "std 1.0": lambda w: nn.init.normal_(w, std=1.0),  # torch.randn: gain = sqrt(fan_in)
    "pytorch default": lambda w: None,  # kaiming_uniform(a=√5): gain 1/√3
    "N(0, 0.02)": lambda w: nn.init.normal_(w, std=0.02),
    "xavier normal": nn.init.xavier_normal_,
    "kaiming normal (relu)": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "xavier uniform (tanh gain)": lambda w: nn.init.xavier_uniform_(w, gain=5 / 3),
}


class Block(nn.Module):
    """A one-block causal LM whose Linear layers are all d × d (the smallest samples)."""

    def __init__(self, d: int, vocab: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, d), nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids):
        h = self.tok(input_ids)  # (B, T, d)
        att = F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h), is_causal=True)
        h = F.layer_norm(h + self.o(att), h.shape[-1:])
        h = F.layer_norm(h + self.down(torch.relu(self.up(h))), h.shape[-1:])
        return self.head(h)


def verdict(d: int, init: str, seed: int):
    torch.manual_seed(seed)
    model = Block(d)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            INITS[init](m.weight)
    report = run_tier1(adapt(model), checks=["parameter_initialization"], progress=False)
    return report.results[0]


@pytest.mark.parametrize("d", [16, 32, 48, 64, 128])
@pytest.mark.parametrize("init", list(INITS))
def test_std_one_fails_and_healthy_inits_pass_at_every_width(d, init):
    for seed in range(3):  # the verdict must not depend on the draw
        result = verdict(d, init, seed)
        expected = "fail" if init == "std 1.0" else "pass"
        assert result.status == expected, (d, init, seed, result.summary)
    if init == "std 1.0":
        q = next(r for r in result.rows if r["parameter"] == "q.weight")
        assert q["gain_low"] > 3.0 and abs(q["gain"] - d**0.5) < 0.2 * d**0.5
        assert "q.weight (gain" in result.summary and f"at fan-in {d}" in result.summary


def test_the_tolerance_shrinks_with_the_sample():
    result = verdict(16, "std 1.0", 0)
    rows = {r["parameter"]: r for r in result.rows}
    small, large = rows["q.weight"], rows["head.weight"]  # 256 and 1024 values, fan-in 16
    rel = [(r["gain"] - r["gain_low"]) / r["gain"] for r in (small, large)]
    assert rel[0] == pytest.approx(3 / (2 * 255) ** 0.5) and rel[1] < rel[0] / 1.9
    assert result.threshold["sampling_z"] == 3.0


def test_a_gain_just_above_the_limit_in_a_tiny_matrix_does_not_fail_by_its_draw():
    class Tiny(nn.Module):  # a 2 × 16 gate: 32 values estimate the std only to ±38% (3 SE)
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(16, 16)
            self.head = nn.Linear(16, 16)
            self.gate = nn.Linear(16, 2)
            with torch.no_grad():
                w = torch.randn(2, 16)
                self.gate.weight.copy_(w / w.std() * 0.8)  # gain exactly 3.2: above 3

        def forward(self, input_ids):
            h = self.emb(input_ids)
            return self.head(h * self.gate(h).softmax(-1)[..., :1])

    result = run_tier1(adapt(Tiny(), task="causal_lm"), checks=["parameter_initialization"],
                       progress=False).results[0]
    gate = next(r for r in result.rows if r["parameter"] == "gate.weight")
    assert gate["gain"] == pytest.approx(3.2) and gate["gain_low"] < 2.5
    assert gate["verdict"] == "ok" and result.status == "pass", result.summary


def test_both_gain_limits_can_be_overridden():
    torch.manual_seed(0)
    model = Block(16)
    options = CheckOptions(thresholds={"parameter_initialization.gain": 5.0,
                                       "parameter_initialization.warn_gain": 4.5})
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0)  # gain ≈ 4
    result = run_tier1(adapt(model), checks=["parameter_initialization"], options=options,
                       progress=False).results[0]
    assert result.status == "pass", result.summary
    assert result.threshold["fail_gain_above"] == 5.0
    assert result.threshold["warn_gain_above"] == 4.5


def test_raw_parameters_that_are_not_products_are_not_judged_as_wide_matrices():
    class Raw(nn.Module):
        def __init__(self, d=64):
            super().__init__()
            self.emb = nn.Embedding(32, d)
            self.latents = nn.Parameter(torch.randn(8, d))  # prepended vectors, N(0, 1)
            self.mix = nn.Parameter(torch.rand(1, 1, d))  # RWKV-style channel mix in [0, 1]
            self.proj = nn.Parameter(torch.randn(d, d) / d**0.5)  # x @ proj, scaled right
            self.A_log = nn.Parameter(torch.arange(1.0, 17.0).log().repeat(d, 1))  # Mamba's
            self.head = nn.Linear(d, 32)

        def forward(self, input_ids):
            h = self.emb(input_ids) * self.mix
            h = h + self.latents.mean(0) + self.A_log.exp().mean(1) * 0
            return self.head((h @ self.proj).cumsum(1))

    result = run_tier1(adapt(Raw(), task="causal_lm"), checks=["parameter_initialization"],
                       progress=False).results[0]
    kinds = {r["parameter"]: (r["kind"], r["gain"]) for r in result.rows}
    assert kinds["latents"][0] == "embedding" and kinds["mix"] == ("other", None)
    assert kinds["A_log"] == ("other", None)  # decay rates (mean 1.9, std 0.8), not weights
    assert result.status == "pass", result.summary
