"""Matrix factorisation with user/item biases, trained with naive, IPS or SNIPS weighting.

The relevance estimand is r(u,i) = P(Y(1)=1 | u,i): what the user would do if exposed. Logged
outcomes exist only where the logging policy exposed the item, with propensity p(u,i); weighting
each observed loss by 1/p makes the empirical risk an unbiased estimate of the risk over all
pairs (IPS), and dividing by the sum of weights instead of n trades a little bias for much less
variance (SNIPS). Validation uses the same weighting so early stopping targets the same risk.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn


class IdIndex:
    """Maps external ids to contiguous indices; unknown ids map to -1."""

    def __init__(self, ids):
        self.ids = np.asarray(sorted(set(map(str, ids))))
        self._pos = {k: i for i, k in enumerate(self.ids)}

    def __len__(self):
        return len(self.ids)

    def encode(self, ids) -> np.ndarray:
        return np.fromiter((self._pos.get(str(k), -1) for k in ids), dtype=np.int64, count=len(ids))


class _MF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.zeros(1))
        for emb in (self.user, self.item):
            nn.init.normal_(emb.weight, std=0.1)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return ((self.user(u) * self.item(i)).sum(-1) + self.user_bias(u).squeeze(-1)
                + self.item_bias(i).squeeze(-1) + self.global_bias)


def weighted_bce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, normalize: bool) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none") * w
    return loss.sum() / (w.sum() if normalize else len(w))


@dataclass
class MatrixFactorization:
    weighting: str = "naive"      # naive | ips | snips
    dim: int = 32
    epochs: int = 30
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 4096
    patience: int = 4
    seed: int = 0
    history: list = field(default_factory=list, init=False)

    def _weights(self, propensity, n) -> np.ndarray:
        if self.weighting == "naive":
            return np.ones(n)
        if propensity is None:
            raise ValueError(f"weighting '{self.weighting}' needs propensities")
        return 1.0 / np.asarray(propensity, dtype=np.float64)

    def fit(self, users, items, y, propensity=None, val=None, progress: bool = False) -> "MatrixFactorization":
        """Fit on observed (exposed) rows; `val` = (users, items, y, propensity) for early stopping."""
        from tqdm.auto import tqdm

        if self.weighting not in {"naive", "ips", "snips"}:
            raise ValueError(f"unknown weighting {self.weighting!r}")
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.users_ = IdIndex(users if val is None else np.r_[np.asarray(users), np.asarray(val[0])])
        self.items_ = IdIndex(items if val is None else np.r_[np.asarray(items), np.asarray(val[1])])
        self.net_ = _MF(len(self.users_), len(self.items_), self.dim)
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        u = torch.as_tensor(self.users_.encode(users))
        i = torch.as_tensor(self.items_.encode(items))
        yt = torch.as_tensor(np.asarray(y, dtype=np.float32))
        w = torch.as_tensor(self._weights(propensity, len(yt)), dtype=torch.float32)
        normalize = self.weighting == "snips"
        if val is not None:
            vu, vi = torch.as_tensor(self.users_.encode(val[0])), torch.as_tensor(self.items_.encode(val[1]))
            vy = torch.as_tensor(np.asarray(val[2], dtype=np.float32))
            # Validation risk is always self-normalised so that models with different weightings compare.
            vw = torch.as_tensor(self._weights(val[3], len(vy)), dtype=torch.float32)
        best, best_state, bad = np.inf, None, 0
        self.history = []
        for epoch in tqdm(range(self.epochs), desc=f"train mf_{self.weighting}", disable=not progress):
            self.net_.train()
            perm = torch.as_tensor(rng.permutation(len(yt)))
            total = 0.0
            for start in range(0, len(perm), self.batch_size):
                b = perm[start:start + self.batch_size]
                loss = weighted_bce(self.net_(u[b], i[b]), yt[b], w[b], normalize)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            row = {"epoch": epoch + 1, "train_loss": total / len(perm)}
            if val is not None:
                self.net_.eval()
                with torch.no_grad():
                    row["val_loss"] = float(weighted_bce(self.net_(vu, vi), vy, vw, True))
                if row["val_loss"] < best - 1e-5:
                    best, bad = row["val_loss"], 0
                    best_state = {k: v.clone() for k, v in self.net_.state_dict().items()}
                else:
                    bad += 1
            self.history.append(row)
            if val is not None and bad >= self.patience:
                break
        if best_state is not None:
            self.net_.load_state_dict(best_state)
        self.net_.eval()
        return self

    @torch.no_grad()
    def score_matrix(self, user_ids, item_ids) -> np.ndarray:
        """(len(user_ids), len(item_ids)) predicted P(Y(1)=1); unknown users/items get the bias-only prediction."""
        u = self.users_.encode(user_ids)
        i = self.items_.encode(item_ids)
        P = self.net_.user.weight[torch.as_tensor(np.maximum(u, 0))] * torch.as_tensor(u >= 0)[:, None]
        Q = self.net_.item.weight[torch.as_tensor(np.maximum(i, 0))] * torch.as_tensor(i >= 0)[:, None]
        bu = self.net_.user_bias.weight[torch.as_tensor(np.maximum(u, 0)), 0] * torch.as_tensor(u >= 0)
        bi = self.net_.item_bias.weight[torch.as_tensor(np.maximum(i, 0)), 0] * torch.as_tensor(i >= 0)
        logits = P @ Q.T + bu[:, None] + bi[None, :] + self.net_.global_bias
        return torch.sigmoid(logits).numpy()

    def predict(self, user_ids, item_ids) -> np.ndarray:
        """Predicted P(Y(1)=1) for aligned (user, item) pairs."""
        with torch.no_grad():
            u = self.users_.encode(user_ids)
            i = self.items_.encode(item_ids)
            out = np.empty(len(u), dtype=np.float32)
            for start in range(0, len(u), 1 << 16):
                s = slice(start, start + (1 << 16))
                out[s] = self.score_matrix_pairs(u[s], i[s])
            return out

    def score_matrix_pairs(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        uk, ik = torch.as_tensor(u >= 0), torch.as_tensor(i >= 0)
        ut, it = torch.as_tensor(np.maximum(u, 0)), torch.as_tensor(np.maximum(i, 0))
        with torch.no_grad():
            logit = ((self.net_.user(ut) * self.net_.item(it)).sum(-1) * uk * ik
                     + self.net_.user_bias(ut).squeeze(-1) * uk + self.net_.item_bias(it).squeeze(-1) * ik
                     + self.net_.global_bias)
            return torch.sigmoid(logit).numpy()

    def save(self, path: str | Path) -> None:
        from causalrec.io import atomic_write_bytes
        import io

        buf = io.BytesIO()
        torch.save({"kind": "mf", "params": {k: v for k, v in asdict(self).items() if k != "history"},
                    "history": self.history, "users": self.users_.ids.tolist(), "items": self.items_.ids.tolist(),
                    "state": self.net_.state_dict()}, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def _from_blob(cls, blob: dict) -> "MatrixFactorization":
        m = cls(**blob["params"])
        m.history = blob["history"]
        m.users_, m.items_ = IdIndex(blob["users"]), IdIndex(blob["items"])
        m.net_ = _MF(len(m.users_), len(m.items_), m.dim)
        m.net_.load_state_dict(blob["state"])
        m.net_.eval()
        return m


@dataclass
class Popularity:
    """Scores every item by its number of positive outcomes on exposure (the non-personalised baseline)."""

    history: list = field(default_factory=list, init=False)

    def fit(self, users, items, y, propensity=None, val=None, progress: bool = False) -> "Popularity":
        import pandas as pd

        counts = pd.Series(np.asarray(y, float)).groupby(np.asarray(items, dtype=str)).sum()
        self.items_ = IdIndex(counts.index)
        self.scores_ = (counts.reindex(self.items_.ids).to_numpy() + 1.0) / (counts.max() + 2.0)
        return self

    def _item_scores(self, item_ids) -> np.ndarray:
        idx = self.items_.encode(item_ids)
        return np.where(idx >= 0, self.scores_[np.maximum(idx, 0)], 1.0 / (self.scores_.max() + 2.0)).astype(np.float32)

    def score_matrix(self, user_ids, item_ids) -> np.ndarray:
        return np.tile(self._item_scores(item_ids), (len(user_ids), 1))

    def predict(self, user_ids, item_ids) -> np.ndarray:
        return self._item_scores(item_ids)

    def save(self, path) -> None:
        from causalrec.io import atomic_write_bytes
        import io

        buf = io.BytesIO()
        torch.save({"kind": "popularity", "items": self.items_.ids.tolist(), "scores": self.scores_}, buf)
        atomic_write_bytes(path, buf.getvalue())


def load_model(path: str | Path):
    blob = torch.load(path, weights_only=False)
    if blob["kind"] == "mf":
        return MatrixFactorization._from_blob(blob)
    if blob["kind"] == "popularity":
        m = Popularity()
        m.items_, m.scores_ = IdIndex(blob["items"]), np.asarray(blob["scores"])
        return m
    raise ValueError(f"{path}: unknown model kind {blob['kind']!r}")
