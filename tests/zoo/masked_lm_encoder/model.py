"""A small BERT-like encoder with a masked-LM head; honours an HF-style attention_mask."""

import torch
from torch import nn


class EncoderLayer(nn.Module):
    def __init__(self, hidden_size, num_heads, dropout):
        super().__init__()
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.ff = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(),
                                nn.Linear(4 * hidden_size, hidden_size))
        self.norm2 = nn.LayerNorm(hidden_size)

    def forward(self, x, key_padding_mask):
        a, _ = self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        x = self.norm1(x + a)  # post-LN, as in BERT
        return self.norm2(x + self.ff(x))


class TinyBert(nn.Module):
    def __init__(self, vocab_size, max_position_embeddings, hidden_size=48, num_layers=2,
                 num_heads=4, dropout=0.1, pad_token_id=0):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.emb_norm = nn.LayerNorm(hidden_size)
        self.layers = nn.ModuleList(EncoderLayer(hidden_size, num_heads, dropout)
                                    for _ in range(num_layers))
        self.mlm_head = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(),
                                      nn.LayerNorm(hidden_size), nn.Linear(hidden_size, vocab_size))

    def forward(self, input_ids, attention_mask=None):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.emb_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        # attention_mask: 1 = real token, 0 = padding  ->  key_padding_mask: True = ignore
        pad = None if attention_mask is None else attention_mask == 0
        for layer in self.layers:
            x = layer(x, pad)
        return {"logits": self.mlm_head(x), "hidden_states": x}
