"""A RoPE GPT written with plain functions (rope_cache, apply_rope): no module, buffer or
parameter says "rotary", so its family is read from the functions its forward calls."""

import math, torch, torch.nn as nn, torch.nn.functional as F

def rope_cache(T, hd, device, base=10000.0):
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, device=device).float() / hd))
    t = torch.arange(T, device=device).float()
    f = torch.outer(t, inv)
    return f.cos(), f.sin()

def apply_rope(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)

class Attn(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
    def forward(self, x, cos, sin, pad_mask):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        allowed = causal[None, None]
        if pad_mask is not None:
            allowed = allowed & pad_mask[:, None, None, :].bool()
        s = s.masked_fill(~allowed, float("-inf"))
        a = torch.softmax(s, dim=-1)
        a = torch.nan_to_num(a)
        y = (a @ v).transpose(1, 2).reshape(B, T, C)
        return self.o(y)

class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attn(d, h)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
    def forward(self, x, cos, sin, m):
        x = x + self.attn(self.n1(x), cos, sin, m)
        return x + self.mlp(self.n2(x))

class RopeGPT(nn.Module):
    def __init__(self, vocab_size, max_seq_len, d_model, n_layer, n_head):
        super().__init__()
        self.hd = d_model // n_head
        self.emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_head) for _ in range(n_layer)])
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)
    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    def forward(self, input_ids, attention_mask=None, labels=None):
        B, T = input_ids.shape
        cos, sin = rope_cache(T, self.hd, input_ids.device)
        x = self.emb(input_ids)
        for b in self.blocks:
            x = b(x, cos, sin, attention_mask)
        logits = self.head(self.norm(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        return {"loss": loss, "logits": logits}
