"""The defect never decides the task: what the code says (a causal mask built, is_causal, a
generate method, a next-token loss) outranks the probe, so a causal LM that leaks fails
causal_masking instead of being taken for a masked LM; where only the probe decides, a leak
shaped like a leaky causal mask (partial, or far smaller than the past's reach) is a
"suspected leak" with the override to run. A leak closed at init by a gate at exactly 0 is
looked at after the opening steps. Nothing here draws from an unseeded RNG."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import adapt
from utils.checks import CheckOptions
from utils.tier1_critical_validation import run_tier1


def run(adapter, name):
    return run_tier1(adapter, checks=[name], options=CheckOptions(),
                     progress=False).results[0]


class Attn(nn.Module):
    """One attention layer whose mask is chosen by ``how``: "causal", "none", "softcap" (a soft
    cap of 4 applied after the causal mask: a small leak everywhere) or "window" (each query
    also sees the next key: a partial leak)."""

    def __init__(self, how, d=32):
        super().__init__()
        self.how, self.qkv, self.out = how, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, T, T)
        pos = torch.arange(x.shape[1], device=x.device)
        if self.how != "none":
            reach = 1 if self.how == "window" else 0
            scores = scores.masked_fill(pos[None, :] > pos[:, None] + reach, float("-inf"))
        if self.how == "softcap":
            scores = 4.0 * torch.tanh(scores / 4.0)
        return self.out(scores.softmax(-1) @ v)


class Plain(nn.Module):
    """Nothing in its code says causal: no mask builder, no generate, no loss. The probe
    decides."""

    def __init__(self, how, vocab=80, d=32):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(32, d)
        self.attn, self.head = Attn(how, d), nn.Linear(d, vocab)

    def forward(self, input_ids):
        h = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        h = h + self.attn(F.layer_norm(h, h.shape[-1:]))
        return self.head(F.layer_norm(h, h.shape[-1:]))


class Sampler(Plain):
    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        for _ in range(max_new_tokens):
            probs = self(idx[:, -32:])[:, -1].softmax(-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1)], dim=1)
        return idx


class OwnLoss(Plain):
    def forward(self, input_ids, labels=None):
        logits = super().forward(input_ids)
        if labels is None:
            return logits
        return logits, F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                       labels[:, 1:].reshape(-1))


class CausalFlag(Plain):
    def forward(self, input_ids, is_causal: bool = True):  # the flag is never honoured
        return super().forward(input_ids)


@pytest.mark.parametrize(("model", "sign"), [
    (Sampler, "Sampler has a generate() method"),
    (OwnLoss, "OwnLoss.forward() computes a next-token loss"),
    (CausalFlag, "CausalFlag.forward() defaults to is_causal=True")])
def test_what_the_code_says_outranks_a_leak(model, sign):
    adapter = adapt(model("none"))
    assert adapter.task == "causal_lm" and sign in adapter.evidence["task"].detail
    assert adapter.evidence["causal_probe"].value == "leaks"
    result = run(adapter, "causal_masking")
    assert result.status == "fail" and "its code says so" in result.summary
    assert "--task masked_lm" in result.summary  # the way out for a model meant to see both ways


def test_a_bidirectional_model_that_says_nothing_stays_bidirectional():
    adapter = adapt(Plain("none"))
    assert adapter.task == "masked_lm" and adapter.evidence["causal_probe"].value == "leaks"
    assert not adapter.warnings
    assert run(adapter, "causal_masking").status == "skip"


@pytest.mark.parametrize(("how", "said"), [
    ("softcap", "the leak is small"), ("window", "positions before the changed token moved")])
def test_a_leak_only_the_probe_sees_is_a_suspected_leak_with_the_override(how, said):
    adapter = adapt(Plain(how))
    assert adapter.task == "masked_lm", adapter.evidence["task"]
    probe = adapter.evidence["causal_probe"]
    assert probe.value == "suspected leak" and said in probe.detail, probe.detail
    for text in (probe.detail, adapter.evidence["task"].detail, adapter.warnings[-1]):
        assert "--task causal_lm" in text and 'adapt(..., task="causal_lm")' in text
    result = run(adapter, "causal_masking")
    assert result.status == "warn" and "suspected leak" in result.summary
    assert "--task causal_lm" in result.summary
    assert run(adapt(Plain(how), task="causal_lm"), "causal_masking").status == "fail"


class Gated(Plain):
    """A causal model plus a branch through a gate at exactly 0 that mixes in the next token
    (``mix="next"``: nothing leaks at init) or the previous one (``"previous"``: healthy)."""

    def __init__(self, mix):
        super().__init__("causal")
        self.mix, self.gate = mix, nn.Parameter(torch.zeros(32))

    def forward(self, input_ids):
        h = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        zero = torch.zeros_like(h[:, :1])
        other = torch.cat([h[:, 1:], zero], 1) if self.mix == "next" else \
            torch.cat([zero, h[:, :-1]], 1)
        h = h + self.gate * other
        h = h + self.attn(F.layer_norm(h, h.shape[-1:]))
        return self.head(F.layer_norm(h, h.shape[-1:]))


def test_a_leak_behind_a_gate_at_zero_is_caught_after_the_opening_steps():
    adapter = adapt(Gated("next"), task="causal_lm")
    result = run(adapter, "causal_masking")
    assert result.status == "fail" and result.metrics["max_rel_leak_at_init"] == 0.0
    assert "starts closed: 'gate' at exactly 0" in result.summary, result.summary
    healthy = run(adapt(Gated("previous"), task="causal_lm"), "causal_masking")
    assert healthy.status == "pass" and healthy.metrics["looked_after_first_steps"]


def test_the_probe_looks_past_a_gate_at_zero():
    # nothing leaks at init; after the opening steps only the position before the changed
    # token moves: a partial leak, so suspected rather than called bidirectional
    probe = adapt(Gated("next")).evidence["causal_probe"]
    assert probe.value == "suspected leak" and "0.0e+00 at init" in probe.detail
    assert adapt(Gated("previous")).task == "causal_lm"


def test_adapting_and_checking_repeat_and_leave_the_global_rng_alone():
    model = Gated("next")
    torch.manual_seed(7)
    state = torch.get_rng_state()
    first = adapt(model)
    assert torch.equal(state, torch.get_rng_state())
    second = adapt(Gated("next"))
    assert first.evidence["causal_probe"].to_dict() == second.evidence["causal_probe"].to_dict()
    one, two = (run(adapt(Gated("next"), task="causal_lm"), "causal_masking") for _ in range(2))
    assert (one.summary, one.metrics) == (two.summary, two.metrics)
