"""Every code block of README.md and docs/*.md runs, so no command a reader copies can rot
(after litgpt's tests/test_readme.py: one test per block).

What runs: fenced ```bash and ```python blocks. Plain ``` and ```text blocks are outputs and
trees, not code. A block that cannot run here (a Colab-only cell, a GPU, several machines,
``make``, ``pip install``) has ``<!-- readme-test: skip — <reason> -->`` on the line above it;
every skip needs a reason, and skips stay a small minority.

Where: one sandbox per session, the working folder of every block, holding what the docs name:
``my_model/`` (the embedded example's model.py with a smaller config.json, so checks and
training take seconds), ``my_texts/`` (the openings of three plays), ``poems.txt``,
``reviews.csv``; ``TESTBENCH_HOME`` inside it; the docs' gist id (``GIST_ID``, owner alice)
served by the loopback Gist server (tests/gist_server.py); pushes taken by the loopback Hub
(tests/hub_server.py) as user ``your-name``. The blocks of a page run in order, as a reader
follows them: a block may use what an earlier block of its page made.

How: a bash line ``testbench …`` (or ``python -m utils …``) runs in this process through
``utils.__main__.main`` and must exit 0 — except ``testbench push``, which runs as a
subprocess: huggingface_hub reads ``HF_HUB_OFFLINE`` once, when first imported, and the rest of
the session is offline (a python block that calls ``push_to_hub`` runs as a subprocess too).
``export NAME=value`` sets a variable for the rest of the block; ``source .venv/bin/activate``
does nothing (the tests already run inside .venv). Any other command fails the test: mark its
block skip, or teach this file. A python block runs with ``exec`` in a fresh namespace.

Tiny budgets — the only rewrites of a block, so a copied command trains for seconds here (a
flag the line gives is replaced, else appended):

    bash    testbench train      --max-steps 4
            testbench search     --trials 2 --steps-per-trial 4
            testbench benchmark  --steps 4
    python  max_steps=N -> 4     n_trials=N -> 2     steps=N, steps_per_trial=N -> 4
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GIST_ID = "0123456789abcdef0123456789abcdef"  # the gist id every page uses
HUB_TOKEN = "hf_readmeTESTtoken0123456789abcdef"
CODE = {"bash", "python"}
NOT_CODE = {"", "text"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b\s*[—–:-]?\s*(.*?)\s*-->")

BASH_BUDGETS = {"train": {"--max-steps": "4"},
                "search": {"--trials": "2", "--steps-per-trial": "4"},
                "benchmark": {"--steps": "4"}}
PYTHON_BUDGETS = [(re.compile(r"\bmax_steps=\d+"), "max_steps=4"),
                  (re.compile(r"\bn_trials=\d+"), "n_trials=2"),
                  (re.compile(r"\b(steps|steps_per_trial)=\d+"), r"\1=4")]
SMALL_CONFIG = {"model_name": "TinyGPT", "task": "causal_lm", "vocab_size": 256,
                "max_seq_len": 64, "d_model": 32, "n_layer": 2, "n_head": 2, "dropout": 0.1}


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # None: runs; else the reason given ("" when none was)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown page, each with the skip marker above it, if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = str(path.relative_to(ROOT))
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page}:{i + 1}: a code fence is never closed"
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.search(above)
        found.append(Block(page, i + 1, fence.group(2), "\n".join(lines[i + 1:end]),
                           marker.group(1) if marker else None))
        i = end + 1
    return found


BLOCKS = [b for page in PAGES for b in parse(page)]
RUNNABLE = [b for b in BLOCKS if b.lang in CODE]


def test_the_pages_exist_and_name_their_blocks_language():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 5
    odd = [f"{b.id} ```{b.lang}" for b in BLOCKS if b.lang not in CODE | NOT_CODE]
    assert not odd, f"fence languages must be bash, python, text or none: {odd}"
    marked_text = [b.id for b in BLOCKS if b.lang not in CODE and b.skip is not None]
    assert not marked_text, f"only bash/python blocks run, so only they take a skip: {marked_text}"


def test_every_skip_has_a_reason_and_skips_are_a_small_minority():
    skipped = [b for b in RUNNABLE if b.skip is not None]
    print(f"\n{len(RUNNABLE)} code blocks: {len(RUNNABLE) - len(skipped)} run, "
          f"{len(skipped)} skipped")
    for b in skipped:
        print(f"  skip {b.id}: {b.skip}")
    assert not [b.id for b in skipped if len(b.skip) < 10], "a skip marker needs its reason"
    assert len(skipped) * 4 <= len(RUNNABLE), "more than a quarter of the blocks are skipped"


def test_the_readme_is_short_and_links_real_pages():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 12_000, f"README.md has {len(text)} characters (at most 12,000)"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path = target.split("#")[0]
            if path and not path.startswith(("http://", "https://")):
                assert (page.parent / path).exists(), f"{page.name} links {target}: no such file"
    assert "<org>" not in text and "<repo>" not in text


# ---- the sandbox ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """A folder holding what the pages refer to, a Gist server holding the docs' gist, a Hub."""
    from gist_server import GistServer
    from hub_server import HubServer

    root = tmp_path_factory.mktemp("readme")
    model = root / "my_model"
    shutil.copytree(ROOT / "utils" / "examples" / "tiny_gpt", model)
    (model / "config.json").write_text(json.dumps(SMALL_CONFIG, indent=1))
    texts = root / "my_texts"
    texts.mkdir()
    plays = ROOT / "utils" / "examples" / "corpus" / "shakespeare"
    for name in ("hamlet", "macbeth", "othello"):
        (texts / f"{name}.txt").write_text((plays / f"{name}.txt").read_text()[:20_000])
    (root / "poems.txt").write_text("".join(
        f"Poem {i}: the {w} falls softly on the quiet hill, and night comes on.\n"
        for i, w in enumerate(["rain", "snow", "light", "dusk", "leaf"] * 8)))
    (root / "reviews.csv").write_text("id,body\n" + "".join(
        f'{i},"Review {i}: the {w} was {a}, and I would {v} it again."\n'
        for i, (w, a, v) in enumerate([("book", "long", "read"), ("film", "bright", "see"),
                                       ("meal", "cold", "order"), ("song", "sweet", "hear")]
                                      * 12)))
    with GistServer() as gists, HubServer(tokens={HUB_TOKEN: "your-name"}) as hub:
        gists.add_folder(model, gist_id=GIST_ID, owner="alice")
        yield {"root": root, "gists": gists.url, "hub": hub.url}


@pytest.fixture
def in_sandbox(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox["root"])
    monkeypatch.setenv("TESTBENCH_HOME", str(sandbox["root"] / "testbench-home"))
    monkeypatch.setenv("GIST_API_URL", sandbox["gists"])
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the blocks are tiny; two threads on a shared 2-core machine thrash
    yield sandbox
    torch.set_num_threads(threads)
    import matplotlib.pyplot as plt

    plt.close("all")


def hub_env(sandbox) -> dict[str, str]:
    """A shell that may reach the (loopback) Hub: online, with a token and its own HF_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    return {**env, "HF_ENDPOINT": sandbox["hub"], "HF_TOKEN": HUB_TOKEN,
            "HF_HOME": str(sandbox["root"] / "hf-home"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}


# ---- running a block -----------------------------------------------------------------------
def logical_lines(code: str) -> list[str]:
    """Shell lines with their backslash continuations joined."""
    return re.sub(r"\\\n", " ", code).splitlines()


def tiny(args: list[str]) -> list[str]:
    args = list(args)
    for flag, value in BASH_BUDGETS.get(args[0] if args else "", {}).items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def run_testbench(args: list[str], env: dict[str, str], sandbox, monkeypatch) -> int:
    if args[:1] == ["push"]:
        proc = subprocess.run([sys.executable, "-m", "utils", *args], capture_output=True,
                              text=True, env={**hub_env(sandbox), **env}, timeout=300)
        print(proc.stdout, proc.stderr)
        return proc.returncode
    from utils.__main__ import main

    with monkeypatch.context() as m:
        for key, value in env.items():
            m.setenv(key, value)
        try:
            return main(args)
        except SystemExit as stop:  # --version, --help
            return stop.code or 0


def run_bash(block: Block, sandbox, monkeypatch) -> None:
    for line in logical_lines(block.code):
        words = shlex.split(line, comments=True)
        env = {}
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if not words:
            continue
        if words[0] == "export":
            for word in words[1:]:
                key, value = word.split("=", 1)
                monkeypatch.setenv(key, value)
        elif words == ["source", ".venv/bin/activate"]:
            continue
        elif words[0] == "testbench" or words[:3] == ["python", "-m", "utils"]:
            target = None
            if len(words) > 2 and words[-2] == ">":  # `testbench … > FILE`: stdout to FILE
                words, target = words[:-2], Path(words[-1])
            args = tiny(words[1:] if words[0] == "testbench" else words[3:])
            if target is None:
                code = run_testbench(args, env, sandbox, monkeypatch)
            else:
                with target.open("w") as out, contextlib.redirect_stdout(out):
                    code = run_testbench(args, env, sandbox, monkeypatch)
            assert code == 0, f"{block.id}: `{line.strip()}` exited {code}"
        else:
            pytest.fail(f"{block.id}: this test does not know how to run `{line.strip()}`; "
                        "mark the block `<!-- readme-test: skip — <reason> -->` or teach it")


def run_python(block: Block, sandbox) -> None:
    code = block.code
    for pattern, replacement in PYTHON_BUDGETS:
        code = pattern.sub(replacement, code)
    if "push_to_hub" in code:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=hub_env(sandbox), timeout=300)
        print(proc.stdout, proc.stderr)
        assert proc.returncode == 0, f"{block.id} failed:\n{proc.stderr[-3000:]}"
        return
    exec(compile(code, block.id, "exec"), {"__name__": "__main__"})


@pytest.mark.slow
@pytest.mark.parametrize("block", [
    pytest.param(b, id=b.id,
                 marks=[pytest.mark.skip(reason=f"{b.id}: {b.skip}")] if b.skip is not None else [])
    for b in RUNNABLE])
def test_block_runs(block: Block, in_sandbox, monkeypatch):
    if block.lang == "bash":
        run_bash(block, in_sandbox, monkeypatch)
    else:
        run_python(block, in_sandbox)
