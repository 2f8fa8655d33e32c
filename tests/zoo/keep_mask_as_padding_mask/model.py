"""A BERT-style classifier on nn.TransformerEncoder given attention_mask.bool() (True = real
token) as src_key_padding_mask, which means True = padding: with nothing padded every key is
masked and the outputs are NaN."""

import torch
import torch.nn as nn
import torch.nn.functional as F

class BertClassifier(nn.Module):
    def __init__(self, vocab_size, max_len, hidden, layers, heads, num_labels, pad_id=0):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, hidden, padding_idx=pad_id)
        self.pos = nn.Embedding(max_len, hidden)
        self.ln = nn.LayerNorm(hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(hidden, num_labels)
    def forward(self, input_ids, attention_mask=None, labels=None):
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device).unsqueeze(0)
        h = self.ln(self.tok(input_ids) + self.pos(pos))
        kpm = None if attention_mask is None else attention_mask.bool()  # the bug: == 0
        h = self.encoder(h, src_key_padding_mask=kpm)
        if attention_mask is None:
            pooled = h.mean(1)
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        logits = self.classifier(pooled)
        if labels is not None:
            return F.cross_entropy(logits, labels), logits
        return logits
