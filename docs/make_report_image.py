"""Draw ``docs/images/report.png``, the picture at the top of the README.

It is a real report: Tier 1 on ``tests/zoo/no_causal_mask`` (a small GPT from the public zoo
whose attention has no causal mask), drawn the way the notebook's table shows it — status,
check, summary; a passing row on one line, a failing or warning one in full — with matplotlib
only. The checks are seeded, so apart from inference_speed's latencies the picture changes
only when their wording does (the seconds column is left out for that reason). Regenerate it
after such a change; it is a 32-colour PNG of about 40 KB:

    .venv/bin/python docs/make_report_image.py
"""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = ROOT / "tests" / "zoo" / "no_causal_mask"
OUT = ROOT / "docs" / "images" / "report.png"
COLOUR = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#6e7781",
          "error": "#8250df"}
ICON = {"pass": "✓", "warn": "!", "fail": "✗", "skip": "-", "error": "E"}
WIDTH = 104  # characters of a summary line


def rows(report) -> list[tuple[str, str, str]]:
    """(colour, left column, text) per line: the header, one block per check, the verdict."""
    lines = []
    for r in report.results:
        text = (textwrap.wrap(r.summary, WIDTH) if r.status != "pass" else
                [r.summary if len(r.summary) <= WIDTH else r.summary[:WIDTH - 1] + "…"])
        left = f"{ICON[r.status]} {r.status:<4}  {r.name}"
        lines.append((COLOUR[r.status], left, text[0]))
        lines += [(COLOUR[r.status], "", more) for more in text[1:]]
    return lines


def draw(report, model_line: str, verdict: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = rows(report)
    height = 0.2 * (len(lines) + 5)
    fig = plt.figure(figsize=(11.5, height), dpi=100)
    fig.patch.set_facecolor("white")
    step = 1 / (len(lines) + 5)
    font = {"family": "DejaVu Sans Mono", "size": 8.6}
    y = 1 - step * 1.2
    fig.text(0.01, y, "testbench validate tests/zoo/no_causal_mask", fontdict={**font,
             "weight": "bold"})
    y -= step
    fig.text(0.01, y, model_line, fontdict=font, color="#57606a")
    y -= step * 1.4
    for colour, left, text in lines:
        fig.text(0.01, y, left, fontdict=font, color=colour,
                 weight="bold" if left and not left.startswith("✓") else "normal")
        fig.text(0.245, y, text, fontdict=font, color="#24292f")
        y -= step
    fig.text(0.01, y - step * 0.4, verdict, fontdict={**font, "weight": "bold"},
             color=COLOUR["fail" if not report.passed else "pass"])
    return fig


def main() -> None:
    import torch
    from PIL import Image

    import utils
    from utils.tier1_critical_validation import run_tier1

    torch.set_num_threads(1)
    loaded = utils.load_model(MODEL, say=lambda _: None)
    adapter = utils.adapt(loaded)
    report = run_tier1(adapter, progress=False)
    counts = {s: sum(r.status == s for r in report.results) for s in COLOUR}
    said = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    verdict = f"{'PASSED' if report.passed else 'FAILED'}: {len(report.results)} checks ({said})"
    params = sum(p.numel() for p in loaded.model.parameters())
    model_line = (f"{loaded.model_class.__name__}: {params:,} parameters · task "
                  f"{adapter.task} · vocab {adapter.vocab_size} · max length {adapter.max_seq_len}")
    fig = draw(report, model_line, verdict)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    image = Image.open(buffer).convert("RGB").quantize(colors=32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    image.save(OUT, optimize=True)
    print(f"{OUT.relative_to(ROOT)}: {image.size[0]}×{image.size[1]}, "
          f"{OUT.stat().st_size / 1024:.0f} KB — {verdict}")


if __name__ == "__main__":
    main()
