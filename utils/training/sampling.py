"""Text from a trained causal LM: what a person wants to see first after training."""

from __future__ import annotations

from typing import Any

import torch

from utils.errors import UserError

__all__ = ["generate"]


@torch.no_grad()
def generate(adapter: Any, tokenizer: Any, prompt: str = "", n_tokens: int = 40, *,
             temperature: float = 0.8, top_k: int | None = 40, seed: int = 0) -> str:
    """Sample ``n_tokens`` after ``prompt`` (temperature 0: greedy), within the model's
    maximum length (the context is cropped to it). The global RNG is left untouched.

    Raises:
        UserError: the model is not a causal LM, or no tokenizer is known.
    """
    if adapter.task != "causal_lm":
        raise UserError(f"Sampling text needs a causal LM; this model's task is "
                        f"'{adapter.task}'.", fix="Look at result.metrics instead.")
    if tokenizer is None:
        raise UserError("No tokenizer is attached to this result.",
                        fix="Pass tokenizer=... to train(), or load the run's tokenizer/.")
    model = adapter.model
    was_training = model.training
    model.eval()
    ids = tokenizer.encode(prompt, add_bos=True)
    limit = adapter.max_seq_len or 1024
    gen = torch.Generator().manual_seed(seed)
    try:
        for _ in range(n_tokens):
            context = torch.tensor([ids[-limit:]], device=adapter.device)
            logits = adapter.logits(context, torch.ones_like(context))[0, -1].float().cpu()
            logits = logits[: tokenizer.vocab_size]
            if temperature <= 0:
                nxt = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k:
                    cut = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < cut, float("-inf"))
                nxt = int(torch.multinomial(logits.softmax(-1), 1, generator=gen))
            if nxt == tokenizer.eos_id:
                break
            ids.append(nxt)
    finally:
        model.train(was_training)
    return tokenizer.decode(ids[1:]) if hasattr(tokenizer, "decode") else str(ids[1:])
