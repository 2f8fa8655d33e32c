"""A BERT-style masked LM that accepts attention_mask and never uses it: padded batches
silently attend to padding, so the same sentence gets different outputs in different batches."""

import torch
from torch import nn


class TinyBertForMaskedLM(nn.Module):
    def __init__(self, vocab_size, max_position_embeddings, hidden_size=32, num_layers=2,
                 num_heads=4, pad_token_id=0):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.positions = nn.Embedding(max_position_embeddings, hidden_size)
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 4 * hidden_size, dropout=0.1,
                                           activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embeddings(input_ids) + self.positions(pos)
        x = self.encoder(x)  # the bug: src_key_padding_mask=(attention_mask == 0) is missing
        return self.head(x)
