"""What people see and set: display helpers for the notebooks' cells (``notebook``)."""

from utils.ui.notebook import show_code, show_model, show_next_step, show_report

__all__ = ["show_code", "show_model", "show_next_step", "show_report"]
