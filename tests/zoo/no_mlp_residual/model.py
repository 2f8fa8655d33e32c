"""A pre-norm GPT whose feed-forward sublayer replaces the residual stream instead of adding to it.

The slip is one character pair — ``x = self.ff(...)`` where ``x = x + self.ff(...)`` was meant.
It trains, keeps every invariance and still memorises a small batch; the residual stream is
simply gone after each block, so every layer has to rebuild what the token was.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


class SelfAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (f(x).view(b, t, self.heads, -1).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = F.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, c))


class FeedForward(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Layer(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.norm_attn, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn, self.ff = SelfAttention(width, heads), FeedForward(width)

    def forward(self, x):
        x = x + self.attn(self.norm_attn(x))
        x = self.ff(self.norm_ff(x))  # the bug: x = x + self.ff(self.norm_ff(x))
        return x


class TinyLM(nn.Module):
    def __init__(self, vocab_size=200, context=48, width=32, heads=4, depth=3):
        super().__init__()
        self.context = context
        self.tokens, self.positions = nn.Embedding(vocab_size, width), nn.Embedding(context, width)
        self.layers = nn.ModuleList(Layer(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.tokens(tokens) + self.positions(torch.arange(t, device=tokens.device))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))
