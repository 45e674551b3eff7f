"""Propensities, debiasing losses, uplift learners, causal graphs and effect estimates."""
