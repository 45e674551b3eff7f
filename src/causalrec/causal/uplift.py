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
              With exposure_weight > 0 an exposure head shares r's user/item factors:
              logit P(T=1 | u,i) = alpha <p_u, q_i> + c_u + c_i, trained on the propensities
              (cross-entropy with the propensity as soft label). The logging policy chose what
              to show from what it knew of the user, so its choices carry preference signal on
              every logged row, outcome or not (the shared-representation idea of ESCM2, Wang
              et al. 2022); alpha is learned, so a policy that ignores preferences costs little.
Exposure features (exposure_features=True, every learner): each item's and each user's mean
logit propensity over the log, standardised, appended to the feature towers. An item's exposure
rate is its observable popularity with the logging policy; popularity drives how often it is
found without a recommendation, so mu0 and the organic share need it (propensity as a
covariate also guards against regularisation-induced confounding, Hahn et al. 2020).
Uncertainty: `n_bootstrap` members fit on bootstrap resamples of the training rows (one held-out
validation split, shared by all members, decides early stopping and "auto"); `predict_interval`
returns the mean and a percentile interval per pair.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from causalrec.causal.debias import AUTO_EXPOSURE_WEIGHTS, DebiasedRecommender

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
    exposure_features: bool = True
    exposure_weight: float | str = "auto"  # shared learner: exposure-head weight, >= 0, or "auto" (validation)
    seed: int = 0
    members_: list = field(default_factory=list, init=False, repr=False)

    def _model(self, seed: int, objective: str = "binary", method: str = "naive") -> DebiasedRecommender:
        return DebiasedRecommender(method, dim=self.dim, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                                   batch_size=self.batch_size, patience=self.patience, objective=objective, seed=seed)

    def _fit_one(self, users, items, t, y, e, val, seed: int, features: dict, exposure_weight=None) -> tuple:
        """One member: its models fit on the rows where `val` is False, early-stopped on the others."""
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
                                           self.patience, exposure_weight, seed).fit(users, items, t, y, e, val,
                                                                                          features))
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
        if self.exposure_features:
            features = with_exposure_features(users, items, e, features)
        rng = np.random.default_rng(self.seed)
        # One validation split for every member, outside the bootstrap: a resample holds copies of
        # its own rows, so validating on them would reward memorising (and bias "auto" upwards).
        is_val = rng.random(len(y)) < 0.1
        train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        val = np.r_[np.zeros(len(train_rows), bool), np.ones(len(val_rows), bool)]
        self.members_ = []
        exposure_weight = self.exposure_weight
        for b in range(self.n_bootstrap):
            rows = train_rows if self.n_bootstrap == 1 else rng.choice(train_rows, size=len(train_rows))
            idx = np.concatenate([rows, val_rows])
            self.members_.append(self._fit_one(users[idx], items[idx], t[idx], y[idx], e[idx], val, self.seed + 10 * b,
                                               features, exposure_weight))
            if self.learner == "shared":  # "auto" is decided once, on the first member
                exposure_weight = self.members_[0][1].exposure_weight_
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


def with_exposure_features(users: np.ndarray, items: np.ndarray, propensity: np.ndarray, features: dict) -> dict:
    """Append each user's and each item's mean logit propensity (standardised) to their feature frames.
    Ids without features get zeros for the other columns; a new item at serving time gets 0 (the
    catalogue mean) for its exposure column (FactorTerm.add_item pads)."""
    logit = np.log(propensity / (1 - propensity))
    out = {}
    for key, ids in (("user_features", users), ("item_features", items)):
        stat = pd.Series(logit).groupby(ids).mean()
        stat = (stat - stat.mean()) / (stat.std() if stat.std() > 0 else 1.0)
        base = features.get(key)
        if base is None:
            frame = pd.DataFrame({"exposure_logit": stat})
        else:
            base = base.copy()
            base.index = base.index.astype(str)
            all_ids = base.index.union(stat.index)
            frame = base.reindex(all_ids).fillna(0.0)
            frame.columns = [f"f{j}" for j in range(frame.shape[1])]
            frame["exposure_logit"] = stat.reindex(all_ids).fillna(0.0)
        out[key] = frame.astype(np.float32)
    return out


@dataclass
class SharedUplift:
    """The 'shared' learner: relevance x (1 - organic share), fit jointly on both arms, with an
    optional exposure head on the relevance factors (see the module docstring)."""

    dim: int = 16
    epochs: int = 40
    lr: float = 0.005
    weight_decay: float = 1e-4
    batch_size: int = 1024
    patience: int = 4
    exposure_weight: float | str = "auto"
    seed: int = 0

    def fit(self, users, items, t, y, e, val_mask, features: dict) -> "SharedUplift":
        """exposure_weight "auto": fit each of AUTO_EXPOSURE_WEIGHTS and keep the one with the lowest
        outcome loss on the validation rows (the choice is in `exposure_weight_`, every loss in
        `validation_nll_`)."""
        from causalrec.causal.debias import _feature_matrix
        from causalrec.models.ids import IdIndex

        uf, itf = features.get("user_features"), features.get("item_features")
        self.users_ = IdIndex([*users, *([] if uf is None else uf.index.astype(str))])
        self.items_ = IdIndex([*items, *([] if itf is None else itf.index.astype(str))])
        X, Z = _feature_matrix(self.users_, uf), _feature_matrix(self.items_, itf)
        u, i = self.users_.encode(users), self.items_.encode(items)
        if self.exposure_weight == "auto":
            candidates = AUTO_EXPOSURE_WEIGHTS
        elif isinstance(self.exposure_weight, (int, float)) and self.exposure_weight >= 0:
            candidates = (float(self.exposure_weight),)
        else:
            raise ValueError(f"exposure_weight must be a number >= 0 or 'auto', got {self.exposure_weight!r}")
        self.validation_nll_ = {}
        best = None
        for weight in candidates:
            val_nll, nets = self._fit_weight(weight, u, i, t, y, e, val_mask, X, Z)
            self.validation_nll_[weight] = val_nll
            if best is None or val_nll < best[0]:
                best = (val_nll, weight, nets)
        _, self.exposure_weight_, (self.relevance_, self.organic_, self.exposure_, self.alpha_) = best
        return self

    def _fit_weight(self, weight, u, i, t, y, e, val_mask, X, Z):
        """One fit with exposure-head weight `weight`; early stopping on the validation outcome loss."""
        import torch
        import torch.nn.functional as F

        from causalrec.models.factor import FactorModel

        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        n_users, n_items = len(self.users_), len(self.items_)
        relevance = FactorModel(n_users, n_items, self.dim, X, Z)
        organic = FactorModel(n_users, n_items, 0, X, Z)
        # Exposure head: its own biases and feature terms, plus alpha x the relevance interaction.
        exposure = FactorModel(n_users, n_items, 0, X, Z)
        alpha = torch.nn.Parameter(torch.ones(1))
        params = [*relevance.parameters(), *organic.parameters()]
        if weight > 0:
            params += [*exposure.parameters(), alpha]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        u, i = torch.as_tensor(u), torch.as_tensor(i)
        tt, yt = torch.as_tensor(t, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        et = torch.as_tensor(e, dtype=torch.float32)

        def losses(idx):
            P, bu = relevance.user_vectors(u[idx])
            Q, bi = relevance.item_vectors(i[idx])
            interaction = (P * Q).sum(-1)
            r = torch.sigmoid(interaction + bu + bi + relevance.global_bias)
            s = torch.sigmoid(organic(u[idx], i[idx]))
            p = torch.where(tt[idx] == 1, r, r * s).clamp(1e-6, 1 - 1e-6)
            outcome_nll = F.binary_cross_entropy(p, yt[idx])
            if weight == 0:
                return outcome_nll, outcome_nll
            exposure_logit = alpha * interaction + exposure(u[idx], i[idx])
            exposure_ce = F.binary_cross_entropy_with_logits(exposure_logit, et[idx])
            return outcome_nll, outcome_nll + weight * exposure_ce

        fit_idx, val_idx = np.flatnonzero(~val_mask), torch.as_tensor(np.flatnonzero(val_mask))
        best, best_state, bad = np.inf, None, 0
        nets = (relevance, organic, exposure)
        for _ in range(self.epochs):
            perm = torch.as_tensor(rng.permutation(fit_idx))
            for start in range(0, len(perm), self.batch_size):
                loss = losses(perm[start:start + self.batch_size])[1]
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():  # early stopping watches the outcome only
                v = float(losses(val_idx)[0])
            if v < best - 1e-5:
                best, bad = v, 0
                best_state = [{k: x.clone() for k, x in net.state_dict().items()} for net in nets]
                best_alpha = float(alpha.detach())
            else:
                bad += 1
                if bad >= self.patience:
                    break
        if best_state is not None:
            for net, state in zip(nets, best_state):
                net.load_state_dict(state)
            alpha = torch.tensor([best_alpha])
        return best, (relevance, organic, exposure, alpha.detach())

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
