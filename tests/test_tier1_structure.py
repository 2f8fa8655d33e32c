"""residual_paths, position_information and context_use on models built here, each with a
verdict known by construction: pre- and post-norm blocks, residuals missing around each
sublayer, blocks whose sublayers dwarf the stream; absolute, rotary, ALiBi and bias-table
positions, working and broken; attention to the diagonal only, causal encoders, decoders that
ignore the encoder; branches closed at initialisation by design."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils import adapt
from utils.checks import CheckOptions
from utils.test_functions import test_position_information, test_residual_paths
from utils.tier1.residuals import block_stacks
from utils.tier1_critical_validation import run_tier1


def run(model, name, task=None, **options):
    adapter = adapt(model, task=task) if task else model
    return run_tier1(adapter, checks=[name], options=CheckOptions(**options),
                     progress=False).results[0]


# ---- residual_paths ----------------------------------------------------------------------
class Attn(nn.Module):
    def __init__(self, d, causal=True):
        super().__init__()
        self.qkv, self.proj, self.causal = nn.Linear(d, 3 * d), nn.Linear(d, d), causal

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, 2, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        if self.causal == "diag":  # each position sees itself only
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.eye(t, dtype=torch.bool))
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """``wiring`` says where the residuals are."""

    def __init__(self, d, wiring, causal=True):
        super().__init__()
        self.wiring = wiring
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attn(d, causal)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        w = self.wiring
        if w == "pre":
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        if w == "post":  # the original Transformer's order
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.mlp(x))
        if w == "no_mlp":
            x = x + self.attn(self.ln1(x))
            return self.mlp(self.ln2(x))
        if w == "no_attn":
            x = self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        if w == "none":
            return self.mlp(self.ln2(self.attn(self.ln1(x))))
        raise ValueError(w)


class GPT(nn.Module):
    def __init__(self, wiring="pre", vocab=64, d=32, layers=3, max_len=32, positions="table",
                 init_std=None, mask=True):
        super().__init__()
        self.max_seq_len, self.positions = max_len, positions
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, wiring, causal=mask) for _ in range(layers))
        self.head = nn.Linear(d, vocab)
        if init_std:
            for m in self.blocks.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=init_std)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        where = {"table": torch.arange(t), "zeros": torch.zeros(t, dtype=torch.long)}
        x = self.tok(input_ids)
        if self.positions != "none":
            x = x + self.pos(where[self.positions])
        for block in self.blocks:
            x = block(x)
        return self.head(F.layer_norm(x, x.shape[-1:]))


@pytest.mark.parametrize("wiring", ["pre", "post"])
def test_residual_blocks_pass(wiring):
    result = run(GPT(wiring), "residual_paths", task="causal_lm")
    assert result.status == "pass", result.summary
    assert result.metrics["blocks"] == 3 and result.metrics["min_mean_cosine"] > 0.5


@pytest.mark.parametrize(("wiring", "carrier", "line"), [
    ("no_mlp", "mlp", "return self.mlp(self.ln2(x))"),
    ("no_attn", "attn", "x = self.attn(self.ln1(x))"),
    ("none", "attn", "self.attn("),  # several branches call it: one of them is named
])
def test_a_missing_residual_fails_naming_the_sublayer_and_line(wiring, carrier, line):
    result = run(GPT(wiring), "residual_paths", task="causal_lm")
    assert result.status == "fail"
    assert "3 of 3 blocks ('blocks.0', 'blocks.1', 'blocks.2', Block)" in result.summary
    assert f"everything goes through '{carrier}'" in result.summary
    assert line in result.summary and "test_tier1_structure.py, line" in result.summary
    assert f"x = x + self.{carrier}(…)" in result.summary
    assert all(abs(r["mean_cosine"]) < 0.2 for r in result.rows)


def test_sublayers_that_dwarf_the_stream_are_not_taken_for_a_missing_residual():
    model = GPT("pre", init_std=1.0)  # the sublayers' outputs are ~100× the embeddings
    result = run(model, "residual_paths", task="causal_lm")
    assert result.status == "pass", result.summary
    assert "dwarf the stream" in result.summary and "the residual is there" in result.summary
    assert min(r["mean_cosine"] for r in result.rows) < 0.2  # the cosine alone would fail it


def test_the_threshold_can_be_raised_and_the_block_inputs_are_untouched():
    model = GPT("pre")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run(model, "residual_paths", task="causal_lm",
                 thresholds={"residual_paths.min_cosine": 1.01})
    assert result.threshold == {"min_mean_cosine": 1.01}
    assert result.status == "pass"  # nothing freezes when a sublayer is zeroed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_stacks_are_found_in_lists_and_in_sequential_runs_outermost_only():
    class Heads(nn.Module):  # a block holding a ModuleList of heads: not a stack of its own
        def __init__(self, d):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.heads = nn.ModuleList(nn.Sequential(nn.Linear(d, d)) for _ in range(2))

        def forward(self, x):
            return x + sum(h(self.norm(x)) for h in self.heads)

    seq = nn.Sequential(nn.Embedding(10, 8), Heads(8), Heads(8), nn.Linear(8, 10))
    stacks = block_stacks(seq)
    assert [(name, [n for n, _ in run]) for name, run in stacks] == [("", ["1", "2"])]
    # a stack of plain MLP layers (a position-bias network, say) has no norm: not blocks
    mlp = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.SiLU()) for _ in range(3))
    assert block_stacks(nn.ModuleDict({"bias_mlp": mlp})) == []
    assert [n for n, _ in block_stacks(GPT())[0][1]] == ["blocks.0", "blocks.1", "blocks.2"]


def test_a_model_without_a_stack_of_blocks_is_skipped():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(32, 16), nn.Linear(16, 32)

        def forward(self, input_ids):
            return self.head(self.emb(input_ids))

    result = run(Flat(), "residual_paths", task="causal_lm")
    assert result.status == "skip" and "No stack of blocks" in result.summary


def test_nn_transformer_layers_are_replayed_with_their_masks():
    class Encoder(nn.Module):
        def __init__(self, norm_first):
            super().__init__()
            self.emb, self.pos = nn.Embedding(50, 16), nn.Embedding(24, 16)
            layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                               norm_first=norm_first)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)
            self.max_seq_len = 24

        def forward(self, input_ids, attention_mask=None):
            pad = None if attention_mask is None else attention_mask == 0
            h = self.enc(self.emb(input_ids) + self.pos(torch.arange(input_ids.shape[1])),
                         src_key_padding_mask=pad)
            return self.head(h.mean(1))

    for norm_first in (False, True):
        result = run(Encoder(norm_first), "residual_paths", task="classification")
        assert result.status == "pass" and result.metrics["blocks"] == 2, result.summary


# ---- position_information ----------------------------------------------------------------
def test_causal_positions_that_reach_the_output_pass():
    result = run(GPT(positions="table"), "position_information", task="causal_lm")
    assert result.status == "pass", result.summary
    assert result.metrics["family"] == "absolute" and result.metrics["spread_over_positions"] > 0.1


def test_a_position_table_fed_zeros_fails():
    result = run(GPT(positions="zeros"), "position_information", task="causal_lm")
    assert result.status == "fail"
    assert "position table 'pos'" in result.summary
    assert "every position gives the same output" in result.summary
    assert "torch.arange(T)" in result.summary
    assert result.metrics["spread_over_positions"] < 1e-5


def test_a_causal_model_without_positions_warns_nope():
    class NoPE(GPT):
        def __init__(self):
            super().__init__(positions="none")
            del self.pos

    result = run(NoPE(), "position_information", task="causal_lm")
    assert result.status == "warn" and "NoPE" in result.summary
    assert result.metrics["family"] == "none found"


class InlineAngles(nn.Module):
    """Positions built in forward from sines and cosines, with no table or frequency tensor to
    find: ``kind`` 'rotary' rotates q and k, 'sinusoid' adds the encoding to the embeddings;
    ``fed`` 'zeros' gives every token position 0 (the slip), 'arange' the real positions."""

    def __init__(self, kind, fed="arange", vocab=64, d=32, max_len=32):
        super().__init__()
        self.max_seq_len, self.kind, self.fed, self.d = max_len, kind, fed, d
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

    @staticmethod
    def angles(pos, dim):
        return pos[:, None].float() * 10000 ** -(torch.arange(0, dim, 2).float() / dim)

    def spin(self, x, pos):
        a = self.angles(pos, x.shape[-1])
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * a.cos() - x2 * a.sin(), x1 * a.sin() + x2 * a.cos()],
                           -1).flatten(-2)

    def forward(self, input_ids):
        b, t = input_ids.shape
        pos = torch.arange(t) if self.fed == "arange" else torch.zeros(t, dtype=torch.long)
        x = self.emb(input_ids)
        if self.kind == "sinusoid":
            a = self.angles(pos, self.d)
            x = x + torch.stack([torch.sin(a), torch.cos(a)], -1).flatten(-2)
        q, k, v = (z.view(b, t, 2, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        if self.kind == "rotary":
            q, k = self.spin(q, pos), self.spin(k, pos)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.out(y.transpose(1, 2).reshape(b, t, -1)))


@pytest.mark.parametrize(("kind", "fed", "status", "said"), [
    ("rotary", "arange", "pass", "the sines and cosines the model computes in forward"),
    ("rotary", "zeros", "fail", "that position encoding never reaches the output"),
    ("sinusoid", "arange", "pass", "the outputs differ from position to position"),
    ("sinusoid", "zeros", "fail", "that position encoding never reaches the output")])
def test_positions_computed_in_forward_are_tested_by_scaling_their_angles(kind, fed, status,
                                                                          said):
    result = run(InlineAngles(kind, fed), "position_information", task="causal_lm")
    assert result.status == status and said in result.summary, result.summary
    assert result.metrics["family"] == "none found"
    if status == "fail":
        assert "test_tier1_structure.py, line" in result.summary  # where the angles are made


class Encoder(nn.Module):
    """A bidirectional encoder; ``positions`` 'table', 'batch' (the tutorial's slip: one vector
    per sample) or 'none'; ``pool`` makes it a classifier."""

    def __init__(self, positions="table", pool=False, vocab=80, d=32, max_len=32, mask=False):
        super().__init__()
        self.max_seq_len, self.positions, self.pool = max_len, positions, pool
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, "pre", causal=mask) for _ in range(2))
        self.head = nn.Linear(d, 3 if pool else vocab)

    def forward(self, input_ids):
        b, t = input_ids.shape
        x = self.tok(input_ids)
        if self.positions == "table":
            x = x + self.pos(torch.arange(t))
        elif self.positions == "batch":
            x = x + self.pos(torch.arange(b))[:, None]
        for block in self.blocks:
            x = block(x)
        pooled = {"mean": lambda h: h.mean(1), "first": lambda h: h[:, 0],
                  "last": lambda h: h[:, -1]}
        return self.head(pooled[self.pool](x) if self.pool else x)


@pytest.mark.parametrize(("task", "pool"), [("masked_lm", False), ("classification", "mean")])
def test_a_bidirectional_model_that_sees_word_order_passes(task, pool):
    result = run(Encoder("table", pool), "position_information", task=task)
    assert result.status == "pass" and "sees word order" in result.summary, result.summary


@pytest.mark.parametrize("positions", ["none", "batch"])
@pytest.mark.parametrize(("task", "pool", "said"), [
    ("masked_lm", False, "only reverses the outputs"),
    ("classification", "mean", "leaves the prediction unchanged")])
def test_an_order_blind_encoder_fails(positions, task, pool, said):
    result = run(Encoder(positions, pool), "position_information", task=task)
    assert result.status == "fail"
    assert said in result.summary and "order-blind" in result.summary
    assert result.metrics["max_rel_change"] <= 1e-5


class RotaryGPT(nn.Module):
    """RoPE with an ``inv_freq`` buffer (``cached``: only precomputed cos/sin tables), fed
    ``positions``."""

    def __init__(self, positions="arange", cached=False, vocab=64, d=32, max_len=32):
        super().__init__()
        self.max_seq_len, self.positions, self.cached = max_len, positions, cached
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        inv_freq = 10000 ** -(torch.arange(0, 16, 2).float() / 16)
        if cached:
            angles = torch.arange(max_len)[:, None].float() * inv_freq
            self.register_buffer("cos_cached", torch.cat([angles, angles], -1).cos())
            self.register_buffer("sin_cached", torch.cat([angles, angles], -1).sin())
        else:
            self.register_buffer("inv_freq", inv_freq)

    def rotate(self, x, pos):
        if self.cached:
            cos, sin = self.cos_cached[pos], self.sin_cached[pos]
        else:
            angles = pos[:, None].float() * self.inv_freq
            cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, input_ids):
        b, t = input_ids.shape
        pos = torch.arange(t) if self.positions == "arange" else torch.zeros(t, dtype=torch.long)
        x = self.emb(input_ids)
        q, k, v = (z.view(b, t, 2, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        y = F.scaled_dot_product_attention(self.rotate(q, pos), self.rotate(k, pos), v,
                                           is_causal=True)
        return self.head(x + self.out(y.transpose(1, 2).reshape(b, t, -1)))


def test_rotary_positions_that_reach_the_output_pass_and_the_buffer_is_restored():
    model = RotaryGPT("arange")
    before = model.inv_freq.clone()
    result = run(model, "position_information", task="causal_lm")
    assert result.status == "pass" and result.metrics["family"] == "rotary", result.summary
    assert result.metrics["perturbed"] == ["inv_freq"]
    assert torch.equal(model.inv_freq, before)


def test_rotary_fed_one_position_for_all_fails():
    result = run(RotaryGPT("zeros"), "position_information", task="causal_lm")
    assert result.status == "fail" and "Perturbing 'inv_freq' leaves the outputs unchanged" in \
        result.summary and "as if at one position" in result.summary


@pytest.mark.parametrize("positions, status", [("arange", "pass"), ("zeros", "fail")])
def test_precomputed_rotary_tables_are_pinned_to_one_position(positions, status):
    result = run(RotaryGPT(positions, cached=True), "position_information", task="causal_lm")
    assert result.status == status and "Pinning every position of the rotary tables " \
        "'cos_cached', 'sin_cached'" in result.summary, result.summary


class Rotary(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.register_buffer("inv_freq", 10000 ** -(torch.arange(0, dim, 2).float() / dim))

    def forward(self, pos):
        angles = pos[:, None].float() * self.inv_freq
        return torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()


class RotaryModule(RotaryGPT):
    """RoPE from a submodule: ``slip`` 'zeros' feeds it one position, 'unapplied' computes the
    tables and forgets to rotate q and k."""

    def __init__(self, slip=None):
        super().__init__()
        del self.inv_freq
        self.rotary, self.slip = Rotary(16), slip

    def forward(self, input_ids):
        b, t = input_ids.shape
        cos, sin = self.rotary(torch.zeros(t, dtype=torch.long) if self.slip == "zeros"
                               else torch.arange(t))
        x = self.emb(input_ids)
        q, k, v = (z.view(b, t, 2, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        if self.slip != "unapplied":
            q, k = (z * cos + torch.cat([-z.chunk(2, -1)[1], z.chunk(2, -1)[0]], -1) * sin
                    for z in (q, k))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(x + self.out(y.transpose(1, 2).reshape(b, t, -1)))


@pytest.mark.parametrize(("slip", "status", "said"), [
    (None, "pass", "changes the outputs"),
    ("zeros", "fail", "'rotary' returns the same rotation (or bias) at every one of the 11 "
                      "positions"),
    ("unapplied", "fail", "the tables are never applied to the queries and keys")])
def test_a_rotary_module_is_diagnosed_from_what_it_returns(slip, status, said):
    result = run(RotaryModule(slip), "position_information", task="causal_lm")
    assert result.status == status and said in result.summary, result.summary


def test_library_code_that_computes_tables_it_does_not_use_is_not_failed():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.FalconConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, alibi=True)
    result = run(transformers.FalconForCausalLM(cfg), "position_information")
    assert result.status == "skip" and "does not use it" in result.summary, result.summary


class MaskedRotaryLM(nn.Module):
    """Two RoPE layers taking an attention_mask; ``fill`` is the masked score (-inf turns a
    left pad's query row into NaN, which the second layer spreads); ``rotate`` 'hidden' rotates
    the hidden states before the projections instead of q and k (absolute positions leak)."""

    def __init__(self, fill=float("-inf"), rotate="qk", vocab=64, d=32, max_len=32):
        super().__init__()
        self.max_seq_len, self.fill, self.where = max_len, fill, rotate
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(2))
        self.out = nn.ModuleList(nn.Linear(d, d) for _ in range(2))
        self.register_buffer("inv_freq", 10000 ** -(torch.arange(0, d, 2).float() / d))

    def rotate(self, x, pos):
        angles = pos[:, None].float() * self.inv_freq[: x.shape[-1] // 2]
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        pos = torch.arange(t)
        keep = torch.ones(t, t, dtype=torch.bool).tril()
        if attention_mask is not None:
            keep = keep & attention_mask[:, None, None, :].bool()
        x = self.emb(input_ids)
        for qkv, out in zip(self.qkv, self.out, strict=True):
            h = self.rotate(x, pos) if self.where == "hidden" else x
            q, k, v = (z.view(b, t, 2, -1).transpose(1, 2) for z in qkv(h).chunk(3, -1))
            if self.where == "qk":
                q, k = self.rotate(q, pos), self.rotate(k, pos)
            scores = (q @ k.transpose(-1, -2) / 4).masked_fill(~keep, self.fill)
            x = x + out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1))
        return self.head(x)


@pytest.mark.parametrize(("fill", "rotate", "status", "said"), [
    (-1e4, "qk", "pass", "give the same outputs at the real positions (max relative"),
    (float("-inf"), "qk", "warn", "give the same outputs at the real positions (the NaN of "
                                  "the pad rows set to 0"),
    (-1e4, "hidden", "fail", "the rotary encoding depends on absolute position"),
    (float("-inf"), "hidden", "fail", "the rotary encoding depends on absolute position")])
def test_a_shift_is_judged_even_when_minus_inf_masking_gives_nan_pad_rows(fill, rotate, status,
                                                                           said):
    model = MaskedRotaryLM(fill, rotate)
    result = run(model, "position_shift", task="causal_lm")
    assert result.status == status and said in result.summary, result.summary
    nan_pads = fill == float("-inf")
    assert result.metrics["nan_from_pad_rows"] is nan_pads
    assert ("Left padding gives NaN" in result.summary or "left padding gives NaN" in
            result.summary) is nan_pads
    # the hooks are gone: the model again gives NaN under left padding
    ids = torch.randint(1, 64, (1, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        assert bool(torch.isfinite(model(ids, mask)).all()) is not nan_pads


def rope_tables(t, dim):
    angles = torch.arange(t)[:, None].float() * 10000 ** -(torch.arange(0, dim, 2).float() / dim)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class FunctionalRopeLM(MaskedRotaryLM):
    """RoPE written as plain functions (no module, buffer or parameter says 'rotary'):
    ``rotate`` 'qk' is right, 'hidden' rotates the hidden states instead of q and k."""

    def __init__(self, rotate):
        super().__init__(fill=-1e4, rotate=rotate)
        del self.inv_freq

    def rotate(self, x, pos):
        return apply_rope(x, *rope_tables(len(pos), x.shape[-1]))


@pytest.mark.parametrize(("rotate", "status"), [("qk", "pass"), ("hidden", "fail")])
def test_rope_written_as_functions_is_found_from_what_forward_calls(rotate, status):
    result = run(FunctionalRopeLM(rotate), "position_shift", task="causal_lm")
    assert result.metrics["family"] == "rotary", result.summary
    assert "function 'rope_tables' of test_tier1_structure.py, called in forward" in \
        result.summary
    assert result.status == status, result.summary


class Alibi(nn.Module):
    def __init__(self, broken=False, vocab=64, d=32, heads=4, max_len=32):
        super().__init__()
        self.max_seq_len, self.broken, self.heads = max_len, broken, heads
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.register_buffer("slopes", torch.tensor([2.0 ** (-2 * (h + 1)) for h in range(heads)]))

    def forward(self, input_ids):
        b, t = input_ids.shape
        i = torch.arange(t)
        distance = (i[:, None] - i[None, :]).float()
        used = distance.clamp(max=0) if self.broken else distance  # the bug: 0 on every key seen
        bias = (-self.slopes[:, None, None] * used).masked_fill(distance < 0, -math.inf)
        x = self.emb(input_ids)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.head(x + self.out(y.transpose(1, 2).reshape(b, t, -1)))


@pytest.mark.parametrize(("broken", "status"), [(False, "pass"), (True, "fail")])
def test_alibi_slopes_are_perturbed(broken, status):
    result = run(Alibi(broken), "position_information", task="causal_lm")
    assert result.status == status and result.metrics["family"] == "ALiBi", result.summary
    assert result.metrics["perturbed"] == ["slopes"]
    if broken:  # said in ALiBi's terms, not RoPE's
        assert "every key of a query gets the same bias" in result.summary
        assert "rotat" not in result.summary, result.summary


def test_the_facades_run_the_checks():
    assert test_residual_paths(adapt(GPT("no_mlp"), task="causal_lm")).status == "fail"
    assert test_position_information(adapt(GPT(positions="zeros"), task="causal_lm"),
                                     seed=1).status == "fail"


# ---- context_use -------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "task"), [
    (lambda: GPT(), "causal_lm"), (lambda: Encoder(), "masked_lm"),
    (lambda: Encoder(pool="first"), "classification"),
    (lambda: Encoder(pool="last"), "classification")])
def test_models_that_read_their_context_pass(model, task):
    result = run(model(), "context_use", task=task)
    assert result.status == "pass" and result.metrics["min_rel_change"] > 1e-3, result.summary


def test_attention_to_the_diagonal_only_fails():
    result = run(GPT(mask="diag"), "context_use", task="causal_lm")
    assert result.status == "fail" and "every position sees only itself" in result.summary
    assert "Changing the first 8 tokens (outputs at positions 8–15)" in result.summary


def test_a_causal_mask_in_a_masked_lm_fails():
    result = run(Encoder(mask=True), "context_use", task="masked_lm")
    assert result.status == "fail" and "the encoder applies a causal mask" in result.summary
    assert result.rows[0]["max_rel_change"] > 1e-3  # it does read its left context


@pytest.mark.parametrize(("pool", "said"), [
    ("first", "reads the first position only"), ("last", "reads the last position only")])
def test_a_classifier_reading_one_position_that_sees_only_itself_fails(pool, said):
    result = run(Encoder(pool=pool, mask="diag"), "context_use", task="classification")
    assert result.status == "fail" and said in result.summary, result.summary


class TinySeq2Seq(nn.Module):
    def __init__(self, reads_source=True, vocab=60, d=32):
        super().__init__()
        self.max_seq_len, self.reads_source = 24, reads_source
        self.src, self.tgt, self.pos = nn.Embedding(vocab, d), nn.Embedding(vocab, d), \
            nn.Embedding(24, d)
        self.model = nn.Transformer(d, 2, 1, 1, 64, 0.0, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, decoder_input_ids):
        src = self.src(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        tgt = self.tgt(decoder_input_ids) + self.pos(torch.arange(decoder_input_ids.shape[1]))
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        memory = self.model.encoder(src) if self.reads_source else torch.zeros_like(src)
        return self.head(self.model.decoder(tgt, memory, tgt_mask=mask, tgt_is_causal=True))


@pytest.mark.parametrize(("reads", "status"), [(True, "pass"), (False, "fail")])
def test_a_decoder_must_read_the_encoder(reads, status):
    result = run(TinySeq2Seq(reads), "context_use", task="seq2seq")
    assert result.status == status, result.summary
    if not reads:
        assert "the decoder never reads the encoder" in result.summary
        order = run(TinySeq2Seq(reads), "position_information", task="seq2seq")
        assert order.status == "skip" and "context_use reports why" in order.summary


# ---- zero-initialised branches (modded-nanogpt's projections, LayerScale/ReZero) -----------
def zero_init(model):
    for block in model.blocks:
        nn.init.zeros_(block.attn.proj.weight)
        nn.init.zeros_(block.mlp[2].weight)
    return model


def test_zero_initialised_projections_are_not_taken_for_a_cut_context_or_graph():
    adapter = adapt(zero_init(GPT()), task="causal_lm")
    report = run_tier1(adapter, checks=["context_use", "gradient_flow", "residual_paths"],
                       progress=False)
    context, grads, residual = report.results
    assert context.status == "pass" and "after the first optimizer steps" in context.summary, \
        context.summary
    assert context.metrics["dead_after_first_steps"] == 0
    assert grads.status == "pass" and "only after the first steps" in grads.summary, grads.summary
    assert grads.metrics["closed_at_init"] > 0 and grads.metrics["no_gradient"] == 0
    assert residual.status == "pass"
    assert not any(b.attn.proj.weight.any() for b in adapter.model.blocks)  # zeros again
    init = run_tier1(adapter, checks=["parameter_initialization"], progress=False).results[0]
    assert init.status == "warn" and "deliberate for an output projection" in init.summary


def test_a_zero_head_in_series_with_zero_projections_opens_in_the_first_steps():
    model = zero_init(GPT())  # modded-nanogpt zero-initialises the head too
    nn.init.zeros_(model.head.weight)
    report = run_tier1(adapt(model, task="causal_lm"), checks=["context_use", "gradient_flow"],
                       progress=False)
    for result in report.results:  # one step opens the head; only then the projections
        assert result.status == "pass", result.summary


def test_zero_initialisation_does_not_excuse_a_real_cut():
    model = zero_init(GPT(mask="diag"))
    assert run(model, "context_use", task="causal_lm").status == "fail"

    class Detached(GPT):
        def forward(self, input_ids):
            x = self.tok(input_ids).detach() + self.pos(torch.arange(input_ids.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.head(F.layer_norm(x, x.shape[-1:]))

    result = run(zero_init(Detached()), "gradient_flow", task="causal_lm")
    assert result.status == "fail" and "tok.weight" in result.summary
    assert "blocks.0.attn.qkv.weight" not in result.summary  # closed at init only


class LayerScaleBlock(nn.Module):
    """x + gamma * f(x) with the effective gamma 0 at init: ReZero's 0, or a unit-offset scale
    stored as -1 (x-transformers' LayerScale), which no all-zeros test would see."""

    def __init__(self, d, offset=False):
        super().__init__()
        self.norm, self.attn, self.offset = nn.LayerNorm(d), Attn(d), offset
        self.gamma = nn.Parameter(torch.full((d,), -1.0 if offset else 0.0))

    def forward(self, x):
        return x + (self.gamma + float(self.offset)) * self.attn(self.norm(x))


@pytest.mark.parametrize("offset", [False, True])
def test_layer_scales_at_zero_pass(offset):
    model = GPT()
    model.blocks = nn.ModuleList(LayerScaleBlock(32, offset) for _ in range(2))
    report = run_tier1(adapt(model, task="causal_lm"),
                       checks=["context_use", "gradient_flow", "residual_paths"], progress=False)
    assert [r.status for r in report.results] == ["pass", "pass", "pass"], report.to_text()
