"""``SetupWizard``: a form over :class:`~utils.training.config.TrainingConfig` for notebooks.

A preset dropdown and the fields a person changes (steps, batch size, sequence length,
learning rate, precision, checkpoint interval, W&B), every field validated at once with its
error shown beside it, and a live memory estimate for the chosen batch and length on the
detected GPU — with a warning when it will not fit Colab's T4.

The logic is plain Python (:meth:`SetupWizard.set`, :meth:`SetupWizard.apply`,
:attr:`SetupWizard.config`, :attr:`SetupWizard.errors`), tested without a browser; the widget
layer is thin and written against the ipywidgets API common to 7 (which Colab ships, and
whose frame does not support 8) and 8. Without ipywidgets, :func:`settings_form` falls back to
the preset.

Example:
    >>> wizard = SetupWizard(adapter, "smoke")
    >>> wizard.set(batch_size="16", lr="3e-4"); wizard.apply()
    True
    >>> wizard.config.batch_size
    16
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from utils.errors import UserError
from utils.training.config import (
    PRECISIONS,
    ConfigError,
    TrainingConfig,
    config_fields,
    effective_precision,
)

__all__ = ["FIELDS", "PresetChoice", "SetupWizard", "memory_note", "settings_form"]

_GB = 2**30
# The fields a person changes: name -> (label, kind). The rest come from the preset.
FIELDS: dict[str, tuple[str, str]] = {
    "max_steps": ("Steps", "int"),
    "batch_size": ("Batch size", "int"),
    "seq_len": ("Sequence length", "optional int"),
    "lr": ("Learning rate", "lr"),
    "precision": ("Precision", "choice"),
    "checkpoint_every": ("Checkpoint every", "int"),
    "use_wandb": ("Log to W&B", "bool"),
}


def _parse(name: str, value: Any) -> Any:
    """The typed value of a form entry, by the field's own parser (the CLI's flags use the same
    one); ValueError with a person's message when it is not."""
    if name == "use_wandb":
        return bool(value)
    if name == "seq_len" and str(value).strip().lower() == "auto":  # the form's word for None
        return None
    return config_fields()[name].parse("" if value is None else value)


class SetupWizard:
    """A training-settings form for ``adapter`` (see the module docstring).

    Args:
        adapter: The ``ModelAdapter`` to train (its size drives the memory estimate).
        preset: The preset the form starts from (None: ``colab-t4`` on a GPU, ``smoke`` on
            the CPU).
        overrides: ``TrainingConfig`` fields applied over the preset (e.g. ``max_steps``).
        device: Where training will run (default: a CUDA GPU when there is one, else the CPU).
    """

    def __init__(self, adapter: Any, preset: str | None = None, *,
                 overrides: Mapping[str, Any] | None = None, device: Any = None) -> None:
        from utils.environment import resolve_device

        self.adapter = adapter
        self.device = resolve_device(None if device is None else str(device))
        self.preset_name = preset or ("colab-t4" if self.device.type == "cuda" else "smoke")
        self.overrides = dict(overrides or {})
        self.errors: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self._config: TrainingConfig | None = None
        self._applied: dict[str, Any] | None = None
        self._fit: tuple[float, float] | None = None
        self._widgets: dict[str, Any] | None = None
        self.load_preset(self.preset_name)
        self.apply()

    # ---- logic (no widgets) ------------------------------------------------------------
    def _base(self, name: str) -> TrainingConfig:
        from utils.ui.presets import fit_length, preset

        base = preset(name, **{k: v for k, v in self.overrides.items() if k != "use_wandb"})
        return fit_length(base, self.adapter, explicit="seq_len" in self.overrides)

    def load_preset(self, name: str) -> None:
        """Put the preset's values (with the overrides) into the form."""
        base = self._base(name)
        self.preset_name = name
        self.values = {k: getattr(base, k) for k in FIELDS if k != "use_wandb"}
        self.values["use_wandb"] = base.logger == "wandb" or bool(
            self.overrides.get("use_wandb"))
        self._sync_widgets()

    def set(self, **values: Any) -> None:
        """Change form entries (strings as a person types them, or typed values)."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise UserError(f"SetupWizard has no field {', '.join(unknown)}.",
                            why=f"Its fields are: {', '.join(FIELDS)}.",
                            fix="Use one of those names; set the rest in a TrainingConfig.")
        self.values.update(values)
        self._sync_widgets()

    def apply(self) -> bool:
        """Validate every field at once; on success the form's config becomes :attr:`config`.

        Returns whether it was valid; :attr:`errors` maps each bad field to its message.
        """
        errors: dict[str, str] = {}
        typed: dict[str, Any] = {}
        for name in FIELDS:
            try:
                typed[name] = _parse(name, self.values.get(name))
            except ValueError as exc:
                errors[name] = str(exc)
        if typed.get("precision") not in PRECISIONS and "precision" not in errors:
            errors["precision"] = f"one of {', '.join(PRECISIONS)}"
        config = None
        use_wandb = bool(typed.pop("use_wandb", False))
        valid = {k: v for k, v in typed.items() if k not in errors}
        try:  # the parsed fields are checked by the config even when others did not parse
            config = self._base(self.preset_name).replace(
                **valid, logger="wandb" if use_wandb else "csv")
            config.seq_len_for(self.adapter.max_seq_len)
        except ConfigError as exc:
            errors.update({k: v for k, v in exc.problems.items() if k not in errors})
        except UserError as exc:  # seq_len beyond the model's positions
            errors.setdefault("seq_len", exc.message)
        self.errors = errors
        self._applied = dict(self.values)
        if not errors:
            self._config = config
        self._sync_widgets()
        return not errors

    @property
    def config(self) -> TrainingConfig:
        """The form's config: the entries as they are now (applied if they changed since the
        last Apply — a forgotten click must not train on stale settings).

        Raises:
            ConfigError: the form holds invalid entries (each field and what is wrong).
        """
        if self.values != self._applied:
            self.apply()
        if self.errors or self._config is None:
            lines = "".join(f"\n    {k}: {v}" for k, v in self.errors.items())
            raise ConfigError(f"The setup form has {len(self.errors)} invalid field(s):{lines}",
                              self.errors, fix="Correct the fields marked in red and press "
                              "Apply (or run the cell again).")
        return self._config

    def estimate(self) -> tuple[str, bool]:
        """``(sentence, fits_t4)``: the training step's memory at the form's batch and length
        on the detected device, and whether it fits Colab's T4 (see :func:`memory_note`)."""
        try:
            batch = _parse("batch_size", self.values.get("batch_size"))
            seq = _parse("seq_len", self.values.get("seq_len"))
            seq = TrainingConfig(seq_len=seq).seq_len_for(self.adapter.max_seq_len)
        except (ValueError, UserError):
            return "The memory estimate needs a valid batch size and sequence length.", True
        if self._fit is None:
            from utils.memory import activation_fit

            self._fit = activation_fit(self.adapter)
        return memory_note(self.adapter, batch, seq, str(self.values.get("precision") or "auto"),
                           self.device, fit=self._fit)

    # ---- widgets (thin) ------------------------------------------------------------------
    def widget(self):
        """The ipywidgets form (built once).

        Raises:
            MissingExtraError: ipywidgets is not installed (the ``notebook`` extra).
        """
        if self._widgets is None:
            self._build()
        return self._widgets["form"]

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget())

    def _build(self) -> None:
        from utils.environment import require
        from utils.ui.presets import PRESETS

        w = require("ipywidgets", "The setup wizard")
        made: dict[str, Any] = {"preset": w.Dropdown(options=list(PRESETS), description="Preset",
                                                     value=self.preset_name)}
        for name, (label, kind) in FIELDS.items():
            value = self.values.get(name)
            if kind == "bool":
                made[name] = w.Checkbox(value=bool(value), description=label)
            elif kind == "choice":
                made[name] = w.Dropdown(options=list(PRECISIONS), value=value,
                                        description=label)
            else:
                made[name] = w.Text(value="" if value is None else str(value),
                                    description=label)
            made[name + "_error"] = w.HTML(value="")
        made["apply"] = w.Button(description="Apply", button_style="primary")
        made["status"] = w.HTML(value="")
        rows = [made["preset"], *(w.HBox([made[n], made[n + "_error"]]) for n in FIELDS),
                made["apply"], made["status"]]
        made["form"] = w.VBox(rows)
        self._widgets = made
        self._syncing = False

        def on_preset(change):
            if not self._syncing:
                self.load_preset(change["new"])
                self._refresh_status()

        def on_value(change):
            if not self._syncing:
                for n in FIELDS:
                    self.values[n] = made[n].value
                self._refresh_status()

        made["preset"].observe(on_preset, names="value")
        for n in FIELDS:
            made[n].observe(on_value, names="value")
        made["apply"].on_click(lambda _button: self.apply())
        self._sync_widgets()

    def _sync_widgets(self) -> None:
        made = self._widgets
        if made is None:
            return
        self._syncing = True
        try:
            made["preset"].value = self.preset_name
            for name, (_, kind) in FIELDS.items():
                value = self.values.get(name)
                made[name].value = (bool(value) if kind == "bool" else value if kind == "choice"
                                    else "" if value is None else str(value))
                error = self.errors.get(name)
                made[name + "_error"].value = (
                    f"<span style='color:#cf222e'>{html.escape(error)}</span>" if error else "")
        finally:
            self._syncing = False
        self._refresh_status()

    def _refresh_status(self) -> None:
        made = self._widgets
        if made is None:
            return
        text, fits = self.estimate()
        colour = "#1a7f37" if fits else "#9a6700"
        state = (f"<b style='color:#cf222e'>{len(self.errors)} field(s) to correct.</b> "
                 if self.errors else "<b>Applied.</b> " if self._config is not None else "")
        made["status"].value = f"{state}<span style='color:{colour}'>{html.escape(text)}</span>"


def memory_note(adapter: Any, batch: int, seq_len: int, precision: str, device: Any, *,
                fit: tuple[float, float] | None = None) -> tuple[str, bool]:
    """``(sentence, fits_t4)``: one training step's memory (Tier 1's memory model:
    :func:`utils.memory.estimate_train_memory`) at ``batch`` × ``seq_len`` on ``device``, and
    whether it fits Colab's T4 (a 16 GB card, ``utils.gpu_table.RESERVED_GB`` less usable)."""
    import torch

    from utils.environment import resolve_device
    from utils.gpu_table import COLAB_FREE, usable_bytes
    from utils.memory import estimate_train_memory
    from utils.ui.presets import device_budget

    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    here = effective_precision(device.type, bf16, precision)
    t4 = effective_precision("cuda", False, precision)
    need = estimate_train_memory(adapter, batch, seq_len, precision=here, fit=fit)
    on_t4 = estimate_train_memory(adapter, batch, seq_len, precision=t4, fit=fit)
    t4_usable = usable_bytes(int(COLAB_FREE.memory_gb * _GB))
    budget = device_budget(device)
    where = torch.cuda.get_device_name(device) if cuda else "the CPU"
    text = (f"One training step at batch {batch} × length {seq_len} needs ≈ "
            f"{need.total / _GB:.2f} GB at precision {here!r} on {where}")
    text += f" (≈ {budget / _GB:.1f} GB available)." if budget else "."
    fits_t4 = on_t4.total <= t4_usable
    if not fits_t4:
        text += (f" It will not fit a T4 ({t4_usable / _GB:.0f} GB usable of "
                 f"{COLAB_FREE.memory_gb:.0f} GB at {t4!r}: ≈ {on_t4.total / _GB:.1f} GB): lower "
                 "the batch size or the length.")
    elif budget and need.total > budget:
        text += " It will not fit here: lower the batch size or the length."
    return text, fits_t4


class PresetChoice:
    """The fallback when ipywidgets is missing: the preset (with overrides), shown as text."""

    def __init__(self, config: TrainingConfig, reason: str) -> None:
        self.config = config
        self.reason = reason

    def __repr__(self) -> str:
        return f"PresetChoice({self.reason})"


def settings_form(adapter: Any, s: Any, *, device: Any = None):
    """The wizard for the notebook's settings (``PRESET``, ``MAX_STEPS``, ``USE_WANDB``),
    displayed; or, without ipywidgets, the preset itself with a note saying which extra gives
    the form. Either way the answer has ``.config``."""
    from utils.errors import MissingExtraError

    overrides: dict[str, Any] = {}
    if s.MAX_STEPS:
        overrides["max_steps"] = s.MAX_STEPS
    if s.USE_WANDB:
        overrides["use_wandb"] = True
    wizard = SetupWizard(adapter, s.PRESET or None, overrides=overrides, device=device)
    try:
        wizard.widget()
    except MissingExtraError as exc:
        print(f"The setup form needs ipywidgets ({exc.fix}); using the "
              f"{wizard.preset_name!r} preset as it is.")
        return PresetChoice(wizard.config, f"preset {wizard.preset_name!r}")
    from IPython.display import display

    display(wizard)
    return wizard
