"""An encoder-decoder whose decoder is handed its own input as the memory to attend to.

``self.decoder(tgt, memory)`` was meant; ``self.decoder(tgt, tgt)`` runs, keeps every shape and
the causal mask, and trains — as a language model of the targets that never reads the source.
"""

import math

import torch
from torch import nn


class Seq2Seq(nn.Module):
    def __init__(self, src_vocab_size=300, tgt_vocab_size=300, max_len=48, d_model=32, nhead=4,
                 num_layers=2):
        super().__init__()
        self.max_len = max_len
        self.src_embed = nn.Embedding(src_vocab_size, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, nhead, 2 * d_model, 0.0, batch_first=True),
            num_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d_model, nhead, 2 * d_model, 0.0, batch_first=True),
            num_layers)
        self.out = nn.Linear(d_model, tgt_vocab_size)
        self.scale = math.sqrt(d_model)

    def embed(self, table, ids):
        return table(ids) * self.scale + self.pos(torch.arange(ids.size(1), device=ids.device))

    def forward(self, src, tgt):
        memory = self.encoder(self.embed(self.src_embed, src))
        tgt_x = self.embed(self.tgt_embed, tgt)
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device)
        out = self.decoder(tgt_x, tgt_x, tgt_mask=mask, tgt_is_causal=True)  # the bug: memory
        return self.out(out)
