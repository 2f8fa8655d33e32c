"""A Hugging Face-style causal LM whose loss is reduction="none" then .mean(): the -100
positions add zero loss but still count in the denominator, so padding shrinks the loss."""

import torch
import torch.nn as nn
import torch.nn.functional as F

class DecoderBlock(nn.Module):
    def __init__(self, d_model, n_heads, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), nn.Dropout(dropout))
    def forward(self, x, causal, kpm):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=causal, key_padding_mask=kpm, need_weights=False)
        x = x + a
        return x + self.ff(self.ln2(x))

class HFStyleGPT(nn.Module):
    def __init__(self, vocab_size=256, max_position_embeddings=64, hidden_size=64, num_layers=2, num_heads=4, dropout=0.0, pad_token_id=0):
        super().__init__()
        self.pad_token_id = pad_token_id
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.embed_positions = nn.Embedding(max_position_embeddings, hidden_size)
        self.layers = nn.ModuleList([DecoderBlock(hidden_size, num_heads, dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(hidden_size)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
    def forward(self, input_ids, attention_mask=None, labels=None):
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(pos)[None]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool, device=input_ids.device), diagonal=1)
        kpm = None if attention_mask is None else (attention_mask == 0)
        for layer in self.layers:
            x = layer(x, causal, kpm)
        logits = self.lm_head(self.norm(x))
        loss = None
        if labels is not None:
            V = logits.size(-1)
            shift_logits = logits[:, :-1, :].contiguous()
            shift_labels = labels[:, 1:].contiguous()
            loss = F.cross_entropy(shift_logits.view(-1, V), shift_labels.view(-1), reduction='none').mean()  # the bug: pads counted as zero
        return (loss, logits) if loss is not None else logits
