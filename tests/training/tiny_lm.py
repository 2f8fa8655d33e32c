"""A tiny causal LM with dropout, written to a model folder by the training tests."""

MODEL_PY = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, n_head, dropout):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_head, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                 nn.Dropout(dropout))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab_size=300, d_model=32, n_layer=2, n_head=2, max_seq_len=32,
                 dropout=0.1, nan_at_call=-1):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied
        self.nan_at_call = nan_at_call  # planted fault: NaN outputs from this training call on
        self.calls = 0

    def forward(self, input_ids):
        t = input_ids.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf"), device=input_ids.device), 1)
        x = self.drop(self.tok(input_ids) + self.pos(torch.arange(t, device=input_ids.device)))
        for block in self.blocks:
            x = block(x, mask)
        out = self.head(self.ln(x))
        if self.training:
            self.calls += 1
            if 0 <= self.nan_at_call <= self.calls < self.nan_at_call + 3:
                out = out * float("nan")
        return out
'''

CONFIG = {"model_name": "TinyLM", "task": "causal_lm", "vocab_size": 300, "max_seq_len": 32,
          "d_model": 32, "n_layer": 2, "n_head": 2, "dropout": 0.1}


def corpus(n_docs: int = 60, seed: int = 0) -> list[str]:
    """Documents of pseudo-words with structure a model can learn (repeating patterns)."""
    import random

    rng = random.Random(seed)
    words = ["the", "king", "queen", "sword", "crown", "hath", "thou", "art", "my", "lord",
             "good", "night", "sweet", "prince", "fair", "lady"]
    docs = []
    for _ in range(n_docs):
        start = rng.randrange(len(words))
        docs.append(" ".join(words[(start + i * 3) % len(words)] for i in range(30)))
    return docs


def write_tiny_lm(folder, config: dict | None = None):
    """A model folder (model.py + config.json) holding the tiny LM; returns the folder."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(MODEL_PY)
    (folder / "config.json").write_text(json.dumps(config or CONFIG))
    return folder
