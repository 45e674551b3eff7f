"""Metrics (pure functions of arrays) and off-policy evaluation."""
