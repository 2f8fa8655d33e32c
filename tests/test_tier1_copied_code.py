"""Verdicts on code as people copy it, beyond what the zoo's exit codes show: the lengths a
model refuses by design, the length memory is estimated at, zero expert biases, where samples
mix, block stacks in any container, a length kept in a config dataclass, and a zero gate whose
opening steps cancel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ZOO
from torch import nn

from utils import adapt, load_model
from utils.checks import CheckOptions
from utils.tier1.residuals import block_stacks
from utils.tier1_critical_validation import run_tier1


def quiet(_msg):
    pass


def results(adapter, *names, **options):
    report = run_tier1(adapter, checks=list(names), options=CheckOptions(**options),
                       progress=False)
    return {r.name: r for r in report.results}


def zoo(name):
    return adapt(load_model(ZOO / name, say=quiet))


def test_a_minimum_length_asserted_by_the_model_is_reported_not_failed():
    got = results(zoo("min_length_gpt"), "shape_robustness", "output_stability")
    shapes, stability = got["shape_robustness"], got["output_stability"]
    assert shapes.status == "pass", shapes.summary
    assert "length 2–128" in shapes.summary
    assert "Lengths below 2 are refused" in shapes.summary and "assert T > 1" in shapes.summary
    assert shapes.metrics["runnable_min_len"] == 2
    assert stability.status == "pass" and 1 not in stability.metrics["lengths_tested"]


def test_a_crash_at_length_one_is_not_taken_for_a_minimum():
    class Pairs(nn.Module):  # folds token pairs: odd lengths (1 among them) crash, a bug
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(64, 16), nn.Linear(32, 128)

        def forward(self, input_ids):
            b, t = input_ids.shape
            h = self.head(self.emb(input_ids).reshape(b, t // 2, 32))
            return h.reshape(b, t, 64)

    shapes = results(adapt(Pairs(), task="masked_lm", max_seq_len=16),
                     "shape_robustness")["shape_robustness"]
    assert shapes.status == "fail" and shapes.metrics["runnable_min_len"] == 1


def test_memory_is_estimated_at_the_trained_length_not_a_sinusoid_tables_rows():
    memory = results(zoo("tutorial_sinusoid_mlm"), "memory_footprint")["memory_footprint"]
    assert memory.rows[0]["seq_len"] == 256, memory.summary
    assert "'pos_encoder.pe'" in memory.summary and "capacity" in memory.summary


def test_a_config_length_is_still_the_memory_length():
    memory = results(zoo("flat_gpt"), "memory_footprint")["memory_footprint"]
    assert memory.rows[0]["seq_len"] == 64


def test_zero_expert_biases_are_not_an_all_zero_matrix():
    init = results(zoo("moe_gpt"), "parameter_initialization")["parameter_initialization"]
    assert init.status == "pass", init.summary
    kinds = {r["parameter"]: r["kind"] for r in init.rows}
    assert kinds["h.0.mlp.b1"] == "bias" and kinds["h.0.mlp.w1"] == "matrix"


class ModuleDictGPT(nn.Module):
    """Blocks keyed by name in a ModuleDict beside the embedding; a functional norm."""

    def __init__(self, residual=True):
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(64, 16),
            "h": nn.ModuleDict({f"layer{i}": MLPBlock(residual) for i in range(2)}),
        })
        self.head = nn.Linear(16, 64)

    def forward(self, input_ids):
        x = self.transformer.wte(input_ids)
        for block in self.transformer.h.values():
            x = block(x)
        return self.head(x)


class MLPBlock(nn.Module):
    def __init__(self, residual):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.attn, self.residual = nn.Linear(16, 16), residual

    def forward(self, x):
        x = x + self.attn(F.rms_norm(x, (x.size(-1),)))
        y = self.mlp(F.rms_norm(x, (x.size(-1),)))
        return x + y if self.residual else y


@pytest.mark.parametrize("residual, status", [(True, "pass"), (False, "fail")])
def test_block_stacks_are_found_in_a_module_dict(residual, status):
    model = ModuleDictGPT(residual)
    assert [n for n, _ in block_stacks(model)] == ["transformer.h"]
    adapter = adapt(model, task="masked_lm", max_seq_len=16)
    assert results(adapter, "residual_paths")["residual_paths"].status == status


def test_blocks_kept_as_attributes_are_a_stack():
    class TwoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.block1, self.block2 = nn.Embedding(8, 16), MLPBlock(1), MLPBlock(1)

    assert [len(run) for _, run in block_stacks(TwoBlocks())] == [2]


def test_a_length_in_a_config_dataclass_default_is_read(write_model):
    code = '''
from dataclasses import dataclass
import torch.nn as nn

@dataclass
class GPTConfig:
    vocab_size: int = 64
    sequence_len: int = 32
    n_embd: int = 16

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)
    def forward(self, idx):
        return self.head(self.wte(idx))
'''
    adapter = adapt(load_model(write_model(code, {"vocab_size": 64}), say=quiet))
    assert adapter.max_seq_len == 32, adapter.evidence["max_seq_len"]


@pytest.mark.parametrize("key", ["sequence_len", "context_length", "n_ctx", "seq_len",
                                 "max_len", "context_len"])
def test_length_aliases_are_the_max_length(write_model, key):
    code = '''
import torch.nn as nn
class M(nn.Module):
    def __init__(self, vocab_size, length):
        super().__init__()
        self.wte, self.head = nn.Embedding(vocab_size, 8), nn.Linear(8, vocab_size)
        self.pe = nn.Parameter(torch.zeros(1, 2 * length, 8))
    def forward(self, idx):
        return self.head(self.wte(idx) + self.pe[:, : idx.shape[1]])
'''.replace("import torch.nn", "import torch\nimport torch.nn")
    config = {"vocab_size": 64, "length": 24, key: 24}
    adapter = adapt(load_model(write_model(code, config), say=quiet))
    assert adapter.max_seq_len == 24, adapter.evidence["max_seq_len"]


def test_batch_independence_names_where_samples_mix():
    summary = results(zoo("wrong_norm_axis"), "batch_independence")["batch_independence"].summary
    assert "It enters at 'layers.0.norm1' (MyLayerNorm), forward at model.py, line" in summary


class Gated(nn.Module):
    """One zero gate on a branch, and a gradient for it whose sign flips from the first batch
    to the second: the two opening steps cancel and the gate is back at 0."""

    def __init__(self):
        super().__init__()
        self.emb, self.branch = nn.Embedding(16, 8), nn.Linear(8, 8)
        self.gate = nn.Parameter(torch.zeros(()))
        self.head = nn.Linear(8, 16)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, input_ids):
        x = self.emb(input_ids)
        if self.training:  # what the gate's gradient meets flips from one step to the next
            self.calls += 1
            x = x * (1 if int(self.calls) % 2 else -1)
        return self.head(x + self.gate * self.branch(x))


def test_a_zero_gate_whose_opening_steps_cancel_is_alive():
    from utils.tier1 import gradients
    from utils.tier1.training_steps import after_first_steps

    torch.manual_seed(4)  # weights whose two opening steps cancel (one seed in six here)
    adapter = adapt(Gated(), task="masked_lm", max_seq_len=8)
    touched: set[str] = set()
    with after_first_steps(adapter, CheckOptions(), touched=touched):
        assert float(adapter.model.gate.detach()) == 0.0  # closed again after the steps
    assert "branch.weight" in touched and "gate" in touched
    closed = gradients._closed_at_init(adapter, CheckOptions(), ["branch.weight", "branch.bias"])
    assert sorted(closed) == ["branch.bias", "branch.weight"]
