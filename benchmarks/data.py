"""Data-layer throughput: tokenize + pack, BPE training, and the cached second run.

Text is the shipped Shakespeare corpus, its paragraphs shuffled and repeated to the sizes asked
(nothing big is committed). Prints the figures and writes them as JSON.

    python benchmarks/data.py                       # ~50 MB tokenize+pack, BPE 8192 on 10 MB
    python benchmarks/data.py --mb 5 --bpe-mb 2     # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.tokenization import TextDataModule, tokenizer_for, train_bpe
from utils.training.dataset_utilities import load_text_dataset
from utils.training.text_sources import example_corpus


def corpus(megabytes: float, seed: int = 0) -> list[str]:
    """Shuffled corpus paragraphs, repeated until they hold ``megabytes`` of text."""
    paragraphs = [p for f in sorted(example_corpus().glob("*.txt"))
                  for p in f.read_text().split("\n\n") if p.strip()]
    rng, out, size = random.Random(seed), [], 0
    while size < megabytes * 1e6:
        rng.shuffle(paragraphs)
        for p in paragraphs:
            out.append(p)
            size += len(p.encode())
            if size >= megabytes * 1e6:
                break
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="text to tokenize and pack")
    parser.add_argument("--bpe-mb", type=float, default=10.0, help="text to train BPE on")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "data.json")
    args = parser.parse_args(argv)

    bpe_docs = corpus(args.bpe_mb, seed=1)
    bpe = train_bpe(iter(bpe_docs), args.vocab)
    print(f"BPE vocab {args.vocab} on {args.bpe_mb:g} MB: {bpe.seconds:.2f} s "
          f"(reached {bpe.reached})")

    docs = corpus(args.mb)
    megabytes = sum(len(d.encode()) for d in docs) / 1e6
    data = load_text_dataset(docs, validation_fraction=0.01)
    tok = tokenizer_for(args.vocab, strategy="bpe", corpus=bpe_docs[:20000], min_fill=0)
    model = SimpleNamespace(task="causal_lm", id_limit=args.vocab, max_seq_len=args.seq_len,
                            pad_token_id=None, mask_token_id=None, num_classes=None)
    with tempfile.TemporaryDirectory() as cache:
        dm = TextDataModule(data, tok, model, batch_size=32, num_workers=0, cache_dir=cache)
        start = time.perf_counter()
        dm.setup("fit")
        first = time.perf_counter() - start
        tokens = sum(dm.rows["train"]["length"]) + sum(dm.rows["validation"]["length"])
        again = TextDataModule(data, tok, model, batch_size=32, num_workers=0, cache_dir=cache)
        start = time.perf_counter()
        again.setup("fit")
        second = time.perf_counter() - start
        assert all(again.cache_hits.values())
        start = time.perf_counter()
        batches = sum(1 for _ in again.train_dataloader())
        loader_s = time.perf_counter() - start
    figures = {
        "text_mb": round(megabytes, 2), "documents": len(docs), "tokens": int(tokens),
        "tokenize_pack_seconds": round(first, 2),
        "tokenize_pack_mb_per_s": round(megabytes / first, 2),
        "cached_second_run_seconds": round(second, 3),
        "bpe_vocab": args.vocab, "bpe_text_mb": args.bpe_mb,
        "bpe_train_seconds": round(bpe.seconds, 2), "bpe_reached": bpe.reached,
        "one_epoch_batches": batches, "one_epoch_loader_seconds": round(loader_s, 2),
        "cpu_count": os.cpu_count(),
    }
    print(f"tokenize + pack {megabytes:.1f} MB: {first:.1f} s = {megabytes / first:.1f} MB/s "
          f"({tokens:,} tokens)")
    print(f"cached second run: {second:.3f} s; one epoch of {batches} batches read in "
          f"{loader_s:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    print(f"wrote {args.out}")
    return figures


if __name__ == "__main__":
    main()
