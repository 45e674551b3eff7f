"""Naive baseline for benchmarks/serving_load.py: the same bundle, but every request scores the
catalogue item by item in a Python loop and sorts the whole list (no vectorisation, no top-K)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bentoml  # noqa: E402

from causalrec.serving.core import RecommenderCore  # noqa: E402


@bentoml.service(name="causalrec-naive", traffic={"timeout": 60})
class NaiveRecommender:
    bundle = bentoml.models.BentoModel("causalrec-recommender:latest")

    def __init__(self) -> None:
        self.core = RecommenderCore(self.bundle.path, serve={"policy": "greedy", "rank_by": "relevance"})
        term = self.core.relevance.parts[0]
        self.term = term
        self.rows = [(term.Q[j].tolist(), float(term.b[j])) for j in range(len(term.b))]

    @bentoml.api(route="/recommend")
    def recommend(self, user_id: str, k: int = 10) -> dict:
        p, bu = self.term.user(user_id)
        p = p.tolist()
        scored = []
        for j, (q, b) in enumerate(self.rows):
            scored.append((sum(x * y for x, y in zip(p, q)) + b + bu, j))
        scored.sort(reverse=True)
        return {"items": [{"item_id": self.core.item_ids[j], "score": s} for s, j in scored[:k]]}
