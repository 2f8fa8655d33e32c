"""Tier 1's checks for silent bugs, each on small models whose verdict is known by construction:
causal_masking, batch_independence, padding_invariance, overfit_one_batch, mixed_precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import adapt
from utils.checks import CheckOptions
from utils.tier1_critical_validation import run_tier1


def run(model, name, **options):
    return run_tier1(model, checks=[name], options=CheckOptions(**options),
                     progress=False).results[0]


class MixLM(nn.Module):
    """Embedding → one token-mixing step → norm → head. ``mix`` decides what a position sees."""

    def __init__(self, mix="causal", vocab=64, d=32, max_len=32):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.lin, self.head = nn.Linear(d, d), nn.Linear(d, vocab)
        self.mix = mix

    def mixed(self, h):
        t = h.shape[1]
        steps = torch.arange(1, t + 1, device=h.device)[:, None]
        if self.mix == "causal":  # mean over positions <= t
            return h.cumsum(1) / steps
        if self.mix == "all":  # mean over every position: sees the future
            return h.mean(1, keepdim=True).expand_as(h)
        if self.mix == "next":  # off by one: positions <= t + 1
            ahead = torch.cat([h[:, 1:], torch.zeros_like(h[:, :1])], 1)
            return (h.cumsum(1) + ahead) / steps
        if self.mix == "batch":  # statistics over dim 0
            return h - h.mean(0, keepdim=True)
        if self.mix == "seq_first":  # treats dim 0 as time: row b sees rows <= b
            return h.cumsum(0) / torch.arange(1, h.shape[0] + 1, device=h.device)[:, None, None]
        raise ValueError(self.mix)

    def forward(self, input_ids):
        h = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        h = h + torch.tanh(self.lin(self.mixed(h)))
        return self.head(F.layer_norm(h, h.shape[-1:]))


# ---- causal_masking -----------------------------------------------------------------------
def test_causal_model_passes():
    result = run(MixLM("causal"), "causal_masking")
    assert result.status == "pass" and result.metrics["max_rel_leak"] == 0.0


def test_a_missing_causal_mask_fails_at_the_first_position():
    result = run(adapt(MixLM("all"), task="causal_lm"), "causal_masking")
    assert result.status == "fail" and "position 0 already sees later tokens" in result.summary
    assert result.metrics["leaking_cuts"] == result.metrics["cuts_tested"]


def test_an_off_by_one_mask_is_named():
    result = run(adapt(MixLM("next"), task="causal_lm"), "causal_masking")
    assert result.status == "fail" and "off by one" in result.summary
    assert all(r["only_previous_moved"] for r in result.rows)


def test_a_model_declared_causal_in_its_config_is_held_to_it():
    adapter = adapt(MixLM("all"), {"task": "causal_lm"})
    assert adapter.evidence["causal_probe"].value == "leaks"
    assert run(adapter, "causal_masking").status == "fail"


def test_bidirectional_encoders_are_never_checked():
    result = run(adapt(MixLM("all"), task="masked_lm"), "causal_masking")
    assert result.status == "skip" and "bidirectional" in result.summary


class Seq2Seq(nn.Module):
    def __init__(self, causal=True, vocab=50, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.core = nn.Transformer(d, 4, 1, 1, 64, dropout=0.0, batch_first=True)
        self.out = nn.Linear(d, vocab)
        self.causal = causal

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1]) if self.causal \
            else None
        return self.out(self.core(self.emb(src), self.emb(tgt), tgt_mask=mask))


@pytest.mark.parametrize(("causal", "status"), [(True, "pass"), (False, "fail")])
def test_seq2seq_decoders_are_checked_on_the_decoder_side(causal, status):
    result = run(adapt(Seq2Seq(causal), max_seq_len=24), "causal_masking")
    assert result.status == status and "decoder tokens" in result.summary


class LayerScaledMixLM(MixLM):
    """The token mixing behind a CaiT-style layer scale of 1e-5: any leak starts ~1e-6."""

    def __init__(self, mix):
        super().__init__(mix)
        self.gain = nn.Parameter(torch.full((32,), 1e-5))

    def forward(self, input_ids):
        h = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        h = h + self.gain * torch.tanh(self.lin(self.mixed(h)))
        return self.head(F.layer_norm(h, h.shape[-1:]))


@pytest.mark.parametrize(("mix", "status"), [("causal", "pass"), ("next", "fail")])
def test_a_leak_through_a_branch_that_starts_small_is_caught(mix, status):
    result = run(adapt(LayerScaledMixLM(mix), task="causal_lm"), "causal_masking")
    assert result.status == status, result.summary
    if status == "fail":
        assert "At init the leak is only" in result.summary
        assert result.metrics["max_rel_leak_at_init"] <= 1e-5 < result.metrics["max_rel_leak"]


def test_a_bidirectional_model_with_a_small_mixing_branch_is_not_taken_for_causal():
    adapter = adapt(LayerScaledMixLM("all"))
    assert adapter.task == "masked_lm", adapter.evidence["task"]
    assert "after two gradient steps" in adapter.evidence["causal_probe"].detail
    assert adapt(LayerScaledMixLM("causal")).evidence["causal_probe"].value == "causal"


# ---- batch_independence -------------------------------------------------------------------
@pytest.mark.parametrize("mix", ["batch", "seq_first"])
def test_samples_mixing_in_eval_mode_fail(mix):
    result = run(adapt(MixLM(mix), task="causal_lm"), "batch_independence")
    assert result.status == "fail" and result.metrics["max_rel_diff_eval"] > 1e-2
    assert "statistics over dim 0" in result.summary  # copies of one sample agree here


class ByPlaceLM(MixLM):
    """Adds ``table[:x.size(0)]`` of a (32, 1, d) tensor: one vector per sample, chosen by its
    place in the batch — the PyTorch tutorial's seq-first encoding fed batch-first input."""

    def __init__(self, table):
        super().__init__("causal")
        self.table = table
        self.register_buffer(table, torch.randn(32, 1, 32))

    def mixed(self, h):
        return super().mixed(h) + getattr(self, self.table)[: h.shape[0]]


@pytest.mark.parametrize(("table", "said"), [
    ("pe", "the position tensor 'pe' of shape (32, 1, 32) has the (seq, batch, dim) layout of "
           "PyTorch's tutorial encoding"),
    ("slot", "something is indexed by the batch position")])
def test_outputs_that_depend_on_the_place_in_the_batch_are_said_so(table, said):
    result = run(adapt(ByPlaceLM(table), task="causal_lm"), "batch_independence")
    assert result.status == "fail" and "Copies of one sample come out different by their " \
        "place in the batch" in result.summary and said in result.summary, result.summary
    assert "statistics over dim 0" not in result.summary


class WithBatchNorm(MixLM):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(32)

    def mixed(self, h):
        return self.bn(super().mixed(h).transpose(1, 2)).transpose(1, 2)


def test_batchnorm_is_independent_in_eval_but_warned_about_in_training():
    result = run(WithBatchNorm(), "batch_independence")
    assert result.status == "warn" and "BatchNorm" in result.summary
    assert result.metrics["max_rel_diff_eval"] <= 1e-4 < result.metrics["max_rel_diff_train"]


class FunctionalDropout(MixLM):
    def mixed(self, h):
        return F.dropout(super().mixed(h), 0.5, training=self.training)


def test_train_mode_is_not_compared_when_randomness_cannot_be_switched_off():
    result = run(FunctionalDropout(), "batch_independence")
    assert result.status == "pass" and result.metrics["max_rel_diff_train"] is None
    assert "outside nn.Dropout" in result.summary


# ---- padding_invariance -------------------------------------------------------------------
class MaskedEncoder(nn.Module):
    """Bidirectional: mean over the real tokens (or over everything, when it ignores the mask)."""

    def __init__(self, honour_mask=True, takes_mask=True, classes=None, vocab=40, d=16):
        super().__init__()
        self.emb, self.lin = nn.Embedding(vocab, d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, classes or vocab)
        self.honour, self.classes = honour_mask, classes
        if not takes_mask:
            self.forward = lambda input_ids: MaskedEncoder.forward(self, input_ids, None)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        keep = torch.ones_like(input_ids) if attention_mask is None or not self.honour \
            else attention_mask
        w = keep[..., None].float()
        context = (h * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
        h = torch.tanh(self.lin(torch.cat([h, context.expand_as(h)], -1)))
        if self.classes:
            return self.head((h * w).sum(1) / w.sum(1))
        return self.head(h)


@pytest.mark.parametrize("classes", [None, 3])
def test_a_mask_that_is_honoured_passes(classes):
    adapter = adapt(MaskedEncoder(classes=classes), task="classification" if classes else
                    "masked_lm", max_seq_len=32)
    result = run(adapter, "padding_invariance")
    assert result.status == "pass" and "attention_mask" in result.summary


@pytest.mark.parametrize("classes", [None, 3])
def test_a_mask_that_is_taken_but_ignored_fails(classes):
    adapter = adapt(MaskedEncoder(honour_mask=False, classes=classes),
                    task="classification" if classes else "masked_lm", max_seq_len=32)
    result = run(adapter, "padding_invariance")
    assert result.status == "fail" and "ignored or applied wrongly" in result.summary


def test_a_bidirectional_model_without_a_mask_is_warned_about():
    class NoMask(MaskedEncoder):
        def forward(self, input_ids):
            return super().forward(input_ids)

    result = run(adapt(NoMask(), task="masked_lm", max_seq_len=32), "padding_invariance")
    assert result.status == "warn" and "takes no attention mask" in result.summary


def test_a_causal_model_needs_no_mask_for_right_padding():
    result = run(MixLM("causal"), "padding_invariance")
    assert result.status == "pass" and "causal" in result.summary


# ---- overfit_one_batch --------------------------------------------------------------------
class Squashed(MixLM):
    def forward(self, input_ids):
        return 0.05 * torch.tanh(super().forward(input_ids))


class Detached(MixLM):
    def forward(self, input_ids):
        return super().forward(input_ids).detach()


class Diverges(MixLM):
    """Fine until it has trained a little, then NaN (as when a learning rate is too high)."""

    def __init__(self, after=3):
        super().__init__()
        self.train_calls, self.after = 0, after

    def forward(self, input_ids):
        self.train_calls += self.training
        out = super().forward(input_ids)
        return out * float("nan") if self.train_calls > self.after else out


@pytest.mark.parametrize(("model", "status", "pattern"), [
    (MixLM(), "pass", "weights restored"),
    (Squashed(), "fail", "cannot fit even two sequences"),
    (Detached(), "fail", "no grad_fn"),
    (Diverges(), "fail", "NaN/Inf after 3 of"),
])
def test_overfit_verdicts(model, status, pattern):
    result = run(adapt(model, task="causal_lm"), "overfit_one_batch")
    assert result.status == status and pattern in result.summary, result.summary


def test_overfit_stops_once_passed_but_never_before_min_steps():
    fast = {"overfit_one_batch.lr": 1e-2}  # MixLM then loses 30% within 3 steps
    passed = run(adapt(MixLM(), task="causal_lm"), "overfit_one_batch", thresholds=fast)
    m = passed.metrics
    assert passed.status == "pass" and m["steps"] == m["min_steps"] < m["max_steps"]
    assert "within the 24-step limit" in passed.summary
    # past the margin already, but a divergence within min_steps is still seen
    late = run(adapt(Diverges(after=7), task="causal_lm"), "overfit_one_batch", thresholds=fast)
    assert late.status == "fail" and "NaN/Inf after 7 of" in late.summary, late.summary


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("free", [None, 10_000])
def test_weights_and_buffers_are_restored_in_memory_or_through_a_file(monkeypatch, free):
    from utils.tier1 import learning, training_steps

    if free is not None:  # too little host memory for a copy: through a temporary file
        monkeypatch.setattr(learning, "free_memory_bytes", lambda device: free)  # Adam's state
        monkeypatch.setattr(training_steps, "free_memory_bytes", lambda device: free)  # snapshot
    model = WithBatchNorm()  # running statistics are buffers that training updates
    before = _state(model)
    result = run(model, "overfit_one_batch")
    assert result.metrics["relative_drop"] > 0.3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.metrics["weights_restored_via"] == ("memory" if free is None else
                                                      "temporary file")
    assert result.metrics["optimizer"] == ("Adam" if free is None else
                                           "SGD (Adam's state would not fit)")


@pytest.mark.parametrize("fused", [True, False])
def test_in_house_adam_matches_torch_optim(monkeypatch, fused):
    from utils.tier1.learning import _Adam

    if not fused:  # a build or device without the fused kernel: the op-by-op update
        def missing(*args, **kwargs):
            raise RuntimeError("no fused Adam kernel here")

        monkeypatch.setattr(torch, "_fused_adam_", missing, raising=False)
    torch.manual_seed(0)
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    ours, theirs = _Adam(list(a.parameters()), 1e-2), torch.optim.Adam(b.parameters(), 1e-2)
    for _ in range(20):
        x = torch.randn(4, 5)
        for m in (a, b):
            m.zero_grad()
            m(x).pow(2).sum().backward()
        ours.step()
        theirs.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert ours.fused == (fused and hasattr(torch, "_fused_adam_"))


def test_encoders_have_nothing_to_overfit():
    result = run(adapt(MixLM(), task="encoder"), "overfit_one_batch")
    assert result.status == "skip"


# ---- mixed_precision ----------------------------------------------------------------------
class BigActivations(MixLM):
    """Fine in fp32; the hidden state passes 65504, fp16's largest value."""

    def forward(self, input_ids):
        h = self.tok(input_ids) * 1e6
        return self.head(self.lin(h) / 1e6)


class Cancellation(MixLM):
    """Adds and removes a large constant: at 300, bf16 and fp16 steps (2 and 0.25) swallow the
    hidden state."""

    def forward(self, input_ids):
        h = self.lin(self.tok(input_ids))
        return self.head((h + 300.0) - 300.0)


@pytest.mark.parametrize(("model", "status", "pattern"), [
    (MixLM(), "pass", "bf16"),
    (BigActivations(), "fail", "fp16 autocast (what Colab's T4 trains in)"),
    (Cancellation(), "warn", "deviate from fp32"),
])
def test_mixed_precision_verdicts(model, status, pattern):
    result = run(adapt(model, task="causal_lm"), "mixed_precision")
    assert result.status == status and pattern in result.summary, result.summary
    if status == "pass":
        assert result.metrics["bf16_rel_error"] < 0.06 and result.metrics["fp16_rel_error"] < 0.01
    if status == "fail":  # where the overflow is made: fp32 1e6 into a Linear cast to fp16
        assert "made in 'lin' (Linear)" in result.summary, result.summary


class AdditiveMaskAttention(nn.Module):
    """Two attention layers with an additive padding mask ``(1 - mask) * -1e9`` in the scores'
    dtype (fp16 turns it into -inf). ``causal``: a causal -inf mask as well, so a leading pad
    sees only masked keys; ``rows``: the pads' query rows are masked too (a 2-D pad mask)."""

    def __init__(self, causal, rows=False, fill=-1e9, vocab=64, d=32, max_len=32):
        super().__init__()
        self.max_seq_len, self.causal, self.rows, self.fill = max_len, causal, rows, fill
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(2))
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        t = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(t))
        for qkv in self.qkv:
            q, k, v = qkv(x).chunk(3, -1)
            s = q @ k.transpose(1, 2) / 32 ** 0.5
            if attention_mask is not None:
                m = attention_mask[:, None, :].to(s.dtype)
                if self.rows:
                    m = m * attention_mask[:, :, None].to(s.dtype)
                s = s + (1.0 - m) * self.fill
            if self.causal:
                s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
            x = x + s.softmax(-1) @ v
        return self.head(x)


@pytest.mark.parametrize(("causal", "rows", "fill", "status", "said"), [
    (True, False, -1e9, "warn", "when the batch is left-padded"),
    (False, True, -1e9, "fail", "when the batch is right-padded"),
    (True, False, torch.finfo(torch.float16).min, "pass", "close to fp32"),
    (False, True, torch.finfo(torch.float16).min, "pass", "close to fp32")])
def test_a_mask_constant_that_fp16_turns_into_nan_on_padded_batches(causal, rows, fill, status,
                                                                    said):
    model = AdditiveMaskAttention(causal, rows, fill)
    result = run(adapt(model, task="causal_lm" if causal else "masked_lm", mask_token_id=1),
                 "mixed_precision")
    assert result.status == status and said in result.summary, result.summary
    if status != "pass":
        assert "fp16" in result.summary and "finfo(scores.dtype).min" in result.summary


# ---- randomness left on in eval mode is reported once, by determinism -----------------------
class DropoutAlwaysOn(MixLM):
    def mixed(self, h):
        return F.dropout(super().mixed(h), 0.3)  # training=True even in eval: the planted bug


def test_randomness_in_eval_does_not_pose_as_other_bugs():
    model = DropoutAlwaysOn()
    adapter = adapt(model)
    assert adapter.task == "causal_lm"  # the probe's two forwards share their random numbers
    report = run_tier1(adapter, options=CheckOptions(), progress=False)
    status = {r.name: r.status for r in report.results}
    assert status["determinism"] == "fail" and status["causal_masking"] == "pass"
    for name in ("batch_independence", "padding_invariance", "mixed_precision"):
        assert status[name] == "skip" and "determinism reports" in report[name].summary


class InvertedMaskEncoder(nn.Module):
    """Attention over keys masked where attention_mask == 1 (inverted), finite fill, no
    residual around it: with nothing padded every key is masked, so every position gets the
    same uniform mix — constant outputs."""

    def __init__(self, vocab=40, d=16):
        super().__init__()
        self.emb, self.qk, self.head = nn.Embedding(vocab, d), nn.Linear(d, 2 * d), nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        q, k = self.qk(h).chunk(2, -1)
        scores = q @ k.transpose(1, 2) / 4
        if attention_mask is not None:  # the bug: 1 (a real token) is masked
            scores = scores.masked_fill(attention_mask[:, None, :] == 1,
                                        torch.finfo(scores.dtype).min)
        return self.head(scores.softmax(-1) @ h)


def test_an_inverted_mask_is_named_as_such():
    adapter = adapt(InvertedMaskEncoder(), task="masked_lm", max_seq_len=32)
    result = run(adapter, "padding_invariance")
    assert result.status == "fail", result.summary
    assert "applies its mask 'attention_mask' inverted" in result.summary
    assert "masked_fill(attention_mask == 0" in result.summary


# ---- model_loss ---------------------------------------------------------------------------
class OwnLossLM(nn.Module):
    """A causal LM that computes its own loss from ``labels`` (Hugging Face: the input ids,
    -100 where padded) or ``targets`` (nanoGPT: already the next tokens); ``loss`` picks how."""

    def __init__(self, loss, vocab=64, d=32, max_len=32):
        super().__init__()
        self.max_seq_len, self.how = max_len, loss
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.lin, self.head = nn.Linear(d, d), nn.Linear(d, vocab)

    def logits(self, input_ids):
        t = input_ids.shape[1]
        h = self.tok(input_ids) + self.pos(torch.arange(t))
        h = h + torch.tanh(self.lin(h.cumsum(1) / torch.arange(1, t + 1)[:, None]))
        return self.head(h)

    def hf_loss(self, input_ids, attention_mask=None, labels=None):
        z = self.logits(input_ids)
        if labels is None:
            return z
        flat = z[:, :-1].flatten(0, 1)
        how = self.how
        if how == "hf":
            loss = F.cross_entropy(flat, labels[:, 1:].flatten())
        elif how == "hf_unshifted":
            loss = F.cross_entropy(z.flatten(0, 1), labels.flatten())
        elif how == "hf_scores_padding":  # the loss from the inputs: padding scored too
            loss = F.cross_entropy(flat, input_ids[:, 1:].flatten())
        elif how == "hf_pad_id":  # padding marked by the pad id: -100 crashes it
            loss = F.cross_entropy(flat, labels[:, 1:].flatten(), ignore_index=0)
        elif how == "hf_zeros_counted":
            loss = F.cross_entropy(flat, labels[:, 1:].flatten(), reduction="none").mean()
        else:  # label smoothing: a deliberate difference
            loss = F.cross_entropy(flat, labels[:, 1:].flatten(), label_smoothing=0.1)
        return loss, z


class HFLossLM(OwnLossLM):
    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.hf_loss(input_ids, attention_mask, labels)


class NanoLossLM(OwnLossLM):
    def forward(self, idx, targets=None):
        z = self.logits(idx)
        if targets is None:
            return z, None
        if self.how == "nano":
            return z, F.cross_entropy(z.flatten(0, 1), targets.flatten(), ignore_index=-100)
        # shifted once more: trains to predict two tokens ahead
        return z, F.cross_entropy(z[:, :-1].flatten(0, 1), targets[:, 1:].flatten(),
                                  ignore_index=-100)


@pytest.mark.parametrize(("cls", "how", "status", "said"), [
    (HFLossLM, "hf", "pass", "equals the task loss"),
    (HFLossLM, "hf_unshifted", "fail", "the labels are not shifted"),
    (HFLossLM, "hf_scores_padding", "fail", "it averages over padded positions too"),
    (HFLossLM, "hf_zeros_counted", "fail", "padding counted as zero loss"),
    (HFLossLM, "smoothing", "warn", "Not an unshifted label or a mean over padding"),
    (NanoLossLM, "nano", "pass", "equals the task loss"),
    (NanoLossLM, "nano_shifted_again", "fail", "it shifts targets once more")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_models_own_loss_is_matched_to_the_slip_it_makes(cls, how, status, said, seed):
    torch.manual_seed(seed)
    result = run(adapt(cls(how), task="causal_lm"), "model_loss", seed=seed)
    assert result.status == status and said in result.summary, result.summary


def test_a_loss_that_ignores_padding_by_the_pad_id_warns_that_minus_100_crashes_it():
    result = run(adapt(HFLossLM("hf_pad_id"), task="causal_lm", pad_token_id=0), "model_loss")
    assert result.status == "warn", result.summary
    assert "it ignores padding by the pad id (ignore_index=pad_token_id)" in result.summary
    assert "Target -100 is out of bounds" in result.summary


class KeepMaskAsPaddingMask(nn.Module):
    """nn.TransformerEncoder given ``attention_mask.bool()`` (True = real token) where it
    wants True = padding: with nothing padded every key is masked and the outputs are NaN."""

    def __init__(self, vocab=64, d=32, classes=3, max_len=32):
        super().__init__()
        self.max_len = max_len
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, input_ids, attention_mask=None):
        x = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        pad = None if attention_mask is None else attention_mask.bool()  # the bug
        return self.head(self.enc(x, src_key_padding_mask=pad)[:, 0])


def test_a_mask_that_blocks_every_key_is_the_finding_not_its_nan():
    adapter = adapt(KeepMaskAsPaddingMask(), task="classification", num_classes=3)
    report = {r.name: r for r in run_tier1(adapter, options=CheckOptions(), progress=False)
              .results}
    pad = report["padding_invariance"]
    assert pad.status == "fail" and "the mask blocks every key, so it is applied inverted" in \
        pad.summary and "attention_mask == 0" in pad.summary, pad.summary
    for name in ("context_use", "position_information"):  # NaN measures nothing
        assert report[name].status == "skip" and "not finite" in report[name].summary
    assert "outputs are not finite at init" in report["initial_loss"].summary
    assert "blocks every key" in report["output_stability"].summary


def test_failures_that_only_follow_from_an_inverted_mask_depend_on_it():
    adapter = adapt(InvertedMaskEncoder(), task="masked_lm", max_seq_len=32)
    before = adapter.spec.mask_style
    report = {r.name: r for r in run_tier1(adapter, options=CheckOptions(), progress=False)
              .results}
    assert report["padding_invariance"].status == "fail"
    follows = [r for r in report.values() if r.summary.startswith("Depends on padding_invariance")]
    assert {r.name for r in follows} == {"gradient_flow"}, {n: r.status for n, r in report.items()}
    # the encoder has no positions at all: that failure is its own, and said to be
    assert report["position_information"].status == "fail"
    assert "it still fails" in report["position_information"].summary
    for r in follows:  # asked again with the mask flipped, they pass
        assert r.status == "skip" and r.metrics["with_mask_flipped"] in ("pass", "warn", "skip")
        assert "fed the mask the other way round this check" in r.summary
    assert adapter.spec.mask_style == before  # the adapter is left as it was


# ---- where a leak or the padding enters (module by module) --------------------------------
class TimeNorm(nn.Module):
    """RMSNorm over the wrong axis: the sequence (dim 1) instead of the features."""

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6)


class TimeNormLM(MixLM):
    def __init__(self):
        super().__init__("causal")
        self.norm = TimeNorm()

    def forward(self, input_ids):
        h = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        h = h + torch.tanh(self.lin(self.mixed(self.norm(h))))
        return self.head(h)


def test_a_causal_leak_is_traced_to_the_module_it_enters_at():
    result = run(adapt(TimeNormLM(), task="causal_lm"), "causal_masking")
    assert result.status == "fail" and result.metrics["leak_enters_at"] == "norm"
    assert "it enters at 'norm' (TimeNorm), forward at test_tier1_silent_bugs.py, line" in \
        result.summary and "normalises over the sequence axis" in result.summary


class LastPositionClassifier(nn.Module):
    """Attention that honours the mask, then the last position pooled: a pad when padded."""

    def __init__(self, vocab=64, d=32, classes=3, max_len=32):
        super().__init__()
        self.max_seq_len = max_len
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, input_ids, attention_mask=None):
        x = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        pad = None if attention_mask is None else attention_mask == 0
        x = x + self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        return self.head(x[:, -1])  # the bug: a pad in a right-padded row


def test_a_classifier_pooling_a_pad_is_told_from_a_mask_that_does_not_work():
    result = run(adapt(LastPositionClassifier(), task="classification", num_classes=3),
                 "padding_invariance")
    assert result.status == "fail", result.summary
    assert "the hidden states at the real positions are unchanged" in result.summary
    assert "x[range(B), attention_mask.sum(1) - 1]" in result.summary


class SoftmaxAxisAttention(nn.Module):
    """One attention layer softmaxing its [B, H, T, T] scores over ``axis`` (-1 is right)."""

    def __init__(self, axis=-1, causal=True, vocab=64, d=32, heads=2, max_len=32):
        super().__init__()
        self.max_seq_len, self.axis, self.causal, self.heads = max_len, axis, causal, heads
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.qkv, self.head = nn.Linear(d, 3 * d), nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        x = self.tok(input_ids) + self.pos(torch.arange(t))
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        s = q @ k.transpose(-1, -2) / 4
        if attention_mask is not None:  # BERT's additive mask: a finite -1e4 on padded keys
            s = s + (1.0 - attention_mask[:, None, None, :].float()) * -1e4
        if self.causal:
            s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        w = s.softmax(self.axis).nan_to_num()
        return self.head(x + (w @ v).transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize(("axis", "causal", "check", "said"), [
    (-2, True, "causal_masking", "softmax over the queries (dim=-2)"),
    (1, False, "padding_invariance", "softmax over the heads (dim=1)")])
def test_a_softmax_over_the_wrong_axis_is_named(axis, causal, check, said):
    model = SoftmaxAxisAttention(axis, causal)
    result = run(adapt(model, task="causal_lm" if causal else "masked_lm", mask_token_id=1), check)
    assert result.status == "fail" and said in result.summary, result.summary
    assert "test_tier1_silent_bugs.py, line" in result.summary and "dim=-1" in result.summary
    right = run(adapt(SoftmaxAxisAttention(-1, causal), task="causal_lm" if causal else
                      "masked_lm", mask_token_id=1), check)
    assert right.status == "pass", right.summary
