"""Hugging Face models built from small configs (no weights downloaded) adapt correctly."""

from __future__ import annotations

import json

import pytest

from utils import adapt, load_model
from utils.adapters.hf_config import merge_below
from utils.tier1_critical_validation import run_tier1

transformers = pytest.importorskip("transformers")

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64}


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(cfg)


def bert_mlm():
    cfg = transformers.BertConfig(vocab_size=320, max_position_embeddings=48, **SMALL)
    return transformers.BertForMaskedLM(cfg)


def bert_cls():
    cfg = transformers.BertConfig(vocab_size=320, max_position_embeddings=48, num_labels=4,
                                  **SMALL)
    return transformers.BertForSequenceClassification(cfg)


def llama():
    cfg = transformers.LlamaConfig(vocab_size=256, max_position_embeddings=80,
                                   num_key_value_heads=2, **SMALL)
    return transformers.LlamaForCausalLM(cfg)


def t5():
    cfg = transformers.T5Config(vocab_size=200, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                num_heads=4, decoder_start_token_id=0)
    return transformers.T5ForConditionalGeneration(cfg)


def gpt2_cls():  # model_type 'gpt2' says causal LM; the class name says classifier
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  num_labels=4, pad_token_id=0)
    return transformers.GPT2ForSequenceClassification(cfg)


def roberta():  # positions are numbered from pad_token_id + 1: 70 rows hold 68 positions
    cfg = transformers.RobertaConfig(vocab_size=300, max_position_embeddings=70, **SMALL)
    return transformers.RobertaForMaskedLM(cfg)


def bart():  # embed_positions(input_ids) reads the decoder ids' shape only
    cfg = transformers.BartConfig(vocab_size=300, d_model=32, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=4, decoder_attention_heads=4,
                                  encoder_ffn_dim=64, decoder_ffn_dim=64,
                                  max_position_embeddings=64)
    return transformers.BartForConditionalGeneration(cfg)


@pytest.mark.parametrize(("build", "task", "vocab", "max_len"), [
    (gpt2, "causal_lm", 300, 64),
    (gpt2_cls, "classification", 300, 64),
    (roberta, "masked_lm", 300, 68),
    (bart, "seq2seq", 300, 64),
    (bert_mlm, "masked_lm", 320, 48),
    (bert_cls, "classification", 320, 48),
    (llama, "causal_lm", 256, 80),
    (t5, "seq2seq", 200, None),
])
def test_hf_model(build, task, vocab, max_len):
    model = build()
    a = adapt(model)
    assert (a.task, a.vocab_size, a.max_seq_len) == (task, vocab, max_len)
    assert a.evidence["task"].method == "declared"
    batch = a.make_inputs(2, 8)
    loss = a.loss(batch)
    assert loss.isfinite()
    loss.backward()
    if task in ("causal_lm", "seq2seq"):
        assert a.evidence["causal_probe"].value == "causal"
    if task == "masked_lm":
        assert a.evidence["causal_probe"].value == "leaks"
    if task == "classification":
        assert a.num_classes == 4


def test_hf_attention_mask_is_passed_as_is():
    a = adapt(bert_mlm())
    assert a.spec.mask_param == "attention_mask" and a.spec.mask_style == "keep"


def test_a_position_table_fed_the_ids_is_not_taken_for_the_decoder_vocab():
    a = adapt(bart())
    assert a.target_vocab_size in (None, 300)
    assert "encoder.embed_positions" not in str(a.evidence["vocab_size"].detail)


def test_a_labels_parameter_is_not_fed_when_the_logits_are_full_and_the_loss_agrees():
    a = adapt(gpt2())
    assert not a.spec.feed_targets and a.spec.targets_param == "labels"
    assert a.evidence["model_loss"].value == "agrees"
    assert "Hugging Face's convention" in a.evidence["model_loss"].detail


# A user's model.py that only wraps a transformers head, as people write them.
THIN_ROBERTA = '''from transformers import RobertaConfig, RobertaForSequenceClassification


class SentimentModel(RobertaForSequenceClassification):
    def __init__(self, vocab_size=300, max_position_embeddings=40, num_labels=3):
        super().__init__(RobertaConfig(vocab_size=vocab_size, hidden_size=32,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, num_labels=num_labels,
                                       max_position_embeddings=max_position_embeddings))
'''


def thin_roberta(folder, **config):
    (folder / "model.py").write_text(THIN_ROBERTA)
    (folder / "config.json").write_text(json.dumps(
        {"vocab_size": 300, "max_position_embeddings": 40, "num_labels": 3, **config}))
    return load_model(folder, say=lambda _msg: None)


@pytest.mark.parametrize("declared", [{}, {"model_type": "roberta"}])
def test_a_thin_subclass_of_a_roberta_classifier_runs_at_its_own_max_length(declared, tmp_path):
    a = adapt(thin_roberta(tmp_path, **declared))
    # the base class's head beats model_type 'roberta' (a masked LM family)
    assert (a.task, a.vocab_size, a.num_classes) == ("classification", 300, 3)
    assert a.evidence["task"].detail == "base class 'RobertaForSequenceClassification'"
    # the model's own config supplies model_type and pad_token_id: 40 rows hold 38 positions
    assert a.max_seq_len == 38
    assert "roberta numbers positions from pad_token_id + 1" in a.evidence["max_seq_len"].detail
    result = run_tier1(a, checks=["shape_robustness"], progress=False)["shape_robustness"]
    assert result.status == "pass" and result.metrics["max_len_tested"] == 38, result.summary


def test_an_explicit_config_beats_the_models_own_alias_by_alias(tmp_path):
    a = adapt(thin_roberta(tmp_path, max_seq_len=20, pad_token_id=1))
    assert a.max_seq_len == 20 and a.evidence["max_seq_len"].detail == "config max_seq_len=20"
    own = {"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}
    merged = merge_below({"seq_len": 64}, own)
    assert merged == {"model_type": "roberta", "pad_token_id": 1, "seq_len": 64}
    assert merge_below({"pad_token_id": 0}, own)["pad_token_id"] == 0


def test_the_models_own_config_fills_what_an_explicit_one_leaves_out():
    a = adapt(roberta(), {"task": "masked_lm"})  # an explicit config without model_type
    assert a.max_seq_len == 68 and a.evidence["pad_token_id"].value == 1
