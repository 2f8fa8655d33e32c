"""The adapter on forward patterns copied from real code: the last position only unless targets
are given (nanoGPT), masks under names that do not say their polarity, and overrides that
contradict the model."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import adapt
from utils.checks import CheckOptions
from utils.errors import UserError
from utils.tier1_critical_validation import run_tier1


class LastPositionLM(nn.Module):
    """Causal (a running mean over the prefix); without targets only the last position."""

    def __init__(self, vocab=48, d=16, max_len=24, loss="mean"):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.head = nn.Linear(d, vocab)
        self.reduction = loss

    def hidden(self, idx):
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return torch.tanh(h.cumsum(1) / torch.arange(1, h.shape[1] + 1).view(1, -1, 1))

    def forward(self, idx, targets=None):
        x = self.hidden(idx)
        if targets is None:
            return self.head(x[:, [-1], :]), None
        logits = self.head(x)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=self.reduction)
        return logits, loss


class NoTargets(LastPositionLM):
    def forward(self, idx):
        return self.head(self.hidden(idx)[:, [-1], :])


class AlwaysLast(LastPositionLM):
    def forward(self, idx, targets=None):
        return self.head(self.hidden(idx)[:, [-1], :])


def test_a_last_position_forward_is_driven_with_its_targets():
    a = adapt(LastPositionLM())
    assert a.spec.feed_targets and a.task == "causal_lm" and a.vocab_size == 48
    assert "time dimension 1 while the input had T=8" in a.evidence["forward"].detail
    assert "targets -> targets" in a.describe()["forward"]
    assert a.logits(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 48)
    assert a.evidence["causal_probe"].value == "causal"
    assert a.evidence["model_loss"].value == "agrees"
    assert "nanoGPT's convention" in a.evidence["model_loss"].detail
    loss = a.loss(a.make_inputs(2, 6))
    assert loss.isfinite()
    loss.backward()


def test_a_model_loss_that_is_not_cross_entropy_is_a_warning():
    a = adapt(LastPositionLM(loss="sum"))
    assert a.evidence["model_loss"].value == "differs"
    assert any("not plain next-token cross-entropy" in w for w in a.warnings)


@pytest.mark.parametrize(("model", "said"), [
    (NoTargets(), "takes no targets/labels parameter"),
    (AlwaysLast(), r"called with targets= it still returned \[2, 1, 48\]"),
])
def test_the_last_position_only_names_the_pattern_and_the_one_line_change(model, said):
    with pytest.raises(UserError, match=r"returned the last position only: without targets "
                       r"forward returned time dimension 1 while the input had T=8") as info:
        adapt(model)
    assert re.search(said, info.value.message)
    assert "`logits = self.lm_head(x)`" in info.value.fix
    assert "batch-first" not in info.value.fix


def test_full_logits_without_targets_are_left_alone():
    class FullLM(LastPositionLM):
        def forward(self, idx, targets=None):
            return self.head(self.hidden(idx))

    a = adapt(FullLM())
    assert not a.spec.feed_targets and a.spec.targets_param == "targets"
    assert "model_loss" not in a.evidence  # it returns no loss


# ---- masks under names that do not say their polarity --------------------------------------
class MaskedEncoder(nn.Module):
    """Bidirectional: each position adds the mean of the kept positions. ``style`` is the
    convention its ``mask`` follows: "keep" (True/1 = real token) or "pad" (True = padding)."""

    def __init__(self, style="keep", vocab=30, d=8, param="mask"):
        super().__init__()
        self.tok, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
        self.style = style
        ns = {}
        exec(f"def forward(self, x, {param}=None):\n    return self.body(x, {param})\n", ns)
        self.forward = ns["forward"].__get__(self)

    def body(self, x, mask):
        h = self.tok(x)
        if mask is None:
            keep = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        else:
            keep = mask.bool() if self.style == "keep" else ~mask
        w = keep.to(h.dtype)[..., None]  # (B, T, 1)
        ctx = (h * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
        return self.head(torch.tanh(h + ctx))


@pytest.mark.parametrize(("style", "param", "found"), [
    ("keep", "mask", "True = real token"),
    ("pad", "mask", "True = padding"),
    ("pad", "attn_mask", "True = padding"),
    ("keep", "src_mask", "True = real token"),
])
def test_the_polarity_of_an_ambiguous_mask_is_probed(style, param, found):
    a = adapt(MaskedEncoder(style, param=param), task="masked_lm")
    assert a.spec.mask_param == param and a.evidence["mask"].value == found
    assert a.evidence["mask"].method == "probe"
    report = run_tier1(a, checks=["padding_invariance"], progress=False)
    assert report["padding_invariance"].status == "pass"
    assert report["padding_invariance"].metrics["takes_mask"] is True


class AdditiveMaskGPT(nn.Module):
    """Causal, with the padding mask added to the scores (-1e4 on blocked keys): appended padding
    leaves the real positions unchanged under both polarities, since a row whose every key is
    shifted by the same amount has the same softmax."""

    def __init__(self, style, vocab=64, d=16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(32, d)
        self.qkv, self.head = nn.Linear(d, 3 * d), nn.Linear(d, vocab)
        self.style = style

    def forward(self, idx, mask=None):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t))
        q, k, v = self.qkv(x).split(x.shape[-1], -1)
        att = (q @ k.transpose(-1, -2)).masked_fill(
            ~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))  # (B, T, T)
        if mask is not None:
            blocked = ~mask if self.style == "keep" else mask
            att = att + blocked[:, None, :].float() * -1e4
        return self.head(x + F.softmax(att, -1) @ v)


@pytest.mark.parametrize(("style", "found"), [("keep", "True = real token"),
                                              ("pad", "True = padding")])
def test_a_causal_models_mask_polarity_is_told_by_masked_content(style, found):
    a = adapt(AdditiveMaskGPT(style))
    assert a.task == "causal_lm" and a.evidence["mask"].value == found
    assert "changing the 2 masked token(s) before 6 real ones" in a.evidence["mask"].detail


def test_a_mask_that_is_not_a_padding_mask_is_not_fed():
    class SquareMask(MaskedEncoder):
        def body(self, x, attn_mask):  # a [T, T] attention mask, not [batch, seq_len]
            h = self.tok(x)
            if attn_mask is not None:
                h = h + (attn_mask.float() @ h) * 0.1
            return self.head(h)

    a = adapt(SquareMask(param="attn_mask"), task="masked_lm")
    assert a.spec.mask_param is None and a.evidence["mask"].value == "not a padding mask"
    assert "attn_mask" in a.spec.left_default


def test_a_named_mask_used_inverted_is_kept_and_reported():
    a = adapt(MaskedEncoder("keep", param="src_key_padding_mask"), task="masked_lm")
    assert a.spec.mask_style == "pad"  # by its name: the model's inversion is not papered over
    assert any("applies the mask inverted" in w for w in a.warnings)
    result = run_tier1(a, checks=["padding_invariance"], progress=False)["padding_invariance"]
    assert result.status == "fail" and "inverted in the model" in result.summary


# ---- overrides that contradict the model ---------------------------------------------------
def test_a_vocab_override_past_the_embedding_is_an_error_naming_both():
    with pytest.raises(UserError, match=r"vocab_size=8192 was given, but the model's token "
                       r"embedding has 48 rows \(rows of 'tok'"):
        adapt(LastPositionLM(), vocab_size=8192)


def test_a_smaller_vocab_override_is_reported_truthfully():
    a = adapt(LastPositionLM(), vocab_size=32)
    assert a.vocab_size == 32 and a.evidence["vocab_size"].method == "override"
    note = next(w for w in a.warnings if "vocab_size=32" in w)
    assert "the model has 48 (rows of 'tok'" in note and "16 rows are never read" in note
    assert not any("has 32 rows" in w for w in a.warnings)


def test_a_config_vocab_against_an_override_names_the_real_rows():
    a = adapt(LastPositionLM(), {"vocab_size": 40}, vocab_size=32)
    assert any("config vocab_size=40 but the model's token embedding has 48 rows; using 32"
               in w for w in a.warnings)


def test_num_classes_on_a_causal_lm_is_an_error():
    with pytest.raises(UserError, match=r"num_classes=5 was given, but the model's task is "
                       r"'causal_lm' \(config: config task='causal_lm'\), which has no classes"):
        adapt(LastPositionLM(), {"task": "causal_lm"}, num_classes=5)


def test_num_classes_past_the_output_is_an_error_and_below_it_a_note():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.head = nn.Embedding(20, 8), nn.Linear(8, 3)

        def forward(self, tokens):
            return self.head(self.tok(tokens).mean(1))

    with pytest.raises(UserError, match=r"num_classes=5 was given, but the model's output has "
                       r"3 classes"):
        adapt(Classifier(), num_classes=5)
    a = adapt(Classifier(), num_classes=2)
    assert a.num_classes == 2 and any("output has 3 classes" in w for w in a.warnings)


def test_a_max_len_override_that_contradicts_the_model_is_a_note():
    a = adapt(LastPositionLM(max_len=24), max_seq_len=64)
    assert a.max_seq_len == 64
    assert any("max_seq_len=64 given explicitly, but the model says 24" in w
               and "past the model's limit" in w for w in a.warnings)


def test_a_length_cap_below_max_seq_len_is_said_in_the_summary_and_the_notes():
    a = adapt(LastPositionLM(max_len=24))
    report = run_tier1(a, checks=["shape_robustness"], options=CheckOptions(max_len_cap=10),
                       progress=False)
    summary = report["shape_robustness"].summary
    assert "lengths 11–24 of max_seq_len 24 not tested" in summary
    assert "(max_len_cap=10)" in summary
    assert any("at most 10 tokens (max_len_cap=10), below the model's max_seq_len 24, so each "
               "check stays within its time budget: lengths 11–24 are not tested" in n
               for n in report.notes)
    assert "Checks use sequences of at most 10 tokens" in report.to_text()
    full = run_tier1(a, checks=["shape_robustness"], progress=False)
    assert not full.notes and "not tested" not in full["shape_robustness"].summary
