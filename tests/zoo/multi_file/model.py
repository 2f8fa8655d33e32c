"""A decoder LM split over two files; returns an output object with .logits."""

from dataclasses import dataclass

import torch
from torch import nn

from layers import Block, RMSNorm


@dataclass
class LMOutput:
    logits: torch.Tensor


class DecoderLM(nn.Module):
    def __init__(self, vocab_size, context_length, dim=32, n_layers=2, n_heads=4):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(context_length, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads) for _ in range(n_layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, tokens):
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tokens(tokens) + self.positions(pos)
        for block in self.blocks:
            x = block(x)
        return LMOutput(logits=self.lm_head(self.norm(x)))
