"""Exploration policies that serve slates and report the exact probability of showing each item."""
from causalrec.policy.exploration import ExplorationPolicy, Slate, inclusion_probabilities

__all__ = ["ExplorationPolicy", "Slate", "inclusion_probabilities"]
