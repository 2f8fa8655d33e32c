"""A GPT in Hugging Face's style: ``forward(input_ids, attention_mask=None, labels=None)``
returns ``(logits, loss)``, labels being the input ids that the model shifts itself.
"""

import torch
from torch import nn
from torch.nn import functional as F

SHIFT_LABELS = True  # the planted defect of unshifted_labels_gpt turns this off


class Block(nn.Module):
    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, bias):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class LabelsGPT(nn.Module):
    def __init__(self, vocab_size=256, dim=32, n_layer=2, n_head=4, max_seq_len=64):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(max_seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids, attention_mask=None, labels=None):
        B, T = input_ids.shape
        keep = (attention_mask if attention_mask is not None else torch.ones_like(input_ids)).bool()
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
        allowed = (causal[None] & keep[:, None, :]) | torch.eye(T, dtype=torch.bool,
                                                                device=input_ids.device)
        bias = torch.zeros(B, 1, T, T, device=input_ids.device)
        bias = bias.masked_fill(~allowed[:, None], torch.finfo(bias.dtype).min)
        x = self.wte(input_ids) + self.wpe(torch.arange(T, device=input_ids.device))
        for block in self.blocks:
            x = block(x, bias)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if labels is not None:
            if SHIFT_LABELS:
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                       labels[:, 1:].reshape(-1), ignore_index=-100)
            else:  # the bug: each position scored against its own input token
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                       ignore_index=-100)
        return logits, loss
