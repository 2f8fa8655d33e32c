"""Tier 1 checks, one concern per module; ``utils.tier1_critical_validation`` runs them."""
