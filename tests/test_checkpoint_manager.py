"""CheckpointManager: atomic local saves, manifests, rotation, verification on resume, and the
Drive mirror under injected faults. Real files, real threads; faults are injected by
monkeypatching what the mirror thread calls (``os.replace``, ``os.fsync``, the copy function)
so that only that thread sees them."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from utils import atomic
from utils.atomic import read_json
from utils.errors import UserError
from utils.training.checkpoint_manager import CheckpointInfo, CheckpointManager
from utils.training.mirror import THREAD_NAME
from utils.training.snapshot import snapshot_state


@pytest.fixture
def make(tmp_path):
    """``make(mirror=True, **kwargs)``: a manager on tmp_path/run (+ tmp_path/drive), closed
    at the end of the test."""
    managers = []

    def build(mirror: bool = True, **kwargs) -> CheckpointManager:
        kwargs.setdefault("backoff", 0.001)
        manager = CheckpointManager(tmp_path / "run", tmp_path / "drive" if mirror else None,
                                    **kwargs)
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        manager.close()


def state_at(step: int) -> dict:
    return {"model": {"w": torch.full((8, 8), float(step)), "b": torch.arange(4.0)},
            "step": step}


def in_mirror_thread() -> bool:
    return threading.current_thread().name == THREAD_NAME


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def steps_in(folder) -> list[int]:
    return sorted(int(p.stem[5:]) for p in folder.glob("step-*.ckpt"))


def assert_complete(manager: CheckpointManager, folder) -> None:
    """Every checkpoint under a final name has a manifest, verifies and loads; no temp files;
    latest.json names one of them."""
    for path in folder.glob("step-*.ckpt"):
        manifest = read_json(path.with_suffix(".json"))
        assert manifest is not None, f"{path.name} has no manifest"
        assert path.stat().st_size == manifest["size"]
        assert atomic.sha256_file(path) == manifest["sha256"]
        assert manager.load(path)["step"] == manifest["step"]
    assert not [p for p in folder.iterdir() if atomic.is_temp(p)]
    latest = read_json(folder / "latest.json")
    assert (folder / latest["file"]).is_file() and latest["file"] == f"step-{latest['step']:08d}.ckpt"


def test_save_writes_checkpoint_then_manifest_then_latest(make, tmp_path):
    manager = make(mirror=False)
    info = manager.save(state_at(50), 50, val_loss=torch.tensor(2.5))
    folder = tmp_path / "run" / "checkpoints"
    assert manager.checkpoints_dir == folder
    assert info == CheckpointInfo(folder / "step-00000050.ckpt", 50, info.sha256,
                                  info.path.stat().st_size, 2.5, "local")
    manifest = read_json(folder / "step-00000050.json")
    assert {k: manifest[k] for k in ("step", "file", "size", "sha256", "val_loss")} == {
        "step": 50, "file": "step-00000050.ckpt", "size": info.size,
        "sha256": atomic.sha256_file(info.path), "val_loss": 2.5}
    assert "created" in manifest
    assert read_json(folder / "latest.json") == {"step": 50, "file": "step-00000050.ckpt"}
    assert names(folder) == ["latest.json", "step-00000050.ckpt", "step-00000050.json"]
    assert manager.save(state_at(60), 60, val_loss=float("nan")).val_loss is None
    assert manager.pending == 0 and manager.errors == []


@pytest.mark.parametrize(("keep_last", "keep_best", "losses", "kept"), [
    (2, True, [3.0, 1.0, 2.0, 4.0, 5.0], [2, 4, 5]),      # the best survives the last two
    (2, False, [3.0, 1.0, 2.0, 4.0, 5.0], [4, 5]),
    (1, True, [3.0, 2.0, 1.0], [3]),                      # the newest is also the best
    (2, True, [None, None, None, None], [3, 4]),          # no validation: last two only
    (3, True, [1.0, 1.0, 2.0, 3.0, 4.0], [2, 3, 4, 5]),   # equal best: the newer one
])
def test_rotation_keeps_the_last_n_plus_the_best(make, keep_last, keep_best, losses, kept):
    manager = make(keep_last=keep_last, keep_best=keep_best)
    for step, loss in enumerate(losses, start=1):
        manager.save(state_at(step), step, val_loss=loss)
        assert manager.drain(10)
    assert steps_in(manager.checkpoints_dir) == kept
    assert steps_in(manager.mirror_checkpoints_dir) == kept  # the mirror rotates the same way
    for folder in (manager.checkpoints_dir, manager.mirror_checkpoints_dir):
        assert_complete(manager, folder)
        assert sorted(p.name for p in folder.glob("*.json")) == ["latest.json"] + [
            f"step-{s:08d}.json" for s in kept]


def test_latest_json_only_ever_names_a_complete_checkpoint(make, monkeypatch):
    manager = make(mirror=False)
    real_write = atomic.write_atomic
    seen = []

    def checking_write(path, data):
        if path.name == "latest.json":  # the checkpoint and its manifest are already final
            pointer = json.loads(data)
            ckpt = path.parent / pointer["file"]
            manifest = read_json(ckpt.with_suffix(".json"))
            assert atomic.sha256_file(ckpt) == manifest["sha256"]
            seen.append(pointer["step"])
        return real_write(path, data)

    monkeypatch.setattr(atomic, "write_atomic", checking_write)
    manager.save(state_at(10), 10)
    manager.save_async(state_at(20), 20).result()

    def dies_mid_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_mid_save)
    with pytest.raises(OSError, match="No space"):
        manager.save(state_at(30), 30)
    assert seen == [10, 20]
    assert read_json(manager.checkpoints_dir / "latest.json")["step"] == 20
    assert steps_in(manager.checkpoints_dir) == [10, 20]  # nothing half-written, no temp
    assert_complete(manager, manager.checkpoints_dir)


@pytest.mark.parametrize(("damage", "reason"), [
    ("truncate", "truncated"),
    ("flip_byte", "corrupt: its sha256 does not match"),
    ("drop_manifest", "no manifest"),
    ("garble_manifest", "manifest step-00000030.json is unreadable"),
])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_naming_it(make, damage, reason):
    said = []
    manager = make(mirror=False, keep_last=3, say=said.append)
    for step in (10, 20, 30):
        manager.save(state_at(step), step)
    newest = manager.checkpoints_dir / "step-00000030.ckpt"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:100])
    elif damage == "flip_byte":
        data = bytearray(newest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "drop_manifest":
        newest.with_suffix(".json").unlink()
    else:
        newest.with_suffix(".json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match=f"step-00000030.ckpt: .*{reason}") as record:
        info = manager.latest_valid()
    assert record[0].filename == __file__  # stacklevel=2: the warning points at the caller
    assert info.step == 20 and info.location == "local"
    assert manager.load(info)["step"] == 20
    assert any("step-00000030.ckpt" in line for line in said)


def test_nothing_valid_gives_none(make):
    manager = make()
    assert manager.latest_valid() is None
    assert manager.restore_local() is None


def test_load_of_a_corrupt_or_missing_file_is_a_user_error(make, tmp_path):
    manager = make(mirror=False)
    info = manager.save(state_at(10), 10)
    info.path.write_bytes(info.path.read_bytes()[:200])
    with pytest.raises(UserError, match=r"could not be loaded.*\n.*truncated or corrupt"):
        manager.load(info)
    with pytest.raises(UserError, match="does not exist"):
        manager.load(tmp_path / "nope.ckpt")
    torch.save({"x": np.zeros(3)}, tmp_path / "numpy.ckpt")  # weights_only refuses ndarrays
    with pytest.raises(UserError, match="refuses to unpickle"):
        manager.load(tmp_path / "numpy.ckpt")


def test_a_training_state_round_trips_with_weights_only(make):
    np.random.seed(3)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    random.seed(4)
    embedding = torch.randn(16, 4)
    state = {
        "state_dict": torch.nn.Linear(4, 2).state_dict(),
        "tied": {"wte": embedding, "lm_head": embedding},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0, 1],
                                        "foreach": None, "fused": False}]},
        "epoch": 2, "global_step": 150, "name": "gpt", "note": None, "loss": 2.25,
        "history": [1.0, 2.0], "python_rng": random.getstate(),
        "numpy_rng": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch_rng": torch.get_rng_state(),
    }
    manager = make(mirror=False)
    for future_or_info in (manager.save(state, 1), manager.save_async(state, 2)):
        info = future_or_info if isinstance(future_or_info, CheckpointInfo) else \
            future_or_info.result()
        loaded = manager.load(info)
        assert loaded["python_rng"] == random.getstate()
        random.setstate(loaded["python_rng"])  # a usable state, not just an equal one
        np_state = loaded["numpy_rng"]
        np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
        assert np.random.get_state()[1].tolist() == keys.tolist()
        assert torch.equal(loaded["torch_rng"], torch.get_rng_state())
        assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
        assert loaded["state_dict"]._metadata == state["state_dict"]._metadata
        assert loaded["tied"]["wte"].data_ptr() == loaded["tied"]["lm_head"].data_ptr()
        for key in ("epoch", "global_step", "name", "note", "loss", "history"):
            assert loaded[key] == state[key]


def test_save_async_snapshots_the_state_before_returning(make):
    manager = make(mirror=False, keep_last=3)
    weights = torch.zeros(256, 256)
    shared = {"a": weights, "b": weights}
    futures = []
    for step in (1, 2, 3):  # later saves reuse the buffers of earlier ones
        futures.append(manager.save_async({"w": weights, "shared": shared, "step": step}, step))
        weights.add_(1.0)  # training goes on at once
    for step, future in enumerate(futures, start=1):
        loaded = manager.load(future.result())
        assert torch.equal(loaded["w"], torch.full((256, 256), step - 1.0))
    copy = snapshot_state({"x": [weights, (weights, 1)], "y": shared})
    assert copy["x"][0] is copy["x"][1][0] is copy["y"]["a"]  # one copy per tensor
    assert copy["x"][0].data_ptr() != weights.data_ptr()


def test_a_snapshot_reuses_the_previous_buffers_when_shapes_match():
    pool: dict = {}
    state = {"w": torch.zeros(4, 4), "opt": [{"m": torch.ones(3)}], "n": 1}
    first = snapshot_state(state, pool)
    state["w"].add_(2.0)
    state["opt"][0]["m"] = torch.ones(5)  # a new shape gets a new buffer
    second = snapshot_state(state, pool)
    assert second["w"].data_ptr() == first["w"].data_ptr()  # copied into the old buffer
    assert torch.equal(second["w"], torch.full((4, 4), 2.0))
    assert second["opt"][0]["m"].shape == (5,) and second["opt"][0]["m"].data_ptr() not in (
        first["opt"][0]["m"].data_ptr(), state["opt"][0]["m"].data_ptr())
    assert set(pool) == {("w",), ("opt", 0, "m")}


def test_a_failed_background_save_is_raised_by_the_next_call(make, monkeypatch):
    manager = make(mirror=False)
    manager.save(state_at(10), 10)
    real_stream = atomic.write_atomic_stream

    def full_disk(path, fill, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_atomic_stream", full_disk)
    future = manager.save_async(state_at(20), 20)
    with pytest.raises(OSError):
        future.result()
    monkeypatch.setattr(atomic, "write_atomic_stream", real_stream)
    with pytest.raises(UserError, match=r"step 20 could not be written.*No space"):
        manager.save(state_at(30), 30)
    assert "saving step 20 failed" in manager.errors[0]
    assert manager.save(state_at(30), 30).step == 30  # reported once, then saving goes on


def test_bad_arguments_are_reported_together(tmp_path):
    with pytest.raises(UserError, match=r"keep_last=0 .*retries=-1 .*backoff=-2"):
        CheckpointManager(tmp_path, keep_last=0, retries=-1, backoff=-2)
    with pytest.raises(UserError, match="other than the run folder"):
        CheckpointManager(tmp_path, tmp_path)


class Faults:
    """In the mirror thread only: drop the copy (``Errno 107``), fail fsync, fail the rename of
    a checkpoint and of a JSON file (``EIO``) — twice each — and once land a truncated copy
    under the final name (a FUSE mount losing data)."""

    def __init__(self, monkeypatch) -> None:
        self.fired = dict.fromkeys(("copy", "fsync", "replace_ckpt", "replace_json",
                                    "truncated"), 0)
        real_copy, real_replace, real_fsync = atomic.copy_atomic, os.replace, os.fsync

        def fire(kind: str, budget: int = 2) -> bool:
            if in_mirror_thread() and self.fired[kind] < budget:
                self.fired[kind] += 1
                return True
            return False

        def copy(src, dst, **kwargs):
            if fire("copy"):
                dst.parent.mkdir(parents=True, exist_ok=True)
                (dst.parent / f".{dst.name}.dead.tmp").write_bytes(b"half")  # left by a drop
                raise OSError(107, "Transport endpoint is not connected")
            digest = real_copy(src, dst, **kwargs)
            if dst.suffix == ".ckpt" and fire("truncated", 1):
                with open(dst, "r+b") as fh:
                    fh.truncate(50)
            return digest

        def replace(a, b):
            if fire("replace_ckpt" if str(b).endswith(".ckpt") else "replace_json"):
                raise OSError(errno.EIO, "Input/output error")
            return real_replace(a, b)

        def fsync(fd):
            if fire("fsync"):
                raise OSError(107, "Transport endpoint is not connected")
            return real_fsync(fd)

        monkeypatch.setattr(atomic, "copy_atomic", copy)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "fsync", fsync)


def test_the_mirror_survives_dropped_copies_and_renames(make, monkeypatch, tmp_path):
    faults = Faults(monkeypatch)
    manager = make(keep_last=2, retries=8)  # the first copy may meet 7 faults in a row
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("step,loss\n1,2.0\n")
    for step, loss in ((10, 3.0), (20, 1.0), (30, 2.0), (40, 2.5)):
        manager.save(state_at(step), step, val_loss=loss)
        manager.mirror_file("metrics.csv")
        assert manager.drain(30)
    assert all(faults.fired.values()), faults.fired
    assert manager.errors == []
    mirror = manager.mirror_checkpoints_dir
    assert_complete(manager, mirror)
    assert steps_in(mirror) == [20, 30, 40]
    assert read_json(mirror / "latest.json")["step"] == 40
    assert (tmp_path / "drive" / "metrics.csv").read_text() == "step,loss\n1,2.0\n"
    assert [p.name for p in mirror.iterdir() if atomic.is_temp(p)] == []  # no temp remains


def test_a_mirror_that_stays_down_never_harms_the_earlier_copy(make, monkeypatch):
    said = []
    manager = make(retries=2, say=said.append)
    manager.save(state_at(10), 10)
    assert manager.drain(10)
    real_copy = atomic.copy_atomic

    def gone(src, dst, **kwargs):
        if in_mirror_thread():
            raise OSError(107, "Transport endpoint is not connected")
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(atomic, "copy_atomic", gone)
    manager.save(state_at(20), 20)
    with pytest.warns(RuntimeWarning, match="step-00000020.ckpt .*failed after 3 attempts"):
        assert manager.drain(10)
    assert len(manager.errors) == 1 and "Transport endpoint" in manager.errors[0]
    assert any("failed after 3 attempts" in line for line in said)
    mirror = manager.mirror_checkpoints_dir
    assert steps_in(mirror) == [10] and read_json(mirror / "latest.json")["step"] == 10
    assert_complete(manager, mirror)
    assert manager.latest_valid().step == 20  # the local copy is fine


def test_resume_from_the_mirror_alone_when_the_run_folder_is_gone(make, tmp_path):
    manager = make()
    tokenizer = tmp_path / "run" / "tokenizer" / "tokenizer.json"
    tokenizer.parent.mkdir(parents=True)
    tokenizer.write_text('{"vocab": 256}')
    manager.mirror_file("tokenizer")
    for step in (10, 20):
        manager.save(state_at(step), step, val_loss=1.0 / step)
    manager.close()
    shutil.rmtree(tmp_path / "run")  # the Colab VM was recycled; only Drive survives

    fresh = make()
    info = fresh.latest_valid()
    assert (info.step, info.location) == (20, "mirror")
    assert fresh.load(info)["step"] == 20
    local = fresh.restore_local(info)
    assert (local.step, local.location, local.sha256) == (20, "local", info.sha256)
    assert tokenizer.read_text() == '{"vocab": 256}'
    assert read_json(fresh.checkpoints_dir / "latest.json")["step"] == 20
    assert fresh.latest_valid().location == "local"
    for step in (30, 40, 50):
        fresh.save(state_at(step), step, val_loss=1.0)
        assert fresh.drain(10)
    assert steps_in(fresh.checkpoints_dir) == [20, 40, 50]  # 20 is still the best
    assert steps_in(fresh.mirror_checkpoints_dir) == [20, 40, 50]


def test_only_the_newest_pending_copy_stays_queued(make, monkeypatch, tmp_path):
    release, started = threading.Event(), threading.Event()
    real_copy = atomic.copy_atomic
    copied = []

    def blocked(src, dst, **kwargs):
        if in_mirror_thread():
            started.set()
            assert release.wait(10)
            copied.append(dst.name)
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(atomic, "copy_atomic", blocked)
    manager = make(keep_last=1, keep_best=False)
    manager.save(state_at(10), 10)
    assert started.wait(10)  # step 10 is being copied
    (tmp_path / "run" / "metrics.csv").write_text("a")
    for step in (20, 30, 40):
        manager.save(state_at(step), step)
        manager.mirror_file("metrics.csv")
    assert manager.pending == 3  # the copy running, the newest checkpoint, metrics.csv once
    assert steps_in(manager.checkpoints_dir) == [10, 40]  # 10 is being read: not rotated away
    release.set()
    assert manager.drain(10) and manager.pending == 0
    assert copied == ["step-00000010.ckpt", "step-00000040.ckpt", "metrics.csv"]
    assert steps_in(manager.mirror_checkpoints_dir) == [40]
    manager.save(state_at(50), 50)
    assert manager.drain(10)
    assert steps_in(manager.checkpoints_dir) == [50]


def test_an_interrupted_save_leaves_nothing_used_and_is_cleaned_up(make):
    manager = make(mirror=False)
    for step in (10, 20):
        manager.save(state_at(step), step)
    folder = manager.checkpoints_dir
    manager.close()
    # A process killed mid-save: a temp file, and a checkpoint renamed before its manifest.
    (folder / ".step-00000030.ckpt.abc.tmp").write_bytes(b"half")
    shutil.copy(folder / "step-00000020.ckpt", folder / "step-00000030.ckpt")
    old = time.time() - 5
    os.utime(folder / ".step-00000030.ckpt.abc.tmp", (old, old))

    fresh = make(mirror=False)
    with pytest.warns(RuntimeWarning, match="step-00000030.ckpt: it has no manifest"):
        assert fresh.latest_valid().step == 20
    fresh.save(state_at(40), 40)
    assert names(folder) == [".spare.ckpt",  # the unused step-30 file, kept to write over
                             "latest.json", "step-00000020.ckpt", "step-00000020.json",
                             "step-00000040.ckpt", "step-00000040.json"]
    fresh.close()
    assert ".spare.ckpt" not in names(folder)


def test_a_rotated_out_checkpoint_is_written_over_by_the_next_save(make):
    manager = make(keep_last=1)
    folder = manager.checkpoints_dir
    manager.save(state_at(10), 10)
    first = (folder / "step-00000010.ckpt").stat().st_ino
    assert manager.drain(10)  # a step still being mirrored is not rotated out
    manager.save(state_at(20), 20)
    assert manager.drain(10)
    assert (folder / ".spare.ckpt").stat().st_ino == first  # retired, not deleted
    smaller = {"model": {"w": torch.zeros(2)}, "step": 30}  # the reused file must shrink
    info = manager.save(smaller, 30)
    assert info.path.stat().st_ino == first and info.size == info.path.stat().st_size
    assert manager.drain(10)
    manager.save(smaller, 30)  # saved again: step 20 goes now that its copy is done
    assert manager.drain(10)
    assert steps_in(folder) == [30] and manager.latest_valid().step == 30
    assert_complete(manager, folder)
    assert torch.equal(manager.load(info)["model"]["w"], torch.zeros(2))
    assert not (manager.mirror_checkpoints_dir / ".spare.ckpt").exists()  # local only
    manager.close()
    assert names(folder) == ["latest.json", "step-00000030.ckpt", "step-00000030.json"]
    assert steps_in(manager.mirror_checkpoints_dir) == [30]


def test_mirror_file_copies_files_and_folders(make, tmp_path):
    run, drive = tmp_path / "run", tmp_path / "drive"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model.safetensors").write_bytes(b"\x00" * 1000)
    (run / "final" / "config.json").write_text("{}")
    (run / "summary.json").write_text('{"steps": 1}')
    manager = make()
    manager.mirror_file("final")
    manager.mirror_file(run / "summary.json")
    assert manager.drain(10)
    assert (drive / "final" / "model.safetensors").read_bytes() == b"\x00" * 1000
    assert (drive / "final" / "config.json").read_text() == "{}"
    assert (drive / "summary.json").read_text() == '{"steps": 1}'
    with pytest.raises(ValueError, match="outside the run folder"):
        manager.mirror_file("../elsewhere.txt")
    make(mirror=False).mirror_file("summary.json")  # no mirror: nothing to do


def test_a_step_saved_again_while_its_copy_waits_is_mirrored_once_newest(make, monkeypatch):
    release = threading.Event()
    real_copy = atomic.copy_atomic

    def blocked(src, dst, **kwargs):
        if in_mirror_thread() and dst.name == "step-00000010.ckpt":
            assert release.wait(10)
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(atomic, "copy_atomic", blocked)
    manager = make()
    manager.save(state_at(5), 5)
    manager.save(state_at(10), 10)
    time.sleep(0.05)  # the copy of step 10 has started and waits
    again = manager.save({**state_at(10), "interrupted": True}, 10)  # the same step, newer state
    release.set()
    assert manager.drain(10) and manager.errors == []
    copy = manager.mirror_checkpoints_dir / "step-00000010.ckpt"
    assert atomic.sha256_file(copy) == again.sha256
    assert_complete(manager, manager.mirror_checkpoints_dir)


def test_a_dropped_mirror_does_not_stop_the_search_of_the_run_folder(make, monkeypatch):
    manager = make()
    manager.save(state_at(10), 10)
    assert manager.drain(10)
    real_iterdir = type(manager.checkpoints_dir).iterdir

    def dropped(self):
        if "drive" in self.parts:
            raise OSError(107, "Transport endpoint is not connected")
        return real_iterdir(self)

    monkeypatch.setattr(type(manager.checkpoints_dir), "iterdir", dropped)
    with pytest.warns(RuntimeWarning, match=r"Cannot search .*drive.*Transport endpoint"):
        info = manager.latest_valid()
    assert (info.step, info.location) == (10, "local")
