"""Hugging Face models built from small configs (no weights downloaded) adapt correctly."""

from __future__ import annotations

import pytest

from utils import adapt

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
