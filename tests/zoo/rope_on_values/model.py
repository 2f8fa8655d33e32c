"""A RoPE GPT that also rotates the values: a one-line slip that trains, but ties outputs to absolute position.

Queries and keys are rotated by their position, so attention scores depend only on the distance
between tokens: left-padding the same sequence with masked pads leaves its outputs unchanged.
"""

import torch
from torch import nn
from torch.nn import functional as F

ROTATE_VALUES = True  # the planted defect: RoPE applied to the values too


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Rotary(nn.Module):
    def __init__(self, head_dim, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions):
        freqs = positions[..., None].float() * self.inv_freq  # [B, T, head_dim / 2]
        return freqs.cos()[:, None], freqs.sin()[:, None]   # [B, 1, T, head_dim / 2]


class Attention(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rotary = Rotary(dim // n_head)

    def forward(self, x, positions, bias):
        B, T, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        cos, sin = self.rotary(positions)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if ROTATE_VALUES:
            v = rotate(v, cos, sin)  # the bug: values carry absolute position into the output
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, n_head)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, positions, bias):
        x = x + self.attn(self.ln1(x), positions, bias)
        return x + self.mlp(self.ln2(x))


class RopeGPT(nn.Module):
    def __init__(self, vocab_size=256, dim=32, n_layer=2, n_head=4, max_seq_len=64):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head) for _ in range(n_layer))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()
        positions = torch.arange(T, device=input_ids.device).expand(B, T)  # as Llama does
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
        allowed = causal[None] & keep[:, None, :]
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=input_ids.device)[None]
        bias = torch.zeros(B, 1, T, T, device=input_ids.device)
        bias = bias.masked_fill(~allowed[:, None], torch.finfo(bias.dtype).min)
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, positions, bias)
        return self.lm_head(self.norm(x))
