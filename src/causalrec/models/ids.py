"""External ids <-> contiguous indices."""
from __future__ import annotations

import numpy as np
import pandas as pd


class IdIndex:
    """Maps external ids to contiguous indices (sorted, deterministic); unknown ids map to -1."""

    def __init__(self, ids):
        self.ids = np.asarray(sorted(set(map(str, ids))))
        self._index = pd.Index(self.ids)  # a hash table: encode is vectorised (logs of millions of rows)

    def __len__(self):
        return len(self.ids)

    def encode(self, ids) -> np.ndarray:
        return self._index.get_indexer(np.asarray(ids).astype(str)).astype(np.int64)
