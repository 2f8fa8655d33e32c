"""A GPT with ALiBi (attention with linear biases) instead of position embeddings.

Each head adds ``-slope * (i - j)`` to the score of query i on key j: nearer keys count more,
with no position table at all, so the model extrapolates to lengths it never saw.
"""

import torch
from torch import nn
from torch.nn import functional as F


def alibi_slopes(n_head):
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_head) for h in range(n_head)])


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def attend(self, x, bias):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2)
                   for z in self.qkv(x).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(y.transpose(1, 2).reshape(b, t, c))

    def forward(self, x, bias):
        x = x + self.attend(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))


class AlibiGPT(nn.Module):
    def __init__(self, vocab_size=256, dim=32, n_layer=2, n_head=4, max_seq_len=128):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head) for _ in range(n_layer))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)

    def forward(self, input_ids):
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        distance = (pos[:, None] - pos[None, :]).float()  # i - j
        bias = -self.slopes[:, None, None] * distance  # (heads, T, T)
        bias = bias.masked_fill(distance < 0, float("-inf"))  # causal
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, bias)
        return self.lm_head(self.norm(x))
