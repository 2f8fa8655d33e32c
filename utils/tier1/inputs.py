"""Token ids for the checks: which input a model reads its tokens from and different valid ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



def token_key(adapter: Adapter) -> str:
    """The batch key whose tokens the outputs are aligned with (the decoder's for seq2seq)."""
    return "decoder_input_ids" if adapter.task == "seq2seq" else "input_ids"


def token_limit(adapter: Adapter, key: str) -> int:
    """Ids fed under ``key`` stay below this."""
    if key == "decoder_input_ids":
        return min(adapter.target_vocab_size or adapter.vocab_size, adapter.output_size)
    return adapter.id_limit


def different_ids(adapter: Adapter, ids: torch.Tensor, key: str, seed: int) -> torch.Tensor:
    """``ids`` with every token replaced by another valid one (never itself, never padding)."""
    limit = token_limit(adapter, key)
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, max(limit, 2), ids.shape, generator=gen).to(ids.device)
    out = (ids + shift) % max(limit, 1)
    pad = adapter.pad_token_id
    if pad is not None and limit > 2:
        clash = out == pad
        out[clash] = (pad + 1 + (ids[clash] == (pad + 1) % limit).long()) % limit
    return out
