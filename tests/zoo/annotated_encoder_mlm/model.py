"""A bidirectional encoder written after "The Annotated Transformer" (clones, SublayerConnection,
a hand-written attention taking a padding mask), with a token-prediction head for masked-LM
pre-training. Healthy: every position may see every token. Nothing in it says causal — no
triangular mask, no generate(), no next-token loss — so the probe decides.
"""

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F


def clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def attention(query, key, value, mask=None, dropout=None):
    d_k = query.size(-1)
    scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(d_k)  # (B, h, T, T)
    if mask is not None:
        scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
    p_attn = scores.softmax(dim=-1)
    if dropout is not None:
        p_attn = dropout(p_attn)
    return torch.matmul(p_attn, value)


class MultiHeadedAttention(nn.Module):
    def __init__(self, h, d_model, dropout=0.1):
        super().__init__()
        self.d_k, self.h = d_model // h, h
        self.linears = clones(nn.Linear(d_model, d_model), 4)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, query, key, value, mask=None):
        nbatches = query.size(0)
        query, key, value = [lin(x).view(nbatches, -1, self.h, self.d_k).transpose(1, 2)
                             for lin, x in zip(self.linears, (query, key, value))]
        x = attention(query, key, value, mask=mask, dropout=self.dropout)
        x = x.transpose(1, 2).contiguous().view(nbatches, -1, self.h * self.d_k)
        return self.linears[-1](x)


class SublayerConnection(nn.Module):
    def __init__(self, size, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, sublayer):
        return x + self.dropout(sublayer(self.norm(x)))


class EncoderLayer(nn.Module):
    def __init__(self, size, self_attn, feed_forward, dropout):
        super().__init__()
        self.self_attn, self.feed_forward = self_attn, feed_forward
        self.sublayer = clones(SublayerConnection(size, dropout), 2)

    def forward(self, x, mask):
        x = self.sublayer[0](x, lambda x: self.self_attn(x, x, x, mask))
        return self.sublayer[1](x, self.feed_forward)


class TextEncoder(nn.Module):
    def __init__(self, vocab, d_model=64, d_ff=128, h=4, N=2, dropout=0.1, max_len=128):
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(1, max_len, d_model) * 0.02)
        ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout),
                           nn.Linear(d_ff, d_model))
        layer = EncoderLayer(d_model, MultiHeadedAttention(h, d_model, dropout), ff, dropout)
        self.layers = clones(layer, N)
        self.norm = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, vocab)

    def forward(self, src, attention_mask=None):
        x = self.embed(src) * math.sqrt(self.d_model) + self.pos[:, : src.size(1)]
        mask = None if attention_mask is None else attention_mask[:, None, None, :]  # (B,1,1,T)
        for layer in self.layers:
            x = layer(x, mask)
        return F.log_softmax(self.proj(self.norm(x)), dim=-1)
