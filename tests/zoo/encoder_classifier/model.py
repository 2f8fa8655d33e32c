"""Sentiment classifier: nn.TransformerEncoder, mean pooling over real tokens, class logits."""

import torch
from torch import nn


class SentimentNet(nn.Module):
    def __init__(self, vocab_size, max_len, num_classes, d_model=32, nhead=4, num_layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos_embed = nn.Parameter(torch.zeros(1, max_len, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead, 2 * d_model, dropout=0.1,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(d_model, num_classes)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, x, src_key_padding_mask=None):
        h = self.embed(x) + self.pos_embed[:, : x.size(1)]
        h = self.encoder(h, src_key_padding_mask=src_key_padding_mask)
        if src_key_padding_mask is None:
            pooled = h.mean(dim=1)
        else:  # True = padding (PyTorch convention)
            keep = (~src_key_padding_mask).unsqueeze(-1).float()
            pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.classifier(pooled)  # (B, num_classes)
