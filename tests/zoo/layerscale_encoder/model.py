"""A bidirectional text encoder with CaiT-style LayerScale (per-channel residual gains, init 1e-5).
Returns {'last_hidden_state': ...}."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerScale(nn.Module):
    def __init__(self, dim, init_values=1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, key_mask):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, init_values):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x, key_mask):
        x = x + self.ls1(self.attn(self.norm1(x), key_mask))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


class LayerScaleTextEncoder(nn.Module):
    def __init__(self, vocab_size=300, embed_dim=64, depth=3, num_heads=4, mlp_ratio=4.0,
                 max_len=128, init_values=1e-5):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.tok.weight, std=0.02)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, init_values) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        key_mask = None
        if attention_mask is not None:
            key_mask = attention_mask[:, None, None, :].bool()
        x = self.tok(input_ids) + self.pos_embed[:, :T]
        for blk in self.blocks:
            x = blk(x, key_mask)
        return {"last_hidden_state": self.norm(x)}
