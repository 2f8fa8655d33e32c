"""The rebuildable folder: ``model.safetensors`` + ``config.json`` + the model's code (+ the
tokenizer and the model card), which :func:`utils.load_model` rebuilds on any machine.

Parity: the folder is loaded back with ``utils.load_model`` and adapted the same way; its
logits must be identical (tolerance 0) to the eager model's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from utils.training.export.program import Job, LogitsModule

NAME, FILE, KIND = "folder", "folder", "identical"
REQUIRES = ("safetensors",)


class _CopiedFiles:
    """Tokenizer files already on disk, saved into the folder as a tokenizer would save."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def save(self, folder: Path) -> None:
        for file in self.files:
            shutil.copy2(file, Path(folder) / file.name)


def write(job: Job) -> Path:
    from utils.training.runs import save_model_folder

    origin = job.origin
    final = origin.run.get("final") or {}
    extra = {"source": origin.provenance,
             **{k: final[k] for k in ("steps", "metrics") if k in final}}
    tokenizer = _CopiedFiles(origin.tokenizer_files) if origin.tokenizer_files else None
    return save_model_folder(origin.adapter.model, origin.loaded, job.out_dir / FILE,
                             tokenizer=tokenizer, extra=extra)


def runner(path: Path, job: Job) -> Callable[[tuple[torch.Tensor, ...]], torch.Tensor]:
    from utils.adapters import adapt, load_model

    a = job.origin.adapter
    rebuilt = adapt(load_model(path, say=lambda message: None), task=a.task,
                    vocab_size=a.vocab_size, max_seq_len=a.max_seq_len,
                    num_classes=a.num_classes, device="cpu")
    module = LogitsModule(rebuilt, job.program.names).eval()

    def run(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            return module(*inputs)

    return run


def example(names: tuple[str, ...]) -> str:
    args = ", ".join(f"{n}=batch[{n!r}]" for n in names)
    return ("import utils\n"
            "adapter = utils.adapt(utils.load_model(\"folder/\"))\n"
            "batch = adapter.make_inputs(2, 16)  # or your tokenizer's ids\n"
            f"logits = adapter.logits({args})")
