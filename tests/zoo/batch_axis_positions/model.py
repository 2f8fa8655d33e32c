"""A masked-LM encoder with the PyTorch tutorial's sinusoidal PositionalEncoding, used batch-first.

The tutorial's encoding expects ``(seq, batch, dim)`` and adds ``pe[:x.size(0)]``. Fed
``(batch, seq, dim)`` it adds one position vector per *sample*, the same at every token: the
encoder sees no word order at all, and a sample's outputs depend on its place in the batch.
"""

import math

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len=512):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * div_term)
        pe[:, 0, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):  # written for x: (seq, batch, dim)
        return x + self.pe[: x.size(0)]  # the bug: x is (batch, seq, dim) here


class MaskedLM(nn.Module):
    def __init__(self, vocab_size=400, max_len=64, d_model=32, nhead=4, num_layers=2,
                 mask_token_id=3):
        super().__init__()
        self.mask_token_id = mask_token_id
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_encoder = PositionalEncoding(d_model, max_len)
        layer = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.decoder = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        x = self.pos_encoder(self.embed(input_ids) * math.sqrt(self.embed.embedding_dim))
        pad = None if attention_mask is None else attention_mask == 0
        return self.decoder(self.encoder(x, src_key_padding_mask=pad))
