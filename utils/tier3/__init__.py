"""Tier 3: does the model learn on real data — fine-tuning with learning-sanity checks,
hyperparameter search, and a benchmark against a baseline of matched size.

The modules here import the training extras (lightning, optuna) inside functions, so importing
this package costs nothing; the entry points live in ``utils.tier3_training_utilities``.
"""
