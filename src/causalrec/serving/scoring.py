"""Whole-catalogue scoring for serving: item-side factors computed once, a request is one
mat-vec and a top-K. New items (text only) are appended through the model's item tower.

Every trained model reduces to `FactorTerm`s, each score(u, ·) = link(Q p_u + b_item + b_u + g):
a relevance model is one term; an uplift learner's member combines its parts' terms with its own
`combine` (T: mu1 - mu0; X: a weighted sum; DLCE: 2 sigma - 1; shared: r (1 - s)).
"""
from __future__ import annotations

import numpy as np
import torch

from causalrec.causal.debias import DebiasedRecommender


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class FactorTerm:
    def __init__(self, net, users, items, trained_users, trained_items, item_ids, link: str):
        self.net, self.users, self.items, self.link = net, users, items, link
        self.trained_users, self.trained_items = trained_users, trained_items
        self.global_bias = float(net.global_bias.detach())
        idx = items.encode(np.asarray(item_ids).astype(str))
        warm = (idx >= 0) & trained_items[np.maximum(idx, 0)]
        with torch.no_grad():
            Q, b = net.item_vectors(torch.as_tensor(np.maximum(idx, 0)), torch.as_tensor(warm, dtype=torch.float32))
            known = torch.as_tensor(idx >= 0, dtype=torch.float32)
        self.Q = (Q * known[:, None]).numpy().astype(np.float32)
        self.b = (b * known).numpy().astype(np.float32)

    def add_item(self, features: np.ndarray | None) -> None:
        """Append a new item scored from its features alone (zero when the model has no item tower)."""
        q = np.zeros(self.Q.shape[1], np.float32)
        b = 0.0
        tower = self.net.item_tower
        if tower is not None and features is not None:
            x = np.asarray(features, dtype=np.float32).ravel()
            if len(x) > tower.in_features:
                raise ValueError(f"item features have {len(x)} values; the model's item tower takes {tower.in_features}")
            # Columns past the text embedding (e.g. the exposure statistic) are standardised: 0 = catalogue mean.
            x = np.pad(x, (0, tower.in_features - len(x)))
            with torch.no_grad():
                t = tower(torch.as_tensor(x)[None])[0].numpy()
            q, b = t[:-1], float(t[-1])
        self.Q = np.vstack([self.Q, q[None]])
        self.b = np.append(self.b, np.float32(b))

    def user(self, user_id: str) -> tuple[np.ndarray, float]:
        idx = self.users.encode([user_id])
        if idx[0] < 0:
            return np.zeros(self.Q.shape[1], np.float32), 0.0
        warm = torch.as_tensor([float(self.trained_users[idx[0]])])
        with torch.no_grad():
            p, b = self.net.user_vectors(torch.as_tensor(idx), warm)
        return p[0].numpy(), float(b[0])

    def contributions(self, user_id: str, pos: int, item_id: str) -> dict[str, float]:
        """The raw score (logit for a binary model) of one item split into additive parts that sum to
        it exactly: the base rate, the user's and the item's biases, and the user-item match, each
        item part split into what the item's id learned and what its features (text embedding,
        attributes) give. A new item, or a model without item features, has only one of the two."""
        p, bu = self.user(user_id)
        idx = self.items.encode(np.asarray([str(item_id)]))[0]  # -1: an item added after training
        q_id, b_id = np.zeros_like(self.Q[pos]), 0.0
        if idx >= 0 and self.trained_items[idx]:  # the id part (what FactorModel._side adds before the tower)
            with torch.no_grad():
                q_id = self.net.item.weight[idx].numpy()
                b_id = float(self.net.item_bias.weight[idx, 0])
        q_x, b_x = self.Q[pos] - q_id, float(self.b[pos]) - b_id
        return {"base rate": self.global_bias, "user bias": bu, "item bias (id)": b_id,
                "item bias (features)": b_x, "match: user x item id": float(p @ q_id),
                "match: user x item features": float(p @ q_x)}

    def fold_in(self, user_id: str, positions: np.ndarray, y: np.ndarray, weight: np.ndarray,
                l2: float) -> tuple[np.ndarray, float]:
        """The user's vector and bias re-estimated from outcomes at catalogue `positions`, the trained ones
        as the prior (serving.online.fold_in)."""
        from causalrec.serving.online import fold_in

        return fold_in(self.Q[positions], self.b[positions], self.global_bias, y, weight, self.user(user_id), l2, self.link)

    def scores(self, user_id: str, idx: np.ndarray | None = None,
               user: tuple[np.ndarray, float] | None = None) -> np.ndarray:
        """Scores of every item, or of the items at positions `idx` only; `user`: (vector, bias) in place
        of the trained ones (an online update)."""
        p, bu = user if user is not None else self.user(user_id)
        Q, b = (self.Q, self.b) if idx is None else (self.Q[idx], self.b[idx])
        raw = Q @ p + b + (bu + self.global_bias)
        return _sigmoid(raw) if self.link == "sigmoid" else raw


def _term(model: DebiasedRecommender, item_ids) -> FactorTerm:
    return FactorTerm(model.net_, model.users_, model.items_, model.trained_users_, model.trained_items_, item_ids,
                      "sigmoid" if model.objective == "binary" else "identity")


class CatalogueScorer:
    """scores(user_id) -> (n_items,) for any causalrec model, over a fixed (extensible) catalogue."""

    def __init__(self, model, item_ids):
        from causalrec.causal.uplift import UpliftLearner
        from causalrec.models import Popularity

        self.kind = type(model).__name__
        # online_parts: the parts that model the outcome of a shown item (serving.online updates their user side)
        if isinstance(model, Popularity):
            self.const = model.predict(None, np.asarray(item_ids)).astype(np.float32)
            self.parts, self.combine, self.online_parts = [], None, []
        elif isinstance(model, DebiasedRecommender):
            self.parts, self.combine, self.online_parts = [_term(model, item_ids)], lambda s: s[0], [0]
        elif isinstance(model, UpliftLearner):
            # Each member says which relevance-type parts it has and how they combine (causal/uplift.py).
            self.parts, combines, self.online_parts = [], [], []
            for member in model.members_:
                start = len(self.parts)
                self.online_parts += [start + j for j in member.outcome_parts()]
                self.parts += [_term(part, item_ids) for part in member.parts]
                # The effect on a 0/1 outcome lies in [-1, 1]; regression learners can overshoot it.
                combines.append(lambda s, a=start, n=len(member.parts), c=member.combine: np.clip(c(s[a:a + n]), -1, 1))
            self.combine = lambda s: np.mean([c(s) for c in combines], 0)
            self.member_combines = combines  # per-member values, for intervals
        else:
            raise TypeError(f"cannot serve a {type(model).__name__}")

    def add_item(self, features: np.ndarray | None) -> None:
        if not self.parts:
            self.const = np.append(self.const, self.const.min())
        for part in self.parts:
            part.add_item(features)

    def fold_in(self, user_id: str, positions: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float) -> list | None:
        """Per part, the user's (vector, bias) re-estimated from outcomes of shown items at `positions`
        (None for a part that keeps its trained ones); None when no part learns online."""
        if not self.online_parts:
            return None
        return [part.fold_in(user_id, positions, y, weight, l2) if j in self.online_parts else None
                for j, part in enumerate(self.parts)]

    def _part_scores(self, user_id: str, idx, users: list | None) -> list[np.ndarray]:
        return [p.scores(user_id, idx, None if users is None else users[j]) for j, p in enumerate(self.parts)]

    def scores(self, user_id: str, idx: np.ndarray | None = None, users: list | None = None) -> np.ndarray:
        """(n_items,) scores, or those of the items at positions `idx` only (cheaper); `users`: per part
        (vector, bias) overrides from `fold_in`."""
        if not self.parts:
            return self.const.copy() if idx is None else self.const[idx]
        return self.combine(self._part_scores(user_id, idx, users)).astype(np.float32)

    def contributions(self, user_id: str, pos: int, item_id: str) -> dict | None:
        """A relevance model's score split into additive parts (FactorTerm.contributions), with the
        link that turns their sum into the score; None for models that are not one factor term."""
        if self.kind != "DebiasedRecommender":
            return None
        term = self.parts[0]
        return {"link": term.link, "scale": "logit" if term.link == "sigmoid" else "score",
                "parts": term.contributions(user_id, pos, item_id)}

    @property
    def n_members(self) -> int:
        """Bootstrap members whose scores member_scores gives (1: one model)."""
        return len(getattr(self, "member_combines", [None]))

    def member_scores(self, user_id: str, users: list | None = None) -> np.ndarray | None:
        """(n_members, n_items) for bootstrap uplift models, else None."""
        combines = getattr(self, "member_combines", None)
        if not combines or len(combines) < 2:
            return None
        s = self._part_scores(user_id, None, users)
        return np.stack([c(s) for c in combines])
