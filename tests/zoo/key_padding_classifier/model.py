"""A text classifier in PyTorch's convention: `src_key_padding_mask` True = padding, the
mean pooled over real tokens only."""

import math

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.n_head = n_head

    def forward(self, x, keep=None):  # keep: (B, T) bool, True = real token; None = no padding
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, T)
        if keep is not None:
            att = att.masked_fill(~keep[:, None, None, :], float("-inf"))  # padded keys get no weight
        y = F.softmax(att, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Layer(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, n_head)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, keep=None):
        x = x + self.attn(self.ln1(x), keep)
        return x + self.ff(self.ln2(x))


class KeyPaddingClassifier(nn.Module):
    def __init__(self, vocab_size, max_len, d_model=32, n_head=4, n_layers=2, pad_token_id=0, num_classes=3):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model, padding_idx=pad_token_id)
        self.pos = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList([Layer(d_model, n_head) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def encode(self, ids, keep):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        for layer in self.layers:
            x = layer(x, keep)
        return self.norm(x)

    def forward(self, src, src_key_padding_mask=None):  # (B, T) bool, True = padding
        keep = None if src_key_padding_mask is None else ~src_key_padding_mask
        h = self.encode(src, keep)  # (B, T, D)
        w = torch.ones_like(src, dtype=h.dtype) if keep is None else keep.to(h.dtype)
        pooled = (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        return self.head(pooled)  # (B, classes)
