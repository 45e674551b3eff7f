"""Debiased relevance learning from biased logs: one estimator, six ways to weigh the evidence.

Estimand: r(u,i) = P(Y(1)=1 | u,i) over a target population D of (user, item) pairs (all logged
visits for the simulator; all user x item pairs for Coat). Outcomes are observed only on O ⊂ D
(exposed pairs) with propensity p(u,i) = P(o=1 | u,i). With e = BCE(f(u,i), y):

  naive     mean_O e                                   biased towards what the policy exposed
  ips       (1/|D|) sum_O e/p                          unbiased, high variance
  dr        (1/|D|) [sum_D ê + sum_O (e - ê)/p]        doubly robust with a fixed imputation model:
            g is fit first (naive, on observed labels) and frozen; ê = BCE(f, g)
  snips     sum_O e/p / sum_O 1/p                      self-normalised IPS
  dr_jl     (1/|D|) [sum_D ê + sum_O (e - ê)/p]        doubly robust, joint learning (Wang et al. 2019):
            ê = BCE(f, g) from an imputation model g trained on sum_O (e - ê)² / p
  mrdr_jl   dr_jl with g trained on sum_O (1-p)/p² (e - ê)²   (more robust DR, Guo et al. 2021)
  sdr       mean_D ê + sum_O (e - ê)/p / sum_O 1/p    DR with a self-normalised correction: the
            correction's scale no longer depends on rare tiny propensities (stabilised DR, ours)

All share the backbone (causalrec.models.factor.FactorModel: MF or two-tower with features/text),
Adam, mini-batches, and early stopping on a SNIPS-weighted validation loss from the training
split (the same for every method, so they compare).

Optional exposure head (exposure_weight > 0, any method): the logging policy's propensities of
every logged row, shown or not, are a second target that shares the user/item factors:
logit P(shown | u,i) = alpha <p_u, q_i> + c_u + c_i, cross-entropy with the propensity as soft
label, added to the loss with that weight (the same head as the shared uplift learner's; see
causalrec.causal.uplift). "auto" fits each of AUTO_EXPOSURE_WEIGHTS and keeps the lowest
validation loss. It helps when the policy knew something about preferences and is weighted to 0
by the validation when it did not.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from causalrec.models.factor import FactorModel
from causalrec.models.ids import IdIndex

METHODS = ("naive", "ips", "snips", "dr", "dr_jl", "mrdr_jl", "sdr")
AUTO_EXPOSURE_WEIGHTS = (0.0, 1.0, 3.0, 10.0)
DR_METHODS = ("dr", "dr_jl", "mrdr_jl", "sdr")


def _feature_matrix(index: IdIndex, features: pd.DataFrame | None) -> torch.Tensor | None:
    if features is None:
        return None
    f = features.copy()
    f.index = f.index.astype(str)
    return torch.as_tensor(f.reindex(index.ids).fillna(0.0).to_numpy(dtype=np.float32))


@dataclass
class DebiasedRecommender:
    method: str = "naive"
    dim: int = 32
    epochs: int = 30
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 4096
    patience: int = 4
    imputation_ratio: int = 4     # population pairs sampled per observed pair (DR family)
    objective: str = "binary"     # binary: BCE, predictions are probabilities; regression: squared error
    exposure_weight: float | str = 0.0  # weight of the exposure head (needs exposure_log), or "auto"
    seed: int = 0
    history: list = field(default_factory=list, init=False)

    def _check(self, propensity):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {METHODS}")
        if self.method != "naive" and propensity is None:
            raise ValueError(f"method '{self.method}' needs propensities")
        if self.objective not in ("binary", "regression"):
            raise ValueError(f"unknown objective {self.objective!r}")
        if self.objective == "regression" and self.method in DR_METHODS:
            raise ValueError(f"method '{self.method}' imputes cross-entropy errors: binary objective only")
        if not (self.exposure_weight == "auto" or (isinstance(self.exposure_weight, (int, float))
                                                   and self.exposure_weight >= 0)):
            raise ValueError(f"exposure_weight must be a number >= 0 or 'auto', got {self.exposure_weight!r}")

    def fit(self, users, items, y, propensity=None, val=None, user_features: pd.DataFrame | None = None,
            item_features: pd.DataFrame | None = None, population: tuple | None = None,
            progress: bool = False, exposure_log: tuple | None = None) -> "DebiasedRecommender":
        """Fit on observed rows. val = (users, items, y, propensity); population = (users, items) of D,
        default: every user x item pair; exposure_log = (users, items, propensity) of every logged
        row, shown or not (for the exposure head)."""
        from dataclasses import replace

        from tqdm.auto import tqdm

        self._check(propensity)
        if self.exposure_weight != 0 and exposure_log is None:
            raise ValueError("exposure_weight needs exposure_log = (users, items, propensity) of every logged row")
        if self.exposure_weight == "auto":
            if val is None:
                raise ValueError("exposure_weight 'auto' chooses on the validation rows: pass val")
            args = dict(val=val, user_features=user_features, item_features=item_features, population=population,
                        progress=progress, exposure_log=exposure_log)
            fits = [replace(self, exposure_weight=w).fit(users, items, y, propensity, **args) for w in AUTO_EXPOSURE_WEIGHTS]
            best = min(fits, key=lambda m: min(row["val_loss"] for row in m.history))
            self.__dict__.update(best.__dict__)
            self.exposure_weight = "auto"
            self.exposure_weight_ = best.exposure_weight
            return self
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        users, items = np.asarray(users).astype(str), np.asarray(items).astype(str)
        extra_u = [] if val is None else list(np.asarray(val[0]).astype(str))
        extra_i = [] if val is None else list(np.asarray(val[1]).astype(str))
        if user_features is not None:
            extra_u += list(user_features.index.astype(str))
        if item_features is not None:
            extra_i += list(item_features.index.astype(str))
        if population is not None:  # D may hold users/items that were never exposed
            extra_u += list(np.unique(np.asarray(population[0]).astype(str)))
            extra_i += list(np.unique(np.asarray(population[1]).astype(str)))
        if exposure_log is not None:
            extra_u += list(np.unique(np.asarray(exposure_log[0]).astype(str)))
            extra_i += list(np.unique(np.asarray(exposure_log[1]).astype(str)))
        self.users_, self.items_ = IdIndex([*users, *extra_u]), IdIndex([*items, *extra_i])
        u, i = torch.as_tensor(self.users_.encode(users)), torch.as_tensor(self.items_.encode(items))
        self.trained_items_ = np.zeros(len(self.items_), bool)
        self.trained_items_[i.numpy()] = True
        self.trained_users_ = np.zeros(len(self.users_), bool)
        self.trained_users_[u.numpy()] = True
        X, Z = _feature_matrix(self.users_, user_features), _feature_matrix(self.items_, item_features)
        self.net_ = FactorModel(len(self.users_), len(self.items_), self.dim, X, Z)
        trainable = list(self.net_.parameters())
        self.exposure_weight_ = float(self.exposure_weight)
        if self.exposure_weight_ > 0:  # exposure head: own biases/feature terms + alpha x the shared interaction
            head = FactorModel(len(self.users_), len(self.items_), 0, X, Z)
            alpha = torch.nn.Parameter(torch.ones(1))
            trainable += [*head.parameters(), alpha]
            eu = torch.as_tensor(self.users_.encode(np.asarray(exposure_log[0]).astype(str)))
            ei = torch.as_tensor(self.items_.encode(np.asarray(exposure_log[1]).astype(str)))
            ee = torch.as_tensor(np.clip(np.asarray(exposure_log[2], np.float64), 1e-4, 1 - 1e-4), dtype=torch.float32)
        opt = torch.optim.Adam(trainable, lr=self.lr, weight_decay=self.weight_decay)
        yt = torch.as_tensor(np.asarray(y, dtype=np.float32))
        p = torch.as_tensor(np.ones(len(yt)) if propensity is None else np.asarray(propensity, np.float64), dtype=torch.float32)
        if self.method in DR_METHODS:
            imputer = FactorModel(len(self.users_), len(self.items_), self.dim, X, Z)
            opt_g = torch.optim.Adam(imputer.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            if population is None:
                pop_u = pop_i = None
                n_population = len(self.users_) * len(self.items_)
            else:
                pop_u = torch.as_tensor(self.users_.encode(np.asarray(population[0]).astype(str)))
                pop_i = torch.as_tensor(self.items_.encode(np.asarray(population[1]).astype(str)))
                n_population = len(pop_u)
            obs_fraction = len(yt) / n_population
            if self.method == "dr":
                # Fixed imputation: g is a naive model of the observed labels, early-stopped on the same
                # validation rows (an imputer trained to convergence memorises each user's few labels
                # and f then copies its extremes onto every unobserved pair), then frozen.
                g = replace(self, method="naive", exposure_weight=0.0).fit(
                    users, items, y, None, val=val, user_features=user_features, item_features=item_features,
                    population=population, exposure_log=exposure_log)
                imputer = g.net_
        if val is not None:
            vu, vi = torch.as_tensor(self.users_.encode(val[0])), torch.as_tensor(self.items_.encode(val[1]))
            vy = torch.as_tensor(np.asarray(val[2], dtype=np.float32))
            vw = 1.0 / torch.as_tensor(np.ones(len(vy)) if val[3] is None else np.asarray(val[3], np.float64), dtype=torch.float32)
        best, best_state, bad = np.inf, None, 0
        self.history = []
        for epoch in tqdm(range(self.epochs), desc=f"train {self.method}", disable=not progress):
            self.net_.train()
            perm = torch.as_tensor(rng.permutation(len(yt)))
            total = 0.0
            for start in range(0, len(perm), self.batch_size):
                b = perm[start:start + self.batch_size]
                logits = self.net_(u[b], i[b])
                e = self._loss(logits, yt[b])
                pb = p[b]
                if self.method == "naive":
                    loss = e.mean()
                elif self.method == "ips":
                    loss = (e / pb).mean()
                elif self.method == "snips":
                    loss = (e / pb).sum() / (1 / pb).sum()
                else:
                    if self.method != "dr":
                        # 1) imputation step: g learns to predict f's error on observed pairs.
                        g_obs = torch.sigmoid(imputer(u[b], i[b]))
                        e_hat = F.binary_cross_entropy(torch.sigmoid(logits.detach()), g_obs, reduction="none")
                        wg = (1 - pb) / pb ** 2 if self.method == "mrdr_jl" else 1 / pb
                        g_loss = (wg * (e.detach() - e_hat) ** 2).mean()
                        opt_g.zero_grad()
                        g_loss.backward()
                        opt_g.step()
                    # 2) prediction step: imputed errors on a population sample + propensity-weighted correction.
                    m = len(b) * self.imputation_ratio
                    if pop_u is None:
                        su = torch.as_tensor(rng.integers(len(self.users_), size=m))
                        si = torch.as_tensor(rng.integers(len(self.items_), size=m))
                    else:
                        k = torch.as_tensor(rng.integers(len(pop_u), size=m))
                        su, si = pop_u[k], pop_i[k]
                    with torch.no_grad():
                        g_pop, g_obs = torch.sigmoid(imputer(su, si)), torch.sigmoid(imputer(u[b], i[b]))
                    e_hat_pop = F.binary_cross_entropy_with_logits(self.net_(su, si), g_pop, reduction="none")
                    e_hat_obs = F.binary_cross_entropy_with_logits(logits, g_obs, reduction="none")
                    correction = (e - e_hat_obs) / pb
                    if self.method == "sdr":
                        loss = e_hat_pop.mean() + correction.sum() / (1 / pb).sum()
                    else:
                        loss = e_hat_pop.mean() + obs_fraction * correction.mean()
                if self.exposure_weight_ > 0:
                    k = torch.as_tensor(rng.integers(len(ee), size=len(b)))
                    P, _ = self.net_.user_vectors(eu[k])
                    Q, _ = self.net_.item_vectors(ei[k])
                    exposure_logit = alpha * (P * Q).sum(-1) + head(eu[k], ei[k])
                    loss = loss + self.exposure_weight_ * F.binary_cross_entropy_with_logits(exposure_logit, ee[k])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            row = {"epoch": epoch + 1, "train_loss": total / len(perm)}
            if val is not None:
                self.net_.eval()
                with torch.no_grad():
                    ve = self._loss(self.net_(vu, vi), vy)
                    row["val_loss"] = float((ve * vw).sum() / vw.sum())
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

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.objective == "regression":
            return (out - y) ** 2
        return F.binary_cross_entropy_with_logits(out, y, reduction="none")

    def _link(self, out: torch.Tensor) -> np.ndarray:
        return (out if self.objective == "regression" else torch.sigmoid(out)).numpy()

    # ------------------------------------------------------------------------------- scoring
    def _encode(self, ids, index: IdIndex, trained: np.ndarray):
        idx = index.encode(np.asarray(ids).astype(str))
        known = idx >= 0
        # An id the model never trained on (cold) keeps only its feature tower.
        warm = known & trained[np.maximum(idx, 0)]
        return torch.as_tensor(np.maximum(idx, 0)), torch.as_tensor(warm, dtype=torch.float32), torch.as_tensor(known, dtype=torch.float32)

    def _sides(self, user_ids, item_ids):
        """User and item (vectors, biases); ids unknown to the model contribute nothing."""
        u, uw, uk = self._encode(user_ids, self.users_, self.trained_users_)
        i, iw, ik = self._encode(item_ids, self.items_, self.trained_items_)
        P, bu = self.net_.user_vectors(u, uw)
        Q, bi = self.net_.item_vectors(i, iw)
        return P * uk[:, None], bu * uk, Q * ik[:, None], bi * ik

    @torch.no_grad()
    def score_matrix(self, user_ids, item_ids) -> np.ndarray:
        """(len(user_ids), len(item_ids)) predicted P(Y(1)=1) (the raw score for the regression objective)."""
        P, bu, Q, bi = self._sides(user_ids, item_ids)
        return self._link(P @ Q.T + bu[:, None] + bi[None, :] + self.net_.global_bias)

    @torch.no_grad()
    def predict(self, user_ids, item_ids) -> np.ndarray:
        """Predicted P(Y(1)=1) for aligned (user, item) pairs."""
        P, bu, Q, bi = self._sides(user_ids, item_ids)
        return self._link((P * Q).sum(-1) + bu + bi + self.net_.global_bias)

    def save(self, path: str | Path) -> None:
        from causalrec.io import atomic_write_bytes

        buf = io.BytesIO()
        torch.save({"kind": "debiased", "params": {k: v for k, v in asdict(self).items() if k != "history"},
                    "history": self.history, "users": self.users_.ids.tolist(), "items": self.items_.ids.tolist(),
                    "trained_users": self.trained_users_, "trained_items": self.trained_items_,
                    "state": self.net_.state_dict()}, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def from_blob(cls, blob: dict) -> "DebiasedRecommender":
        m = cls(**blob["params"])
        m.history = blob["history"]
        m.users_, m.items_ = IdIndex(blob["users"]), IdIndex(blob["items"])
        m.trained_users_, m.trained_items_ = blob["trained_users"], blob["trained_items"]
        state = blob["state"]
        m.net_ = FactorModel(len(m.users_), len(m.items_), m.dim, state["user_x"], state["item_z"])
        m.net_.load_state_dict(state)
        m.net_.eval()
        return m
