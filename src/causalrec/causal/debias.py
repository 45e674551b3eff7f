"""Debiased relevance learning from biased logs: one estimator, seven ways to weigh the evidence
(the loss table and its estimands: causalrec.causal.losses).

All share the backbone (causalrec.models.factor.FactorModel: MF or two-tower with features/text),
the training loop of causalrec.causal.training (Adam, mini-batches, early stopping on a
SNIPS-weighted validation loss from the training split: the same for every method, so they compare).

Optional exposure head (exposure_weight > 0, any method): the logging policy's propensities of
every logged row, shown or not, are a second target that shares the user/item factors:
logit P(shown | u,i) = alpha <p_u, q_i> + c_u + c_i, cross-entropy with the propensity as soft
label, added to the loss with that weight (the same head as the shared uplift learner's; see
causalrec.causal.uplift). `auto_exposure_weight(model)` chooses the weight among
AUTO_EXPOSURE_WEIGHTS by validation loss (a ValidationSearch). It helps when the policy knew
something about preferences and is weighted to 0 by the validation when it did not.
`auto_weight_decay(model)` chooses the weight decay among AUTO_WEIGHT_DECAYS the same way (how far
user vectors may move from the few rows a user has, e.g. after the users' interests moved).
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from causalrec.causal.losses import DR_METHODS, LOSSES, METHODS, Batch, dr_correction, imputer_loss
from causalrec.causal.training import (FitSettings, OnePassPath, Stacked, ValidationSearch, adam, copy_decay,
                                      minibatches, train_loop)
from causalrec.models.factor import FactorModel
from causalrec.models.ids import IdIndex

AUTO_EXPOSURE_WEIGHTS = (0.0, 1.0, 3.0, 10.0)
AUTO_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3)  # decades around FitSettings' 1e-4
PRIVATE_METHODS = ("naive", "ips", "dr")  # losses that are a sum over users (snips, joint learning couple them)
__all__ = ["AUTO_EXPOSURE_WEIGHTS", "AUTO_WEIGHT_DECAYS", "DR_METHODS", "METHODS", "DebiasedRecommender",
           "auto_exposure_weight", "auto_weight_decay"]


def auto_exposure_weight(model, criterion: str | None = None) -> ValidationSearch:
    """`exposure_weight: auto` for any learner with that parameter: a search over AUTO_EXPOSURE_WEIGHTS
    (by validation loss, or by the fitted model's `criterion` attribute: ValidationSearch)."""
    return ValidationSearch(replace(model, exposure_weight=0.0), "exposure_weight", AUTO_EXPOSURE_WEIGHTS, criterion)


def auto_weight_decay(model) -> ValidationSearch:
    """`weight_decay: auto`: a search over AUTO_WEIGHT_DECAYS (one pass where the learner has fit_path)."""
    return ValidationSearch(replace(model, weight_decay=AUTO_WEIGHT_DECAYS[0]), "weight_decay", AUTO_WEIGHT_DECAYS)


def feature_matrix(index: IdIndex, features: pd.DataFrame | None) -> torch.Tensor | None:
    if features is None:
        return None
    f = features.copy()
    f.index = f.index.astype(str)
    return torch.as_tensor(f.reindex(index.ids).fillna(0.0).to_numpy(dtype=np.float32))


def _ids(*groups) -> list[str]:
    return [str(x) for g in groups if g is not None for x in np.unique(np.asarray(g).astype(str))]


@dataclass
class DebiasedRecommender(OnePassPath, FitSettings):
    method: str = "naive"
    imputation_ratio: int = 4     # population pairs sampled per observed pair (DR family)
    objective: str = "binary"     # binary: BCE, predictions are probabilities; regression: squared error
    exposure_weight: float = 0.0  # weight of the exposure head (needs exposure_log); auto: auto_exposure_weight
    privacy: dict | None = None   # user-level DP-SGD (causalrec.causal.privacy.UserLevelDP's fields); None: off
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
        if not (isinstance(self.exposure_weight, (int, float)) and self.exposure_weight >= 0):
            raise ValueError(f"exposure_weight must be a number >= 0 (for 'auto' use auto_exposure_weight), "
                             f"got {self.exposure_weight!r}")

    def fit(self, users, items, y, propensity=None, val=None, user_features: pd.DataFrame | None = None,
            item_features: pd.DataFrame | None = None, population: tuple | None = None,
            progress: bool = False, exposure_log: tuple | None = None) -> "DebiasedRecommender":
        """Fit on observed rows. val = (users, items, y, propensity); population = (users, items) of D,
        default: every user x item pair; exposure_log = (users, items, propensity) of every logged
        row, shown or not (for the exposure head). With `privacy`, a user-level differentially private
        fit (`_fit_private`): val is not read (no early stopping on private rows)."""
        if self.privacy is not None:
            self._check(propensity)
            return self._fit_private(users, items, y, propensity, user_features, item_features, population, progress,
                                     exposure_log)
        self._fit_candidates([self], users, items, y, propensity, val, user_features, item_features, population,
                             progress, exposure_log)
        return self

    def _fit_candidates(self, candidates: list["DebiasedRecommender"], users, items, y, propensity=None, val=None,
                        user_features: pd.DataFrame | None = None, item_features: pd.DataFrame | None = None,
                        population: tuple | None = None, progress: bool = False, exposure_log: tuple | None = None):
        """Fit `candidates` (copies of self that differ in exposure_weight or weight_decay only) in one
        pass, in place (`fit`: self alone; `fit_path`: one copy per candidate value)."""
        if self.privacy is not None and len(candidates) > 1:
            raise ValueError("a private fit has no validation search: each candidate would spend budget and the choice "
                             "reads private validation rows; give exposure_weight and weight_decay numbers")
        for c in candidates:
            c._check(propensity)
        decay = copy_decay(candidates)
        if self.method == "dr" and isinstance(decay, torch.Tensor):
            # DR's fixed imputer is trained with the learner's weight decay: one per candidate, so one fit each
            for c in candidates:
                c._fit_candidates([c], users, items, y, propensity, val, user_features, item_features, population,
                                  progress, exposure_log)
            return
        values = [c.exposure_weight for c in candidates]
        weights = torch.tensor([float(w) for w in values])
        if (weights > 0).any() and exposure_log is None:
            raise ValueError("exposure_weight needs exposure_log = (users, items, propensity) of every logged row")
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        rng_exposure = np.random.default_rng([self.seed, 1])  # its own stream: the batches are the same with or without a head
        users, items = np.asarray(users).astype(str), np.asarray(items).astype(str)
        v, pop, ex = val or (None, None), population or (None, None), exposure_log or (None, None)
        user_index = IdIndex(_ids(users, v[0], pop[0], ex[0], None if user_features is None else user_features.index))
        item_index = IdIndex(_ids(items, v[1], pop[1], ex[1], None if item_features is None else item_features.index))
        u, i = torch.as_tensor(user_index.encode(users)), torch.as_tensor(item_index.encode(items))
        X, Z = feature_matrix(user_index, user_features), feature_matrix(item_index, item_features)
        net = lambda dim: Stacked(FactorModel(len(user_index), len(item_index), dim, X, Z), len(values))  # noqa: E731
        f = net(self.dim)
        modules = {"net": f}
        if self.method in DR_METHODS and self.method != "dr":  # joint learning: g trains beside f
            imputer = net(self.dim)
            opt_g = adam(imputer.parameters(), self.lr, decay)
        if (weights > 0).any():  # exposure head: own biases/feature terms + alpha x the shared interaction
            head = FactorModel(len(user_index), len(item_index), 0, X, Z)
            head.register_parameter("alpha", torch.nn.Parameter(torch.ones(1)))
            modules["head"] = head = Stacked(head, len(values))
            eu = torch.as_tensor(user_index.encode(np.asarray(exposure_log[0]).astype(str)))
            ei = torch.as_tensor(item_index.encode(np.asarray(exposure_log[1]).astype(str)))
            ee = torch.as_tensor(np.clip(np.asarray(exposure_log[2], np.float64), 1e-4, 1 - 1e-4), dtype=torch.float32)
        opt = adam([p for m in modules.values() for p in m.parameters()], self.lr, decay)
        yt = torch.as_tensor(np.asarray(y, dtype=np.float32))
        p = torch.as_tensor(np.ones(len(yt)) if propensity is None else np.asarray(propensity, np.float64),
                            dtype=torch.float32)
        if self.method in DR_METHODS:
            if population is None:
                pop_u = pop_i = None
                n_population = len(user_index) * len(item_index)
            else:
                pop_u = torch.as_tensor(user_index.encode(np.asarray(population[0]).astype(str)))
                pop_i = torch.as_tensor(item_index.encode(np.asarray(population[1]).astype(str)))
                n_population = len(pop_u)
            obs_share = len(yt) / n_population
            if self.method == "dr":
                # Fixed imputation: g is a naive model of the observed labels, early-stopped on the same
                # validation rows (an imputer trained to convergence memorises each user's few labels
                # and f then copies its extremes onto every unobserved pair), then frozen; one for all
                # candidates (it does not depend on the exposure weight).
                imputer = replace(self, method="naive", exposure_weight=0.0).fit(
                    users, items, y, None, val=val, user_features=user_features, item_features=item_features,
                    population=population).net_

        def forward(u, i, n_exposure):
            """f's logits on the rows (u, i) and, with the exposure head on, the head's loss on `n_exposure`
            rows of the exposure log: one pass through f's towers for both (the item table projected once)."""
            if "head" not in modules:
                return f(u, i), None
            k = torch.as_tensor(rng_exposure.integers(len(ee), size=n_exposure))
            hu, hi = eu.index_select(0, k), ei.index_select(0, k)
            interaction, bias = f.score_terms(torch.cat([u, hu]), torch.cat([i, hi]))
            n = len(u)
            out = interaction[:, :n] + bias[:, :n]
            exposure_logit = head.alpha * interaction[:, n:] + head(hu, hi)
            target = ee.index_select(0, k).expand_as(exposure_logit)
            return out, weights * F.binary_cross_entropy_with_logits(exposure_logit, target, reduction="none").mean(-1)

        def step(batch):
            # Every tensor below has one row per candidate (k, batch); the fixed DR imputer's broadcast.
            ub, ib, pb, yb = batch
            n = len(ub)
            if self.method in DR_METHODS:
                # One forward over the observed pairs and a population sample (D = every user x item
                # pair is sampled, never materialised): one gather and one scatter per table.
                m = n * self.imputation_ratio
                if pop_u is None:
                    su = torch.as_tensor(rng.integers(len(user_index), size=m))
                    si = torch.as_tensor(rng.integers(len(item_index), size=m))
                else:
                    k = torch.as_tensor(rng.integers(len(pop_u), size=m))
                    su, si = pop_u.index_select(0, k), pop_i.index_select(0, k)
                uu, ii = torch.cat([ub, su]), torch.cat([ib, si])
                out, exposure_loss = forward(uu, ii, n)
                logits = out[:, :n]
                e = self._loss(logits, yb.expand_as(logits))
                if self.method != "dr":  # 1) joint learning: g learns to predict f's error on the observed pairs
                    g_obs = torch.sigmoid(imputer(ub, ib))
                    e_hat = F.binary_cross_entropy(torch.sigmoid(logits.detach()), g_obs, reduction="none")
                    opt_g.zero_grad()
                    imputer_loss(self.method, e, e_hat, pb).sum().backward()
                    opt_g.step()
                with torch.no_grad():  # 2) the (updated) imputation on observed and population pairs
                    g = torch.sigmoid(imputer(uu, ii)).expand_as(out)
                e_hat_pop = F.binary_cross_entropy_with_logits(out[:, n:], g[:, n:], reduction="none")
                correction = dr_correction(logits, yb.expand_as(logits), g[:, :n])
                batch = Batch(e, pb, correction=correction, e_hat_pop=e_hat_pop, obs_share=obs_share)
            else:
                logits, exposure_loss = forward(ub, ib, n)
                batch = Batch(self._loss(logits, yb.expand_as(logits)), pb)
            loss = LOSSES[self.method](batch)
            if exposure_loss is not None:
                loss = loss + exposure_loss
            opt.zero_grad()
            loss.sum().backward()  # the candidates share no weights: each gets its own loss's gradient
            opt.step()
            return loss.detach().numpy(), n

        validate = None
        if val is not None:
            vu, vi = torch.as_tensor(user_index.encode(val[0])), torch.as_tensor(item_index.encode(val[1]))
            vy = torch.as_tensor(np.asarray(val[2], dtype=np.float32))
            vw = 1.0 / torch.as_tensor(np.ones(len(vy)) if val[3] is None else np.asarray(val[3], np.float64),
                                       dtype=torch.float32)

            def validate():
                out = f(vu, vi)
                return (self._loss(out, vy.expand_as(out)) * vw).sum(-1) / vw.sum()
        histories = train_loop(step, minibatches(self.batch_size, rng, u, i, p, yt), self.epochs, modules, validate,
                               self.patience, progress, f"train {self.method}", copies=len(candidates))
        trained_users, trained_items = np.zeros(len(user_index), bool), np.zeros(len(item_index), bool)
        trained_users[u.numpy()], trained_items[i.numpy()] = True, True
        for j, c in enumerate(candidates):
            c.users_, c.items_, c.trained_users_, c.trained_items_ = user_index, item_index, trained_users, trained_items
            c.net_, c.history, c.exposure_weight_ = f.unstack(j), histories[j], float(values[j])
            if values[j] > 0:
                c.head_ = head.unstack(j)
            elif hasattr(c, "head_"):  # refitted without a head: none left from before
                del c.head_

    # ------------------------------------------------------------------------------- private fit
    def private_mechanisms(self, n_users: int) -> list[tuple[float, int]]:
        """[(sample rate, steps)] a private fit over n_users runs (DR's frozen imputer is a private fit too)."""
        from causalrec.causal.privacy import UserLevelDP

        dp = UserLevelDP(**{**self.privacy, "noise_multiplier": None})
        return dp.mechanisms(n_users, self.epochs) * (2 if self.method == "dr" else 1)

    def _fit_private(self, users, items, y, propensity, user_features, item_features, population, progress,
                     exposure_log) -> "DebiasedRecommender":
        """User-level DP-SGD (causalrec.causal.privacy: what is protected and how). Each pass: the users'
        own vectors refitted locally (shared parameters frozen), then one expected pass of private steps
        over the shared parameters. The loss of a user is the method's loss over that user's rows."""
        from tqdm.auto import tqdm

        from causalrec.causal import privacy as dpm

        if self.method not in PRIVATE_METHODS:
            raise ValueError(f"method '{self.method}' has no private fit (its loss couples users in a batch); "
                             f"choose from {PRIVATE_METHODS}")
        if self.exposure_weight > 0 and exposure_log is None:
            raise ValueError("exposure_weight needs exposure_log = (users, items, propensity) of every logged row")
        dp = dpm.UserLevelDP(**self.privacy)
        users, items = np.asarray(users).astype(str), np.asarray(items).astype(str)
        pop, ex = population or (None, None), exposure_log or (None, None)
        user_index = IdIndex(_ids(users, pop[0], ex[0], None if user_features is None else user_features.index))
        item_index = IdIndex(_ids(items, pop[1], ex[1], None if item_features is None else item_features.index))
        u, i = user_index.encode(users), item_index.encode(items)
        n_users, n_items = len(user_index), len(item_index)
        rows = dpm.UserRows(u, n_users)
        sigma = dp.noise_multiplier
        if sigma is None:
            sigma = dpm.calibrate(dp.epsilon, dp.delta, self.private_mechanisms(len(rows.users)))
        mechanisms = dp.mechanisms(len(rows.users), self.epochs)
        imputer = None
        if self.method == "dr":  # the frozen imputer: a private naive fit with the same sigma (composed below)
            imputer = replace(self, method="naive", exposure_weight=0.0, privacy={**self.privacy, "noise_multiplier": sigma})
            imputer.fit(users, items, y, None, user_features=user_features, item_features=item_features)
            mechanisms = mechanisms + [tuple(m[1:]) for m in imputer.privacy_["mechanisms"]]
        torch.manual_seed(self.seed)
        rng, gen = np.random.default_rng(self.seed), torch.Generator().manual_seed(self.seed + 1)
        X, Z = feature_matrix(user_index, user_features), feature_matrix(item_index, item_features)
        net = FactorModel(n_users, n_items, self.dim, X, Z)
        head = None
        if self.exposure_weight > 0:
            head = FactorModel(n_users, n_items, 0, X, Z)
            head.register_parameter("alpha", torch.nn.Parameter(torch.ones(1)))
            ex_rows = dpm.UserRows(user_index.encode(np.asarray(exposure_log[0]).astype(str)), n_users)
            ex_items = item_index.encode(np.asarray(exposure_log[1]).astype(str))
            ex_target = np.clip(np.asarray(exposure_log[2], np.float64), 1e-4, 1 - 1e-4).astype(np.float32)
        if population is not None:
            pop_rows = dpm.UserRows(user_index.encode(np.asarray(population[0]).astype(str)), n_users)
            pop_items = item_index.encode(np.asarray(population[1]).astype(str))
        private_names = {"user": (net, "user.weight"), "user_bias": (net, "user_bias.weight")}
        if head is not None:
            private_names["head_user_bias"] = (head, "user_bias.weight")
        shared = {f"net.{n}": p for n, p in net.named_parameters() if n not in ("user.weight", "user_bias.weight")}
        if head is not None:
            shared.update({f"head.{n}": p for n, p in head.named_parameters() if n != "user_bias.weight"})
        item_tables = tuple(k for k in shared if k.endswith(("item.weight", "item_bias.weight")))
        private_tables = {k: dict(m.named_parameters())[n] for k, (m, n) in private_names.items()}
        y_all = np.asarray(y, np.float32)
        w_all = np.ones(len(y_all), np.float32) if propensity is None else (1.0 / np.asarray(propensity, np.float64)).astype(np.float32)
        k_rows = dp.rows_per_user

        def batch_of(sampled: np.ndarray) -> dict[str, torch.Tensor]:
            """One entry per sampled user: their rows (k_rows, padded; mask), features, DR and head inputs."""
            idx, mask = rows.sample(sampled, k_rows, rng)
            b = {"items": torch.as_tensor(i[idx]), "y": torch.as_tensor(y_all[idx]), "w": torch.as_tensor(w_all[idx]),
                 "mask": torch.as_tensor(mask, dtype=torch.float32)}
            if X is not None:
                b["x"] = X[torch.as_tensor(sampled)]
            if self.method == "dr":
                m = k_rows * self.imputation_ratio
                if population is None:
                    pop_i, pop_mask = rng.integers(n_items, size=(len(sampled), m)), np.ones((len(sampled), m), bool)
                    d_size = np.full(len(sampled), n_items)
                else:
                    pidx, pop_mask = pop_rows.sample(sampled, m, rng)
                    pop_i, d_size = pop_items[pidx], np.maximum(pop_rows.count[sampled], 1)
                su = np.repeat(user_index.ids[sampled], m)
                g_pop = imputer.predict(su, item_index.ids[pop_i.reshape(-1)]).reshape(pop_i.shape)
                g_obs = imputer.predict(np.repeat(user_index.ids[sampled], k_rows), item_index.ids[i[idx].reshape(-1)])
                b.update({"pop": torch.as_tensor(pop_i), "pop_mask": torch.as_tensor(pop_mask, dtype=torch.float32),
                          "g_pop": torch.as_tensor(g_pop, dtype=torch.float32),
                          "g_obs": torch.as_tensor(g_obs.reshape(idx.shape), dtype=torch.float32),
                          "obs_share": torch.as_tensor(rows.count[sampled] / d_size, dtype=torch.float32)})
            if head is not None:
                eidx, emask = ex_rows.sample(sampled, k_rows, rng)
                b.update({"ex_items": torch.as_tensor(ex_items[eidx]), "ex_target": torch.as_tensor(ex_target[eidx]),
                          "ex_mask": torch.as_tensor(emask & (ex_rows.count[sampled] > 0)[:, None], dtype=torch.float32)})
            if Z is not None:
                for f in ("items", "pop", "ex_items"):
                    if f in b:
                        b[f"z_{f}"] = Z[b[f]]
            return b

        user_loss = functools.partial(_private_user_loss, objective=self.objective, method=self.method,
                                      head_weight=float(self.exposure_weight) if head is not None else 0.0)

        opt_shared = adam(list(shared.values()), self.lr, 0.0)
        opt_private = adam(list(private_tables.values()), self.lr, 0.0)
        q_rate, steps = mechanisms[0]
        population_users = rows.users
        from torch.func import vmap

        def local_pass():
            """Each user's own vector: one Adam step per chunk of users, the shared parameters frozen."""
            frozen = {k: v.detach() for k, v in shared.items()}
            for chunk in np.array_split(rng.permutation(population_users), max(1, len(population_users) // dp.users_per_step)):
                b = batch_of(chunk)
                idx = torch.as_tensor(chunk)
                pv = {k: t.index_select(0, idx) for k, t in private_tables.items()}
                loss = vmap(user_loss, in_dims=(None, 0, 0))(frozen, pv, b).sum()
                loss = loss + dp.user_l2 * sum((v ** 2).sum() for v in pv.values())
                opt_private.zero_grad()
                loss.backward()
                opt_private.step()

        for p in (net, head):
            if p is not None:
                p.train()
        history = []
        for epoch in tqdm(range(self.epochs), desc=f"train {self.method} (private)", disable=not progress):
            start = time.perf_counter()
            for _ in range(dp.local_passes):
                local_pass()
            for _ in range(steps // self.epochs):  # mechanisms: epochs x ceil(1 / q) steps
                sampled = population_users[rng.random(len(population_users)) < q_rate]
                b = batch_of(sampled)
                pv = {k: t.detach().index_select(0, torch.as_tensor(sampled, dtype=torch.long)) for k, t in private_tables.items()}
                grads = dpm.private_step(user_loss, shared, pv, b, item_tables, tuple(f for f in ("items", "pop", "ex_items") if f in b), dp, sigma,
                                         q_rate * len(population_users), gen)
                for k, p in shared.items():
                    p.grad = grads[k] + self.weight_decay * p.detach()
                opt_shared.step()
            history.append({"epoch": epoch + 1, "seconds": time.perf_counter() - start})
        for _ in range(dp.local_passes):
            local_pass()
        net.eval()
        trained_users, trained_items = np.zeros(n_users, bool), np.zeros(n_items, bool)
        trained_users[u], trained_items[i] = True, True
        self.users_, self.items_, self.trained_users_, self.trained_items_ = user_index, item_index, trained_users, trained_items
        self.net_, self.history, self.exposure_weight_ = net, history, float(self.exposure_weight)
        if head is not None:
            self.head_ = head.eval()
        self.privacy_ = dpm.record(dp, sigma, mechanisms)
        return self

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return row_loss(self.objective, out, y)

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

    def to_state(self) -> dict:
        """Config + weights as plain types and tensors (causalrec.persistence loads it with weights_only=True)."""
        return {"params": {k: v for k, v in asdict(self).items() if k != "history"}, "history": self.history,
                "fitted": {k: getattr(self, k) for k in ("exposure_weight_", "search_", "privacy_") if hasattr(self, k)},
                "users": self.users_.ids.tolist(), "items": self.items_.ids.tolist(),
                "trained_users": torch.as_tensor(self.trained_users_), "trained_items": torch.as_tensor(self.trained_items_),
                "state": self.net_.state_dict()}

    @classmethod
    def from_state(cls, blob: dict) -> "DebiasedRecommender":
        m = cls(**blob["params"])
        m.history = blob["history"]
        for k, v in blob.get("fitted", {}).items():
            setattr(m, k, v)
        m.users_, m.items_ = IdIndex(blob["users"]), IdIndex(blob["items"])
        m.trained_users_, m.trained_items_ = blob["trained_users"].numpy(), blob["trained_items"].numpy()
        state = blob["state"]
        m.net_ = FactorModel(len(m.users_), len(m.items_), state["user.weight"].shape[1], state["user_x"], state["item_z"])
        m.net_.load_state_dict(state)
        m.net_.eval()
        return m


def _private_user_loss(sh: dict, pv: dict, b: dict, objective: str, method: str, head_weight: float) -> torch.Tensor:
    """One user's loss in a private fit (DebiasedRecommender._fit_private; vmapped over users, so `pv` and `b`
    are that user's entries): the method's loss over their sampled rows (a mean: every user weighs the same),
    DR's imputed population term, and the exposure head's loss on their logged rows when head_weight > 0.
    `sh` holds the shared tensors by name ("net.<param>", "head.<param>"), `pv` the user's own rows."""
    pu, bu = pv["user"], pv["user_bias"][0]
    if "net.user_tower.weight" in sh:
        t = b["x"] @ sh["net.user_tower.weight"].T
        pu, bu = pu + t[:-1], bu + t[-1]

    def item_side(f):
        q, bi = sh["net.item.weight"][b[f]], sh["net.item_bias.weight"][b[f]][..., 0]
        if "net.item_tower.weight" in sh:
            t = b[f"z_{f}"] @ sh["net.item_tower.weight"].T
            q, bi = q + t[..., :-1], bi + t[..., -1]
        return q, bi

    q, bi = item_side("items")
    logits = q @ pu + bi + bu + sh["net.global_bias"][0]
    n = b["mask"].sum().clamp(min=1)
    if method == "dr":
        qp, bp = item_side("pop")
        pop_logits = qp @ pu + bp + bu + sh["net.global_bias"][0]
        e_hat = F.binary_cross_entropy_with_logits(pop_logits, b["g_pop"], reduction="none")
        corr = dr_correction(logits, b["y"], b["g_obs"]) * b["w"]
        loss = (e_hat * b["pop_mask"]).sum() / b["pop_mask"].sum().clamp(min=1) + b["obs_share"] * (corr * b["mask"]).sum() / n
    else:
        loss = (row_loss(objective, logits, b["y"]) * b["w"] * b["mask"]).sum() / n
    if head_weight > 0:
        qe, _ = item_side("ex_items")
        hb = sh["head.item_bias.weight"][b["ex_items"]][..., 0]
        hu = pv["head_user_bias"][0]
        if "head.user_tower.weight" in sh:
            hu = hu + (b["x"] @ sh["head.user_tower.weight"].T)[0]
        if "head.item_tower.weight" in sh:
            hb = hb + (b["z_ex_items"] @ sh["head.item_tower.weight"].T)[..., 0]
        e_logit = sh["head.alpha"][0] * (qe @ pu) + hb + hu + sh["head.global_bias"][0]
        e_loss = F.binary_cross_entropy_with_logits(e_logit, b["ex_target"], reduction="none")
        loss = loss + head_weight * (e_loss * b["ex_mask"]).sum() / b["ex_mask"].sum().clamp(min=1)
    return loss


def row_loss(objective: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row loss of raw scores `out`: squared error (regression) or cross-entropy on the logit (binary)."""
    if objective == "regression":
        return (out - y) ** 2
    return F.binary_cross_entropy_with_logits(out, y, reduction="none")
