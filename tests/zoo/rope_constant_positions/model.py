"""A Llama-style decoder with rotary embeddings whose default position ids are all zero.

``position_ids`` is optional, as in Hugging Face code, and its default was meant to be
``torch.arange``; with zeros every query and key is rotated by the same angle, which cancels in
``q · k`` — the model has no positions at all, though the rotary code runs on every call and the
shift invariance RoPE promises holds trivially.
"""

import torch
from torch import nn
from torch.nn import functional as F


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim, base=10000.0):
        super().__init__()
        self.register_buffer("inv_freq", base ** -(torch.arange(0, head_dim, 2).float() / head_dim),
                             persistent=False)

    def forward(self, position_ids):
        angles = position_ids[..., None].float() * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, head_dim)
        return angles.cos(), angles.sin()


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class DecoderLayer(nn.Module):
    def __init__(self, hidden_size, num_heads, intermediate_size):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.gate_up = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.input_norm, self.post_norm = RMSNorm(hidden_size), RMSNorm(hidden_size)

    def forward(self, x, cos, sin):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.num_heads, -1).transpose(1, 2)
                   for z in self.qkv(self.input_norm(x)).chunk(3, dim=-1))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(y.transpose(1, 2).reshape(b, t, c))
        gate, up = self.gate_up(self.post_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class TinyLlama(nn.Module):
    def __init__(self, vocab_size=300, hidden_size=32, num_heads=4, num_layers=2,
                 intermediate_size=64, max_position_embeddings=64):
        super().__init__()
        self.max_position_embeddings = max_position_embeddings
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.rotary = RotaryEmbedding(hidden_size // num_heads)
        self.layers = nn.ModuleList(DecoderLayer(hidden_size, num_heads, intermediate_size)
                                    for _ in range(num_layers))
        self.norm = RMSNorm(hidden_size)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids, position_ids=None):
        if position_ids is None:
            position_ids = torch.zeros_like(input_ids)  # the bug: torch.arange(T).expand(B, T)
        cos, sin = self.rotary(position_ids)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))
