"""The adapter on models built in code: signatures, outputs, evidence precedence, batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import adapt
from utils.errors import UserError


class TinyLM(nn.Module):
    """A configurable toy: causal or not, any input name, any output container."""

    def __init__(self, vocab=40, d=8, max_len=16, causal=True, out="tensor", head=None):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, head or vocab)
        self.causal, self.out = causal, out

    def body(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        # causal: running mean over the prefix; bidirectional: mean over the whole sequence
        ctx = (h.cumsum(1) / torch.arange(1, h.shape[1] + 1).view(1, -1, 1) if self.causal
               else h.mean(1, keepdim=True).expand_as(h))
        logits = self.head(torch.tanh(self.mix(h + ctx)))
        if self.out == "dict":
            return {"logits": logits, "hidden": h}
        if self.out == "tuple":
            return (logits, None)
        if self.out == "object":
            return type("Out", (), {"logits": logits})()
        return logits

    def forward(self, input_ids):
        return self.body(input_ids)


@pytest.mark.parametrize("out", ["tensor", "dict", "tuple", "object"])
def test_any_output_container(out):
    a = adapt(TinyLM(out=out))
    assert a.task == "causal_lm" and a.vocab_size == 40 and a.max_seq_len == 16
    assert a.logits(a.make_inputs(2, 5)["input_ids"]).shape == (2, 5, 40)


def make_forward(signature: str, body: str = "return self.body({name})"):
    """A TinyLM subclass whose forward has the given parameter list."""
    name = signature.split(",")[0].strip()
    namespace = {}
    exec(f"def forward(self, {signature}):\n    {body.format(name=name)}\n", namespace)
    return type("Custom", (TinyLM,), {"forward": namespace["forward"]})


@pytest.mark.parametrize("signature", [
    "input_ids", "idx", "x", "src", "tokens", "input_0_tokens", "batch_of_ids",
    "idx, targets=None", "x, mask=None", "input_ids, attention_mask=None, past=None",
])
def test_token_input_under_any_name(signature):
    a = adapt(make_forward(signature)())
    assert a.task == "causal_lm"
    assert a.loss(a.make_inputs(2, 6)).isfinite()


def test_positional_varargs_forward():
    a = adapt(make_forward("*inputs", "return self.body(inputs[0])")())
    assert a.spec.token_param is None
    assert a.logits(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 40)


def test_intermediates_as_arguments_are_refused_with_their_names():
    Model = make_forward("input_0_tokens, mhsa_0_output, residual_0_output")
    with pytest.raises(UserError, match=r"requires 'mhsa_0_output', 'residual_0_output' besides "
                       r"the token input 'input_0_tokens'") as info:
        adapt(Model())
    assert "inside forward" in info.value.fix


def test_required_ambiguous_mask_is_refused():
    with pytest.raises(UserError, match=r"requires the mask argument 'src_mask'"):
        adapt(make_forward("src, src_mask")())


def test_forward_that_raises_points_at_the_line():
    class Broken(TinyLM):
        def forward(self, input_ids):
            return undefined_name + input_ids  # noqa: F821

    with pytest.raises(UserError, match=r"first forward pass of Broken raised NameError") as info:
        adapt(Broken())
    assert info.value.location.file == __file__
    assert "undefined_name" in info.value.location.text


# ---- masks ------------------------------------------------------------------------------------
class PadMaskEncoder(nn.Module):
    """Bidirectional; PyTorch convention src_key_padding_mask (True = padding)."""

    def __init__(self, vocab=30, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.head = nn.Linear(d, vocab)
        self.seen = None

    def forward(self, x, src_key_padding_mask=None):
        self.seen = src_key_padding_mask
        h = self.emb(x)
        keep = (~src_key_padding_mask).float().unsqueeze(-1) if src_key_padding_mask is not None \
            else torch.ones_like(h[..., :1])
        ctx = (h * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True)
        return self.head(h + ctx)


def test_attention_mask_is_translated_to_key_padding_mask():
    model = PadMaskEncoder()
    a = adapt(model)
    assert a.task == "masked_lm" and a.spec.mask_param == "src_key_padding_mask"
    batch = a.make_inputs(2, 4)
    batch["attention_mask"][0, -1] = 0
    a.logits(batch["input_ids"], batch["attention_mask"])
    assert model.seen.dtype == torch.bool and model.seen[0].tolist() == [False] * 3 + [True]


# ---- evidence and precedence -------------------------------------------------------------------
def test_probe_decides_when_nothing_else_speaks():
    causal, bidir = adapt(TinyLM(causal=True)), adapt(TinyLM(causal=False))
    assert causal.task == "causal_lm" and causal.evidence["task"].method == "probe"
    assert bidir.task == "masked_lm" and bidir.evidence["causal_probe"].value == "leaks"


def test_encoder_when_output_is_not_vocab_sized():
    a = adapt(TinyLM(causal=False, head=8))
    assert a.task == "encoder" and a.output_size == 8
    assert a.loss(a.make_inputs(2, 4)).requires_grad


def test_declared_causal_with_leakage_stays_causal_and_keeps_the_probe():
    class LeakyGPT(TinyLM):
        pass

    a = adapt(LeakyGPT(causal=False))
    assert a.task == "causal_lm" and a.evidence["task"].method == "declared"
    assert a.evidence["causal_probe"].value == "leaks"


def test_structure_beats_probe():
    class MaskedBuffer(TinyLM):
        def __init__(self):
            super().__init__(causal=False)
            self.register_buffer("mask", torch.tril(torch.ones(16, 16)))

    a = adapt(MaskedBuffer())
    assert a.task == "causal_lm" and a.evidence["task"].method == "structure"
    assert "triangular mask buffer 'mask'" in a.evidence["task"].detail


def test_config_task_beats_declared_and_override_beats_config():
    class SomeGPT(TinyLM):
        pass

    model = SomeGPT(causal=False)
    assert adapt(model, {"task": "mlm"}).task == "masked_lm"
    a = adapt(model, {"task": "mlm"}, task="causal_lm")
    assert a.task == "causal_lm" and a.evidence["task"].method == "override"


@pytest.mark.parametrize(("config", "expected"), [
    ({"model_type": "llama"}, "causal_lm"),
    ({"is_decoder": True}, "causal_lm"),
    ({"model_type": "roberta"}, "masked_lm"),
    ({"architectures": ["BertForMaskedLM"]}, "masked_lm"),
])
def test_declared_intent_from_config(config, expected):
    a = adapt(TinyLM(causal=expected == "causal_lm"), config)
    assert a.task == expected and a.evidence["task"].method == "declared"


def test_unknown_task_name_is_refused():
    with pytest.raises(UserError, match=r"task 'pictures', which is not a task I know"):
        adapt(TinyLM(), {"task": "pictures"})


def test_task_that_contradicts_output_shape():
    with pytest.raises(UserError, match=r"does not fit task 'classification'"):
        adapt(TinyLM(), task="classification")


def test_vocab_is_the_embedding_rows_and_a_config_mismatch_is_reported():
    a = adapt(TinyLM(vocab=64), {"vocab_size": 50})
    assert a.vocab_size == 64 and a.evidence["vocab_size"].method == "probe"
    assert any("vocab_size=50" in w and "64 rows" in w for w in a.warnings)


def test_head_smaller_than_embedding_is_reported_and_inputs_stay_valid():
    a = adapt(TinyLM(vocab=40, head=30), task="causal_lm")
    assert any("30 outputs" in w for w in a.warnings)
    assert int(a.make_inputs(8, 16)["input_ids"].max()) < 30
    assert a.loss(a.make_inputs(4, 8)).isfinite()


def test_vocab_that_cannot_be_determined_says_so_and_accepts_an_override():
    class OneHot(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(25, 25)

        def forward(self, x):
            return self.proj(F.one_hot(x, 25).float())

    with pytest.raises(UserError, match="Could not determine the vocab size of OneHot") as info:
        adapt(OneHot())
    assert "--vocab-size" in info.value.fix
    a = adapt(OneHot(), vocab_size=25)
    assert a.vocab_size == 25 and a.evidence["vocab_size"].method == "override"
    assert a.max_seq_len is None and a.evidence["max_seq_len"].method == "default"


def test_max_len_from_position_table_then_config_then_override():
    assert adapt(TinyLM(max_len=12)).evidence["max_seq_len"].method == "probe"
    assert adapt(TinyLM(max_len=12), {"block_size": 10}).max_seq_len == 10
    assert adapt(TinyLM(max_len=12), {"block_size": 10}, max_seq_len=6).max_seq_len == 6


def test_probe_length_is_capped_by_a_short_max_len():
    a = adapt(TinyLM(max_len=4))  # a probe at length 8 would index past the position table
    assert a.max_seq_len == 4


# ---- classification and seq2seq ----------------------------------------------------------------
class Classifier(nn.Module):
    def __init__(self, vocab=20, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8, padding_idx=0)
        self.out = nn.Linear(8, classes)

    def forward(self, tokens, attention_mask=None):
        h = self.emb(tokens)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return self.out(h.mean(1))


def test_classifier():
    a = adapt(Classifier())
    assert (a.task, a.num_classes, a.pad_token_id) == ("classification", 3, 0)
    assert a.evidence["pad_token_id"].method == "structure"
    batch = a.make_inputs(4, 6)
    assert batch["labels"].shape == (4,) and int(batch["input_ids"].min()) > 0
    assert abs(a.loss(batch).item() - math.log(3)) < 0.5


class EncDec(nn.Module):
    def __init__(self, src_vocab=30, tgt_vocab=25, d=16):
        super().__init__()
        self.src = nn.Embedding(src_vocab, d)
        self.tgt = nn.Embedding(tgt_vocab, d)
        self.core = nn.Transformer(d, 2, 1, 1, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, tgt_vocab)

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.core(self.src(src), self.tgt(tgt), tgt_mask=mask,
                                   tgt_is_causal=True))


def test_seq2seq_two_vocabularies():
    a = adapt(EncDec())
    assert a.task == "seq2seq" and a.evidence["task"].method == "structure"
    assert (a.vocab_size, a.target_vocab_size, a.output_size) == (30, 25, 25)
    assert a.evidence["causal_probe"].value == "causal"
    batch = a.make_inputs(2, 5)
    assert int(batch["labels"].max()) < 25
    assert torch.equal(batch["decoder_input_ids"][:, 1:], batch["labels"][:, :-1])
    assert a.loss(batch).isfinite()


# ---- batches and reporting -----------------------------------------------------------------------
def test_masked_lm_batch_masks_positions():
    a = adapt(TinyLM(causal=False), {"mask_token_id": 3})
    batch = a.make_inputs(4, 16, seed=1)
    masked = batch["labels"] != -100
    assert masked.any(dim=1).all()
    assert (batch["input_ids"][masked] == 3).all()


def test_inputs_are_seeded():
    a = adapt(TinyLM())
    assert torch.equal(a.make_inputs(2, 8, seed=5)["input_ids"],
                       a.make_inputs(2, 8, seed=5)["input_ids"])
    assert not torch.equal(a.make_inputs(2, 8, seed=5)["input_ids"],
                           a.make_inputs(2, 8, seed=6)["input_ids"])


def test_causal_loss_is_shifted_and_ignores_padding():
    a = adapt(TinyLM())
    batch = a.make_inputs(1, 6)
    logits = a.logits(batch["input_ids"])
    expected = F.cross_entropy(logits[0, :-1], batch["input_ids"][0, 1:])
    assert torch.allclose(a.loss(batch), expected)
    batch["attention_mask"][0, 3:] = 0
    assert torch.allclose(a.loss(batch), F.cross_entropy(logits[0, :2], batch["input_ids"][0, 1:3]))


def test_probe_leaves_training_mode_as_it_was():
    model = TinyLM().train()
    adapt(model)
    assert model.training


def test_describe_is_the_json_contract():
    d = adapt(TinyLM()).describe()
    for key in ("class", "task", "vocab_size", "max_seq_len", "num_classes", "pad_token_id",
                "parameters", "evidence"):
        assert key in d
    assert set(d["evidence"]["task"]) == {"value", "method", "detail"}
    assert d["parameters"] == sum(p.numel() for p in TinyLM().parameters())


def test_not_a_module():
    with pytest.raises(UserError, match=r"needs a torch nn\.Module; it got str"):
        adapt("gpt2")


def test_embedding_read_through_functional_call_falls_back_to_structure():
    class Functional(TinyLM):
        def forward(self, input_ids):
            h = F.embedding(input_ids, self.tok.weight)
            return self.head(torch.tanh(self.mix(h.cumsum(1))))

    a = adapt(Functional(vocab=48))
    assert a.vocab_size == 48 and a.evidence["vocab_size"].method == "structure"
