"""``model.onnx``: the dynamo-based ``torch.onnx.export`` (never the deprecated TorchScript
exporter) with the same dynamic dimensions as ``model.pt2``, opset 18 (opset 17 produced an
invalid ``Split``), checked with ``onnx.checker`` (``full_check``) and served by onnxruntime.

One file while the weights stay below protobuf's 2 GB limit; above it the weights go to
``model.onnx.data`` beside it (external data).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from utils.environment import require
from utils.training.export.program import Job, export_with_limit, staged

NAME, FILE, KIND = "onnx", "model.onnx", "onnx"
REQUIRES = ("onnx", "onnxscript", "onnxruntime")
OPSET = 18
PROTOBUF_LIMIT = 2 * 1024**3  # bytes: one ModelProto cannot be larger


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporter's and the quantizer's log lines (skipped torchvision ops, advice to
    pre-process) are not the user's concern."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # "the axis name batch will not be used": the mask
            warnings.filterwarnings("ignore", message=".*axis name")  # shares the ids' Dims
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def write(job: Job) -> Path:
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")
    program = job.program
    module = program.module.eval()
    external = weight_bytes(program.adapter.model) >= PROTOBUF_LIMIT
    with staged(job.out_dir) as tmp, quiet():
        path = tmp / FILE
        export_with_limit(program, lambda shapes: torch.onnx.export(
            module, program.args, str(path), dynamo=True, dynamic_shapes=shapes,
            opset_version=OPSET, input_names=list(program.names), output_names=["logits"],
            external_data=external, verbose=False))
        onnx.checker.check_model(str(path), full_check=True)
    if external:
        program.notes.append(f"The weights are in {FILE}.data beside {FILE} (above 2 GB).")
    return job.out_dir / FILE


def session(path: Path):
    ort = require("onnxruntime", "Running an ONNX model")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # idle threads that spin after each run steal the CPU from whatever runs next (the eager
    # model it is timed against, on a 2-core Colab VM)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(path: Path, job: Job) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    sess = session(path)
    taken = {i.name for i in sess.get_inputs()}  # an input the graph never reads is dropped

    def run(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        feed = {n: t.numpy() for n, t in zip(job.program.names, inputs, strict=True)
                if n in taken}
        return torch.from_numpy(sess.run(None, feed)[0])

    return run


def example(names: tuple[str, ...], file: str = FILE) -> str:
    feed = ", ".join(f"\"{n}\": {n}" for n in names)
    return ("import onnxruntime as ort\n"
            f"session = ort.InferenceSession(\"{file}\", providers=[\"CPUExecutionProvider\"])\n"
            f"logits = session.run(None, {{{feed}}})[0]  # int64 arrays [batch, seq]")
