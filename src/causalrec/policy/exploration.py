"""Serve k of n items and return, for each shown item, the exact probability that this policy
shows it (its inclusion probability) — the propensity the next model's IPS/DR training and
off-policy evaluation need.

  greedy          the top k; probability 1 each (no exploration: the log will not support IPS)
  epsilon_greedy  with probability epsilon the whole slate is k items uniformly at random, else the
                  top k:  pi_i = (1 - eps) 1[i in top k] + eps k / n
  softmax         sampling proportional to size: target inclusion pi_i = k softmax(s / T)_i, capped
                  at 1 with the excess redistributed; exactly k items are drawn by systematic sampling
                  (Madow), whose inclusion probabilities are exactly pi_i.
  thompson        exploration where the model is unsure: scores are (M, n), one row per bootstrap member of
                  the uplift learner (a bootstrap approximation of the posterior: bootstrap Thompson
                  sampling, Eckles & Kaptein 2014); each request draws one member uniformly and shows its
                  top k, and with probability epsilon the slate is uniform instead (the floor that keeps
                  off-policy estimates of any policy valid):
                      pi_i = (1 - eps) (1/M) sum_m 1[i in top k of member m] + eps k / n
                  exact, as the draw is over M known members. Items every member ranks high are shown
                  almost always; items the members disagree on are shown in proportion to their agreement.

Diversity (greedy and epsilon_greedy): with `diversity` = lambda > 0 and item vectors (text
embeddings), the "top k" is the maximal-marginal-relevance slate (Carbonell & Goldstein 1998):
greedily the item maximising (1 - lambda) score - lambda max cosine to the items already chosen,
among the best `mmr_pool(k)` by score. It is a deterministic function of the scores, so the
inclusion probabilities above stay exact with it in place of the top k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICIES = ("greedy", "epsilon_greedy", "softmax", "thompson")


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def mmr_pool(k: int) -> int:
    """How many of the best-scored items MMR chooses among."""
    return max(50, 10 * k)


def _mmr(scores: np.ndarray, k: int, vectors: np.ndarray, diversity: float) -> np.ndarray:
    """The maximal-marginal-relevance slate of k (in the order chosen)."""
    pool = _top_k(scores, min(len(scores), mmr_pool(k)))
    v = vectors[pool] / np.maximum(np.linalg.norm(vectors[pool], axis=1, keepdims=True), 1e-12)
    chosen, closest = [], np.full(len(pool), -np.inf)
    for _ in range(k):
        gain = (1 - diversity) * scores[pool] - diversity * np.where(np.isfinite(closest), closest, 0.0)
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        closest = np.maximum(closest, v @ v[best])
    return pool[chosen]


def _slate_core(scores: np.ndarray, k: int, vectors: np.ndarray | None, diversity: float) -> np.ndarray:
    """What greedy shows: the top k, or the MMR slate when diversity is on."""
    return _top_k(scores, k) if diversity == 0 or vectors is None else _mmr(scores, k, vectors, diversity)


def _capped_pps(weights: np.ndarray, k: int) -> np.ndarray:
    """Inclusion probabilities proportional to weights, summing to k, none above 1."""
    pi = np.zeros_like(weights, dtype=np.float64)
    free = np.ones(len(weights), bool)
    remaining = float(k)
    while True:
        w = weights[free]
        share = remaining * w / w.sum()
        over = share >= 1
        if not over.any():
            pi[free] = share
            return pi
        idx = np.flatnonzero(free)[over]
        pi[idx] = 1.0
        free[idx] = False
        remaining -= len(idx)
        if remaining <= 0 or not free.any():
            return pi


def inclusion_probabilities(scores: np.ndarray, k: int, policy: str, epsilon: float = 0.1,
                            temperature: float = 0.1, diversity: float = 0.0,
                            vectors: np.ndarray | None = None) -> np.ndarray:
    """(n,) exact probability that each candidate is in the slate (thompson: `scores` is (members, n))."""
    n = scores.shape[-1]
    k = min(k, n)
    if policy == "thompson":
        pi = np.full(n, epsilon * k / n)
        for member in np.atleast_2d(scores):
            pi[_slate_core(member, k, vectors, diversity)] += (1 - epsilon) / len(np.atleast_2d(scores))
        return pi
    if policy == "greedy":
        pi = np.zeros(n)
        pi[_slate_core(scores, k, vectors, diversity)] = 1.0
        return pi
    if policy == "epsilon_greedy":
        pi = np.full(n, epsilon * k / n)
        pi[_slate_core(scores, k, vectors, diversity)] += 1 - epsilon
        return pi
    if policy == "softmax":
        z = (scores - scores.max()) / temperature
        return _capped_pps(np.exp(z) + 1e-300, k)
    raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES}")


@dataclass(frozen=True)
class Slate:
    items: np.ndarray       # catalogue indices shown, best score first
    propensity: np.ndarray  # the exact probability that the policy shows each of them
    uniform: bool           # drawn uniformly at random (the epsilon part): every item had probability k / n
                            # whatever the scores, so these slates are an unbiased sample for any policy


@dataclass
class ExplorationPolicy:
    kind: str = "epsilon_greedy"
    epsilon: float = 0.1
    temperature: float = 0.1
    diversity: float = 0.0  # MMR weight lambda in [0, 1) (greedy, epsilon_greedy, thompson; 0: the plain top k)

    def __post_init__(self):
        if self.kind not in POLICIES:
            raise ValueError(f"unknown policy {self.kind!r}; choose from {POLICIES}")
        if not 0 <= self.diversity < 1:
            raise ValueError(f"diversity must be in [0, 1), got {self.diversity}")
        if self.diversity and self.kind == "softmax":
            raise ValueError("diversity (MMR) works with greedy or epsilon_greedy, not softmax: its inclusion "
                             "probabilities would not be exact")
        if not 0 <= self.epsilon <= 1:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def select(self, scores: np.ndarray, k: int, rng: np.random.Generator, vectors: np.ndarray | None = None) -> Slate:
        """The slate shown: indices (best score first), their inclusion probabilities, whether uniform.
        vectors: (n, d) item vectors for diversity (ignored when it is 0). thompson: `scores` is
        (members, n), the slate ordered by the members' mean."""
        n = scores.shape[-1]
        k = min(k, n)
        if k == 0:
            return Slate(np.array([], int), np.array([]), False)
        if self.kind == "thompson":
            members = np.atleast_2d(scores)
            explore = rng.random() < self.epsilon
            chosen = (rng.choice(n, size=k, replace=False) if explore
                      else _slate_core(members[rng.integers(len(members))], k, vectors, self.diversity))
            pi = inclusion_probabilities(members, k, self.kind, self.epsilon, diversity=self.diversity, vectors=vectors)
            chosen = chosen[np.argsort(-members.mean(0)[chosen], kind="stable")]
            return Slate(chosen, pi[chosen], bool(explore))
        if self.kind in ("greedy", "epsilon_greedy"):
            # One top-k serves both the slate and the probabilities (no full pi vector per request).
            top = _slate_core(scores, k, vectors, self.diversity)
            explore = self.kind == "epsilon_greedy" and rng.random() < self.epsilon
            chosen = rng.choice(n, size=k, replace=False) if explore else top
            if self.kind == "greedy":
                prop = np.ones(k)
            else:
                prop = np.full(k, self.epsilon * k / n) + (1 - self.epsilon) * np.isin(chosen, top)
            order = np.argsort(-scores[chosen], kind="stable")
            return Slate(chosen[order], prop[order], bool(explore))
        pi = inclusion_probabilities(scores, k, self.kind, self.epsilon, self.temperature, self.diversity, vectors)
        # Systematic sampling over a random order: exactly k draws, inclusion probability pi_i.
        order = rng.permutation(n)
        cum = np.cumsum(pi[order])
        points = rng.random() + np.arange(k)
        chosen = order[np.minimum(np.searchsorted(cum, points, side="right"), n - 1)]
        chosen = chosen[np.argsort(-scores[chosen], kind="stable")]
        return Slate(chosen, pi[chosen], False)
