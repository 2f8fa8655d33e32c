"""Text datasets for training: load, find the columns, clean, split, summarise.

``load_text_dataset`` turns any source (:mod:`utils.training.text_sources`) into a
:class:`TextDataset`: a train and a validation ``datasets.Dataset`` whose rows are documents,
with the roles of the columns decided (text; label for classification; source and target for
seq2seq) and blank documents dropped. The split happens before any tokenization or packing.

Text is trained as written. A text file is one document by default (``document="file"``), so
its line breaks and blank lines reach the model, as in nanoGPT's one stream and litgpt's
``TextFiles``; the tokenizer's ``eos`` marks where one file ends and the next begins (the
packing in :mod:`utils.tokenization.batching`). ``document="paragraph"`` or ``"line"`` makes
the blank line or the line break a document boundary instead (the separator becomes ``eos``),
for files that hold one document per paragraph or per line.

How the validation text is held out (``holdout``):

* ``"documents"`` — a seeded choice of whole documents, for corpora of many documents (a Hub
  dataset, a table of rows).
* ``"tail"`` — the last ``validation_fraction`` of every document's characters, starting at a
  line start: every document is both trained on and scored, like nanoGPT's contiguous 90/10
  split of its one stream. A corpus of one file trains; 18 plays do not lose one whole play.
* ``"auto"`` (default) — for a task trained on packed text, ``tail`` when whole documents
  would hold out fewer than :data:`MIN_HELD_OUT_DOCUMENTS` documents and a typical tail has
  :data:`MIN_TAIL_CHARS` characters or more (or when there are too few documents to hold one
  out); else ``documents``.

Example:
    >>> from utils.training.dataset_utilities import load_text_dataset
    >>> data = load_text_dataset("wikitext", config="wikitext-2-raw-v1")   # needs the Hub
    >>> data = load_text_dataset("my_corpus/", validation_fraction=0.1)      # local files
    >>> print(data.summary())
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.environment import require
from utils.errors import UserError
from utils.tasks import TASKS
from utils.training.text_sources import example_corpus, read_source

__all__ = ["HOLDOUTS", "MIN_HELD_OUT_DOCUMENTS", "DatasetStats", "TextDataset", "example_corpus",
           "load_text_dataset"]

TEXT_NAMES = ("text", "content", "document", "sentence", "body", "article", "review", "passage")
LABEL_NAMES = ("label", "labels", "class", "category", "sentiment", "target", "y")
PAIR_NAMES = (("source", "target"), ("src", "tgt"), ("input", "output"), ("question", "answer"),
              ("document", "summary"), ("article", "highlights"), ("prompt", "completion"))
CHARS_PER_TOKEN = 4  # rough English average for BPE tokenizers; real counts come after tokenizing
HOLDOUTS = ("auto", "documents", "tail")
# Fewer whole documents than this in the validation split make its loss the loss of whichever
# documents were drawn: holdout="auto" takes the tail of every document instead, when a tail
# is long enough to be scored with context (a few hundred tokens), or when there is no choice.
MIN_HELD_OUT_DOCUMENTS = 20
MIN_TAIL_CHARS = 1_000
_PACKED_TASKS = ("causal_lm", "masked_lm", "encoder")  # text as a stream; rows are not samples


@dataclass(frozen=True)
class DatasetStats:
    """Size of one split, counted on the text (or source) column."""

    documents: int
    characters: int
    bytes: int

    @property
    def estimated_tokens(self) -> int:
        """About ``characters / 4``: a BPE tokenizer's typical rate on English."""
        return self.characters // CHARS_PER_TOKEN


@dataclass
class TextDataset:
    """Documents ready for tokenizing, split into train and validation."""

    train: Any
    """``datasets.Dataset`` of training documents."""
    validation: Any
    """``datasets.Dataset`` of validation documents (may be empty if the fraction is 0)."""
    task: str
    text_column: str
    """The text; for seq2seq, the source side."""
    label_column: str | None = None
    target_column: str | None = None
    label_names: list[str] | None = None
    """Class names when labels were strings (label id = index here)."""
    num_classes: int | None = None
    source: str = ""
    cut: str = ""
    """How the source was cut into documents (a text file's mode, or one per row)."""
    split_by: str = "documents, seeded"
    stats: dict[str, DatasetStats] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line naming the data, how it was cut and split, and the split sizes: what a run
        folder's ``summary.json`` records."""
        sizes = ", ".join(f"{name} {s.documents:,} documents ({s.characters:,} chars)"
                          for name, s in self.stats.items())
        cut = f"; {self.cut}" if self.cut else ""
        return (f"{self.source} ({sizes}{cut}; validation: {self.split_by})" if sizes
                else self.source)

    def summary(self) -> str:
        """A few lines for a notebook or a log."""
        lines = [f"Text dataset from {self.source} (task {self.task}, text column "
                 f"'{self.text_column}'"
                 + (f", label '{self.label_column}' with {self.num_classes} classes"
                    if self.label_column else "")
                 + (f", target '{self.target_column}'" if self.target_column else "") + ")"]
        for name, s in self.stats.items():
            lines.append(f"  {name:<10} {s.documents:>9,} documents  {s.characters:>13,} chars  "
                         f"~{s.estimated_tokens:,} tokens")
        if any(self.dropped.values()):
            lines.append("  dropped    " + ", ".join(f"{n:,} {why}" for why, n
                                                      in self.dropped.items() if n))
        if self.cut:
            lines.append(f"  documents  {self.cut}")
        lines.append(f"  validation {self.split_by}")
        return "\n".join(lines)


def load_text_dataset(source: Any = None, *, config: str | None = None, split: str | None = None,
                      task: str = "causal_lm", text_column: str | None = None,
                      label_column: str | None = None, target_column: str | None = None,
                      document: str = "file", validation_fraction: float = 0.05,
                      holdout: str = "auto", dedup: bool = False, seed: int = 0,
                      max_documents: int | None = None,
                      cache_dir: str | Path | None = None) -> TextDataset:
    """Load text from ``source`` and split it into train and validation documents.

    Args:
        source: A local file or folder (.txt/.csv/.jsonl/.parquet), ``"upload"`` in Colab, a list
            of strings, a ``datasets.Dataset``, or a Hugging Face dataset name. ``None`` is the
            shipped Shakespeare corpus.
        config: The Hub dataset's configuration, e.g. ``"wikitext-2-raw-v1"``.
        split: Only this split of a Hub dataset (then it is split here).
        task: The model's task; decides which columns are needed.
        text_column, label_column, target_column: Column roles, when detection is not enough.
        document: How text files are cut into documents: ``file`` (default: each file as
            written, its line breaks and blank lines kept), ``paragraph`` (blank lines separate
            documents) or ``line`` (one document per line).
        validation_fraction: Share of the text held out, in [0, 0.5]; ignored when the source
            has its own validation split.
        holdout: How it is held out: ``auto``, ``documents`` or ``tail`` (module docstring).
        dedup: Drop documents whose text repeats an earlier one exactly.
        seed: Seed of the split by documents.
        max_documents: Keep only the first N documents (quick runs).
        cache_dir: Where ``datasets`` keeps its Arrow files.

    Raises:
        UserError: an unreadable source, a missing column, or no text left after cleaning.
    """
    problems = []
    if task not in TASKS:
        problems.append(f"task={task!r} (allowed: {', '.join(TASKS)})")
    if not 0 <= validation_fraction <= 0.5:
        problems.append(f"validation_fraction={validation_fraction} (allowed: 0 to 0.5)")
    if holdout not in HOLDOUTS:
        problems.append(f"holdout={holdout!r} (allowed: {', '.join(HOLDOUTS)})")
    if max_documents is not None and max_documents < 1:
        problems.append(f"max_documents={max_documents} (allowed: 1 or more, or None)")
    if problems:
        raise UserError("load_text_dataset got " + "; ".join(problems) + ".",
                        fix="Correct the arguments listed.")
    raw, described, cut = read_source(example_corpus() if source is None else source,
                                      config=config, split=split, document=document,
                                      cache_dir=Path(cache_dir) if cache_dir is not None else None)
    given = dict(raw) if hasattr(raw, "keys") else {"train": raw}
    first = next(iter(given.values()))
    roles = _roles(first, task, text_column, label_column, target_column)
    data = TextDataset(train=None, validation=None, task=task, source=described, cut=cut,
                       **roles)
    cleaned = {}
    for name, ds in given.items():
        if max_documents is not None:
            ds = ds.select(range(min(max_documents, len(ds))))
        cleaned[name] = _clean(ds, data, dedup)
    if data.label_column:
        cleaned = _encode_labels(cleaned, data)
    val_name = next((n for n in ("validation", "valid", "dev", "test") if n in cleaned), None)
    if "train" in cleaned and val_name and len(cleaned[val_name]):
        data.train, data.validation = cleaned["train"], cleaned[val_name]
        data.split_by = f"the source's own '{val_name}' split"
    else:
        data.train, data.validation, data.split_by = _split(
            cleaned.get("train", first), data, validation_fraction, holdout, seed)
    data.stats = {"train": _stats(data.train, data.text_column),
                  "validation": _stats(data.validation, data.text_column)}
    return data


def _roles(ds, task: str, text: str | None, label: str | None, target: str | None) -> dict:
    columns = dict(ds.features)
    strings = [c for c, f in columns.items() if getattr(f, "dtype", None) in ("string",
                                                                               "large_string")]
    listing = ", ".join(f"{c} ({getattr(f, 'dtype', type(f).__name__)})"
                        for c, f in columns.items())
    for role, name in (("text_column", text), ("label_column", label),
                       ("target_column", target)):
        if name is not None and name not in columns:
            raise UserError(f"The column '{name}' ({role}) is not in the dataset.",
                            why=f"Its columns are: {listing}.",
                            fix=f"Pass {role}= one of those names.")
    if task == "seq2seq" and (text is None or target is None):
        pair = next(((s, t) for s, t in PAIR_NAMES if s in strings and t in strings), None)
        if pair is None:
            raise UserError("Could not find the source and target columns for seq2seq.",
                            why=f"Columns: {listing}. Known pairs: "
                            + ", ".join("/".join(p) for p in PAIR_NAMES) + ".",
                            fix="Pass text_column='<source>' and target_column='<target>'.")
        text, target = text or pair[0], target or pair[1]
    if text is None:
        named = [c for c in TEXT_NAMES if c in strings]
        if len(strings) == 1 or named:
            text = named[0] if named else strings[0]
        else:
            why = (f"Its columns are {listing}, and " +
                   ("none holds strings." if not strings else
                    "several hold strings and none has a usual text name."))
            raise UserError("Could not tell which column holds the text.", why=why,
                            fix="Pass text_column='<name>' (one of the string columns).")
    if task == "classification" and label is None:
        label = next((c for c in LABEL_NAMES if c in columns and c != text), None)
        if label is None:
            raise UserError("Could not find the label column for classification.",
                            why=f"Its columns are: {listing}.",
                            fix="Pass label_column='<name>' (integers or class names).")
    return {"text_column": text, "label_column": label if task == "classification" else None,
            "target_column": target if task == "seq2seq" else None}


def _clean(ds, data: TextDataset, dedup: bool):
    """Drop blank documents (WikiText has many blank lines) and, optionally, exact repeats."""
    cols = [c for c in (data.text_column, data.target_column) if c]
    before = len(ds)

    def keep(batch):
        return [all(isinstance(t, str) and t.strip() for t in row)
                for row in zip(*(batch[c] for c in cols), strict=True)]

    ds = ds.filter(keep, batched=True, batch_size=10_000,
                   desc="Dropping blank documents")
    data.dropped["blank documents"] = data.dropped.get("blank documents", 0) + before - len(ds)
    if dedup and len(ds):
        seen, kept = set(), []
        for start, batch in _iter_batches(ds, cols):
            for i, row in enumerate(zip(*batch, strict=True)):
                digest = hashlib.blake2b("\x00".join(row).encode(), digest_size=16).digest()
                if digest not in seen:
                    seen.add(digest)
                    kept.append(start + i)
        data.dropped["duplicates"] = data.dropped.get("duplicates", 0) + len(ds) - len(kept)
        ds = ds.select(kept) if len(kept) < len(ds) else ds
    return ds


def _iter_batches(ds, cols: list[str], size: int = 10_000):
    for start in range(0, len(ds), size):
        chunk = ds.select_columns(cols)[start:start + size]
        yield start, [chunk[c] for c in cols]


def _encode_labels(splits: dict, data: TextDataset) -> dict:
    col = data.label_column
    assert col is not None, "called for a dataset with labels"
    dtype = getattr(splits[next(iter(splits))].features[col], "dtype", None)
    names = getattr(splits[next(iter(splits))].features[col], "names", None)
    if dtype in ("string", "large_string"):
        names = sorted({v for ds in splits.values() for v in ds.unique(col)})
        index = {n: i for i, n in enumerate(names)}
        datasets = require("datasets", "Loading a text dataset")
        splits = {k: ds.map(lambda b: {col: [index[v] for v in b[col]]}, batched=True,
                            features=_with(ds.features, col, datasets.ClassLabel(names=names)),
                            desc="Encoding labels") for k, ds in splits.items()}
    elif dtype is not None and not dtype.startswith(("int", "uint", "bool")) and not names:
        raise UserError(f"The label column '{col}' holds {dtype} values.",
                        why="Class labels are integers 0..C-1 or class names (strings).",
                        fix="Pass label_column= the column with the classes.")
    values = [v for ds in splits.values() for v in ds.unique(col)]
    if any(v is None or int(v) < 0 for v in values):
        raise UserError(f"The label column '{col}' has missing or negative labels.",
                        why="Every document needs a class 0..C-1.",
                        fix="Drop the unlabelled rows, or map them to a class.")
    data.label_names = list(names) if names else None
    data.num_classes = len(names) if names else int(max(values)) + 1
    return splits


def _with(features, col: str, feature):
    features = features.copy()
    features[col] = feature
    return features


def _split(ds, data: TextDataset, fraction: float, holdout: str, seed: int):
    """``(train, validation, how)`` for a source without its own validation split."""
    import numpy as np

    n = len(ds)
    if n == 0:
        raise UserError("The dataset has no text: every document was empty or blank.",
                        why="Blank documents are dropped, and nothing was left to train on.",
                        fix="Check the file or the text_column; for a Hub dataset, the config.")
    if fraction == 0:
        return ds, ds.select([]), "none (validation_fraction=0)"
    n_val = max(1, round(n * fraction))
    if holdout == "auto":
        packed = data.task in _PACKED_TASKS
        few = n_val < MIN_HELD_OUT_DOCUMENTS and packed and \
            _median_chars(ds, data.text_column) * fraction >= MIN_TAIL_CHARS
        holdout = "tail" if few or (packed and n_val >= n) else "documents"
    if holdout == "tail":
        if data.task not in _PACKED_TASKS:
            raise UserError(f"holdout='tail' cuts documents in two, which a {data.task} "
                            "dataset's rows cannot be (each is one labelled sample).",
                            fix="Use holdout='documents' (or 'auto').")
        return (*_tails(ds, data.text_column, fraction),
                f"the last {fraction:.0%} of every document, from a line start")
    if n_val >= n:
        raise UserError(f"The dataset has {n} document(s): too few for a train/validation "
                        "split by document.", why="Each split needs at least one document.",
                        fix="Hold out the tail of every document instead (holdout='tail' or "
                        "'auto'), add text, or set validation_fraction=0 (--val-fraction 0).")
    order = np.random.default_rng(seed).permutation(n)
    # (n_val,) indices; both splits keep the source order, shuffling is the sampler's job
    return (ds.select(np.sort(order[n_val:])), ds.select(np.sort(order[:n_val])),
            f"{n_val:,} whole documents of {n:,}, a seeded choice (seed {seed}, "
            f"{fraction:.0%})")


def _median_chars(ds, column: str) -> float:
    import numpy as np
    import pyarrow.compute as pc

    lengths = pc.utf8_length(ds.with_format("arrow")[:].column(column)).to_numpy()
    return float(np.median(lengths)) if len(lengths) else 0.0


def tail_cut(text: str, fraction: float) -> int:
    """Where ``text``'s held-out tail starts: about ``fraction`` of its characters from the
    end, moved to a line start (else a word start) so no line is cut in two — the next one,
    unless that leaves no text to score, then the one before."""
    at = len(text) - max(1, round(len(text) * fraction))
    if at <= 0:
        return 0
    end = len(text.rstrip())  # the tail must hold text, not only the final line break
    for sep in ("\n", " "):
        after = text.find(sep, at - 1)
        if after != -1 and after + 1 < end:
            return after + 1
        before = text.rfind(sep, 0, at)
        if before != -1:
            return before + 1
    return at


def _head_and_tail(batch: dict[str, list], column: str, fraction: float, part: str):
    cuts = [tail_cut(t, fraction) for t in batch[column]]
    texts = [t[:c] if part == "head" else t[c:] for t, c in zip(batch[column], cuts, strict=True)]
    return {column: texts}


def _tails(ds, column: str, fraction: float):
    """Every document's head (train) and tail (validation); parts with no text are dropped."""
    parts = []
    for part in ("head", "tail"):
        cut = ds.map(_head_and_tail, batched=True, desc=f"Holding out the tails ({part})",
                     fn_kwargs={"column": column, "fraction": fraction, "part": part})
        parts.append(cut.filter(lambda b: [bool(t.strip()) for t in b[column]], batched=True,
                                desc="Dropping empty parts"))
    return parts[0], parts[1]


def _stats(ds, column: str) -> DatasetStats:
    import pyarrow.compute as pc

    if len(ds) == 0:
        return DatasetStats(0, 0, 0)
    table = ds.with_format("arrow")[:]  # honours select()'s indices, zero-copy otherwise
    col = table.column(column)
    chars = pc.sum(pc.utf8_length(col)).as_py() or 0
    nbytes = pc.sum(pc.binary_length(col)).as_py() or 0
    return DatasetStats(len(ds), int(chars), int(nbytes))
