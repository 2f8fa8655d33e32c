"""A ViT-style text classifier: a [CLS] token and a learned position table, both initialised
with torch.zeros as in many ViT copies. The table is order-blind at init; the first steps
give each position its own row."""

import torch
import torch.nn as nn


class TextViT(nn.Module):
    def __init__(self, vocab_size, max_len, num_classes, d_model, n_head, n_layer):
        super().__init__()
        self.tok_embed = nn.Embedding(vocab_size, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len + 1, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_head, 4 * d_model, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        x = self.tok_embed(input_ids)  # (B, T, D)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.pos_embed[:, : T + 1]
        pad = None
        if attention_mask is not None:  # the [CLS] position is never padding
            pad = torch.cat([attention_mask.new_ones(B, 1), attention_mask], dim=1) == 0
        x = self.encoder(x, src_key_padding_mask=pad)
        return self.head(self.norm(x[:, 0]))
