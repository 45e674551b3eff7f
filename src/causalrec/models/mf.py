"""The non-personalised baseline. (Matrix factorisation, naive or debiased, is
causalrec.causal.debias.DebiasedRecommender on the causalrec.models.factor backbone; saving and
loading every model: causalrec.persistence.)"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from causalrec.models.ids import IdIndex


@dataclass
class Popularity:
    """Scores every item by its number of positive outcomes on exposure (the non-personalised baseline)."""

    history: list = field(default_factory=list, init=False)

    def fit(self, users, items, y, propensity=None, val=None, progress: bool = False, **_) -> "Popularity":
        import pandas as pd

        counts = pd.Series(np.asarray(y, float)).groupby(np.asarray(items, dtype=str)).sum()
        self.items_ = IdIndex(counts.index)
        self.scores_ = (counts.reindex(self.items_.ids).to_numpy() + 1.0) / (counts.max() + 2.0)
        return self

    def _item_scores(self, item_ids) -> np.ndarray:
        idx = self.items_.encode(item_ids)
        # an item never logged has no positives, like a logged one with none: (0 + 1) / (max + 2), and
        # since the top score is (max + 1) / (max + 2), that is 1 - top score
        return np.where(idx >= 0, self.scores_[np.maximum(idx, 0)], 1.0 - self.scores_.max()).astype(np.float32)

    def score_matrix(self, user_ids, item_ids) -> np.ndarray:
        return np.tile(self._item_scores(item_ids), (len(user_ids), 1))

    def predict(self, user_ids, item_ids) -> np.ndarray:
        return self._item_scores(item_ids)

    def to_state(self) -> dict:
        return {"items": self.items_.ids.tolist(), "scores": torch.as_tensor(self.scores_)}

    @classmethod
    def from_state(cls, state: dict) -> "Popularity":
        m = cls()
        m.items_, m.scores_ = IdIndex(state["items"]), state["scores"].numpy()
        return m
