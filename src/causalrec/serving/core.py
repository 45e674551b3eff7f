"""The recommender a service serves: a bundle directory written by the package stage.

Bundle layout: model.pt (a causalrec model), items.parquet (item_id, title, category),
manifest.json (model name, metrics, data hash, encoder fingerprint). Unknown users get the
non-personalised fallback (most positively received items) instead of an error: cold start.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.models import load_model


@dataclass
class Recommendation:
    item_id: str
    title: str
    score: float


class RecommenderCore:
    def __init__(self, bundle_dir: str | Path):
        bundle_dir = Path(bundle_dir)
        self.manifest = json.loads((bundle_dir / "manifest.json").read_text())
        self.model = load_model(bundle_dir / "model.pt")
        items = pd.read_parquet(bundle_dir / "items.parquet")
        self.item_ids = items["item_id"].astype(str).to_numpy()
        self.titles = items["title"].astype(str).to_numpy()
        self._item_pos = {k: i for i, k in enumerate(self.item_ids)}
        known_users = getattr(getattr(self.model, "users_", None), "ids", np.array([]))
        self.known_users = set(known_users.tolist())
        # Cold-start fallback: the item scores a user with no history gets.
        self._fallback = self.model.score_matrix(["<unknown>"], self.item_ids)[0]

    def scores(self, user_id: str) -> tuple[np.ndarray, bool]:
        if user_id in self.known_users:
            return self.model.score_matrix([user_id], self.item_ids)[0], False
        return self._fallback.copy(), True

    def recommend(self, user_id: str, k: int, exclude: list[str] | None = None) -> dict:
        scores, cold = self.scores(user_id)
        for item in exclude or []:
            pos = self._item_pos.get(item)
            if pos is not None:
                scores[pos] = -np.inf
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[np.isfinite(scores[top])]
        return {"user_id": user_id, "cold_start": cold, "model": self.manifest.get("model"),
                "items": [{"item_id": self.item_ids[i], "title": self.titles[i], "score": float(scores[i])} for i in top]}
