"""The soft cap applied after the causal mask (see softcap_after_mask), in a model whose code
says nothing recognisably causal: the mask is filled in by a loop, there is no loss and no
generate(). The probe alone decides; it sees the last token reach the earlier outputs
~50x less than the first reaches the later ones, which is a causal mask that leaks rather than a
bidirectional model: task masked_lm, and causal_masking warns of a suspected leak with the
override to run (--task causal_lm).
"""

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, n_heads, softcap):
        super().__init__()
        self.n_heads, self.softcap = n_heads, softcap
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, c // self.n_heads).permute(
            2, 0, 3, 1, 4)  # 3 × (B, nh, T, hd)
        scores = q @ k.transpose(-2, -1) / (c // self.n_heads) ** 0.5
        blocked = torch.zeros(t, t, dtype=torch.bool, device=x.device)
        for i in range(t):
            blocked[i, i + 1:] = True  # query i must not see the keys after it
        scores = scores.masked_fill(blocked, float("-inf"))
        scores = self.softcap * torch.tanh(scores / self.softcap)  # the bug: after the mask
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim, n_heads, softcap):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = Attention(dim, n_heads, softcap)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Model(nn.Module):
    def __init__(self, vocab_size, dim, n_layers, n_heads, max_seq_len, attn_softcap=8.0):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads, attn_softcap) for _ in range(n_layers))
        self.norm = nn.RMSNorm(dim)
        self.out = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, input_ids):
        x = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1],
                                                        device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))
