"""tokenizer_for / train_bpe: strategy choice, id bounds, round trips, specials, save/load."""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utils.errors import UserError
from utils.tokenization import AdaptiveTokenizer, tokenizer_for, train_bpe
from utils.training.text_sources import example_corpus

CORPUS = (example_corpus() / "macbeth.txt").read_text().split("\n\n")
SPECIAL_TEXT = st.sampled_from(["<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<|endoftext|>"])
TEXT = st.lists(st.one_of(st.text(max_size=40), SPECIAL_TEXT), max_size=6).map("".join)


@pytest.fixture(scope="module")
def byte_level():
    """One of each byte-level strategy (built once: hypothesis reuses them)."""
    return {"byte": tokenizer_for(300, CORPUS),
            "bpe": tokenizer_for(700, CORPUS, with_mask=True)}


@pytest.mark.parametrize(("size", "corpus", "strategy"), [
    (40, CORPUS, "char"), (100, None, "char"), (260, CORPUS, "byte"), (320, CORPUS, "byte"),
    (384, CORPUS, "bpe"), (50304, None, "byte")])
def test_strategy_choice_is_recorded(size, corpus, strategy):
    tok = tokenizer_for(size, corpus)
    assert tok.strategy == strategy and tok.reason
    assert tok.vocab_size <= size
    for role in ("pad", "bos", "eos", "unk"):
        assert 0 <= tok.ids[role] < tok.vocab_size


def test_large_vocab_falls_back_with_reasons_when_the_hub_is_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = tokenizer_for(50304, CORPUS[:50], min_fill=0)
    assert tok.strategy == "bpe"
    assert "openai-community/gpt2 unavailable" in tok.reason
    assert "meta-llama/Llama-2-7b-hf" not in tok.reason  # 32000 is not close to 50304
    gated = tokenizer_for(32000, None)
    assert "Llama-2-7b-hf (32,000 ids) passed over: gated" in gated.reason


def test_pretrained_strategy_from_a_local_tokenizer_json(tmp_path):
    donor = tokenizer_for(500, CORPUS)  # stands in for a downloaded pretrained tokenizer
    donor.tokenizer.save(str(tmp_path / "tokenizer.json"))  # bare tokenizer.json, no config
    tok = tokenizer_for(520, pretrained=tmp_path)
    assert tok.strategy == "pretrained" and "500 ids in 520 rows" in tok.reason
    assert tok.encode("Fair is foul") == donor.encode("Fair is foul")
    masked = tokenizer_for(520, pretrained=tmp_path / "tokenizer.json", with_mask=True)
    assert masked.mask_id == 500  # added in a spare row
    with pytest.raises(UserError, match=r"No pretrained tokenizer fits(.|\n)*more than the "
                       "model's 400 rows"):
        tokenizer_for(400, pretrained=tmp_path, strategy="pretrained")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_byte_level_round_trip_and_id_bound(byte_level, text):
    for tok in byte_level.values():
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text  # "<pad>" in the text is text, not padding
        assert not set(ids) & set(tok.ids.values())  # text never yields a special id


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=sorted(set("".join(CORPUS)))[:30], max_size=60),
       size=st.integers(12, 200))
def test_char_level_ids_fit_and_round_trip(text, size):
    tok = tokenizer_for(size, [text + "".join(sorted(set("".join(CORPUS))))], strategy="char")
    ids = tok.encode(text)
    assert all(0 <= i < size for i in ids) and tok.vocab_size <= size
    if all(tok.tokenizer.token_to_id(ch) is not None for ch in text):
        assert tok.decode(ids) == text


def test_specials_follow_the_model_ids_and_save_load(tmp_path):
    tok = tokenizer_for(600, CORPUS, with_mask=True, pad_id=0, mask_id=3)
    assert (tok.pad_id, tok.mask_id) == (0, 3)
    assert tok.encode("x", add_bos=True, add_eos=True)[::2] == [tok.bos_id, tok.eos_id]
    tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    back = AdaptiveTokenizer.load(tmp_path / "tok")
    assert back.ids == tok.ids and back.strategy == "bpe" and back.reason == tok.reason
    text = "Macbeth <mask> doth murder sleep"
    assert back.encode(text) == tok.encode(text) and back.decode(back.encode(text)) == text


def test_train_bpe_streams_and_reports():
    consumed = []

    def stream():
        for doc in CORPUS:
            consumed.append(1)
            yield doc

    result = train_bpe(stream(), vocab_size=1000)
    assert result.reached == 1000 == result.tokenizer.get_vocab_size()
    assert result.documents == len(CORPUS) == len(consumed) and result.seconds > 0
    assert "BPE trained to 1,000 of 1,000" in result.describe()


def test_trainer_size_is_a_maximum():
    result = train_bpe(["tiny corpus, tiny corpus"], vocab_size=5000)
    assert 260 <= result.reached < 5000


# ---- bad input ---------------------------------------------------------------------------
def test_a_corpus_too_small_for_the_bpe_size_gives_a_smaller_tokenizer_and_says_so():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said in the reason (train() prints it), not warned
        tok = tokenizer_for(5000, ["tiny corpus, tiny corpus"] * 3)
    assert tok.strategy == "bpe" and 260 <= tok.vocab_size < 5000
    assert f"{5000 - tok.vocab_size:,} of the model's 5,000 rows stay unused" in tok.reason
    assert max(tok.encode("tiny corpus, tiny corpus")) < 5000


def test_bpe_without_a_corpus_is_an_error():
    with pytest.raises(UserError, match="BPE training needs a corpus"):
        tokenizer_for(5000, None, strategy="bpe")


def test_tokenizer_larger_than_the_embedding():
    tok = tokenizer_for(700, CORPUS)
    with pytest.raises(UserError, match="ids up to 699, but the model's token embedding has "
                       "only 512 rows"):
        tok.check_fits(512)
    with pytest.raises(UserError, match="byte strategy needs 260 ids"):
        tokenizer_for(200, strategy="byte")
    with pytest.raises(UserError, match="BPE training needs a corpus"):
        tokenizer_for(1000, strategy="bpe")
    with pytest.raises(UserError, match="leaves no room for text"):
        tokenizer_for(4)
