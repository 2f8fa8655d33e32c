"""What checkpointing into a slow Drive folder costs a training loop.

A fake training step (a matmul loop of about 0.5 s on both cores) and a checkpoint of about
200 MB (weights + two Adam moments, like a 17M-parameter model) saved every ``--every`` steps,
mirrored into a simulated Google Drive folder: every file written there pays 0.3 s of latency
plus its size at 40 MB/s (``utils.atomic``'s writers are wrapped; no slow filesystem exists
here; reads are not slowed). Modes:

- ``save_async``: ``CheckpointManager.save_async`` — a copy in memory, then the local write and
  the mirror run in background threads;
- ``save``: ``CheckpointManager.save`` — the local write inline, the mirror in the background;
- ``sync``: ``save`` then ``drain`` — the whole checkpoint, Drive copy included, inline.

This machine is shared and its load drifts by more than the effect measured between two runs
a minute apart, so each mode runs *paired blocks* of ``--every`` steps: N S N S … N, where an S
block starts with a save (its call and all its background work fall inside it) and an N block
has none; a save's cost is its S block minus the mean of its two N neighbours, and the overhead
is that cost over an N block's time (a checkpoint interval). Beside it, two figures that do not
depend on the load: the seconds the training thread is blocked per save (the cost when a core
is free, as in GPU training) and the CPU seconds the background threads use per save (what a
fully CPU-bound loop on this machine can lose at most, on top). Writes JSON to
``benchmarks/results/checkpoint.json``.

    python benchmarks/checkpoint.py                  # 4 pairs of 50-step blocks (≈ 11 min)
    python benchmarks/checkpoint.py --pairs 2 --every 20 --step-seconds 0.2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import atomic
from utils.training.checkpoint_manager import CheckpointManager

ROOT = Path(__file__).resolve().parent.parent
LATENCY_S, BYTES_PER_S = 0.3, 40e6


def slow_folder(root: Path) -> None:
    """Make every atomic write under ``root`` pay Drive's latency and bandwidth."""
    real_copy, real_write = atomic.copy_atomic, atomic.write_atomic

    def under(path) -> bool:
        return Path(path).resolve().is_relative_to(root)

    def copy(src, dst, **kwargs):
        digest = real_copy(src, dst, **kwargs)
        if under(dst):
            time.sleep(LATENCY_S + Path(dst).stat().st_size / BYTES_PER_S)
        return digest

    def write(path, data):
        out = real_write(path, data)
        if under(path):
            time.sleep(LATENCY_S + len(data) / BYTES_PER_S)
        return out

    atomic.copy_atomic, atomic.write_atomic = copy, write


def training_state(megabytes: float) -> dict:
    """Weights + Adam's two moments in 1M-float tensors, ``megabytes`` in all."""
    per_copy = int(megabytes * 1e6 / 4 / 3)
    shapes = [1 << 20] * (per_copy >> 20) + [per_copy % (1 << 20)]
    weights = {f"layer{i}.weight": torch.randn(n) for i, n in enumerate(shapes) if n}
    moments = {i: {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(w),
                   "exp_avg_sq": torch.rand_like(w)} for i, w in enumerate(weights.values())}
    return {"state_dict": weights, "optimizer_states": [{"state": moments, "param_groups": [
        {"lr": 1e-3, "params": list(moments)}]}], "global_step": 0, "epoch": 0,
        "rng": torch.get_rng_state()}


def calibrate(seconds: float) -> int:
    """How many 512×512 matmuls take ``seconds``."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        a @ b
        n += 1
    return max(1, round(n * seconds / (time.perf_counter() - start)))


def fake_step(state: dict, matmuls: int) -> None:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for _ in range(matmuls):
        a @ b
    first = next(iter(state["state_dict"].values()))
    first.add_(1e-6)  # training changes the tensors a deferred save must not see
    state["global_step"] += 1


def background_cpu_by_thread() -> dict[int, float]:
    """CPU seconds used so far by each of the checkpoint manager's live threads (the save
    writer, the mirror), by native thread id."""
    tick, used = os.sysconf("SC_CLK_TCK"), {}
    for thread in threading.enumerate():
        if thread.name.startswith("checkpoint") and thread.native_id is not None:
            try:
                fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
            except OSError:
                continue
            utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
            used[thread.native_id] = (int(utime) + int(stime)) / tick
    return used


def background_cpu() -> float:
    """CPU seconds used so far by the manager's live threads."""
    return sum(background_cpu_by_thread().values())


def run(mode: str, state: dict, args, matmuls: int, run_dir: Path, drive: Path,
        pairs: int) -> dict:
    """Blocks N S N S … N of ``args.every`` steps; seconds, save call and background CPU."""
    drive.mkdir(parents=True)
    manager = CheckpointManager(run_dir, drive, keep_last=2)
    state["global_step"], blocks, step = 0, [], 0
    fake_step(state, matmuls)  # warm-up
    for kind in "NS" * pairs + "N":
        cpu, call, start = background_cpu(), 0.0, time.perf_counter()
        for i in range(args.every):
            fake_step(state, matmuls)
            step += 1
            if kind == "S" and i == 0:
                t = time.perf_counter()
                if mode == "save_async":
                    manager.save_async(state, step, val_loss=1.0 / step)
                else:
                    manager.save(state, step, val_loss=1.0 / step)
                    if mode == "sync":
                        manager.drain()
                call = time.perf_counter() - t
        blocks.append({"kind": kind, "seconds": time.perf_counter() - start, "save_call_s": call,
                       "background_cpu_s": background_cpu() - cpu,
                       "background_done": manager.pending == 0})
    manager.drain()
    assert manager.errors == [], manager.errors
    manager.close()
    extra, quiet = [], [b["seconds"] for b in blocks if b["kind"] == "N"]
    for i, b in enumerate(blocks):
        if b["kind"] == "S":
            extra.append(b["seconds"] - (blocks[i - 1]["seconds"] + blocks[i + 1]["seconds"]) / 2)
    saves = [b for b in blocks if b["kind"] == "S"]
    interval = statistics.median(quiet)
    call = statistics.median(b["save_call_s"] for b in saves)
    cpu = statistics.median(b["background_cpu_s"] for b in saves)
    return {"blocks": blocks, "extra_s_per_save": extra,
            "overhead": statistics.mean(extra) / interval,
            "interval_s": interval, "save_call_s": call, "background_cpu_s": cpu,
            "blocked_fraction": call / interval, "blocked_plus_cpu_fraction": (call + cpu) / interval,
            "background_done_within_block": all(b["background_done"] for b in saves)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=0.5)
    parser.add_argument("--megabytes", type=float, default=200.0)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "checkpoint.json")
    args = parser.parse_args(argv)
    state = training_state(args.megabytes)
    matmuls = calibrate(args.step_seconds)
    modes = {}
    with tempfile.TemporaryDirectory() as tmp:
        slow_folder((Path(tmp) / "drive").resolve())
        for mode in ("save_async", "save", "sync"):
            pairs = min(args.pairs, 2) if mode == "sync" else args.pairs  # sync: no doubt
            m = modes[mode] = run(mode, state, args, matmuls, Path(tmp) / f"run-{mode}",
                                  Path(tmp) / "drive" / mode, pairs)
            print(f"{mode:<10} overhead {m['overhead']:+.1%} of step time (per save "
                  + ", ".join(f"{e:+.2f}" for e in m["extra_s_per_save"])
                  + f" s over {m['interval_s']:.1f} s); training blocked {m['save_call_s']:.2f}"
                  f" s ({m['blocked_fraction']:.1%}), background CPU {m['background_cpu_s']:.2f}"
                  f" s (blocked + CPU {m['blocked_plus_cpu_fraction']:.1%})", flush=True)
        size = next(Path(tmp).rglob("step-*.ckpt")).stat().st_size
    sync_extra = statistics.mean(modes["sync"]["extra_s_per_save"])
    result = {
        "checkpoint_mb": size / 1e6, "every": args.every, "pairs": args.pairs,
        "step_s_target": args.step_seconds, "matmuls_per_step": matmuls,
        "slow_folder": {"latency_s": LATENCY_S, "mb_per_s": BYTES_PER_S / 1e6},
        "modes": modes,
        "vs_sync": {mode: statistics.mean(modes[mode]["extra_s_per_save"]) / sync_extra
                    for mode in ("save_async", "save")},
        "target_overhead": 0.03, "sync_overhead_in_issue": 1.29,
        "load_average": os.getloadavg(), "cpus": os.cpu_count(),
    }
    print(f"checkpoint {result['checkpoint_mb']:.0f} MB every {args.every} steps; load average "
          f"{result['load_average'][0]:.1f} on {result['cpus']} CPUs; a save costs "
          + ", ".join(f"{mode} {v:.1%}" for mode, v in result["vs_sync"].items())
          + " of a synchronous one (target: save_async ≤ 3% of step time)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()
