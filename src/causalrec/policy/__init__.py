"""Exploration policies that serve slates and report the exact probability of showing each item."""
from causalrec.policy.exploration import ExplorationPolicy, inclusion_probabilities

__all__ = ["ExplorationPolicy", "inclusion_probabilities"]
