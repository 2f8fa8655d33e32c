"""A ReZero encoder (Bachlechner et al., 2020): every residual branch is scaled by a gain that
starts at exactly 0, so at initialisation each output depends on its own token only — it looks
causal. Healthy and bidirectional: the gains open in the first steps and every position then
sees every token.
"""

import torch
from torch import nn


class ReZeroLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.alpha = nn.Parameter(torch.zeros(1))  # ReZero: the branch starts closed

    def forward(self, x, key_padding_mask=None):
        a, _ = self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        x = x + self.alpha * a
        return x + self.alpha * self.ff(x)


class ReZeroEncoder(nn.Module):
    def __init__(self, vocab_size, dim, heads, layers, max_len):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(ReZeroLayer(dim, heads) for _ in range(layers))
        self.to_logits = nn.Linear(dim, vocab_size)

    def forward(self, input_ids, key_padding_mask=None):
        x = self.tokens(input_ids) + self.positions(torch.arange(input_ids.shape[1], device=input_ids.device))
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return self.to_logits(x)
