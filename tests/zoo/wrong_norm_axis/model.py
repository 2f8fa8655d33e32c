"""A decoder whose hand-written LayerNorm normalises over dim 0 — the batch — instead of the
features. It runs at every shape and trains, but each sample's output depends on the others."""

import torch
from torch import nn


class MyLayerNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):  # x: (B, T, C)
        mean = x.mean(dim=0, keepdim=True)  # the bug: dim=-1 was meant
        var = x.var(dim=0, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class DecoderBlock(nn.Module):
    def __init__(self, d_model, n_heads, max_len):
        super().__init__()
        self.norm1, self.norm2 = MyLayerNorm(d_model), MyLayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(),
                                 nn.Linear(2 * d_model, d_model))
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), 1))

    def forward(self, x):
        T = x.shape[1]
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, attn_mask=self.causal[:T, :T], need_weights=False)
        x = x + a
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    def __init__(self, vocab_size=256, max_len=40, d_model=32, n_heads=2, n_layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(1, max_len, d_model))
        self.layers = nn.ModuleList(DecoderBlock(d_model, n_heads, max_len) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))
