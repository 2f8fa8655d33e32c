"""``overfit_one_batch``: can the model learn at all? Up to two dozen steps on one tiny batch.

A healthy model memorises two short random sequences quickly; a loss that does not fall means
the outputs cannot move (detached, squashed, saturated, or a learning signal cut somewhere),
which no shape or gradient check sees. Training stops early once the pass is certain — the loss
has fallen by the pass margin and a minimum number of steps ran without NaN/Inf (Adam's first
steps, the largest relative to the weights, are where a too-high learning rate diverges). The weights are put back afterwards — in memory when
a copy fits easily, else through a temporary file, so a big model is never held twice — and
Adam falls back to plain SGD when its two moment buffers would not fit.

A fixed batch is memorised even by a model whose blocks lost their residual or whose positions
never reach the output; ``residual_paths`` and ``position_information``
(``utils/tier1/residuals.py``, ``utils/tier1/positions.py``) probe those directly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from utils.checks import register
from utils.environment import free_memory_bytes
from utils.report import CheckResult
from utils.tier1.training_steps import Snapshot, train_without_dropout

if TYPE_CHECKING:
    from utils.adapters.protocol import Adapter



class _Adam:
    """Adam without weight decay, in a few tensor ops.

    ``torch.optim`` imports ``torch._dynamo`` when the first optimizer is built — about a
    second, a seventh of Tier 1's whole budget — for a check that needs two dozen plain steps.
    The update is PyTorch's own fused Adam kernel when the build has it (what
    ``torch.optim.Adam(fused=True)`` calls: one pass over each tensor instead of seven ops),
    else the same arithmetic op by op. With ``moments=False`` it is plain SGD, which keeps no
    state at all.
    """

    def __init__(self, params: list[torch.nn.Parameter], lr: float, moments: bool = True,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params] if moments \
            else None
        self.fused = moments and hasattr(torch, "_fused_adam_")
        # per-tensor step counts, as the fused kernel wants them (float32, beside the tensor)
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params] \
            if self.fused else []

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        grads = {i: p.grad for i, p in enumerate(self.params) if p.grad is not None}
        live = list(grads)
        if self.state is None:
            for i in live:
                self.params[i].add_(grads[i], alpha=-self.lr)
            return
        groups: dict[tuple, list[int]] = {}  # the fused kernel takes one device and dtype
        for i in live:
            groups.setdefault((self.params[i].device, self.params[i].dtype), []).append(i)
        b1, b2 = self.betas
        for idx in groups.values():
            if self.fused:
                try:
                    self._fused_step(idx, grads, self.state)
                    continue
                except (RuntimeError, TypeError):  # checked before any tensor is written
                    self.fused = False
            for i in idx:
                p, (m, v), g = self.params[i], self.state[i], grads[i]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2**self.t)).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))

    def _fused_step(self, idx: list[int], grads: dict[int, torch.Tensor],
                    state: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        steps = torch._foreach_add([self.steps[i] for i in idx], 1)  # kept once it has run
        torch._fused_adam_(
            [self.params[i] for i in idx], [grads[i] for i in idx],
            [state[i][0] for i in idx], [state[i][1] for i in idx], [], steps,
            lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
            eps=self.eps, amsgrad=False, maximize=False, grad_scale=None, found_inf=None)
        for i, step in zip(idx, steps, strict=True):
            self.steps[i] = step


def _optimizer(params: list[torch.nn.Parameter], device: torch.device, lr: float):
    """Adam when its moments (2 × trainable bytes, plus margin) fit on the device, else SGD."""
    need = 2.5 * sum(p.numel() * p.element_size() for p in params)
    free = free_memory_bytes(device)
    if free is not None and need > free:
        return _Adam(params, lr * 30, moments=False), "SGD (Adam's state would not fit)"
    return _Adam(params, lr), "Adam"


@register("overfit_one_batch", tier=1, thresholds=("steps", "min_steps", "lr", "min_drop"))
def check_overfit_one_batch(adapter: Adapter, options) -> CheckResult:
    if adapter.task == "encoder":
        return CheckResult("overfit_one_batch", 1, "skip",
                           "An encoder returns hidden states and has no task loss to fit.")
    model = adapter.model
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return CheckResult("overfit_one_batch", 1, "fail", "No parameter requires a gradient: "
                           "nothing can be trained. Unfreeze the weights (requires_grad=True).")
    steps = int(options.threshold("overfit_one_batch.steps", 24))
    min_steps = min(steps, int(options.threshold("overfit_one_batch.min_steps", 8)))
    lr = options.threshold("overfit_one_batch.lr", 3e-3)
    need = options.threshold("overfit_one_batch.min_drop", 0.3)
    batch = adapter.make_inputs(2, min(options.max_len(adapter), 16), seed=options.seed)
    snapshot = Snapshot(model)
    optimizer, opt_name = _optimizer(params, adapter.device, lr)
    losses: list[float] = []
    detached = False
    try:
        train_without_dropout(model)
        for i in range(steps + 1):  # the last pass only measures the loss after `steps`
            model.zero_grad(set_to_none=True)
            if i == steps:
                with torch.no_grad():
                    losses.append(float(adapter.loss(batch)))
                break
            loss = adapter.loss(batch)
            losses.append(float(loss.detach()))
            first = losses[0]
            if not math.isfinite(losses[-1]):
                break
            if not loss.requires_grad:
                detached = True
                break
            if i >= min_steps and 0 < first and first - losses[-1] >= need * first:
                break  # passed: fell by the margin after at least min_steps finite steps
            loss.backward()
            optimizer.step()
    finally:
        del optimizer
        model.zero_grad(set_to_none=True)
        snapshot.restore()
    rows = [{"step": i, "loss": v} for i, v in enumerate(losses)]
    first, last = losses[0], losses[-1]
    drop = (first - min(losses)) / first if first > 0 and math.isfinite(first) else 0.0
    metrics = {"steps": len(losses) - 1, "max_steps": steps, "min_steps": min_steps,
               "optimizer": opt_name, "lr": lr, "initial_loss": first,
               "final_loss": last, "relative_drop": drop,
               "weights_restored_via": "memory" if snapshot.in_memory else "temporary file"}
    threshold = {"pass_relative_drop": need, "fail_relative_drop_below": 0.1}
    what = f"{len(losses) - 1} {opt_name} steps (lr {lr:g}) on one batch of 2 × " \
           f"{batch['input_ids'].shape[1]}"
    if detached:
        return CheckResult(
            "overfit_one_batch", 1, "fail",
            "The loss does not depend on any trainable parameter (it has no grad_fn): the "
            "outputs are detached (.detach(), torch.no_grad, .data or a numpy round trip in "
            "forward), so training cannot change them.", metrics, threshold, rows)
    if not all(math.isfinite(v) for v in losses):
        return CheckResult(
            "overfit_one_batch", 1, "fail",
            f"The loss became NaN/Inf after {len(losses) - 1} of {what}: training diverges "
            "even on one batch. Check for unclamped exp/log, division by small norms, and the "
            "initial output scale.", metrics, threshold, rows)
    summary = f"{what}: loss {first:.3f} → {last:.3f} (−{drop:.0%}"
    if drop < 0.1:
        return CheckResult(
            "overfit_one_batch", 1, "fail",
            f"{summary}, below 10%): the model cannot fit even two sequences. Its outputs barely "
            "move with the weights — look for squashed or tiny logits (a tanh/normalise before "
            "the head, a temperature that divides by a huge number), frozen layers, or an "
            "output that ignores the hidden states.", metrics, threshold, rows)
    if drop < need:
        return CheckResult(
            "overfit_one_batch", 1, "warn",
            f"{summary}, below {need:.0%}): it learns, but slowly for one tiny batch. Check the "
            "output scale, normalisation and residual paths.", metrics, threshold, rows)
    early = f", reached within the {steps}-step limit" if len(losses) - 1 < steps else ""
    return CheckResult("overfit_one_batch", 1, "pass",
                       f"{summary}, ≥ {need:.0%}{early}); weights restored afterwards.", metrics,
                       threshold, rows)
