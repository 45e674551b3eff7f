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
from causalrec.serving.online import LogFollower


class PolicyRewards(LogFollower):
    """Each policy's reward on its own traffic, read from the feedback log (every worker's feedback, as
    with online updates), fed to the bandit; new shares every `batch` events. A shown item counts its
    outcome; a control (exposed false) its organic outcome weighted to the slate, -y pi / ((1 - pi) c)
    with the logged pi (the mixture's: for a policy that differs from the others, an approximation
    of its own; it moves the shares, never what is logged)."""

    def __init__(self, log_path, bandit: TrafficBandit, batch: int, scan_bytes: int = 32 * 2**20):
        super().__init__(log_path, scan_bytes)
        self.bandit, self.batch, self._since = bandit, batch, 0

    def _reset(self) -> None:
        self.bandit.reset()

    def _event(self, e: dict) -> None:
        try:
            arm = self.bandit.arms.index(e.get("model_version"))
            y, pi = float(e["outcome"]), float(e["propensity"])
            shown = e.get("exposed", True) is not False
            value = y if shown else -y * pi / ((1 - pi) * float(e.get("control_rate", 1.0)))
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            return  # another model's event, or one the rule book would refuse
        self.bandit.observe(arm, value, shown)
        self._since += 1
        if self._since >= self.batch:
            self.bandit.update()
            self._since = 0


class ServingMixture:
    def __init__(self, cores: list, bandit: TrafficBandit | None = None, seed: int | None = None, floor: float = 0.2,
                 feedback_log=None, batch: int = 250):
        """cores: RecommenderCore per policy (the champion first), each with its own model version.
        feedback_log: where the rewards are read from (None: the caller feeds `bandit` itself)."""
        versions = [c.version for c in cores]
        self.cores = cores
        self.bandit = bandit or TrafficBandit(versions, floor=floor, seed=seed or 0)
        if self.bandit.arms != versions:
            raise ValueError(f"the bandit's arms {self.bandit.arms} are not the cores' versions {versions}")
        self._rng = np.random.default_rng(seed)
        self.rewards = None if feedback_log is None else PolicyRewards(feedback_log, self.bandit, batch)

    def _inclusion(self, user_id: str, k: int, item_ids, exclude: list[str] | None) -> np.ndarray:
        """(len(item_ids),) the mixture's exact inclusion probability of each item."""
        per_policy = []
        for core in self.cores:
            pi, pos = core.inclusion(user_id, k, online=True, exclude=exclude), core.positions(item_ids)
            per_policy.append(np.where(pos >= 0, pi[np.maximum(pos, 0)], 0.0))
        return mixture_inclusion(np.stack(per_policy), self.bandit.shares)

    def recommend(self, user_id: str, k: int, exclude: list[str] | None = None, controls: int = 0) -> dict:
        """RecommenderCore.recommend's answer from the policy the bandit drew, with the mixture's
        propensities, `shares` (the policies' shares it was drawn with) and controls drawn from the mixture."""
        if self.rewards is not None:
            self.rewards.refresh()
        arm = self.bandit.choose(self._rng)
        core = self.cores[arm]
        out = core.recommend(user_id, k, exclude)
        shares = {v: float(w) for v, w in zip(self.bandit.arms, self.bandit.shares)}
        ids = core.item_ids
        pi = self._inclusion(user_id, out["slate_size"], ids, exclude)
        for item in out["items"]:
            item["propensity"] = float(pi[core._pos[item["item_id"]]])
        out.update(policy="mixture" if len(self.cores) > 1 else out["policy"], shares=shares)
        if controls:  # drawn uniformly from the unshown items the mixture could have shown
            unshown = pi > 0
            unshown[[core._pos[item["item_id"]] for item in out["items"]]] = False
            eligible = np.flatnonzero(unshown)
            if len(eligible):
                picked = self._rng.choice(eligible, size=min(controls, len(eligible)), replace=False)
                out["controls"] = [{"item_id": ids[j], "propensity": float(pi[j])} for j in picked]
                out["control_rate"] = len(picked) / len(eligible)
            else:
                out["controls"], out["control_rate"] = [], 1.0
        return out


def with_challenger(champion, registry_path, bundle_of, feedback_log, seed: int | None = None) -> "ServingMixture | None":
    """The champion's core and the registry's waiting challenger (registered, not yet decided by the gate)
    sharing traffic, when the champion's serve.bandit is on; None when it is off or no challenger waits.
    bundle_of(tag) -> the challenger's bundle directory (BentoML's store; raises when this machine lacks it)."""
    from causalrec.registry import Registry
    from causalrec.serving.core import RecommenderCore

    cfg = champion.config.get("bandit") or {}
    if not cfg.get("enabled") or registry_path is None:
        return None
    entry = Registry(registry_path).alias("challenger")
    if entry is None or entry.get("status") != "challenger" or entry["model_tag"] == champion.version:
        return None
    challenger = RecommenderCore(bundle_of(entry["model_tag"]), catalogue=champion.catalogue,
                                 pseudonym_key=champion._pseudonym_key, version=entry["model_tag"],
                                 registry=registry_path, feedback_log=feedback_log)
    return ServingMixture([champion, challenger], TrafficBandit([champion.version, challenger.version],
                                                                floor=cfg["floor"], seed=seed or 0),
                          seed=seed, feedback_log=feedback_log, batch=cfg["batch"])
