"""``context_use``: do the outputs depend on the other tokens — what only attention gives?

A mask that keeps only the diagonal (``tril(…).triu()``), a causal mask inside an encoder, a
classifier whose one read position sees only itself, a decoder handed its own input as memory:
each trains, memorises a batch and keeps every invariance, as a model that cannot use its
context. So the tokens are changed and the outputs must move: the later positions when the
earlier tokens change; for a bidirectional model also the earlier ones when the later tokens
change; a classifier's prediction (all but the first, all but the last changed); a seq2seq
decoder's outputs when the encoder's tokens change. A branch closed at initialisation by design
(a zero-initialised output projection, a layer scale at 0) is looked at again after one
optimizer step.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from utils.checks import register
from utils.report import CheckResult
from utils.tier1.inputs import token_key
from utils.tier1.outputs import NAN_SOURCES, eval_logits, moved_by_changing, without_padding
from utils.tier1.training_steps import after_first_steps

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



def _probes(adapter: Adapter, options, t: int) -> list[tuple[str, float, str]]:
    """``(what was changed, relative change of the outputs, the diagnosis if none)`` for
    each way the other tokens must matter to this task."""
    # two samples: a model that normalises over the batch is not blanked out at batch 1
    batch = without_padding(adapter.make_inputs(2, t, seed=options.seed))
    ref = eval_logits(adapter, batch, options.seed).float()
    key, half, seed = token_key(adapter), t // 2, options.seed + 11
    probes: list[tuple[str, float, str]] = []  # (what was changed, relative change, diagnosis)
    if adapter.task == "classification":
        probes.append((f"every token but the last of {t}",
                       moved_by_changing(adapter, batch, key, slice(0, t - 1), seed, ref, None),
                       "the prediction reads the last position only, and that position sees "
                       "only itself"))
        probes.append((f"every token but the first of {t}",
                       moved_by_changing(adapter, batch, key, slice(1, t), seed + 1, ref, None),
                       "the prediction reads the first position only (a [CLS]-style pooling), "
                       "and that position sees only itself"))
    else:
        side = "decoder " if key == "decoder_input_ids" else ""
        probes.append((f"the first {half} {side}tokens (outputs at positions {half}–{t - 1})",
                       moved_by_changing(adapter, batch, key, slice(0, half), seed, ref,
                                         slice(half, t)),
                       "every position sees only itself — the attention mask keeps only the "
                       "diagonal (tril(…).triu(), torch.eye) or the attention's output never "
                       "reaches the residual stream"))
        if not adapter.is_causal:
            probes.append((f"the last {t - half} tokens (outputs at positions 0–{half - 1})",
                           moved_by_changing(adapter, batch, key, slice(half, t), seed + 1,
                                             ref, slice(0, half)),
                           "no position sees the tokens after it — the encoder applies a causal "
                           "mask (is_causal=True, a tril mask), so a bidirectional model "
                           "cannot use its right context"))
        if adapter.task == "seq2seq":
            probes.append((f"every encoder token ({t})",
                           moved_by_changing(adapter, batch, "input_ids", slice(0, t),
                                             seed + 2, ref, None),
                           "the decoder never reads the encoder — its cross-attention is given "
                           "something else as memory (the decoder's own input?) or its output "
                           "is dropped. It would train as a language model of the targets that "
                           "never reads the source"))
    return probes


@register("context_use", tier=1, thresholds=("rtol",))
def check_context_use(adapter: Adapter, options) -> CheckResult:
    """Outputs must depend on the other tokens — what only attention can give a transformer."""
    name = "context_use"
    t = min(options.max_len(adapter), 16)
    if t < 4:
        return CheckResult(name, 1, "skip", f"max_seq_len {t} leaves too little context to "
                           "change.")
    tol = options.threshold(f"{name}.rtol", 1e-5)
    threshold = {"no_dependence_at_or_below": tol}
    probes = _probes(adapter, options, t)
    rows: list[dict[str, Any]] = [{"changed": what, "max_rel_change": change}
                                  for what, change, _ in probes]
    if any(not math.isfinite(change) for _, change, _ in probes):
        return CheckResult(name, 1, "skip", f"The outputs are not finite at length {t} (NaN or "
                           "Inf), so whether they depend on the other tokens cannot be "
                           "measured. " + NAN_SOURCES, {"seq_len": t}, rows=rows)
    metrics = {"seq_len": t, "min_rel_change": min(r["max_rel_change"] for r in rows)}
    dead = [(what, change, why) for what, change, why in probes if change <= tol]
    if not dead:
        said = "; ".join(f"changing {what} moved the outputs by {change:.1e}"
                         for what, change, _ in probes)
        return CheckResult(name, 1, "pass", f"Outputs depend on the other tokens: {said} "
                           "(relative).", metrics, threshold, rows)
    with after_first_steps(adapter, options):  # closed at init by design (a zero projection)?
        still = [p for p in _probes(adapter, options, t) if p[1] <= tol]
    metrics["dead_after_first_steps"] = len(still)
    if not still:
        return CheckResult(name, 1, "pass", f"At initialisation changing {dead[0][0]} "
                           f"leaves the outputs unchanged (max relative change "
                           f"{dead[0][1]:.1e}) — a branch starts closed by design (a zero-"
                           "initialised output projection, a layer scale or ReZero gain at "
                           "0); after the first optimizer steps every probe moves the outputs, so "
                           "the context path is there.", metrics, threshold, rows)
    what, change, why = dead[0]
    return CheckResult(
        name, 1, "fail", f"Changing {what} leaves the outputs unchanged (max relative change "
        f"{change:.1e} ≤ {tol:g}): {why}." + ("" if "train" in why else " A model that "
                                                "cannot use its context trains to a "
                                                "unigram/bigram model and stalls there.") +
        (f" Also unchanged: {'; '.join(w for w, _, _ in dead[1:])}." if len(dead) > 1 else ""),
        metrics, threshold, rows)
