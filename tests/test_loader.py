"""Loading models from local folders: class choice, config mapping, imports, weights, errors."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from utils import load_model
from utils.errors import UserError

HEADER = "import torch\nfrom torch import nn\n"

GPT = HEADER + '''
class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ff = nn.Linear(d, d)

    def forward(self, x):
        return x + self.ff(x)


class GPT(nn.Module):
    def __init__(self, vocab_size, d_model=16, block_size=32):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(block_size, d_model)
        self.block = Block(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1])
        return self.head(self.block(self.emb(idx) + self.pos(pos)))
'''


def say_nothing(_msg):
    pass


def load(folder, **kw):
    return load_model(folder, say=say_nothing, **kw)


# ---- choosing the class ------------------------------------------------------------------
def test_root_class_is_chosen_over_helpers(write_model):
    loaded = load(write_model(GPT, {"vocab_size": 50}))
    assert loaded.model_class.__name__ == "GPT"
    assert loaded.model.emb.num_embeddings == 50


def test_helper_reached_through_a_function_is_not_a_candidate(write_model):
    code = HEADER + '''
class Block(nn.Module):
    def forward(self, x):
        return x

def make_blocks(n):
    return nn.ModuleList(Block() for _ in range(n))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.blocks = make_blocks(2)

    def forward(self, x):
        return self.emb(x)
'''
    assert load(write_model(code)).model_class.__name__ == "Net"


def test_base_class_is_not_a_candidate(write_model):
    code = HEADER + '''
class Base(nn.Module):
    def describe(self):
        return type(self).__name__

class Net(Base):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)

    def forward(self, x):
        return self.emb(x)
'''
    assert load(write_model(code)).model_class.__name__ == "Net"


TWO = HEADER + '''
class EncoderModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)

    def forward(self, x):
        return self.emb(x)

class DecoderModel(EncoderModel):
    pass

class Other(nn.Module):
    def forward(self, x):
        return x
'''


def test_two_candidates_are_listed(write_model):
    with pytest.raises(UserError, match=r"candidate model classes: DecoderModel, Other") as info:
        load(write_model(TWO))
    assert "model_name" in info.value.fix


def test_model_name_in_config_and_model_class_argument_choose(write_model):
    folder = write_model(TWO, {"model_name": "Other"})
    assert load(folder).model_class.__name__ == "Other"
    assert load(folder, model_class="DecoderModel").model_class.__name__ == "DecoderModel"


def test_unknown_requested_class(write_model):
    with pytest.raises(UserError, match=r"names the model class 'Nope'.*") as info:
        load(write_model(TWO, {"model_name": "Nope"}))
    assert "EncoderModel, DecoderModel, Other" in info.value.why


def test_no_module_class(write_model):
    with pytest.raises(UserError, match=r"defines no nn\.Module subclass"):
        load(write_model("def f(x):\n    return x\n\nclass Plain:\n    pass\n"))


# ---- parsing ------------------------------------------------------------------------------
def test_syntax_error_reports_file_line_and_text(write_model):
    code = GPT.replace("def forward(self, idx):", "def forward(self, idx)")
    line = code.splitlines().index("    def forward(self, idx)") + 1
    with pytest.raises(UserError, match=rf"model\.py has a syntax error at line {line}") as info:
        load(write_model(code))
    assert "def forward(self, idx)" in info.value.message
    assert info.value.location.line == line


def test_python_3_11s_spurious_ast_error_is_parsed_again(monkeypatch):
    """CPython 3.11.0–3.11.7 (gh-106905): an ast.parse racing another thread's can raise
    "AST constructor recursion depth mismatch"; it hit this suite's CI once, from inside
    inspect.getsource, while a test server's thread printed a traceback."""
    import ast

    from utils.adapters import detection
    from utils.adapters.model_source import class_source, parse_python

    real, calls = ast.parse, []

    def racy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=138, after=34)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ast, "parse", racy)
    assert isinstance(parse_python("x = 1"), ast.Module) and len(calls) == 2
    del calls[:]
    assert "class Scan:" in class_source(detection.Scan) and len(calls) == 2

    def broken(*args, **kwargs):
        raise SystemError("some other interpreter error")

    monkeypatch.setattr(ast, "parse", broken)
    with pytest.raises(SystemError, match="some other"):  # anything else is not swallowed
        parse_python("x = 1")


def test_non_utf8_model(write_model):
    folder = write_model("", files={"model.py": b"# caf\xe9\nimport torch\n"})
    with pytest.raises(UserError, match=r"model\.py is not UTF-8 text \(byte 0xe9 at line 1\)"):
        load(folder)


def test_bad_json_config_names_line_and_column(write_model):
    folder = write_model(GPT, files={"config.json": '{\n  "vocab_size": 50,\n}\n'})
    with pytest.raises(UserError, match=r"config\.json is not valid JSON: .* at line 3, column 1"):
        load(folder)


def test_config_must_be_an_object(write_model):
    with pytest.raises(UserError, match="holds a JSON list, not an object"):
        load(write_model(GPT, files={"config.json": "[1, 2]"}))


def test_no_model_py_but_one_python_file_is_used(tmp_path):
    (tmp_path / "gpt.py").write_text(GPT)
    (tmp_path / "config.json").write_text('{"vocab_size": 12}')
    assert load(tmp_path).source["model_file"] == "gpt.py"


def test_no_model_py_among_several(tmp_path):
    (tmp_path / "a.py").write_text(GPT)
    (tmp_path / "b.py").write_text(GPT)
    with pytest.raises(UserError, match=r"has no model\.py and several \.py files \(a\.py, b\.py\)"):
        load(tmp_path)


def test_missing_config_builds_with_defaults_and_says_so(write_model):
    code = GPT.replace("def __init__(self, vocab_size,", "def __init__(self, vocab_size=20,")
    notes = []
    loaded = load_model(write_model(code), say=notes.append)
    assert loaded.model.emb.num_embeddings == 20
    assert any("No config.json" in n for n in notes)


@pytest.mark.parametrize(("name", "text", "pattern"), [
    ("notes.txt", "d_model 64", r"notes\.txt is a text file, not Python model code"),
    ("small.json", "{}", r"small\.json is a JSON file, not Python model code"),
    ("demo.ipynb", "{}", r"demo\.ipynb is a notebook, not Python model code"),
])
def test_a_source_that_is_not_python_names_the_folder_to_pass(write_model, name, text, pattern):
    folder = write_model(GPT, {"vocab_size": 30}, files={name: text})
    with pytest.raises(UserError, match=pattern) as info:
        load(folder / name)
    assert "a folder holding model.py and config.json" in info.value.why
    assert f"Pass the folder instead: {folder} (it holds model.py and config.json)" in \
        info.value.fix


def test_a_non_python_file_without_a_model_beside_it_says_what_a_source_may_be(tmp_path):
    (tmp_path / "weights.txt").write_text("1 2 3")
    with pytest.raises(UserError, match=r"weights\.txt is a text file") as info:
        load(tmp_path / "weights.txt")
    assert "a gist id" in info.value.why and "Save the model's code as model.py" in info.value.fix


def test_a_folders_config_json_stands_for_the_folder(write_model):
    folder = write_model(GPT, {"vocab_size": 30})
    notes = []
    loaded = load_model(folder / "config.json", say=notes.append)
    assert loaded.source["kind"] == "folder" and loaded.model.emb.num_embeddings == 30
    assert any(f"loading the folder {folder}" in n for n in notes)


def test_a_source_spec_naming_a_non_python_file_is_refused_not_crashed(write_model):
    from utils.adapters.sources import SourceSpec

    folder = write_model(GPT, {"vocab_size": 30}, files={"model.txt": GPT})
    spec = SourceSpec("file", "model.txt", path=folder / "model.txt")
    with pytest.raises(UserError, match=r"model\.txt is not a Python file"):
        load(spec)


# ---- config mapping -------------------------------------------------------------------------
def test_unknown_keys_are_not_passed_and_listed(write_model):
    loaded = load(write_model(GPT, {"vocab_size": 30, "learning_rate": 3e-4, "author": "me"}))
    assert loaded.build.passed == {"vocab_size": 30}
    assert loaded.build.unused == ["author", "learning_rate"]
    assert any("learning_rate" in w and "not passed" in w for w in loaded.warnings)


@pytest.mark.parametrize(("config", "pattern"), [
    ({"vocab_size": 30, "d_modle": 8}, r"'d_modle' → 'd_model'"),  # a swap
    ({"vocab_size": 30, "D_Model": 8}, r"'D_Model' → 'd_model'"),  # case and separators
    ({"vocab_size": 30, "blok_size": 8}, r"'blok_size' → 'block_size'"),  # a dropped letter
    ({"vocab_size": 30, "hiden_size": 8}, r"'hiden_size' → 'hidden_size' \(taken as 'd_model'\)"),
])
def test_a_misspelt_key_is_an_error_naming_both(write_model, config, pattern):
    with pytest.raises(UserError, match=pattern) as info:
        load(write_model(GPT, config))
    assert "GPT.__init__ does not take" in info.value.message
    assert "(its default) instead of 8" in info.value.why
    assert "in config.json" in info.value.fix


def test_every_misspelt_key_is_named_at_once_and_a_missing_argument_after(write_model):
    with pytest.raises(UserError, match=r"'d_modle' → 'd_model'; 'vocab_sise' → 'vocab_size'") \
            as info:
        load(write_model(GPT, {"vocab_sise": 30, "d_modle": 8}))
    assert "vocab_size would be missing, which has no default" in info.value.why


def test_a_misspelt_dataclass_field_names_the_dataclass(write_model):
    code = HEADER + """from dataclasses import dataclass

@dataclass
class GPTConfig:
    vocab_size: int = 11
    n_layer: int = 12

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.emb = nn.Embedding(config.vocab_size, 4)

    def forward(self, idx):
        return self.emb(idx)
"""
    with pytest.raises(UserError, match=r"GPTConfig does not take .* 'n_layr' → 'n_layer'") as info:
        load(write_model(code, {"vocab_size": 11, "n_layr": 2}))
    assert "n_layer=12 (its default) instead of 2" in info.value.why


@pytest.mark.parametrize("extra", [
    {"author": "me", "learning_rate": 3e-4, "description": "a small GPT", "notes": "x"},
    {"top_p": 0.9, "d_k": 4, "d_mod": 8},  # short or two edits away: not a misspelling
    {"d_model": 8, "d_model_2": 16},  # digits differ: a second setting, not a typo
])
def test_unrelated_unused_keys_are_warnings_not_errors(write_model, extra):
    loaded = load(write_model(GPT, {"vocab_size": 30, **extra}))
    unused = [k for k in extra if k not in ("d_model", "model_type", "n_positions")]
    assert loaded.build.unused == sorted(unused)
    assert any("not passed" in w for w in loaded.warnings)


def test_a_key_near_a_parameter_the_config_already_sets_is_only_a_warning(write_model):
    loaded = load(write_model(GPT, {"vocab_size": 30, "d_model": 8, "d_modle": 8}))
    assert loaded.build.passed["d_model"] == 8 and loaded.build.unused == ["d_modle"]


def test_a_hugging_face_configs_own_keys_are_never_misspellings(write_model):
    code = GPT.replace("block_size=32):", "block_size=32, d_inner=64):")
    with pytest.raises(UserError, match=r"'n_inner' → 'd_inner'"):  # hand-written: a typo
        load(write_model(code, {"vocab_size": 30, "n_inner": 16}))
    loaded = load(write_model(code, {"vocab_size": 30, "n_inner": 16, "model_type": "gpt2"}))
    assert loaded.build.unused == ["n_inner"]  # GPT-2's config.json carries n_inner


@pytest.mark.parametrize(("key", "name", "near"), [
    ("d_modle", "d_model", True), ("n_embed", "n_embd", True), ("casual", "causal", True),
    ("NUM_LAYERS", "num_layers", True), ("dff", "d_ff", True),
    ("top_p", "top_k", False), ("d_v", "d_k", False), ("encoder_layers", "decoder_layers", False),
    ("min_seq_len", "max_seq_len", False), ("layer2", "layer1", False), ("author", "attn", False),
    ("learning_rate", "layer_norm_eps", False), ("description", "dropout", False),
])
def test_what_counts_as_a_misspelling(key, name, near):
    from utils.adapters.config_typos import near_miss

    assert near_miss(key, name) is near


def test_aliases_fill_constructor_arguments(write_model):
    loaded = load(write_model(GPT, {"vocab": 40, "max_seq_len": 24, "n_embd": 8}))
    assert loaded.build.passed == {"vocab_size": 40, "d_model": 8, "block_size": 24}
    assert loaded.build.from_alias == {"vocab_size": "vocab", "d_model": "n_embd",
                                       "block_size": "max_seq_len"}
    assert loaded.model.pos.num_embeddings == 24


def test_builder_graph_form(write_model):
    config = {"vocab_size": 33, "seq_length": 16,
              "nodes": [{"id": "emb", "type": "embedding", "params": {"d_model": 8}},
                        {"id": "blk", "type": "block", "params": {"d_model": 8, "heads": 2}}],
              "edges": [["emb", "blk"]]}
    loaded = load(write_model(GPT, config))
    assert loaded.build.passed == {"vocab_size": 33, "d_model": 8, "block_size": 16}


def test_zero_argument_constructor_gets_nothing_and_says_config_is_descriptive(write_model):
    code = GPT.replace("def __init__(self, vocab_size, d_model=16, block_size=32):",
                       "def __init__(self):\n        vocab_size, d_model, block_size = 21, 8, 8")
    loaded = load(write_model(code, {"vocab_size": 21, "d_model": 8}))
    assert loaded.build.style == "no-arguments" and loaded.build.passed == {}
    assert any("takes no arguments" in w for w in loaded.warnings)


def test_missing_required_argument_is_named(write_model):
    with pytest.raises(UserError, match=r"GPT needs 'vocab_size', which config\.json does not "
                       r"give") as info:
        load(write_model(GPT, {"d_model": 8}))
    assert "d_model" in info.value.why


def test_dataclass_config_object(write_model):
    code = HEADER + '''from dataclasses import dataclass

@dataclass
class GPTConfig:
    vocab_size: int = 11
    n_embd: int = 4
    bias: bool = True

class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)

    def forward(self, idx):
        return self.emb(idx)
'''
    loaded = load(write_model(code, {"vocab_size": 77, "n_embd": 6, "dropout": 0.0}))
    assert loaded.build.style == "dataclass:GPTConfig"
    assert type(loaded.model.config).__name__ == "GPTConfig"
    assert loaded.model.emb.weight.shape == (77, 6)
    assert loaded.build.unused == ["dropout"]


def test_plain_config_parameter_gets_attribute_access(write_model):
    code = HEADER + '''
class Net(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.emb = nn.Embedding(cfg.vocab_size, cfg["d_model"])

    def forward(self, x):
        return self.emb(x)
'''
    loaded = load(write_model(code, {"vocab_size": 19, "d_model": 3}))
    assert loaded.model.emb.weight.shape == (19, 3)


def test_constructor_error_points_at_the_users_line(write_model):
    code = GPT.replace("self.block = Block(d_model)",
                       "self.block = Block(d_model)\n        raise ValueError('bad size')")
    line = code.splitlines().index("        raise ValueError('bad size')") + 1
    with pytest.raises(UserError, match=r"Building GPT failed: ValueError: bad size") as info:
        load(write_model(code, {"vocab_size": 10}))
    assert info.value.location.line == line and info.value.location.file.endswith("model.py")


# ---- importing ------------------------------------------------------------------------------
def test_missing_package_is_named_with_pip(write_model):
    # a name no one installs: the test holds on any machine
    code = "import testbench_no_such_package\n" + GPT
    with pytest.raises(UserError, match=r"imports 'testbench_no_such_package', which is not "
                       r"installed") as info:
        load(write_model(code, {"vocab_size": 10}))
    assert "pip install testbench_no_such_package" in info.value.fix
    assert info.value.location.line == 1


def test_pip_name_differs_from_import_name(write_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # absent, even where it is installed
    with pytest.raises(UserError) as info:
        load(write_model("import sklearn.linear_model\n" + GPT, {"vocab_size": 10}))
    assert "pip install scikit-learn" in info.value.fix


def test_import_time_error_has_location(write_model):
    with pytest.raises(UserError, match=r"NameError: name 'undefined_thing'") as info:
        load(write_model(GPT + "\nSIZE = undefined_thing\n", {"vocab_size": 10}))
    assert info.value.location.text.strip() == "SIZE = undefined_thing"


LAYERS = HEADER + '''
WIDTH = {width}

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ff = nn.Linear(d, WIDTH)

    def forward(self, x):
        return self.ff(x)
'''
SIBLING_MODEL = HEADER + '''from {name} import Block

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.block = Block(4)

    def forward(self, x):
        return self.block(self.emb(x))
'''


def test_sibling_files_are_private_to_each_model(write_model):
    a = load(write_model(SIBLING_MODEL.format(name="layers"), name="a",
                         files={"layers.py": LAYERS.format(width=3)}))
    b = load(write_model(SIBLING_MODEL.format(name="layers"), name="b",
                         files={"layers.py": LAYERS.format(width=5)}))
    assert a.model.block.ff.out_features == 3 and b.model.block.ff.out_features == 5
    assert "layers" not in sys.modules
    assert a.module.__name__ != b.module.__name__


def test_a_sibling_named_utils_does_not_collide_with_this_package(write_model):
    import utils

    loaded = load(write_model(SIBLING_MODEL.format(name="utils"),
                              files={"utils.py": LAYERS.format(width=7)}))
    assert loaded.model.block.ff.out_features == 7
    assert sys.modules["utils"] is utils and hasattr(utils, "load_model")


def test_each_load_is_a_fresh_module_with_the_real_path(write_model):
    folder = write_model(GPT, {"vocab_size": 10})
    a, b = load(folder), load(folder)
    assert a.module is not b.module and a.model_class is not b.model_class
    assert a.module.__file__ == str(folder / "model.py")


def test_provenance_has_sha256_of_each_file(write_model):
    import hashlib

    folder = write_model(GPT, {"vocab_size": 10})
    source = load(folder).source
    assert source["kind"] == "folder" and source["model_class"] == "GPT"
    assert source["sha256"]["model.py"] == hashlib.sha256(GPT.encode()).hexdigest()
    assert set(source["sha256"]) == {"model.py", "config.json"}


# ---- weights --------------------------------------------------------------------------------
def test_weights_beside_the_code_are_loaded(write_model):
    folder = write_model(GPT, {"vocab_size": 10})
    trained = load(folder).model
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}},
               folder / "weights.pt")
    loaded = load(folder)
    assert torch.equal(loaded.model.head.weight, trained.head.weight)
    assert loaded.source["weights"]["file"] == "weights.pt"


def test_safetensors_weights(write_model):
    from safetensors.torch import save_file

    folder = write_model(GPT, {"vocab_size": 10})
    trained = load(folder).model
    save_file(trained.state_dict(), folder / "model.safetensors")
    assert torch.equal(load(folder).model.emb.weight, trained.emb.weight)


def test_mismatched_weights_list_missing_unexpected_and_shapes(write_model, tmp_path):
    folder = write_model(GPT, {"vocab_size": 10})
    state = load(folder).model.state_dict()
    state["emb.weight"] = torch.zeros(11, 16)
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"do not fit GPT") as info:
        load(folder, weights=path)
    message = info.value.message
    assert "missing from the file (1): head.bias" in message
    assert "in the file but not the model (1): extra.weight" in message
    assert "emb.weight: file (11, 16) vs model (10, 16)" in message


def test_unreadable_weights(write_model):
    folder = write_model(GPT, {"vocab_size": 10}, files={"weights.pt": b"not a checkpoint"})
    with pytest.raises(UserError, match=r"Could not read weights from weights\.pt"):
        load(folder)


def test_config_override_argument(write_model):
    folder = write_model(GPT, {"vocab_size": 10})
    loaded = load(folder, config={"vocab_size": 14})
    assert loaded.model.emb.num_embeddings == 14
    assert json.loads((folder / "config.json").read_text()) == {"vocab_size": 10}


def test_relative_imports_between_gist_files(write_model):
    code = SIBLING_MODEL.format(name=".layers")
    loaded = load(write_model(code, files={"layers.py": LAYERS.format(width=6)}))
    assert loaded.model.block.ff.out_features == 6


def test_a_single_model_py_does_not_pick_up_other_files_checkpoints(write_model):
    folder = write_model(GPT, {"vocab_size": 10}, files={"a.pt": b"x", "b.pt": b"y"})
    assert "weights" not in load(folder / "model.py").source
    with pytest.raises(UserError, match=r"several weights files: a\.pt, b\.pt"):
        load(folder)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_seed_fixes_the_initial_weights_and_leaves_the_callers_generators_alone(tmp_path):
    import random

    import numpy as np

    from utils.adapters.gist_loader import example_path

    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    first = _weights(load_model(example_path(), seed=3, say=lambda m: None).model)
    # what the caller draws next is what it would have drawn without load_model
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]
    again = _weights(load_model(example_path(), seed=3, say=lambda m: None).model)
    other = _weights(load_model(example_path(), seed=4, say=lambda m: None).model)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert load_model(example_path(), say=lambda m: None).source["seed"] == 0  # the default


def test_seed_none_builds_on_the_callers_generator(tmp_path):
    from utils.adapters.gist_loader import example_path

    torch.manual_seed(5)
    a = _weights(load_model(example_path(), seed=None, say=lambda m: None).model)
    torch.manual_seed(5)
    b = _weights(load_model(example_path(), seed=None, say=lambda m: None).model)
    c = _weights(load_model(example_path(), seed=None, say=lambda m: None).model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_loaded_weights_are_untouched_by_the_seed(tmp_path):
    from utils.adapters.gist_loader import example_path

    model = load_model(example_path(), seed=1, say=lambda m: None).model
    for p in model.parameters():
        p.data.fill_(0.25)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    for seed in (1, 2):
        rebuilt = load_model(example_path(), seed=seed, weights=path, say=lambda m: None).model
        assert all(torch.equal(p, torch.full_like(p, 0.25)) for p in rebuilt.parameters())
