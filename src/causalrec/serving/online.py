"""Learning between retrains: a user's vector re-estimated from their recent served events, the rest of
the model frozen, so that feedback changes the next slate within a second.

What is learned here, and from what:
  * the events: the service's own feedback log (serve.feedback_log), which every worker and every
    replica sharing the file appends to under its lock. Each serving core follows the log's tail
    (`OnlineUsers.refresh`, a stat and a read of the new bytes per request), so an event acknowledged by
    any worker reaches every worker's next request. Only the slates this model version served count:
    what earlier versions served was in the data this model was trained on.
  * the update (`fold_in`): per user and per relevance-type model term (the relevance model; in an
    uplift learner the parts that model the outcome of a shown item, E[Y(1)]), the user's vector and bias
    minimise the term's own loss (logistic for a 0/1 model, squared for a regression part) on their
    recent events, each weighted by 1 / its logged propensity (clipped at `weight_clip` times the
    smallest weight, normalised to mean 1) so the update does not inherit the exposure bias of the slates
    that produced it, plus a pull (||p - p0||^2 + (b - b0)^2) towards the trained vector p0 (zero for a
    user the model has not seen) weighing `l2` + the number of shown items p0 was learned from (the
    bundle's user_rows.parquet): a new user's vector follows their first events, a returning user's
    moves as one more batch of their events would move it. A few Newton steps on d + 1 unknowns.
  * the slates drawn with the updated scores carry the exact propensities of the policy that served
    them: the exploration policy over those scores (serving.core).

What is kept, where, bounded how: per worker, in memory only, per pseudonym (never the user id) the last
`max_events` events (item, outcome, propensity), for at most `max_users` users (least recently
active dropped first); at start-up and after the log file is replaced (rotation, or `causalrec forget`
rewriting it without a person), the state is rebuilt from the last `scan_bytes` of the log, so a person
erased from the log is erased here within one request.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np


def fold_in(Q: np.ndarray, b: np.ndarray, offset: float, y: np.ndarray, weight: np.ndarray,
            prior: tuple[np.ndarray, float], l2: float, link: str, steps: int = 8) -> tuple[np.ndarray, float]:
    """The user vector p and bias b_u minimising sum_j w_j loss(y_j, Q_j p + b_j + b_u + offset)
    + l2 (||p - p0||^2 + (b_u - b0)^2): logistic loss for link 'sigmoid', squared error for 'identity'
    (one Newton step is then exact). Q: (n, d) the events' item vectors, b: (n,) their item biases."""
    X = np.hstack([Q, np.ones((len(Q), 1), Q.dtype)]).astype(np.float64)
    x0 = np.append(prior[0], prior[1]).astype(np.float64)
    x, base, w = x0.copy(), (b + offset).astype(np.float64), weight.astype(np.float64)
    ridge = 2 * l2 * np.eye(len(x))
    for _ in range(1 if link == "identity" else steps):
        z = X @ x + base
        if link == "identity":
            residual, curvature = z - y, w
        else:
            mu = 1 / (1 + np.exp(-z))
            residual, curvature = mu - y, w * mu * (1 - mu)
        grad = X.T @ (w * residual) + 2 * l2 * (x - x0)
        step = np.linalg.solve(X.T @ (curvature[:, None] * X) + ridge, grad)
        x -= step
        if np.abs(step).max() < 1e-6:
            break
    return x[:-1].astype(np.float32), float(x[-1])


def ips_weights(propensity: np.ndarray, clip: float) -> np.ndarray:
    """1 / propensity, capped at `clip` times the smallest, normalised to mean 1."""
    w = 1.0 / np.asarray(propensity, dtype=np.float64)
    w = np.minimum(w, clip * w.min())
    return w / w.mean()


class LogFollower:
    """Follows the feedback log as any worker appends to it: `refresh` hands each new whole line's event
    to `_event`; when the file was replaced (rotation, or `causalrec forget` rewriting it without a person)
    it calls `_reset` and reads the last `scan_bytes` again (the end of the segment rotated last, then the
    live file), as it does at start-up."""

    def __init__(self, log_path: str | Path, scan_bytes: int = 32 * 2**20):
        self.path, self.scan_bytes = Path(log_path), scan_bytes
        self._inode, self._offset, self._fh = None, 0, None

    def _reset(self) -> None:
        raise NotImplementedError

    def _event(self, event: dict) -> None:
        raise NotImplementedError

    def refresh(self) -> None:
        """Read what was appended since the last look; rebuild after the file was replaced."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return
        if inode != self._inode:
            self._rebuild(inode)
            return
        self._fh.seek(self._offset)
        data = self._fh.read()
        end = data.rfind(b"\n") + 1  # whole lines only: a line being written is read next time
        self._add(data[:end])
        self._offset += end

    def _rebuild(self, inode: int) -> None:
        from causalrec.serving.feedback import segments

        self._reset()
        if self._fh is not None:
            self._fh.close()
        self._fh, self._inode = open(self.path, "rb"), inode
        live = self._fh.read()
        end = live.rfind(b"\n") + 1
        budget = max(self.scan_bytes - end, 0)
        older = segments(self.path)
        if budget and older:  # the end of the segment rotated last: the events just before the live file
            with open(older[-1], "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(size - budget, 0))
                tail = fh.read()
            self._add(tail[tail.find(b"\n") + 1:] if size > budget else tail)
        self._add(live[max(end - self.scan_bytes, 0):end] if end <= self.scan_bytes
                  else live[live.find(b"\n", end - self.scan_bytes) + 1:end])
        self._offset = end

    def _add(self, data: bytes) -> None:
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn line from a crash
            if isinstance(event, dict):
                self._event(event)


class OnlineUsers(LogFollower):
    """Per pseudonym, the recent events of the slates one model version served, read from the feedback log
    as it grows (any worker's appends). `version(pseudonym)` changes whenever a user's events do."""

    def __init__(self, log_path: str | Path, model_version: str, max_events: int = 50, max_users: int = 100_000,
                 scan_bytes: int = 32 * 2**20):
        super().__init__(log_path, scan_bytes)
        self.model_version, self.max_events, self.max_users = model_version, max_events, max_users
        self._users: OrderedDict[str, deque] = OrderedDict()
        self._stamp: dict[str, int] = {}  # the sequence number of each user's latest event
        self._seq = 0

    def events(self, pseudonym: str) -> list[tuple[str, float, float]]:
        """(item_id, outcome, propensity) of the user's recent shown items, oldest first."""
        return list(self._users.get(pseudonym, ()))

    def version(self, pseudonym: str) -> int:
        """Changes whenever the user's events do (never repeats in this process); 0: no events."""
        return self._stamp.get(pseudonym, 0)

    def __len__(self) -> int:
        return len(self._users)

    def _reset(self) -> None:
        self._users.clear()
        self._stamp.clear()

    def _event(self, e: dict) -> None:
        if e.get("model_version") != self.model_version or e.get("exposed", True) is False:
            return
        try:
            user, event = e["user_id"], (str(e["item_id"]), float(e["outcome"]), float(e["propensity"]))
        except (KeyError, TypeError, ValueError):
            return  # a line the rule book would refuse: not this module's to judge
        recent = self._users.pop(user, None) or deque(maxlen=self.max_events)
        recent.append(event)
        self._users[user] = recent  # most recently active last
        self._seq += 1
        self._stamp[user] = self._seq
        if len(self._users) > self.max_users:
            gone, _ = self._users.popitem(last=False)
            self._stamp.pop(gone, None)
