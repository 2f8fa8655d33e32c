"""The baselines a model is benchmarked against: a plain pre-LN transformer of matched size.

For a causal LM the baseline is GPT-2's layout — learned token and position embeddings, pre-LN
blocks (LayerNorm → attention → residual, LayerNorm → 4× GELU MLP → residual), a final
LayerNorm and a head tied to the token embedding. For masked LM and classification it is the
same stack without the causal mask (a BERT-style encoder with pre-LN), with a tied vocabulary
head or a masked-mean-pooled class head. Seq2seq has no baseline here.

:func:`baseline_for` picks the width and depth whose parameter count lands within ±10% of the
user's model (same vocab, same maximum length), preferring the user's own depth when the
model's blocks can be counted.

Example:
    >>> spec = baseline_for(utils.adapt(utils.load_model("tests/zoo/flat_gpt")))
    >>> spec.describe()
    'pre-LN GPT, 2 layers × 56 wide, 2 heads: 109,088 parameters (+0.2% of yours)'
    >>> baseline_adapter = spec.adapter_for(adapter, seed=0)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError

__all__ = ["BASELINES", "BaselineSpec", "BaselineTransformer", "baseline_for", "baseline_kind",
           "baseline_parameters", "detected_depth"]

BASELINES = ("gpt", "encoder")
TOLERANCE = 0.10  # the baseline's parameter count is within ±10% of the user's
_MAX_DEPTH = 48


class _Block(nn.Module):
    """Pre-LN: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d),
                                 nn.Dropout(dropout))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        # (B, nh, T, hs)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.mlp(self.ln2(x))


class BaselineTransformer(nn.Module):
    """A plain pre-LN transformer: causal (GPT) or bidirectional (encoder).

    Args:
        vocab_size: Rows of the token embedding (and outputs of the tied LM head).
        max_seq_len: Rows of the learned position embedding.
        d_model: Width. n_layer: Blocks. n_head: Attention heads (divides ``d_model``).
        causal: Whether position t sees only tokens up to t.
        num_classes: A class head over the masked mean of the tokens instead of the LM head.
        dropout: Dropout after the embeddings, attention and MLP.
    """

    def __init__(self, vocab_size: int, max_seq_len: int, d_model: int, n_layer: int,
                 n_head: int, *, causal: bool = True, num_classes: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.causal, self.max_seq_len, self.num_classes = causal, max_seq_len, num_classes
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        if num_classes:
            self.head = nn.Linear(d_model, num_classes)
        else:
            self.head = nn.Linear(d_model, vocab_size, bias=False)
            self.head.weight = self.tok.weight  # tied, as in GPT-2 and BERT
        for name, p in self.named_parameters():  # GPT-2's init; residual projections scaled
            if p.ndim >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight",
                                                                     "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                ) -> torch.Tensor:
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok(input_ids) + self.pos(pos))
        allowed = torch.ones(t, t, dtype=torch.bool, device=x.device)
        if self.causal:
            allowed = allowed.tril()
        keys = (attention_mask.bool() if attention_mask is not None
                else torch.ones(b, t, dtype=torch.bool, device=x.device))
        # (B, 1, T, T): a query sees the allowed, real keys — and always itself, so a padding
        # row is never all-masked (which would give NaN)
        mask = (allowed & keys[:, None, :]) | torch.eye(t, dtype=torch.bool, device=x.device)
        mask = mask[:, None]
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_f(x)
        if self.num_classes:
            real = keys.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            pooled = (x * real).sum(1) / real.sum(1).clamp_min(1.0)
            return self.head(pooled)  # (B, C)
        return self.head(x)  # (B, T, V)


def baseline_parameters(vocab_size: int, max_seq_len: int, d_model: int, n_layer: int,
                        num_classes: int | None = None) -> int:
    """The exact parameter count of a :class:`BaselineTransformer` (tied LM head)."""
    d = d_model
    count = vocab_size * d + max_seq_len * d + n_layer * (12 * d * d + 13 * d) + 2 * d
    return count + (num_classes * (d + 1) if num_classes else 0)


def _heads(d: int) -> int:
    """Heads of 64 dims on wide models, 32 or 16 on narrow ones; always dividing ``d``."""
    head_dim = 64 if d >= 256 else 32 if d >= 64 else 16
    n = max(1, d // head_dim)
    while d % n:
        n -= 1
    return n


@dataclass(frozen=True)
class BaselineSpec:
    """A baseline's shape, and how close its size is to the user's model.

    Attributes:
        kind: ``"gpt"`` (causal) or ``"encoder"`` (bidirectional).
        vocab_size, max_seq_len, num_classes: Copied from the user's model.
        d_model, n_layer, n_head: The chosen width, depth and heads.
        dropout: The user's model's dropout (its most common ``nn.Dropout`` p), so both
            regularise alike.
        parameters: The baseline's parameter count. target_parameters: the user's.
    """

    kind: str
    task: str
    vocab_size: int
    max_seq_len: int
    num_classes: int | None
    d_model: int
    n_layer: int
    n_head: int
    dropout: float
    parameters: int
    target_parameters: int

    @property
    def relative_difference(self) -> float:
        """(baseline − yours) / yours."""
        return self.parameters / self.target_parameters - 1

    def describe(self) -> str:
        name = "pre-LN GPT" if self.kind == "gpt" else "pre-LN encoder"
        return (f"{name}, {self.n_layer} layer{'s' if self.n_layer != 1 else ''} × "
                f"{self.d_model} wide, {self.n_head} head{'s' if self.n_head != 1 else ''}: "
                f"{self.parameters:,} parameters ({self.relative_difference:+.1%} of yours)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative_difference": self.relative_difference}

    def build(self, seed: int = 0) -> BaselineTransformer:
        """The baseline, initialised from ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return BaselineTransformer(self.vocab_size, self.max_seq_len, self.d_model,
                                       self.n_layer, self.n_head, causal=self.kind == "gpt",
                                       num_classes=self.num_classes, dropout=self.dropout)

    def adapter_for(self, user_adapter: Any, seed: int = 0):
        """The baseline built from ``seed``, adapted with the user's task and token ids, on the
        user's device (so one tokenizer and one data pipeline serve both)."""
        from utils.adapters import adapt

        model = self.build(seed).to(user_adapter.device)
        config = {"vocab_size": self.vocab_size, "max_seq_len": self.max_seq_len,
                  "num_classes": self.num_classes, "d_model": self.d_model,
                  "n_layer": self.n_layer, "n_head": self.n_head}
        return adapt(model, config, task=self.task, vocab_size=self.vocab_size,
                     max_seq_len=self.max_seq_len, num_classes=self.num_classes,
                     pad_token_id=user_adapter.pad_token_id,
                     mask_token_id=user_adapter.mask_token_id)


def detected_depth(model: nn.Module) -> int | None:
    """The number of repeated blocks: the longest ``nn.ModuleList``/``nn.Sequential`` of one
    block class holding weights (None when there is none, e.g. a flat builder export)."""
    best = 0
    for module in model.modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 1:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or isinstance(module[0], (nn.Linear, nn.Dropout, nn.LayerNorm)):
            continue
        if sum(isinstance(m, nn.Linear) for m in module[0].modules()) >= 2:
            best = max(best, len(module))
    return best or None


def _dropout(model: nn.Module) -> float:
    ps = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    return Counter(ps).most_common(1)[0][0] if ps else 0.0


def baseline_kind(task: str, baseline: str = "gpt") -> str:
    """``"gpt"`` or ``"encoder"``: the baseline for ``task``; a UserError when none fits."""
    if baseline not in BASELINES:
        raise UserError(f"baseline={baseline!r} is not a baseline this version offers.",
                        why=f"The baselines are: {', '.join(map(repr, BASELINES))}.",
                        fix="Pass baseline='gpt' (the default; for masked LM and "
                        "classification it is the matched pre-LN encoder).")
    if task in ("seq2seq", "encoder"):
        what = ("an encoder-decoder (seq2seq) model" if task == "seq2seq"
                else "an encoder without a task head")
        raise UserError(f"No baseline is offered for {what}.",
                        why="The benchmark compares against a plain GPT (causal LM) or a "
                        "matched pre-LN encoder (masked LM, classification); a seq2seq "
                        "baseline of matched size is not part of this version.",
                        fix="Use fine_tune (testbench train) to measure how it learns, or "
                        "compare two of your own models with fine_tune on the same data.")
    if task == "causal_lm" and baseline == "encoder":
        raise UserError("baseline='encoder' cannot be compared with a causal LM.",
                        why="A bidirectional encoder sees the tokens it would predict.",
                        fix="Use baseline='gpt' for a causal LM.")
    return "gpt" if task == "causal_lm" else "encoder"


def baseline_for(adapter: Any, baseline: str = "gpt", *, max_seq_len: int | None = None,
                 tolerance: float = TOLERANCE) -> BaselineSpec:
    """The baseline for ``adapter``'s task whose size matches the model's within ``tolerance``.

    Width and depth are searched together (depth 1…48; width any integer below 64, a multiple
    of 8 above); among the shapes within tolerance the one nearest the model's own depth wins
    (or, when the depth cannot be counted, the one nearest 32 wide per layer), then the closest
    in size.

    Args:
        adapter: The user's ``ModelAdapter``.
        baseline: ``"gpt"``: the plain pre-LN transformer for the task (a causal GPT for a
            causal LM, the same blocks without the causal mask for masked LM and
            classification); ``"encoder"`` asks for the encoder explicitly.
        max_seq_len: The position table's length when the model declares none.
        tolerance: Largest relative difference in parameters.

    Raises:
        UserError: seq2seq or a bare encoder (no baseline offered), an unknown baseline, or no
            shape within tolerance.
    """
    kind = baseline_kind(adapter.task, baseline)
    target = sum(p.numel() for p in adapter.model.parameters())
    vocab = adapter.vocab_size
    length = adapter.max_seq_len or max_seq_len or 256
    classes = (adapter.num_classes or adapter.output_size) if adapter.task == \
        "classification" else None
    depth = detected_depth(adapter.model)
    best, best_key = None, None
    for n_layer in range(1, _MAX_DEPTH + 1):
        # parameters(d) = 12L·d² + (V + T + 13L + 2 + C)·d + C: solve for the target
        a, b = 12 * n_layer, vocab + length + 13 * n_layer + 2 + (classes or 0)
        c = (classes or 0) - target
        root = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a) if b * b - 4 * a * c >= 0 else 0
        # widths in steps of 8 when wide (round, as people choose them), or of 4 where no
        # multiple of 8 comes within the tolerance at this depth
        steps = (1,) if root < 64 else (8, 4)
        widths = {max(8, f(root / step) * step) for step in steps for f in (math.floor, math.ceil)}
        for d in sorted(widths):
            count = baseline_parameters(vocab, length, d, n_layer, classes)
            off = abs(count / target - 1)
            if off > tolerance:
                continue
            shape = abs(math.log(n_layer / depth)) if depth else abs(math.log(d / n_layer / 32))
            key = (round(shape, 6), root >= 64 and d % 8 != 0, off)
            if best_key is None or key < best_key:
                best, best_key = (d, n_layer, count), key
    if best is None:
        smallest = baseline_parameters(vocab, length, 8, 1, classes)
        raise UserError(f"No baseline shape comes within ±{tolerance:.0%} of the model's "
                        f"{target:,} parameters.",
                        why=f"With vocab {vocab:,} and length {length:,}, the smallest baseline "
                        f"(1 layer × 8 wide) already has {smallest:,}.",
                        fix="Benchmark a larger model, or compare it with fine_tune instead.")
    d, n_layer, count = best
    return BaselineSpec(kind=kind, task=adapter.task, vocab_size=vocab, max_seq_len=length,
                        num_classes=classes, d_model=d, n_layer=n_layer, n_head=_heads(d),
                        dropout=_dropout(adapter.model), parameters=count,
                        target_parameters=target)
