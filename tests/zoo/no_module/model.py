"""Pure-Python attention, no torch.nn.Module anywhere."""

import math


def softmax(xs):
    m = max(xs)
    exps = [math.exp(x - m) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


class Attention:
    def __init__(self, dim):
        self.dim = dim

    def __call__(self, q, keys):
        scores = [sum(a * b for a, b in zip(q, k)) / math.sqrt(self.dim) for k in keys]
        return softmax(scores)
