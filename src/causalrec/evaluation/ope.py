"""Off-policy estimators of a policy's value from logged bandit feedback, with bootstrap CIs.

Open Bandit Pipeline style: each estimator is a small dataclass with `estimate_policy_value` and
`estimate_interval`, working on plain arrays:
    reward (n,), action (n,) int, position (n,) int (0 when the slate has one slot),
    pscore (n,) the logging policy's probability of the logged action,
    action_dist (n, n_actions, n_positions) the evaluation policy's probabilities, or (n,) its
        probability of the logged action alone (all the IPW family needs; e.g. a slate policy's
        inclusion probability of the item shown),
    estimated_rewards (n, n_actions, n_positions) a reward model q(x, a, k) for DM/DR.
Each estimator's per-round contributions are averaged (or self-normalised), so the bootstrap
resamples rounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _at(matrix: np.ndarray, action: np.ndarray, position: np.ndarray) -> np.ndarray:
    return matrix[np.arange(len(action)), action, position]


def bootstrap_interval(samples_fn, n: int, alpha: float = 0.05, n_bootstrap: int = 1000,
                       random_state: int | None = None) -> dict:
    """Percentile bootstrap over rounds: samples_fn(idx) -> estimate on resampled rounds."""
    rng = np.random.default_rng(random_state)
    boot = np.array([samples_fn(rng.integers(n, size=n)) for _ in range(n_bootstrap)])
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(boot.mean()), f"{100 * (1 - alpha):.1f}% CI (lower)": float(lo),
            f"{100 * (1 - alpha):.1f}% CI (upper)": float(hi)}


@dataclass
class _Estimator:
    estimator_name: str = "base"
    needs_all_actions = True  # a class constant (not a field): DM/DR average over every action

    def _terms(self, reward, action, position, pscore, action_dist, estimated_rewards) -> tuple[np.ndarray, np.ndarray]:
        """Per-round (numerator, denominator); value = sum(num) / sum(den)."""
        raise NotImplementedError

    def _prepare(self, reward, action, position=None, pscore=None, action_dist=None, estimated_rewards=None):
        reward = np.asarray(reward, dtype=float)
        action = np.asarray(action, dtype=int)
        position = np.zeros_like(action) if position is None else np.asarray(position, dtype=int)
        if action_dist is None:
            raise ValueError(f"{self.estimator_name}: action_dist is required")
        action_dist = np.asarray(action_dist, dtype=float)
        if action_dist.ndim == 1 and len(action_dist) == len(reward):
            if self.needs_all_actions:
                raise ValueError(f"{self.estimator_name}: needs action_dist over every action, (n, n_actions, n_positions)")
            action_dist, action, position = action_dist[:, None, None], np.zeros_like(action), np.zeros_like(action)
        if action_dist.ndim != 3 or len(action_dist) != len(reward):
            raise ValueError(f"{self.estimator_name}: action_dist must have shape (n_rounds, n_actions, n_positions)")
        if pscore is not None and np.any(np.asarray(pscore) <= 0):
            raise ValueError(f"{self.estimator_name}: pscore must be > 0")
        return reward, action, position, (None if pscore is None else np.asarray(pscore, float)), action_dist, estimated_rewards

    def estimate_policy_value(self, reward, action, position=None, pscore=None, action_dist=None,
                              estimated_rewards=None) -> float:
        num, den = self._terms(*self._prepare(reward, action, position, pscore, action_dist, estimated_rewards))
        return float(num.sum() / den.sum())

    def estimate_interval(self, reward, action, position=None, pscore=None, action_dist=None, estimated_rewards=None,
                          alpha: float = 0.05, n_bootstrap_samples: int = 1000, random_state: int | None = None) -> dict:
        num, den = self._terms(*self._prepare(reward, action, position, pscore, action_dist, estimated_rewards))
        return bootstrap_interval(lambda idx: num[idx].sum() / den[idx].sum(), len(num), alpha,
                                  n_bootstrap_samples, random_state)


@dataclass
class DirectMethod(_Estimator):
    """DM: the reward model's expected reward under the evaluation policy (biased if q is wrong)."""

    estimator_name: str = "dm"

    def _terms(self, reward, action, position, pscore, action_dist, estimated_rewards):
        if estimated_rewards is None:
            raise ValueError("dm: estimated_rewards is required")
        pos = position
        dm = (action_dist[np.arange(len(reward)), :, pos] * estimated_rewards[np.arange(len(reward)), :, pos]).sum(1)
        return dm, np.ones_like(dm)


@dataclass
class InverseProbabilityWeighting(_Estimator):
    """IPS: mean of w * r with w = pi_e(a|x,k) / pi_b(a|x,k); unbiased when pi_b > 0 wherever pi_e > 0."""

    estimator_name: str = "ipw"
    needs_all_actions = False

    def _weights(self, action, position, pscore, action_dist):
        return _at(action_dist, action, position) / pscore

    def _terms(self, reward, action, position, pscore, action_dist, estimated_rewards):
        w = self._weights(action, position, pscore, action_dist)
        return w * reward, np.ones_like(w)


@dataclass
class SelfNormalizedInverseProbabilityWeighting(InverseProbabilityWeighting):
    """SNIPS: sum(w r) / sum(w): a little bias, much less variance."""

    estimator_name: str = "snipw"

    def _terms(self, reward, action, position, pscore, action_dist, estimated_rewards):
        w = self._weights(action, position, pscore, action_dist)
        return w * reward, w


@dataclass
class DoublyRobust(InverseProbabilityWeighting):
    """DR: DM + w (r - q(x,a)); unbiased if either the propensities or the reward model are right."""

    estimator_name: str = "dr"
    needs_all_actions = True

    def _parts(self, reward, action, position, pscore, action_dist, estimated_rewards):
        if estimated_rewards is None:
            raise ValueError(f"{self.estimator_name}: estimated_rewards is required")
        rows = np.arange(len(reward))
        dm = (action_dist[rows, :, position] * estimated_rewards[rows, :, position]).sum(1)
        w = self._weights(action, position, pscore, action_dist)
        return dm, w, reward - _at(estimated_rewards, action, position)

    def _terms(self, reward, action, position, pscore, action_dist, estimated_rewards):
        dm, w, residual = self._parts(reward, action, position, pscore, action_dist, estimated_rewards)
        return dm + w * residual, np.ones_like(w)


@dataclass
class SelfNormalizedDoublyRobust(DoublyRobust):
    """SNDR: DR with the correction term self-normalised by mean(w)."""

    estimator_name: str = "sndr"

    def _terms(self, reward, action, position, pscore, action_dist, estimated_rewards):
        dm, w, residual = self._parts(reward, action, position, pscore, action_dist, estimated_rewards)
        # value = mean(dm) + sum(w r~) / sum(w): one ratio of per-round terms with the same n.
        mean_w = w.mean()
        return dm + w * residual / mean_w, np.ones_like(w)

    def estimate_interval(self, reward, action, position=None, pscore=None, action_dist=None, estimated_rewards=None,
                          alpha: float = 0.05, n_bootstrap_samples: int = 1000, random_state: int | None = None) -> dict:
        args = self._prepare(reward, action, position, pscore, action_dist, estimated_rewards)
        dm, w, residual = self._parts(*args)
        return bootstrap_interval(lambda idx: dm[idx].mean() + (w[idx] * residual[idx]).sum() / w[idx].sum(), len(w),
                                  alpha, n_bootstrap_samples, random_state)


@dataclass
class SwitchDoublyRobust(DoublyRobust):
    """Switch-DR: DR where the weight is at most `lambda_`, DM alone where it is larger."""

    lambda_: float = 100.0
    estimator_name: str = "switch-dr"

    def _terms(self, reward, action, position, pscore, action_dist, estimated_rewards):
        dm, w, residual = self._parts(reward, action, position, pscore, action_dist, estimated_rewards)
        return dm + w * residual * (w <= self.lambda_), np.ones_like(w)


def paired_interval(estimator: _Estimator, reward, pscore, pi_a, pi_b, groups=None, alpha: float = 0.05,
                    n_bootstrap: int = 1000, random_state: int | None = None, shown=None) -> dict:
    """Policies a and b on the same logged rounds: each one's value, and a - b, with percentile
    bootstrap intervals that resample the same rounds for both (whole groups when `groups` is given,
    e.g. the rows of one served slate, which share a user and are not independent). pi_a, pi_b: (n,)
    each policy's probability of the logged action (an IPW-family estimator).

    `shown` (n,) bool: the incremental value, E[Y(1) - Y(0)] per shown item. The True rows are shown
    items (reward Y(1), pscore the probability they were shown), the False rows a slate's controls
    (reward Y(0) of an unshown item, pscore the probability it was drawn as a control); each arm is
    estimated on its own and the control arm is subtracted: IPW divides both by the number of shown
    rows (unbiased), SNIPS each by its own sum of weights (both sums estimate the same number, the
    policy's expected slate size per round)."""
    reward = np.asarray(reward, float)
    terms = [estimator._terms(*estimator._prepare(reward, np.zeros(len(reward), int), None, pscore, pi))
             for pi in (pi_a, pi_b)]
    if groups is None:
        member = np.arange(len(reward))
    else:
        # groups numbered by first appearance: the same rows give the same resamples whatever the ids
        _, first, member = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
        member = np.argsort(np.argsort(first))[member]
    n_groups = member.max() + 1 if len(member) else 0
    arms = [np.ones(len(reward), bool)] if shown is None else [np.asarray(shown, bool), ~np.asarray(shown, bool)]
    self_normalised = estimator.estimator_name.startswith("sn")

    def group_sums(num, den) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per arm, per-group sums of numerator and denominator: a resample of groups is a weighted sum of them."""
        out = [(np.bincount(member, num * a, n_groups), np.bincount(member, den * a, n_groups)) for a in arms]
        if len(out) == 2 and not self_normalised:  # IPW: the control arm per shown item too
            out[1] = (out[1][0], out[0][1])
        return out

    def value(sums, counts=None):
        """sum over arms (the control arm subtracted) of sum(num) / sum(den), per resample when `counts`."""
        total = 0.0
        for sign, (num, den) in zip((1.0, -1.0), sums):
            total = total + sign * ((counts @ num) / (counts @ den) if counts is not None else num.sum() / den.sum())
        return total

    sums = [group_sums(num, den) for num, den in terms]
    rng = np.random.default_rng(random_state)
    boot = [np.empty(n_bootstrap), np.empty(n_bootstrap)]
    for start in range(0, n_bootstrap, 100):  # 100 resamples at a time: memory stays O(100 x groups)
        counts = np.stack([np.bincount(rng.integers(n_groups, size=n_groups), minlength=n_groups)
                           for _ in range(start, min(start + 100, n_bootstrap))]).astype(float)
        for b_, s in zip(boot, sums):
            b_[start:start + len(counts)] = value(s, counts)
    point = [value(s) for s in sums]

    def summary(value, draws):
        lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        return {"value": float(value), "ci": [float(lo), float(hi)]}

    return {"estimator": estimator.estimator_name, "rounds": len(reward), "groups": int(n_groups),
            "a": summary(point[0], boot[0]), "b": summary(point[1], boot[1]),
            "difference": summary(point[0] - point[1], boot[0] - boot[1])}


ESTIMATORS = {e.estimator_name: e for e in (InverseProbabilityWeighting(), SelfNormalizedInverseProbabilityWeighting())}
