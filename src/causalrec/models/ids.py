"""External ids <-> contiguous indices."""
from __future__ import annotations

import numpy as np


class IdIndex:
    """Maps external ids to contiguous indices (sorted, deterministic); unknown ids map to -1."""

    def __init__(self, ids):
        self.ids = np.asarray(sorted(set(map(str, ids))))
        self._pos = {k: i for i, k in enumerate(self.ids)}

    def __len__(self):
        return len(self.ids)

    def encode(self, ids) -> np.ndarray:
        return np.fromiter((self._pos.get(str(k), -1) for k in ids), dtype=np.int64, count=len(ids))
