"""Hugging Face style decoder: the attention class declares `is_causal: bool = True`, as
transformers' decoder attentions do, but forward hands SDPA the padding mask only — the causal
part is never applied (transformers builds it elsewhere, in code that was not copied).
"""

import torch
from torch import nn
from torch.nn import functional as F


class DecoderAttention(nn.Module):
    is_causal: bool = True

    def __init__(self, hidden_size, num_attention_heads):
        super().__init__()
        self.num_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask=None):
        b, t, _ = hidden_states.shape
        q, k, v = (p(hidden_states).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # (B, nh, T, hd)
        # the bug: only the padding mask reaches SDPA; is_causal is never passed
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    def __init__(self, hidden_size, num_attention_heads, intermediate_size):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(hidden_size)
        self.self_attn = DecoderAttention(hidden_size, num_attention_heads)
        self.post_attention_layernorm = nn.RMSNorm(hidden_size)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, intermediate_size, bias=False),
                                 nn.SiLU(), nn.Linear(intermediate_size, hidden_size, bias=False))

    def forward(self, hidden_states, attention_mask=None):
        h = hidden_states + self.self_attn(self.input_layernorm(hidden_states), attention_mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class TinyDecoderModel(nn.Module):
    def __init__(self, vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
                 intermediate_size, max_position_embeddings):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.embed_positions = nn.Embedding(max_position_embeddings, hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_size, num_attention_heads, intermediate_size)
            for _ in range(num_hidden_layers))
        self.norm = nn.RMSNorm(hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.embed_tokens(input_ids) + self.embed_positions(positions)
        for layer in self.layers:
            h = layer(h, attention_mask)
        return {"logits": self.head(self.norm(h))}
