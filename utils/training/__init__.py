"""Training: the Lightning trainer, checkpoints, datasets and export (Tier 3).

Every module here may import the training extras (``lightning``, ``datasets``, …) only inside the
functions that need them, and nothing here is imported by ``import utils``: import the module
you need, e.g. ``from utils.training.dataset_utilities import load_text_dataset``.
"""
