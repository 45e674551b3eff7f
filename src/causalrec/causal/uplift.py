"""Uplift of a recommendation: tau(u,i) = E[Y(1) - Y(0) | u,i] from logs with treatment
T (recommended = exposed), outcome Y and the logging policy's propensity e = P(T=1 | u,i).

Learners (each fit on all logged rows, treated and untreated, on the shared factor backbone):
  t_learner   mu1 on treated rows, mu0 on untreated rows (each IPS-weighted to the population);
              tau = mu1 - mu0
  x_learner   Kuenzel et al. 2019: imputed effects D1 = Y - mu0 (treated), D0 = mu1 - Y
              (untreated), regressed by tau1 / tau0; tau = e tau0 + (1 - e) tau1
  dr_learner  Kennedy 2020: regress the doubly robust pseudo-outcome
              mu1 - mu0 + T (Y - mu1) / e - (1 - T) (Y - mu0) / (1 - e)
  dlce        unbiased learning of the causal effect by label transformation (Sato et al. 2020):
              label L = 1 for (T=1, Y=1) and (T=0, Y=0), else 0, IPS-weighted by 1/e (treated)
              or 1/(1-e) (untreated); then P(L=1) = (1 + tau) / 2 and tau = 2 sigma(f) - 1
  shared      ours: one relevance model r = sigma(f(u,i)) (two-tower) and an organic share
              s = sigma(h(u,i)) (biases + feature towers, no interaction), fit jointly:
              P(Y=1 | T=1) = r,  P(Y=1 | T=0) = r s;  tau = r (1 - s). A recommendation matters
              when the user would like the item and would not have found it anyway. Both arms
              inform r, so the untreated majority of the log is not wasted on a separate mu0.
Uncertainty: `n_bootstrap` members fit on bootstrap resamples of the rows; `predict_interval`
returns the mean and a percentile interval per pair.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from causalrec.causal.debias import DebiasedRecommender

LEARNERS = ("t_learner", "x_learner", "dr_learner", "dlce", "shared")


@dataclass
class UpliftLearner:
    learner: str = "dr_learner"
    dim: int = 16
    epochs: int = 40
    lr: float = 0.005
    weight_decay: float = 1e-4
    batch_size: int = 1024
    patience: int = 4
    n_bootstrap: int = 1
    arm_method: str = "ips"       # weighting of the outcome models mu1/mu0: "ips" (to the population) or "naive"
    clip: float = 0.01
    seed: int = 0
    members_: list = field(default_factory=list, init=False, repr=False)

    def _model(self, seed: int, objective: str = "binary", method: str = "naive") -> DebiasedRecommender:
        return DebiasedRecommender(method, dim=self.dim, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                                   batch_size=self.batch_size, patience=self.patience, objective=objective, seed=seed)

    def _fit_one(self, users, items, t, y, e, seed: int, features: dict) -> tuple:
        rng = np.random.default_rng(seed)
        val = rng.random(len(y)) < 0.1
        fit = ~val

        def fit_model(mask, target, prop=None, objective="binary", method="naive", s=0):
            m = self._model(seed + s, objective, method)
            vm = val & mask
            return m.fit(users[fit & mask], items[fit & mask], target[fit & mask],
                         None if prop is None else prop[fit & mask],
                         val=(users[vm], items[vm], target[vm], None if prop is None else prop[vm]), **features)

        treated = t == 1
        if self.learner == "shared":
            return ("shared", SharedUplift(self.dim, self.epochs, self.lr, self.weight_decay, self.batch_size,
                                           self.patience, seed).fit(users, items, t, y, val, features))
        if self.learner == "dlce":
            label = np.where(treated, y, 1 - y).astype(np.float32)
            prop = np.where(treated, e, 1 - e)
            return ("dlce", fit_model(np.ones_like(treated), label, prop, method="ips"))
        mu1 = fit_model(treated, y, e, method=self.arm_method, s=1)
        mu0 = fit_model(~treated, y, 1 - e, method=self.arm_method, s=2)
        if self.learner == "t_learner":
            return ("t", mu1, mu0)
        m1, m0 = mu1.predict(users, items), mu0.predict(users, items)
        if self.learner == "x_learner":
            tau1 = fit_model(treated, (y - m0).astype(np.float32), objective="regression", s=3)
            tau0 = fit_model(~treated, (m1 - y).astype(np.float32), objective="regression", s=4)
            return ("x", tau1, tau0, e.mean())
        pseudo = m1 - m0 + treated * (y - m1) / e - (~treated) * (y - m0) / (1 - e)
        return ("dr", fit_model(np.ones_like(treated), pseudo.astype(np.float32), objective="regression", s=5))

    def fit(self, users, items, treatment, outcome, propensity, user_features: pd.DataFrame | None = None,
            item_features: pd.DataFrame | None = None) -> "UpliftLearner":
        if self.learner not in LEARNERS:
            raise ValueError(f"unknown uplift learner {self.learner!r}; choose from {LEARNERS}")
        users, items = np.asarray(users).astype(str), np.asarray(items).astype(str)
        t = np.asarray(treatment).astype(int)
        y = np.asarray(outcome, dtype=np.float32)
        e = np.clip(np.asarray(propensity, dtype=np.float64), self.clip, 1 - self.clip)
        if not ((t == 0) | (t == 1)).all():
            raise ValueError("treatment must be 0/1")
        if t.min() == t.max():
            raise ValueError("uplift needs both treated and untreated rows")
        features = {k: v for k, v in (("user_features", user_features), ("item_features", item_features)) if v is not None}
        rng = np.random.default_rng(self.seed)
        self.members_ = []
        for b in range(self.n_bootstrap):
            idx = np.arange(len(y)) if self.n_bootstrap == 1 else rng.integers(len(y), size=len(y))
            self.members_.append(self._fit_one(users[idx], items[idx], t[idx], y[idx], e[idx], self.seed + 10 * b, features))
        return self

    @classmethod
    def _member_matrix(cls, member, user_ids, item_ids) -> np.ndarray:
        # The effect on a 0/1 outcome lies in [-1, 1]; regression learners can overshoot it.
        return np.clip(cls._raw_member_matrix(member, user_ids, item_ids), -1.0, 1.0)

    @staticmethod
    def _raw_member_matrix(member, user_ids, item_ids) -> np.ndarray:
        kind, *models = member
        if kind == "dlce":
            return 2 * models[0].score_matrix(user_ids, item_ids) - 1
        if kind == "shared":
            return models[0].score_matrix(user_ids, item_ids)
        if kind == "t":
            return models[0].score_matrix(user_ids, item_ids) - models[1].score_matrix(user_ids, item_ids)
        if kind == "x":
            tau1, tau0, g = models
            return g * tau0.score_matrix(user_ids, item_ids) + (1 - g) * tau1.score_matrix(user_ids, item_ids)
        return models[0].score_matrix(user_ids, item_ids)

    def score_matrix(self, user_ids, item_ids) -> np.ndarray:
        """(users, items) estimated uplift (mean over bootstrap members)."""
        return np.mean([self._member_matrix(m, user_ids, item_ids) for m in self.members_], 0)


    def predict_interval(self, user_ids, item_ids, alpha: float = 0.1) -> dict:
        """Per (user, item) pair: mean uplift and a (1 - alpha) bootstrap interval (needs n_bootstrap > 1)."""
        users, u_pos = np.unique(np.asarray(user_ids).astype(str), return_inverse=True)
        items, i_pos = np.unique(np.asarray(item_ids).astype(str), return_inverse=True)
        draws = np.stack([self._member_matrix(m, users, items)[u_pos, i_pos] for m in self.members_])
        return {"mean": draws.mean(0), "lower": np.quantile(draws, alpha / 2, 0), "upper": np.quantile(draws, 1 - alpha / 2, 0)}


@dataclass
class SharedUplift:
    """The 'shared' learner: relevance x (1 - organic share), fit jointly on both arms."""

    dim: int = 16
    epochs: int = 40
    lr: float = 0.005
    weight_decay: float = 1e-4
    batch_size: int = 1024
    patience: int = 4
    seed: int = 0

    def fit(self, users, items, t, y, val_mask, features: dict) -> "SharedUplift":
        import torch
        import torch.nn.functional as F

        from causalrec.causal.debias import _feature_matrix
        from causalrec.models.factor import FactorModel
        from causalrec.models.ids import IdIndex

        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        uf, itf = features.get("user_features"), features.get("item_features")
        self.users_ = IdIndex([*users, *([] if uf is None else uf.index.astype(str))])
        self.items_ = IdIndex([*items, *([] if itf is None else itf.index.astype(str))])
        X, Z = _feature_matrix(self.users_, uf), _feature_matrix(self.items_, itf)
        self.relevance_ = FactorModel(len(self.users_), len(self.items_), self.dim, X, Z)
        self.organic_ = FactorModel(len(self.users_), len(self.items_), 0, X, Z)
        params = [*self.relevance_.parameters(), *self.organic_.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        u, i = torch.as_tensor(self.users_.encode(users)), torch.as_tensor(self.items_.encode(items))
        tt, yt = torch.as_tensor(t, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)

        def nll(idx):
            r = torch.sigmoid(self.relevance_(u[idx], i[idx]))
            s = torch.sigmoid(self.organic_(u[idx], i[idx]))
            p = torch.where(tt[idx] == 1, r, r * s).clamp(1e-6, 1 - 1e-6)
            return F.binary_cross_entropy(p, yt[idx])

        fit_idx, val_idx = np.flatnonzero(~val_mask), torch.as_tensor(np.flatnonzero(val_mask))
        best, best_state, bad = np.inf, None, 0
        for _ in range(self.epochs):
            perm = torch.as_tensor(rng.permutation(fit_idx))
            for start in range(0, len(perm), self.batch_size):
                loss = nll(perm[start:start + self.batch_size])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                v = float(nll(val_idx))
            if v < best - 1e-5:
                best, bad = v, 0
                best_state = ({k: x.clone() for k, x in self.relevance_.state_dict().items()},
                              {k: x.clone() for k, x in self.organic_.state_dict().items()})
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            self.relevance_.load_state_dict(best_state[0])
            self.organic_.load_state_dict(best_state[1])
        return self

    def score_matrix(self, user_ids, item_ids) -> np.ndarray:
        import torch

        u = torch.as_tensor(np.maximum(self.users_.encode(np.asarray(user_ids).astype(str)), 0))
        i = torch.as_tensor(np.maximum(self.items_.encode(np.asarray(item_ids).astype(str)), 0))
        with torch.no_grad():
            P, bu = self.relevance_.user_vectors(u)
            Q, bi = self.relevance_.item_vectors(i)
            r = torch.sigmoid(P @ Q.T + bu[:, None] + bi[None, :] + self.relevance_.global_bias)
            _, ou = self.organic_.user_vectors(u)
            _, oi = self.organic_.item_vectors(i)
            s = torch.sigmoid(ou[:, None] + oi[None, :] + self.organic_.global_bias)
        return (r * (1 - s)).numpy()
