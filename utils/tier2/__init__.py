"""Tier 2 analyses: attention patterns, attribution, robustness, generation consistency."""
