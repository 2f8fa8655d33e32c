"""Facts about a model gathered without knowing its author: a module scan and one probe.

The scan reads the module tree (embedding tables, position tables, triangular mask buffers,
output heads) and, through :mod:`utils.adapters.intent`, the signs of causal intent in the
model's own source. The probe runs one small forward pass (batch 2 × min(8, max_seq_len)) with
hooks on every embedding to learn which table receives the token ids, then a second with the last token changed to see whether earlier
outputs move (they must not in a causal model), and a third with the first token changed to see
how far the past reaches (as far as the future, in a bidirectional model).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from utils.adapters.intent import causal_intent
from utils.adapters.signature import ForwardSpec, extract_output
from utils.errors import UserError, locate_in_files

__all__ = ["Evidence", "Probe", "Scan", "closed_at_init", "model_files", "run_probe",
           "scan_structure"]

_POS_WORDS = {"pos", "position", "positions", "positional", "wpe", "pe"}
_EMB_WORDS = ("emb", "wte", "tok", "embed")


def _is_position_name(name: str) -> bool:
    """``pos_emb``, ``position_embeddings``, ``wpe``, ``pe``; not ``upper`` or ``type``."""
    leaf = name.rsplit(".", 1)[-1].lower()
    return any(t in _POS_WORDS or t.startswith("pos") for t in re.split(r"[_\d]+", leaf) if t)


@dataclass
class Evidence:
    """How one property was decided: its value, the method that won, and the details."""

    value: Any
    method: str  # override | config | declared | structure | probe | default
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "method": self.method, "detail": self.detail}


@dataclass
class Scan:
    """What the module tree and the model's own source say."""

    embeddings: dict[str, int] = field(default_factory=dict)  # nn.Embedding name -> rows
    embedding_params: dict[str, int] = field(default_factory=dict)  # raw tables -> rows
    padding_idx: dict[str, int] = field(default_factory=dict)
    position_tables: dict[str, int] = field(default_factory=dict)  # name -> length
    causal_markers: list[str] = field(default_factory=list)
    heads: dict[str, int] = field(default_factory=dict)  # Linear name -> out_features


@dataclass
class Probe:
    """What one forward pass showed."""

    output_shape: tuple[int, ...]
    output_how: str
    seq_len: int
    token_embedding: str | None = None
    decoder_embedding: str | None = None
    position_embedding: str | None = None
    leak: float | None = None  # max |Δ output| before the changed last position, relative
    leak_at_init: float | None = None  # when ``leak`` was measured after opening steps
    # of the positions before the changed last one, how many moved (with ``leak``): all of
    # them in a bidirectional model; some (a mask off by one, a window into the future) in a
    # causal model whose mask leaks
    leak_moved: int | None = None
    leak_positions: int | None = None
    # how far changing the first token moved the later outputs (relative, measured with
    # ``leak``): what the past reaches, which the future matches in a bidirectional model
    reach_back: float | None = None
    seconds: float = 0.0


def model_files(model: nn.Module) -> set[str]:
    """Source files of the classes that make up ``model`` (for error locations)."""
    files: set[str | None] = set()
    for cls in {type(m) for m in model.modules()}:
        if cls.__module__.startswith("torch."):
            continue
        with contextlib.suppress(TypeError, OSError):
            files.add(inspect.getsourcefile(cls))
    return {f for f in files if f is not None}


def _is_causal_buffer(t: torch.Tensor) -> bool:
    """A square (…, T, T) buffer shaped like a causal mask, in any of its usual encodings."""
    if t.ndim < 2 or t.shape[-1] != t.shape[-2] or t.shape[-1] < 2:
        return False
    n = t.shape[-1]
    m = t.reshape(-1, n, n)[0]
    if m.is_floating_point():
        if torch.isnan(m).any():
            return False
        allowed = m == 0 if (m < 0).any() else m != 0  # additive (0 / -inf) or 0/1 masks
    else:
        allowed = m != 0
    lower = torch.ones(n, n, dtype=torch.bool, device=m.device).tril()
    return torch.equal(allowed, lower) or torch.equal(allowed, ~lower)  # keep- or block-style


def scan_structure(model: nn.Module) -> Scan:
    scan = Scan()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            scan.embeddings[name] = mod.num_embeddings
            if _is_position_name(name):  # a guess until the probe sees it receive positions
                scan.position_tables[name] = mod.num_embeddings
            if mod.padding_idx is not None:
                scan.padding_idx[name] = mod.padding_idx
        elif isinstance(mod, nn.Linear):
            scan.heads[name] = mod.out_features
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1].lower()
        owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if isinstance(owner, (nn.Embedding, nn.Linear)) or p.ndim < 2:
            continue
        if _is_position_name(leaf) and p.ndim in (2, 3):
            scan.position_tables[name] = int(p.shape[-2])  # (1, L, D) or (L, D)
        elif any(w in leaf for w in _EMB_WORDS) and p.ndim == 2:
            scan.embedding_params[name] = int(p.shape[0])
    for name, buf in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1].lower()
        if _is_causal_buffer(buf):
            scan.causal_markers.append(f"triangular mask buffer '{name}' {tuple(buf.shape)}")
            scan.position_tables.setdefault(name, int(buf.shape[-1]))
        elif buf.ndim in (2, 3) and _is_position_name(leaf):
            # sinusoidal tables: (L, D), (1, L, D) or (L, 1, D); the length is the larger dim
            dims = [d for d in buf.shape if d != 1]
            if len(dims) == 2:
                scan.position_tables[name] = int(dims[0])
    scan.causal_markers += causal_intent(model)
    return scan


def _arange_like(t: torch.Tensor) -> bool:
    row = t.reshape(-1, t.shape[-1])[0] if t.ndim else t
    return row.numel() > 1 and bool(torch.all(row[1:] - row[:-1] == 1))


def _seeded_call(model: nn.Module, args: list, kwargs: dict, device: torch.device) -> Any:
    """Both probe forwards draw the same random numbers (a model may keep dropout on in eval),
    so only the changed token can move the outputs; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(1234)
        return model(*args, **kwargs)


def run_probe(model: nn.Module, spec: ForwardSpec, *, seq_len: int, id_limit: int,
              device: torch.device) -> Probe:
    """Three forward passes at batch 2 × ``seq_len`` with ids in ``[0, id_limit)``."""
    gen = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, max(id_limit, 1), (2, seq_len), generator=gen).to(device)
    batch = {"input_ids": ids}
    if spec.decoder_param:
        batch["decoder_input_ids"] = torch.randint(0, max(id_limit, 1), (2, seq_len),
                                                   generator=gen).to(device)
    seen: dict[str, torch.Tensor | None] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:  # returns None: the output is untouched
            if name not in seen:
                first = inputs[0] if inputs else None
                seen[name] = first.detach() if isinstance(first, torch.Tensor) else None
        return hook

    hooks = [m.register_forward_hook(record(name))
             for name, m in model.named_modules() if isinstance(m, nn.Embedding)]
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            args, kwargs = spec.build_call(batch)
            out, how = extract_output(_seeded_call(model, args, kwargs, device))
            for h in hooks:
                h.remove()
            hooks = []
            key = "decoder_input_ids" if spec.decoder_param else "input_ids"
            changed = {k: v.clone() for k, v in batch.items()}
            changed[key][:, -1] = (changed[key][:, -1] + 1) % max(id_limit, 2)
            args, kwargs = spec.build_call(changed)
            out2, _ = extract_output(_seeded_call(model, args, kwargs, device))
            first = {k: v.clone() for k, v in batch.items()}
            first[key][:, 0] = (first[key][:, 0] + 1) % max(id_limit, 2)
            args, kwargs = spec.build_call(first)
            out3, _ = extract_output(_seeded_call(model, args, kwargs, device))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"The first forward pass of {type(model).__name__} raised "
            f"{type(exc).__name__}: {exc}",
            location=locate_in_files(exc.__traceback__, model_files(model)),
            why=f"It was called as {spec.describe()} with token ids of shape "
            f"{tuple(ids.shape)} (batch-first) in [0, {id_limit}).",
            fix="Fix the line shown; a model must run on a [batch, seq_len] tensor of token ids.",
        ) from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    probe = Probe(tuple(out.shape), how, seq_len, seconds=time.perf_counter() - start)
    dec = batch.get("decoder_input_ids")
    rows = {n: m.num_embeddings for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for name, inp in seen.items():
        if inp is None:
            continue
        if inp.dtype in (torch.long, torch.int) and inp.numel() and (
                int(inp.max()) >= rows[name] or _is_position_name(name)):
            # A position table handed the token ids reads only their shape (BART's
            # embed_positions(input_ids)); ids past its rows cannot have been looked up.
            if _arange_like(inp):
                probe.position_embedding = probe.position_embedding or name
            continue
        if inp.shape == ids.shape and torch.equal(inp, ids) and probe.token_embedding is None:
            probe.token_embedding = name
        elif dec is not None and inp.shape == dec.shape and torch.equal(inp, dec):
            probe.decoder_embedding = name
        elif inp.dtype in (torch.long, torch.int) and _arange_like(inp):
            probe.position_embedding = probe.position_embedding or name
    if out.ndim == 3 and out.shape[1] == seq_len and out2.shape == out.shape == out3.shape:
        found = _leak(out, out2, out3)
        # tiny: a causal model's noise, or a branch that starts small; none at all, but a gate
        # at exactly 0 (ReZero, a zero-initialised projection) may close the path it is on
        if found[0] <= 1e-4 and (found[0] > _AMBIGUOUS_LEAK or closed_at_init(model)):
            after = _leak_after_steps(model, spec, (batch, changed, first), device)
            # from exactly 0, anything past float noise is a path that opened
            if after is not None and after[0] > (1e-4 if found[0] else 1e-6):
                probe.leak_at_init, found = found[0], after
        probe.leak, probe.leak_moved, probe.leak_positions, probe.reach_back = found
    return probe


def closed_at_init(model: nn.Module) -> list[str]:
    """Parameters other than biases that are exactly 0 everywhere: gates that close a path at
    initialisation (ReZero's alpha, a zero-initialised gate or output projection), so what
    flows through it is seen only after the first optimizer steps."""
    return [name for name, p in model.named_parameters()
            if p.numel() and not name.endswith("bias") and not bool(p.detach().any())]


# A causal model's earlier outputs do not move at all when the last token changes (masked
# scores softmax to exactly 0); a bidirectional one whose mixing starts tiny — a layer scale
# of 1e-5 (CaiT) — moves them by ~1e-6 at init. Between this and 1e-4 the probe looks again.
_AMBIGUOUS_LEAK = 1e-7


def _leak(out: torch.Tensor, out2: torch.Tensor, out3: torch.Tensor,
          ) -> tuple[float, int, int, float]:
    """``(leak, positions moved, positions compared, reach back)``: the largest relative move
    of the outputs before the last position when the last token changed (``out2``), how many
    of them moved (by more than 1e-4 of the largest move: a bidirectional model moves every
    one, a partial leak some), and the largest relative move of the outputs after the first
    position when the first token changed (``out3``). Centred over the last axis: a constant
    added to every logit (log_softmax's -log V, a soft cap's offset) changes nothing and must
    not shrink a change into a tiny relative one."""
    if out.shape[1] < 2:
        return 0.0, 0, 0, 0.0
    if out.shape[-1] > 1:
        out, out2, out3 = (o.float() - o.float().mean(-1, keepdim=True)
                           for o in (out, out2, out3))
    scale = float(out.detach().abs().max().clamp_min(1e-6))
    per_position = (out[:, :-1] - out2[:, :-1]).abs().float().amax(dim=(0, 2))  # (T - 1,)
    worst = float(per_position.max())
    moved = int((per_position > 1e-4 * worst).sum()) if worst > 0 else 0
    back = float((out[:, 1:] - out3[:, 1:]).abs().max())
    return worst / scale, moved, int(per_position.numel()), back / scale


def _leak_after_steps(model: nn.Module, spec: ForwardSpec, batches: tuple[dict, dict, dict],
                      device: torch.device) -> tuple[float, int, int, float] | None:
    """The leak (as :func:`_leak`, on the probe's base, last-changed and first-changed
    batches) after two sign-gradient steps of a surrogate loss (the outputs' mean square) have
    opened what starts nearly closed; the weights are restored. A causal model stays at ~0; a
    bidirectional one with a small mixing branch grows past 1e-4. None when the steps cannot
    be taken."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    try:
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            args, kwargs = spec.build_call(batches[0])
            out, _ = extract_output(_seeded_call(model, args, kwargs, device))
            loss = out.float().pow(2).mean()
            if not loss.requires_grad:
                return None
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None and bool(torch.isfinite(p.grad).all()):
                        p.add_(p.grad.sign(), alpha=-1e-3)
        model.eval()
        with torch.no_grad():
            outs = [extract_output(_seeded_call(model, *spec.build_call(b), device))[0]
                    for b in batches]
        return _leak(*outs)
    except Exception:  # the probe's verdict at init stands
        return None
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        model.train(was_training)
