"""Sequence-to-sequence translation model around torch.nn.Transformer (batch first)."""

import math

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe)  # (max_len, d_model)

    def forward(self, x):
        return x + self.pe[: x.size(1)]


class TranslationModel(nn.Module):
    def __init__(self, vocab_size, max_len, d_model=32, nhead=4, num_layers=1, dim_feedforward=64,
                 dropout=0.1):
        super().__init__()
        self.src_embed = nn.Embedding(vocab_size, d_model)
        self.tgt_embed = nn.Embedding(vocab_size, d_model)
        self.pos = PositionalEncoding(d_model, max_len)
        self.transformer = nn.Transformer(d_model, nhead, num_layers, num_layers, dim_feedforward,
                                          dropout, batch_first=True)
        self.generator = nn.Linear(d_model, vocab_size)
        self.scale = math.sqrt(d_model)

    def forward(self, src, tgt):
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device)
        src_x = self.pos(self.src_embed(src) * self.scale)
        tgt_x = self.pos(self.tgt_embed(tgt) * self.scale)
        out = self.transformer(src_x, tgt_x, tgt_mask=tgt_mask, tgt_is_causal=True)
        return self.generator(out)  # (B, T_tgt, vocab)
