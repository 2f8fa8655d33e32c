import torch
from torch import nn


class EncoderModel(nn.Module):
    def __init__(self, vocab_size=100, d_model=16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layer = nn.TransformerEncoderLayer(d_model, 2, 32, batch_first=True)

    def forward(self, x):
        return self.layer(self.embed(x))


class DecoderModel(nn.Module):
    def __init__(self, vocab_size=100, d_model=16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x):
        return self.head(torch.cumsum(self.embed(x), dim=1))
