"""Recommender backbones (factor model: MF / two-tower) and the popularity baseline."""
from causalrec.models.mf import Popularity, load_model

__all__ = ["Popularity", "load_model"]
