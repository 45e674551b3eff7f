"""Recommender backbones: popularity, matrix factorisation (naive / IPS / SNIPS weighting)."""
from causalrec.models.mf import MatrixFactorization, Popularity, load_model

__all__ = ["MatrixFactorization", "Popularity", "load_model"]
