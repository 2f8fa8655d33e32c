"""Weights & Biases tracking for ``train()`` (``logger="wandb"``), with no path that can hang.

Measured with wandb 0.28–0.31: ``wandb.init`` online with no key prompts through ``input()``
and waits forever, in a terminal and in a notebook kernel; with a key and no network it fails
after ~100 s and the process then hangs at exit. So the mode is chosen here, before
``wandb.init`` is ever called, and passed to it explicitly (it beats ``$WANDB_MODE``):

- ``disabled`` when ``WANDB_MODE=disabled`` (or ``WANDB_DISABLED=true``): nothing is written;
- ``offline`` when ``WANDB_MODE=offline``, when no key is configured (``$WANDB_API_KEY``, a
  netrc entry for the W&B host, Colab's secret ``WANDB_API_KEY``), or when the W&B host does
  not answer a 3-second connection attempt;
- ``online`` otherwise.

The run id lives in the run folder (``wandb.json``, mirrored with the run) and is reused on
resume with ``resume="allow"``: online, the same W&B run continues; offline, wandb ignores
``resume`` and starts a second local folder with the same id — both are listed, with the
``wandb sync`` command that uploads them. W&B's own folder stays on local disk
(``$TESTBENCH_HOME/wandb``): it writes symlinks, which Google Drive lacks.

What is logged: the ``TrainingConfig`` and the Tier 1 verdict (config), every row of
``metrics.csv`` as it is written (x-axis ``trainer/global_step``), and the final metrics
(summary). ``metrics.csv`` stays the record of truth: rows are read back from it, so after a
resume logging starts after the resumed step and no step is logged twice by one process. A
SIGKILL loses what wandb had not flushed (its log is written in 32 KiB blocks); the CSV has it.
"""

from __future__ import annotations

import csv
import io
import netrc
import os
import secrets
import socket
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from utils.atomic import read_json, write_json
from utils.environment import require, testbench_home
from utils.errors import UserError

__all__ = ["RUN_FILE", "WandbTracker", "api_key", "choose_mode", "wandb_tracker"]

if TYPE_CHECKING:  # the type checker reads the real classes; at run time a missing extra
    import lightning as L  # is a MissingExtraError naming it
else:
    L = require("lightning", "Training")

RUN_FILE = "wandb.json"  # in the run folder: the W&B run id and every local folder it used
PROJECT = "transformer-testbench"


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def _host() -> str:
    return urlparse(_base_url()).hostname or ""


def api_key() -> tuple[str | None, str]:
    """``(key, where it is configured)``: ``$WANDB_API_KEY``, a netrc entry for the W&B host,
    or Colab's secret ``WANDB_API_KEY``; ``(None, "")`` when there is none."""
    from utils import colab

    if os.environ.get("WANDB_API_KEY", "").strip():
        return os.environ["WANDB_API_KEY"].strip(), "$WANDB_API_KEY"
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(_host()) if path.is_file() else None
    except (OSError, netrc.NetrcParseError):
        entry = None
    if entry and entry[2]:
        return entry[2], str(path)
    found = colab.secret("WANDB_API_KEY")
    return (found, "Colab's secret WANDB_API_KEY") if found else (None, "")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the W&B server accepts a TCP connection within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_mode() -> tuple[str, str]:
    """``(mode, why)``: ``"online"``, ``"offline"`` or ``"disabled"`` (see the module doc)."""
    asked = os.environ.get("WANDB_MODE", "").strip().lower()
    if asked == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return "disabled", "WANDB_MODE=disabled"
    if asked in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={asked}"
    key, where = api_key()
    if key is None:
        return "offline", ("no W&B API key is configured ($WANDB_API_KEY, ~/.netrc, or Colab's "
                           "secret WANDB_API_KEY)")
    if not _reachable(_base_url()):
        return "offline", f"{_base_url()} cannot be reached (no network?)"
    return "online", f"the key from {where}"


def wandb_tracker(config: Any, run_dir: Path, *, manager: Any = None,
                  say=print) -> WandbTracker | None:
    """The callback that tracks this run in W&B, or None when ``config.logger`` is not
    ``"wandb"``. Chooses the mode and the run id; calls nothing in wandb yet."""
    if config.logger != "wandb":
        return None
    require("wandb", "Tracking with Weights & Biases")
    mode, why = choose_mode()
    # the run's W&B id, so a resumed run (on a new VM: from the mirror) continues the same run
    stored = (manager.read_run_json(RUN_FILE) if manager is not None
              else read_json(run_dir / RUN_FILE)) or {}
    if mode == "disabled":
        say(f"W&B is disabled ({why}): metrics go to metrics.csv only.")
    else:
        say(f"W&B: {mode} — {why}.")
    return WandbTracker(config, run_dir, mode, stored, manager=manager, say=say)


class WandbTracker(L.Callback):
    """Starts the W&B run at the start of training (global rank 0 only) through Lightning's
    ``WandbLogger``, logs each new ``metrics.csv`` row, and :meth:`finish` ends it."""

    def __init__(self, config: Any, run_dir: Path, mode: str, stored: dict[str, Any], *,
                 manager: Any = None, say=print) -> None:
        self.config, self.run_dir, self.mode, self.say = config, Path(run_dir), mode, say
        self.manager = manager
        self.record: dict[str, Any] = {"id": stored.get("id") or _new_id(),
                       "project": stored.get("project") or os.environ.get("WANDB_PROJECT")
                       or PROJECT, "folders": list(stored.get("folders", []))}
        self.resumed = bool(stored.get("id"))
        self.logger: Any = None
        self._offset = 0  # bytes of metrics.csv already logged (or from before a resume)

    @property
    def run_id(self) -> str:
        return self.record["id"]

    # ---- the run --------------------------------------------------------------------------
    def _start(self) -> None:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        if wandb.run is not None:  # left open by a train() that failed earlier in this kernel
            wandb.run.finish(exit_code=1)
        save_dir = testbench_home() / "wandb" / self.run_dir.name  # local disk, never Drive
        if self.mode != "disabled":
            save_dir.mkdir(parents=True, exist_ok=True)
        key, _ = api_key() if self.mode == "online" else (None, "")
        extra: dict[str, Any] = {"api_key": key} if key else {}
        settings = wandb.Settings(silent=True, console="off", init_timeout=60, **extra)
        self.logger = WandbLogger(name=self.run_dir.name, save_dir=str(save_dir),
                                  id=self.run_id, project=self.record["project"],
                                  mode=self.mode, resume="allow", settings=settings,
                                  config=self.config.to_dict(), log_model=False)
        self.logger._wandb_init.pop("anonymous", None)  # deprecated in wandb: a warning only
        try:
            run = self.logger.experiment
        except Exception as exc:
            raise UserError(f"W&B could not start the run ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}).",
                            why="wandb.init failed (a rejected key, or the server refused).",
                            fix="Set WANDB_MODE=offline (sync later with `wandb sync`) or "
                            "logger='csv', or check the key.") from None
        if self.mode == "offline":
            folder = str(Path(run.dir).parent)  # …/wandb/offline-run-<time>-<id>
            if folder not in self.record["folders"]:
                self.record["folders"].append(folder)
            if self.resumed and len(self.record["folders"]) > 1:
                self.say(f"W&B offline mode does not resume a run: this part goes to a second "
                         f"local folder with the same run id {self.run_id}. Upload all parts "
                         f"with: {self.sync_command()}")
        tier1 = read_json(self.run_dir / "tier1.json")
        if isinstance(tier1, dict):
            run.config.update({"tier1": _verdict(tier1)}, allow_val_change=True)
        self._save_record()

    def _save_record(self) -> None:
        write_json(self.run_dir / RUN_FILE, {**self.record, "mode": self.mode})
        if self.manager is not None:
            self.manager.mirror_file(RUN_FILE)

    def sync_command(self) -> str | None:
        """``wandb sync DIR…`` for every offline folder of this run, or None."""
        folders = [f for f in self.record["folders"] if Path(f).exists()]
        return "wandb sync " + " ".join(folders) if folders else None

    # ---- Lightning hooks --------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self._start()
        path = self.run_dir / "metrics.csv"  # MetricsLog (earlier in the list) has truncated it
        self._offset = path.stat().st_size if path.is_file() else 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._flush()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._flush()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt):  # Ctrl-C ends in train()'s finish
            self.finish(failed=True)

    def _flush(self) -> None:
        """Log the rows ``metrics.csv`` gained since the last call."""
        path = self.run_dir / "metrics.csv"
        if self.logger is None or not path.is_file():
            return
        with path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # only complete lines
        if end <= 0:
            return
        self._offset += end
        text = data[:end].decode()
        from utils.training.callbacks import METRIC_FIELDS

        for row in csv.DictReader(io.StringIO(text), fieldnames=METRIC_FIELDS):
            if row["step"] in (None, "", "step"):
                continue  # the header line
            values = {k: float(v) for k, v in row.items() if k not in ("step", "epoch") and v}
            if values:
                self.logger.log_metrics({**values, "epoch": float(row["epoch"] or 0)},
                                        step=int(row["step"]))

    def finish(self, result: Any = None, *, failed: bool = False) -> None:
        """Log the final metrics and the Tier 1 verdict as the run's summary and end it."""
        if self.logger is None or self.logger._experiment is None:
            return
        self._flush()
        run = self.logger.experiment
        if result is not None:
            run.summary.update({**{f"final/{k}": v for k, v in result.metrics.items()},
                                "steps": result.steps, "interrupted": result.interrupted})
        tier1 = read_json(self.run_dir / "tier1.json")
        if isinstance(tier1, dict):
            run.summary["tier1"] = _verdict(tier1)
        run.finish(exit_code=1 if failed else 0)
        self.logger._experiment = None
        self._save_record()
        command = self.sync_command() if self.mode == "offline" else None
        if command:
            self.say(f"W&B offline run {self.run_id}: upload it with `{command}`.")


def _new_id() -> str:
    """A W&B run id: 8 lowercase letters and digits, as wandb makes them."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _verdict(tier1: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict from ``tier1.json``: passed, and each check's status."""
    checks = {c.get("name"): c.get("status") for c in tier1.get("checks", [])
              if isinstance(c, dict)}
    return {"passed": tier1.get("passed"), "checks": checks}
