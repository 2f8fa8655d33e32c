"""``fine_tune``: train a model on real data, then check that it learnt like a healthy model.

One call is :func:`~utils.training.training_core.train` — with its Tier 1 gate, so no compute
goes to a model with a causal leak (a failure stops with the gate's report unless
``force=True``) — followed by Tier 3's learning-sanity checks on the run
(:mod:`utils.tier3.learning_checks`), attached to the result as ``result.report``.

Example:
    >>> from utils.tier3_training_utilities import fine_tune
    >>> result = fine_tune(utils.load_model("my_model/"), "my_texts/", max_steps=500)
    >>> result.report            # first loss ≈ ln(vocab), loss falls, no overfitting, ...
    >>> result.metrics["val_loss"], result.plot()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from utils.tasks import chance_loss
from utils.tier3.learning_checks import LearningRun, run_learning_checks, validate_thresholds

__all__ = ["fine_tune", "learning_run",
           "training_flops_per_token"]


def training_flops_per_token(model: nn.Module) -> float:
    """6 FLOPs (forward 2, backward 4) per weight that multiplies activations, per token.

    Embedding tables are looked up, not multiplied, so they count only when a ``nn.Linear``
    shares them (a tied output head). Attention's score and value products are not counted.
    """
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    heads = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if id(p) not in tables or id(p) in heads:
            n += p.numel()
    return 6.0 * n


def _device(config: Any) -> tuple[str, str, float | None]:
    """Where the run trained, its effective precision, and that device's peak FLOP/s."""
    import torch

    from utils.gpu_table import lookup

    cuda = torch.cuda.is_available() and config.accelerator in ("auto", "gpu", "cuda")
    if not cuda:
        return "cpu", config.effective_precision("cpu", False), None
    name = torch.cuda.get_device_name(0)
    precision = config.effective_precision("cuda", torch.cuda.is_bf16_supported())
    gpu = lookup(name)
    if gpu is None:
        return name, precision, None
    tflops = gpu.half_tflops if precision in ("16-mixed", "bf16-mixed") else gpu.fp32_tflops
    return name, precision, tflops * 1e12


def learning_run(result: Any, losses: list[tuple[int, float]],
                 val_losses: Sequence[tuple[int, float]] = ()) -> LearningRun:
    """The facts the learning checks read, from a ``TrainResult``, its per-step training
    losses and its validation losses."""
    adapter, config = result.adapter, result.config
    device, precision, peak = _device(config)
    resumed = (result.resumed_from or {}).get("step")
    return LearningRun(task=adapter.task, chance=chance_loss(adapter), losses=list(losses),
                       steps=result.steps, history=result.history,
                       val_losses=list(val_losses), resumed_from=resumed,
                       warmup_steps=config.warmup_steps, skipped_steps=result.skipped_steps,
                       rollbacks=result.rollbacks, tokens_per_second=result.tokens_per_second,
                       flops_per_token=training_flops_per_token(adapter.model), device=device,
                       precision=precision, peak_flops=peak)


def _config(model: Any, config: Any, overrides: dict[str, Any]):
    """``config`` with ``overrides``; with no config, the preset sized to the device."""
    if config is not None:
        return config.replace(**overrides) if overrides else config
    from utils.checks import as_adapter
    from utils.ui.presets import preset_for

    return preset_for(as_adapter(model), **overrides)


def fine_tune(model: Any, data: Any = None, config: Any = None, *, force: bool = False,
              gate: bool = True, thresholds: Mapping[str, float] | None = None,
              tokenizer: Any = None, callbacks: Iterable[Any] = (), progress: bool | None = None,
              say: Callable[[str], None] = print, **overrides: Any):
    """Fine-tune ``model`` on ``data`` and check that it learnt.

    Args:
        model: A ``LoadedModel`` (its code goes into ``final/``), a ``ModelAdapter`` or an
            ``nn.Module``. It is trained in place.
        data: What ``train`` takes: a file, folder, Hugging Face dataset name, list of
            strings, a ``TextDataset`` (None: the shipped Shakespeare corpus).
        config: A ``TrainingConfig``; None = the preset sized to this device
            (``preset_for``: ``cpu``, or ``colab-t4`` on a GPU).
        force: Train even when the Tier 1 gate fails.
        gate: Run the Tier 1 gate first (on by default; a resumed run skips it).
        thresholds: Overrides of the learning checks' thresholds, e.g.
            ``{"loss_decrease.fraction": 0.5, "train_val_gap.warn_gap": 0.2}``.
        tokenizer, callbacks, progress, say: Passed to ``train``.
        **overrides: ``TrainingConfig`` fields applied to ``config`` (``max_steps=500``).

    Returns:
        The ``TrainResult``, with ``result.report`` the Tier 3 :class:`~utils.report.Report`.

    Raises:
        GateFailed: the Tier 1 gate failed (``err.report`` holds it) and ``force`` is False.
        UserError: an unknown threshold key or config field (before any training), bad data.

    Example:
        >>> result = fine_tune(loaded, "texts/", max_steps=300, lr=1e-3)
        >>> result.report.passed, result.report["loss_decrease"].summary
    """
    from utils.tier3.loss_trace import LossTrace
    from utils.training.training_core import train

    validate_thresholds(thresholds)
    config = _config(model, config, overrides)
    trace = LossTrace()
    result = train(model, data, config, callbacks=[trace, *callbacks], tokenizer=tokenizer,
                   force=force, gate=gate, progress=progress, say=say)
    run = learning_run(result, trace.per_step(), trace.validations)
    if result.interrupted:
        run.notes.append(f"Training was interrupted at step {result.steps}; the checks judge "
                         "the part that ran.")
    result.report = run_learning_checks(run, thresholds, model=result.adapter.describe(),
                                        source=result.adapter.source)
    return result
