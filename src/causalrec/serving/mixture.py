"""Champion and challengers serving side by side: each request is served by one policy drawn with the
bandit's shares (policy.traffic), and every item the answer names carries the mixture's exact
probability, sum_m w_m pi_m(i), so the log stays valid for off-policy estimates of any policy.

The answer names the policy that drew the slate (`model_version`: feedback and online updates go to it)
and the shares it was drawn with. Each policy's own exploration is kept: a slate its epsilon part drew
uniformly is uniform for the mixture too when every policy explores with the same epsilon over the same
catalogue (the gate's `traffic: uniform` needs that; `traffic: all` reads the logged mixture propensity).
"""
from __future__ import annotations

import numpy as np

from causalrec.policy.traffic import TrafficBandit, mixture_inclusion


class ServingMixture:
    def __init__(self, cores: list, bandit: TrafficBandit | None = None, seed: int | None = None, floor: float = 0.2):
        """cores: RecommenderCore per policy (the champion first), each with its own model version."""
        versions = [c.version for c in cores]
        self.cores = cores
        self.bandit = bandit or TrafficBandit(versions, floor=floor, seed=seed or 0)
        if self.bandit.arms != versions:
            raise ValueError(f"the bandit's arms {self.bandit.arms} are not the cores' versions {versions}")
        self._rng = np.random.default_rng(seed)

    def _inclusion(self, user_id: str, k: int, item_ids) -> np.ndarray:
        """(len(item_ids),) the mixture's exact inclusion probability of each item."""
        per_policy = []
        for core in self.cores:
            pi, pos = core.inclusion(user_id, k, online=True), core.positions(item_ids)
            per_policy.append(np.where(pos >= 0, pi[np.maximum(pos, 0)], 0.0))
        return mixture_inclusion(np.stack(per_policy), self.bandit.shares)

    def recommend(self, user_id: str, k: int, controls: int = 0) -> dict:
        arm = self.bandit.choose(self._rng)
        core = self.cores[arm]
        out = core.recommend(user_id, k)
        shares = {v: float(w) for v, w in zip(self.bandit.arms, self.bandit.shares)}
        ids = core.item_ids
        pi = self._inclusion(user_id, out["slate_size"], ids)
        for item in out["items"]:
            item["propensity"] = float(pi[core._pos[item["item_id"]]])
        out.update(policy="mixture" if len(self.cores) > 1 else out["policy"], shares=shares)
        if controls:  # drawn uniformly from the unshown items the mixture could have shown
            shown = {item["item_id"] for item in out["items"]}
            eligible = np.array([j for j in np.flatnonzero(pi > 0) if ids[j] not in shown])
            if len(eligible):
                picked = self._rng.choice(eligible, size=min(controls, len(eligible)), replace=False)
                out["controls"] = [{"item_id": ids[j], "propensity": float(pi[j])} for j in picked]
                out["control_rate"] = len(picked) / len(eligible)
            else:
                out["controls"], out["control_rate"] = [], 1.0
        return out

    def observe(self, model_version: str, reward: float) -> None:
        """A served request's reward, credited to the policy that drew it."""
        self.bandit.observe(self.bandit.arms.index(model_version), reward)

    def update(self) -> dict[str, float]:
        """New shares between batches (policy.traffic)."""
        return dict(zip(self.bandit.arms, self.bandit.update().tolist()))
