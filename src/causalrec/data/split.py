"""Splits that keep evaluation honest."""
from __future__ import annotations

import numpy as np
import pandas as pd


def split_randomized(rows: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Randomly split uniformly-exposed rows into (a `share` for training and validation, the rest for
    test). The test part is never seen by fitting or by any choice."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    take = np.random.default_rng(seed).random(len(rows)) < share
    return rows[take].reset_index(drop=True), rows[~take].reset_index(drop=True)
