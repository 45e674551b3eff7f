"""Live traffic shared among registered policies (the champion and its challengers) by a bandit, with
the exact propensity of the mixture logged for every item.

Each request is served by policy m with probability w_m (its share); the item probabilities of the
slate are then the mixture's,

    pi(i) = sum_m w_m pi_m(i)          (pi_m: policy m's exact inclusion probability of item i)

exact per item because the shares are fixed numbers while a batch of requests is served: they are
recomputed only between batches (`TrafficBandit.update`), from each policy's reward on its own traffic.
The shares are Thompson sampling's (probability matching): w_m = floor / M + (1 - floor) P(m is best),
P(m is best) under a normal posterior of each policy's mean reward per request (its own requests' mean
and standard error; a policy with fewer than 2 requests borrows the pooled spread), estimated with
`draws` posterior draws from a fixed seed (its Monte-Carlo error, sd <= 0.5 / sqrt(draws) per share,
moves a share, never the exactness of what is logged: the share used is the share logged). The floor
keeps every policy in the traffic, so each is measured on its own requests and the off-policy estimates
of any policy on the mixture's traffic keep bounded weights. The promotion gate still decides who becomes
champion (pipeline.promote); the bandit only decides who serves how much meanwhile.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def mixture_inclusion(inclusions: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """(n,) the mixture's inclusion probabilities from (M, n) per-policy ones and the M shares."""
    return np.asarray(shares, dtype=np.float64) @ np.asarray(inclusions, dtype=np.float64)


@dataclass
class TrafficBandit:
    arms: list[str]
    floor: float = 0.2          # the share spread evenly over all policies, whatever their rewards
    draws: int = 4000           # posterior draws per update (P(best) to about 0.008)
    seed: int = 0
    n: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    squares: np.ndarray = field(init=False)
    shares: np.ndarray = field(init=False)

    def __post_init__(self):
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct and at least one, got {self.arms}")
        if not 0 < self.floor <= 1:
            raise ValueError(f"floor must be in (0, 1], got {self.floor}")
        m = len(self.arms)
        self.n, self.total, self.squares = np.zeros(m), np.zeros(m), np.zeros(m)
        self.shares = np.full(m, 1.0 / m)
        self._rng = np.random.default_rng(self.seed)

    def choose(self, rng: np.random.Generator) -> int:
        """The policy serving one request: index m with probability shares[m]."""
        return int(rng.choice(len(self.arms), p=self.shares))

    def observe(self, arm: int, value: float, shown: bool = True) -> None:
        """One logged event of a policy's own traffic. Its value per shown item is sum(value) / (shown items):
        a shown item's outcome (value = y, shown), and for the incremental value also the slates' controls,
        each an unshown item's organic outcome weighted to the slate (value = -y0 pi / ((1 - pi) c), shown
        False; serving.mixture)."""
        self.n[arm] += bool(shown)
        self.total[arm] += value
        self.squares[arm] += value * value

    def reset(self) -> None:
        """Forget every observation (the shares stay until the next update)."""
        self.n[:], self.total[:], self.squares[:] = 0.0, 0.0, 0.0

    def update(self) -> np.ndarray:
        """New shares from the rewards observed so far (call between batches); returns them. The posterior
        of a policy's value: normal, its mean sum(value) / n and its standard error from the events' spread
        (events treated as independent: slates' correlation makes it a little narrow)."""
        m = len(self.arms)
        pooled_n = self.n.sum()
        pooled_mean = self.total.sum() / pooled_n if pooled_n else 0.0
        pooled_var = max(self.squares.sum() / pooled_n - pooled_mean ** 2, 1e-12) if pooled_n else 1.0
        mean = np.where(self.n > 0, self.total / np.maximum(self.n, 1), pooled_mean)
        var = np.where(self.n >= 2, self.squares / np.maximum(self.n, 1) - mean ** 2, pooled_var)
        se = np.sqrt(np.maximum(var, 1e-12) / np.maximum(self.n, 1))
        draws = self._rng.normal(mean, se, size=(self.draws, m))
        best = np.bincount(draws.argmax(1), minlength=m) / self.draws
        self.shares = self.floor / m + (1 - self.floor) * best
        return self.shares
