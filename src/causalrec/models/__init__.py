"""Backbones and the non-personalised baseline."""
from causalrec.models.mf import Popularity

__all__ = ["Popularity"]
