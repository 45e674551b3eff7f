"""The simulated world as an online environment: it answers served slates with outcomes drawn from
its true potential outcomes, round after round (issue 12's closed loop stands on this).

    env = OnlineWorld(World.load(truth_dir / "world"), seed=0, drift_from_round=6)
    outcomes = env.respond(round=1, user_ids=[...], item_ids=[...], propensities=[...], policy="v3")

* A served (user, item) pair was recommended, so its outcome is Y(1) ~ Bern(p1) of the world at that
  round; the service's logged inclusion probabilities are checked ((0, 1]) and passed through, never used
  to draw (the environment does not care how the slate was chosen).
* Online rounds continue where the log ended (the world's interests at t = 1). With
  `drift_from_round=k`, every user's interests move to a fresh draw (its own random stream), linearly
  over `drift_rounds` rounds from round k on.
* Every impression is its own draw: the n-th time a pair is shown in a round (in this call or an
  earlier one) gets the n-th draw of that pair's stream. So a pair served twice in a round can have
  two outcomes, as a real user's two visits can (an earlier version reused one draw per pair and
  round across calls: a model trained on one impression then "knew" the outcome of the other,
  and the promotion gate's held-out slates over-estimated it).
* Deterministic: the outcome of an impression depends only on (seed, round, user, item, how many
  times the pair was shown before in that round), not on which other pairs were served.
* `respond` returns outcomes only. The true values (`expected`, `oracle`) exist for benchmarks that
  score policies against the truth; nothing in the service or the pipeline calls them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from causalrec.data.simulate import World


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective scramble of 64-bit integers (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(seed: int, round: int, keys: np.ndarray, repeat: np.ndarray) -> np.ndarray:
    """A uniform in [0, 1) per (seed, round, pair, repeat), computed in bulk."""
    with np.errstate(over="ignore"):
        x = _mix(keys.astype(np.uint64) + _mix(np.array([seed * 1_000_003 + round], dtype=np.uint64)))
        x = _mix(x + repeat * np.uint64(0x9E3779B97F4A7C15))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class OnlineWorld:
    def __init__(self, world: World, seed: int = 0, drift_from_round: int | None = None, drift_rounds: int = 1):
        if not (isinstance(seed, int) and 0 <= seed < 2**40):
            raise ValueError(f"seed must be an integer in [0, 2**40), got {seed!r}")
        if drift_from_round is not None and drift_from_round < 1:
            raise ValueError(f"drift_from_round must be a round number >= 1, got {drift_from_round}")
        if drift_rounds < 1:
            raise ValueError(f"drift_rounds must be >= 1, got {drift_rounds}")
        self.seed, self.drift_from_round, self.drift_rounds = seed, drift_from_round, drift_rounds
        users = np.arange(len(world.user_bias))
        now = world.theta(users, 1.0)
        later = np.random.default_rng(np.random.SeedSequence([seed, 12])).dirichlet(np.full(now.shape[1], 0.3), len(users))
        # theta(t) = (1 - t) now + t later: t is the drift's progress, 0 before drift_from_round.
        self._world = dataclasses.replace(world, theta_early=now, theta_late=later,
                                          config=dataclasses.replace(world.config, drift=1.0))
        self.n_users, self.n_items = len(users), len(world.quality)
        self._shown: dict[tuple, dict[int, int]] = {}  # (round, exposed) -> pair key -> impressions drawn so far
        self.activity = world.activity / world.activity.sum()  # who visits: requests come from users this often

    def progress(self, round: int) -> float:
        if self.drift_from_round is None or round < self.drift_from_round:
            return 0.0
        return min(1.0, (round - self.drift_from_round + 1) / self.drift_rounds)

    def _index(self, ids, prefix: str, n: int, what: str) -> np.ndarray:
        out = np.empty(len(ids), dtype=np.int64)
        for j, key in enumerate(ids):
            key = str(key)
            if not (key.startswith(prefix) and key[1:].isdigit() and int(key[1:]) < n):
                raise ValueError(f"{what} {key!r} is not in this world ({prefix}000000..{prefix}{n - 1:06d}); "
                                 "items added at serving time have no potential outcomes here")
            out[j] = int(key[1:])
        return out

    def respond(self, round: int, user_ids, item_ids, propensities, policy: str, exposed=True) -> np.ndarray:
        """Outcomes (0/1) of served pairs at `round`: Y(1) of a shown item, Y(0) of an unshown one
        (`exposed` False for that pair: what the user does with an item no one recommended, e.g. a slate's
        control; its own stream of draws). Raises ValueError naming a bad input."""
        if not (isinstance(round, int) and round >= 1):
            raise ValueError(f"round must be an integer >= 1, got {round!r}")
        if not policy:
            raise ValueError("policy (the serving model's version) is required")
        propensities = np.asarray(propensities, dtype=np.float64)
        if not len(user_ids) == len(item_ids) == len(propensities):
            raise ValueError(f"user_ids, item_ids and propensities differ in length: {len(user_ids)}, {len(item_ids)}, "
                             f"{len(propensities)}")
        bad = ~((propensities > 0) & (propensities <= 1))
        if bad.any():
            raise ValueError(f"propensity must be in (0, 1]; {int(bad.sum())} are not (first: {propensities[bad][0]!r})")
        users = self._index(user_ids, "u", self.n_users, "user_id")
        items = self._index(item_ids, "i", self.n_items, "item_id")
        exposed = np.broadcast_to(np.asarray(exposed, dtype=bool), users.shape)
        out = np.empty(len(users), dtype=np.int8)
        for arm in (True, False):
            rows = np.flatnonzero(exposed == arm)
            if len(rows):
                out[rows] = self._draw(round, users[rows], items[rows], arm)
        return out

    def _draw(self, round: int, users: np.ndarray, items: np.ndarray, exposed: bool) -> np.ndarray:
        p1, p0 = self._world.potential_outcome_probs(users, items, self.progress(round))
        # One uniform per impression from the pair's hash-seeded stream (unexposed draws: a stream of their
        # own, seed + 2**40): independent of the other pairs.
        seed = self.seed if exposed else self.seed + 2**40
        keys = users.astype(np.uint64) * np.uint64(self.n_items) + items.astype(np.uint64)
        order = np.argsort(keys, kind="stable")
        repeat = np.empty(len(keys), dtype=np.int64)
        sorted_keys = keys[order]
        starts = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        run = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)
        repeat[order] = np.arange(len(keys)) - first[run]
        shown = self._shown.setdefault((round, exposed), {})
        before = np.fromiter((shown.get(key, 0) for key in keys.tolist()), dtype=np.int64, count=len(keys))
        for key, n in zip(*np.unique(keys, return_counts=True)):
            shown[int(key)] = shown.get(int(key), 0) + int(n)
        draw = (before + repeat).astype(np.uint64)
        return (_uniform(seed, round, keys, draw) < (p1 if exposed else p0)).astype(np.int8)

    # ------------------------------------------------------------- truth, for benchmarks only
    def expected(self, round: int, user_ids, item_ids, kind: str = "outcome") -> np.ndarray:
        """True E[Y(1)] ("outcome") or uplift E[Y(1) - Y(0)] ("uplift") of each pair at `round`."""
        users = self._index(user_ids, "u", self.n_users, "user_id")
        items = self._index(item_ids, "i", self.n_items, "item_id")
        p1, p0 = self._world.potential_outcome_probs(users, items, self.progress(round))
        return p1 if kind == "outcome" else p1 - p0

    def oracle(self, round: int, user_id: str, k: int, kind: str = "outcome") -> list[str]:
        """The k items with the highest true value for this user at `round` (the oracle greedy slate)."""
        items = [f"i{i:06d}" for i in range(self.n_items)]
        value = self.expected(round, [user_id] * self.n_items, items, kind)
        return [items[i] for i in np.argsort(-value, kind="stable")[:k]]

    def outcome_matrix(self, round: int, kind: str = "outcome") -> np.ndarray:
        """(users, items) true E[Y(1)] ("outcome") or E[Y(1) - Y(0)] ("uplift") of every pair at `round`
        (row u = user u, column i = item i)."""
        users = np.repeat(np.arange(self.n_users), self.n_items)
        items = np.tile(np.arange(self.n_items), self.n_users)
        p1, p0 = self._world.potential_outcome_probs(users, items, self.progress(round))
        return (p1 if kind == "outcome" else p1 - p0).reshape(self.n_users, self.n_items)

    def logging_matrix(self) -> np.ndarray:
        """(users, items) the logging policy's exposure probability as it was when the log ended
        (it never learns of a later drift): the reference the loop starts from."""
        users = np.repeat(np.arange(self.n_users), self.n_items)
        items = np.tile(np.arange(self.n_items), self.n_users)
        return self._world.exposure_propensity(users, items, 0.0).reshape(self.n_users, self.n_items)
