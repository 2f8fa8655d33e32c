"""A Gemma-style soft cap on the attention scores — applied after the causal mask instead of
before it. cap * tanh(-inf / cap) is -cap, not -inf: every masked (future) position gets
weight ~exp(-cap) back. The leak is small (~1e-4 of the outputs) and training exploits it.
The model computes its own next-token loss (labels shifted inside, Hugging Face's convention).
"""

import torch
from torch import nn
from torch.nn import functional as F


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
        pos = torch.arange(t, device=x.device)
        allowed = pos[:, None] >= pos[None, :]  # (T, T): query i sees keys j <= i
        scores = scores.masked_fill(~allowed, float("-inf"))
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


class SoftCapModel(nn.Module):
    def __init__(self, vocab_size, dim, n_layers, n_heads, max_seq_len, attn_softcap=8.0):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads, attn_softcap) for _ in range(n_layers))
        self.norm = nn.RMSNorm(dim)
        self.out = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, input_ids, labels=None):
        x = self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1],
                                                        device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        logits = self.out(self.norm(x))
        loss = None
        if labels is not None:  # next-token loss: position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1))
        return {"logits": logits, "loss": loss}
