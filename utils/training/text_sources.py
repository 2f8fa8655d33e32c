"""Where text comes from: a Hugging Face dataset, local files or a folder, a Colab upload, a list.

Each reader returns a ``datasets.Dataset`` (or a ``DatasetDict`` when the source has its own
splits). Local files go through the ``datasets`` packaged builders (``text``, ``csv``, ``json``,
``parquet``), so they are converted to Arrow once and memory-mapped from the cache afterwards;
the cache is what lets the data module's tokenization be cached by fingerprint too.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from utils.environment import hub_reachable, require, testbench_home
from utils.errors import UserError, advice

__all__ = ["DOCUMENT_CUTS", "DOCUMENT_MODES", "ROW_CUT", "SUFFIX_BUILDER", "example_corpus",
           "read_source"]

# File suffix -> the `datasets` packaged builder that reads it.
SUFFIX_BUILDER = {
    ".txt": "text", ".text": "text", ".md": "text",
    ".csv": "csv", ".tsv": "csv",
    ".jsonl": "json", ".json": "json",
    ".parquet": "parquet",
}
# How a .txt file is cut into documents -> the `text` builder's sample_by. "file" keeps the text
# as written (line breaks and blank lines reach the model); "paragraph" and "line" make the blank
# line or the line break a document boundary, so the separator becomes the tokenizer's eos.
DOCUMENT_MODES = {"file": "document", "paragraph": "paragraph", "line": "line"}
# What each mode means, as a run's summary says it.
DOCUMENT_CUTS = {
    "file": "each file is one document, as written (line breaks and blank lines kept)",
    "paragraph": "blank lines cut the files into documents (the blank lines become eos)",
    "line": "each line is one document (the line breaks become eos)",
}
ROW_CUT = "each row is one document"
_FEATURE = "Loading a text dataset"


def example_corpus() -> Path:
    """The folder of the shipped corpus: 18 Shakespeare plays, one ``.txt`` each (~2.3 MB)."""
    return Path(__file__).resolve().parent.parent / "examples" / "corpus" / "shakespeare"


def read_source(source: Any, *, config: str | None = None, split: str | None = None,
                document: str = "file", cache_dir: Path | None = None,
                ) -> tuple[Any, str, str]:
    """Read ``source`` into a ``Dataset`` or ``DatasetDict``; also return a one-line description
    of the source and one of how it was cut into documents.

    Args:
        source: A path (file or folder), ``"upload"`` (Colab), a list of strings or of dicts, a
            ``datasets.Dataset``/``DatasetDict``, or a Hugging Face dataset name.
        config: The Hub dataset's configuration (``"wikitext-2-raw-v1"``).
        split: Only this split of a Hub dataset.
        document: How text files are cut into documents: ``file`` (each file as written),
            ``paragraph`` (blank-line separated) or ``line``.
        cache_dir: Where ``datasets`` keeps its Arrow files.
    """
    datasets = require("datasets", _FEATURE)
    cache = Path(cache_dir) if cache_dir else testbench_home() / "datasets"
    if document not in DOCUMENT_MODES:
        raise UserError(f"document={document!r} is not a way to cut text into documents.",
                        why=f"Allowed: {', '.join(DOCUMENT_MODES)}.",
                        fix='Use document="file" (each file as written), "paragraph" (blank-'
                        'line separated) or "line" (--document on the command line).')
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return source, f"a datasets.{type(source).__name__} in memory", ROW_CUT
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        return _from_records(datasets, source), f"{len(source)} records in memory", ROW_CUT
    if hasattr(source, "to_dict") and hasattr(source, "columns"):  # a pandas DataFrame
        return datasets.Dataset.from_pandas(source, preserve_index=False), "a DataFrame", ROW_CUT
    if not isinstance(source, (str, Path)):
        raise UserError(f"Cannot read text from a {type(source).__name__}.",
                        why="A source is a path, 'upload', a list of strings, a datasets.Dataset "
                        "or a Hugging Face dataset name.",
                        fix="Pass the path of a .txt/.csv/.jsonl/.parquet file or folder.")
    if str(source) == "upload":
        files = _colab_upload(cache)
        return (_read_files(datasets, files, document, cache), "a Colab upload",
                _cut(files, document))
    path = Path(source).expanduser()
    if path.exists():
        files = _local_files(path)
        return (_read_files(datasets, files, document, cache), str(path),
                _cut(files, document))
    if path.suffix.lower() in SUFFIX_BUILDER or str(source).startswith(("/", ".", "~")):
        raise UserError(f"File not found: {path}.", why="No file or folder has that path.",
                        fix="Check the path (in Colab, files you upload land in /content).")
    return (_from_hub(datasets, str(source), config, split, cache), f"Hub dataset {source}",
            ROW_CUT)


def _cut(files: list[Path], document: str) -> str:
    """How ``files`` were cut into documents: text files by ``document``, tables by row."""
    if files and SUFFIX_BUILDER[files[0].suffix.lower()] == "text":
        return DOCUMENT_CUTS[document]
    return ROW_CUT


def _from_records(datasets, records: Sequence) -> Any:
    if all(isinstance(r, str) for r in records):
        return datasets.Dataset.from_dict({"text": list(records)})
    if all(isinstance(r, Mapping) for r in records):
        return datasets.Dataset.from_list([dict(r) for r in records])
    kinds = sorted({type(r).__name__ for r in records})
    raise UserError(f"A list source holds {', '.join(kinds)} items.",
                    why="A list source is a list of strings (documents) or of dicts (rows).",
                    fix="Pass a list of strings, e.g. [\"first document\", \"second one\"].")


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in SUFFIX_BUILDER:
            raise UserError(f"{path.name}: files of type '{path.suffix}' cannot be read.",
                            why=f"Readable types: {', '.join(sorted(SUFFIX_BUILDER))}.",
                            fix="Convert it to .txt, .csv, .jsonl or .parquet.")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and p.suffix.lower() in SUFFIX_BUILDER
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        seen = sorted({p.suffix or p.name for p in path.rglob("*") if p.is_file()})[:10]
        raise UserError(f"The folder {path} holds no text files.",
                        why=f"Readable types: {', '.join(sorted(SUFFIX_BUILDER))}; found: "
                        f"{', '.join(seen) or 'nothing'}.",
                        fix="Point at a folder of .txt/.csv/.jsonl/.parquet files.")
    return files


def _read_files(datasets, files: list[Path], document: str, cache: Path) -> Any:
    builders = {SUFFIX_BUILDER[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise UserError(f"The files mix types ({', '.join(sorted(builders))}).",
                        why="One dataset is read by one reader: all text, all csv, ...",
                        fix="Keep files of one type in the folder, or load each type separately.")
    builder = builders.pop()
    if builder != "parquet":
        for p in files:
            check_utf8(p)
    kwargs: dict[str, Any] = {}
    if builder == "text":
        kwargs["sample_by"] = DOCUMENT_MODES[document]
    if builder == "csv" and all(p.suffix.lower() == ".tsv" for p in files):
        kwargs["sep"] = "\t"
    try:
        return datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                                     cache_dir=str(cache), **kwargs)
    except Exception as exc:  # the builders wrap parse errors in DatasetGenerationError
        cause = exc.__cause__ or exc
        raise UserError(f"Could not read {len(files)} {builder} file(s), e.g. {files[0].name}.",
                        why=f"{type(cause).__name__}: {str(cause)[:300]}",
                        fix=f"Check that the files are valid {builder}.") from exc


def check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """Raise a :class:`UserError` naming the first byte of ``path`` that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                at = offset + max(exc.start, 0)
                raise UserError(
                    f"{path.name} is not UTF-8 text: byte {at} (0x{exc.object[exc.start]:02x}) "
                    "cannot be decoded.",
                    why="Text files are read as UTF-8; this one is in another encoding "
                    "(often Latin-1 or Windows-1252) or is not text at all.",
                    fix="Re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`, "
                    "or in Python: Path(out).write_text(Path(p).read_text('latin-1'), 'utf-8').",
                ) from None
            if not data:
                return
            offset += len(data)


def _colab_upload(cache: Path) -> list[Path]:
    from utils.atomic import write_atomic
    from utils.colab import upload_files

    uploaded = upload_files("source='upload'", fix="Pass the path of a local file or folder "
                            "instead.")  # {file name: bytes}
    if not uploaded:
        raise UserError("No file was uploaded.", why="The file picker was closed empty.",
                        fix="Run the cell again and choose a .txt/.csv/.jsonl/.parquet file.")
    folder = cache / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in uploaded.items():
        target = folder / Path(name).name
        write_atomic(target, content)
        paths.append(target)
    return [p for p in paths if p.suffix.lower() in SUFFIX_BUILDER] or _local_files(paths[0])


@contextlib.contextmanager
def _offline(datasets, offline: bool):
    """``datasets`` in offline mode for one call (its flags are read when a call runs)."""
    names = [n for n in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if hasattr(datasets.config, n)]
    before = {n: getattr(datasets.config, n) for n in names}
    if offline:
        for n in names:
            setattr(datasets.config, n, True)
    try:
        yield
    finally:
        for n, v in before.items():
            setattr(datasets.config, n, v)


def _from_hub(datasets, name: str, config: str | None, split: str | None, cache: Path) -> Any:
    online, why_not = hub_reachable()
    try:
        with _offline(datasets, not online):  # the cache only: no 27 s of retries
            return datasets.load_dataset(name, config, split=split, cache_dir=str(cache))
    except ConnectionError as exc:
        raise UserError(
            f"Could not reach the Hugging Face Hub to load the dataset '{name}', and it is not "
            "in the local cache.",
            why=(f"Offline: {why_not}." if not online else
                 f"{exc} — the Hub is down or refused the request."),
            fix="Download the data once and pass its local path (a .txt/.csv/.jsonl/.parquet file "
            "or folder), or use the shipped corpus: "
            + advice("load_text_dataset(example_corpus()).", "leave out --data."),
        ) from None
    except FileNotFoundError as exc:  # DatasetNotFoundError is one
        raise UserError(f"There is no dataset '{name}' on the Hugging Face Hub, and no local "
                        "file or folder of that name.", why=str(exc)[:300],
                        fix="Check the name (e.g. 'wikitext' with config 'wikitext-2-raw-v1') "
                        "or the path.") from None
    except ValueError as exc:  # a missing or unknown config / split
        raise UserError(f"The Hub dataset '{name}' could not be loaded as asked "
                        f"(config={config!r}, split={split!r}).", why=str(exc)[:500],
                        fix="Pass one of the configs or splits the message lists.") from None
