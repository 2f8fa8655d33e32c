"""TextDataModule: corpus -> batches for every zoo model, caching, resume, bad input."""

from __future__ import annotations

import pytest

pytest.importorskip("datasets")
pytest.importorskip("lightning")

import torch
from conftest import ZOO, zoo_cases, zoo_expected

from utils import adapt, load_model
from utils.errors import UserError
from utils.tokenization import TextDataModule, tokenizer_for, tokenizer_for_model
from utils.training.dataset_utilities import load_text_dataset
from utils.training.text_sources import example_corpus

LOADABLE = [n for n in zoo_cases() if zoo_expected(n)["exit_code"] != 2]
MACBETH = example_corpus() / "macbeth.txt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # Module-scoped, so it runs before the per-test TESTBENCH_HOME: its Arrow files get a home
    # of their own, shared by this module's tests only.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TESTBENCH_HOME", str(tmp_path_factory.mktemp("corpus-home")))
        return load_text_dataset(MACBETH, validation_fraction=0.1, document="paragraph")


def _data_for(task, corpus, classes: int | None = None):
    texts = list(corpus.train["text"])[:300]
    if task == "classification":  # as many labels as the model has classes
        return load_text_dataset([{"text": t, "label": len(t) % (classes or 5)} for t in texts],
                                 task="classification")
    if task == "seq2seq":
        return load_text_dataset([{"source": t, "target": t.upper()} for t in texts],
                                 task="seq2seq")
    return corpus


@pytest.mark.parametrize("name", LOADABLE)
def test_zoo_round_trip_ids_fit_and_loss_is_finite(name, corpus, tmp_path):
    adapter = adapt(load_model(ZOO / name, say=lambda m: None))
    data = _data_for(adapter.task, corpus, adapter.num_classes)
    tok = tokenizer_for_model(adapter, data)
    dm = TextDataModule(data, tok, adapter, batch_size=4, num_workers=0, cache_dir=tmp_path)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for i, batch in enumerate(loader):
            assert int(batch["input_ids"].max()) < adapter.id_limit
            assert int(batch["input_ids"].min()) >= 0
            assert batch["attention_mask"].shape == batch["input_ids"].shape
            assert batch["input_ids"].shape[1] <= adapter.max_seq_len
            if i == 2:
                break
    if zoo_expected(name)["exit_code"] == 0:  # the defective ones fail on long inputs by design
        with torch.no_grad():
            assert torch.isfinite(adapter.loss(batch))


def test_causal_lm_packing_keeps_every_token(corpus, tmp_path):
    adapter = adapt(load_model(ZOO / "flat_gpt", say=lambda m: None))
    tok = tokenizer_for(adapter.id_limit, corpus)
    dm = TextDataModule(corpus, tok, adapter, seq_len=32, batch_size=8, num_workers=0,
                        cache_dir=tmp_path)
    dm.setup()
    rows = dm.rows["train"]
    expected = sum(len(tok.encode(t)) + 1 for t in corpus.train["text"])  # + eos separators
    assert sum(rows["length"]) == expected
    batch = next(iter(dm.train_dataloader()))
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    real = batch["attention_mask"] == 1
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])


def test_masked_lm_masks_about_15_percent_with_the_model_mask_id(corpus, tmp_path):
    adapter = adapt(load_model(ZOO / "masked_lm_encoder", say=lambda m: None))
    tok = tokenizer_for_model(adapter, corpus)
    assert tok.mask_id == adapter.mask_token_id == 3
    dm = TextDataModule(corpus, tok, adapter, batch_size=16, num_workers=0, cache_dir=tmp_path)
    batch = next(iter(dm.train_dataloader()))
    chosen = batch["labels"] != -100
    share = chosen.sum() / batch["attention_mask"].sum()
    assert 0.10 < share < 0.20
    assert (batch["input_ids"][chosen] == 3).float().mean() > 0.7


def test_second_run_loads_the_cache_without_tokenizing(corpus, tmp_path, monkeypatch):
    adapter = adapt(load_model(ZOO / "nanogpt_dataclass", say=lambda m: None))
    tok = tokenizer_for(adapter.id_limit, corpus)
    first = TextDataModule(corpus, tok, adapter, num_workers=0, cache_dir=tmp_path)
    first.setup()
    assert first.cache_hits == {"train": False, "validation": False}
    calls = []
    monkeypatch.setattr(tok, "encode_batch", lambda *a, **k: calls.append(1) or [])
    second = TextDataModule(corpus, tok, adapter, num_workers=0, cache_dir=tmp_path)
    second.setup()
    assert second.cache_hits == {"train": True, "validation": True} and not calls
    assert second.rows["train"][:3] == first.rows["train"][:3]
    in_memory = load_text_dataset(list(corpus.train["text"])[:50])
    TextDataModule(in_memory, tok, adapter, num_workers=0, cache_dir=tmp_path).setup()
    assert len(calls) > 0  # a different dataset does tokenize


def test_resume_mid_epoch_gives_the_same_batches(corpus, tmp_path):
    adapter = adapt(load_model(ZOO / "masked_lm_encoder", say=lambda m: None))
    tok = tokenizer_for_model(adapter, corpus)

    def module():
        return TextDataModule(corpus, tok, adapter, batch_size=8, seed=7, num_workers=0,
                              cache_dir=tmp_path)

    straight_dm = module()
    loader = straight_dm.train_dataloader()
    loader.sampler.set_epoch(1)
    straight = list(loader)
    assert len(straight) > 6

    first = module()
    loader = first.train_dataloader()
    loader.sampler.set_epoch(1)
    head = []
    for batch in loader:
        head.append(batch)
        if len(head) == 5:
            break
    state = first.state_dict()
    assert state["train_sampler"]["position"] == 5 and state["train_sampler"]["epoch"] == 1

    resumed = module()
    resumed.load_state_dict(state)
    tail = list(resumed.train_dataloader())
    together = head + tail
    assert len(together) == len(straight)
    for a, b in zip(together, straight, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)  # same rows, same masking
    other_epoch = module().train_dataloader()
    other_epoch.sampler.set_epoch(2)
    assert not torch.equal(next(iter(other_epoch))["input_ids"], straight[0]["input_ids"])


# ---- bad input ---------------------------------------------------------------------------
def test_sequence_length_above_the_model_max(corpus):
    adapter = adapt(load_model(ZOO / "flat_gpt", say=lambda m: None))
    tok = tokenizer_for(adapter.id_limit, corpus)
    with pytest.raises(UserError, match="seq_len=128 is above the model's max_seq_len=64"):
        TextDataModule(corpus, tok, adapter, seq_len=128)


def test_tokenizer_larger_than_the_model_is_refused_before_training(corpus):
    adapter = adapt(load_model(ZOO / "flat_gpt", say=lambda m: None))
    big = tokenizer_for(1000, corpus)
    with pytest.raises(UserError, match="ids up to 999, but the model's token embedding has "
                       "only 512 rows"):
        TextDataModule(corpus, big, adapter)


def test_task_mismatches(corpus):
    clf = adapt(load_model(ZOO / "encoder_classifier", say=lambda m: None))
    tok = tokenizer_for(clf.id_limit)
    with pytest.raises(UserError, match="no label column"):
        TextDataModule(corpus, tok, clf)
    many = load_text_dataset([{"text": f"t{i}", "label": i} for i in range(20)],
                             task="classification")
    with pytest.raises(UserError, match="dataset has 20 classes, the model 5"):
        TextDataModule(many, tok, clf)
    mlm = adapt(load_model(ZOO / "masked_lm_encoder", say=lambda m: None))
    mlm.mask_token_id = None
    with pytest.raises(UserError, match="needs a mask token"):
        TextDataModule(corpus, tokenizer_for(mlm.id_limit, corpus), mlm)


def test_masked_lm_random_replacements_are_never_special_tokens():
    from utils.tokenization.batching import BatchBuilder
    from utils.tokenization.sampler import BatchKey

    # ids 0-4 are specials (3 = mask); 5 is the only word: every replacement must be a word
    build = BatchBuilder(task="masked_lm", pad_id=0, mask_id=3, random_limit=6,
                         special_ids=(0, 1, 2, 3, 4), mlm_probability=0.5)
    rows = {"input_ids": [[5] * 64] * 8, "length": [64] * 8}
    batch = build(rows, BatchKey(epoch=0, position=0, indices=list(range(8))))
    chosen = batch["labels"] != -100
    assert chosen.sum() > 100
    assert set(batch["input_ids"][chosen].unique().tolist()) == {3, 5}
