"""Effects of a binary treatment with 95% intervals: total, natural direct / indirect (through one
binary mediator), and the total effect by segment. Identification comes from `CausalGraph.identify`
(a backdoor set Z); estimation here; refutation in `causal.refute`.

Estimators (each returns Estimate(value, se, ci)):
* `regression`: the linear structural equation model. OLS of Y on T (+ M) + Z with cluster-robust
  errors; total = the T coefficient without M; direct = with M; indirect = a * b (product of
  coefficients, delta-method SE). Right when the model is linear; a reference otherwise.
* `doubly_robust` (the headline): AIPW for the total effect and the multiply robust estimator of
  Tchetgen Tchetgen & Shpitser (2012) for psi(t, t') = E[Y(t, M(t'))], each with its influence
  function, so the SE is sd(IF)/sqrt(n), cluster-robust when rows share a unit (e.g. an item-level
  promotion seen in many impressions). Nuisance models of T on Z, Y on T+Z, M on T+Z and Y on T+M+Z,
  cross-fitted (Chernozhukov et al. 2018: each row predicted by models fitted on the other folds,
  folds by cluster, so flexible models keep the sqrt(n) intervals honest): logistic regressions with
  T x modifier interactions, gradient-boosted trees, or per model the one with the lower out-of-fold
  log loss (the default). Their paired out-of-fold losses are the specification check of the
  logit-linear form (`specification_check`).

Standard errors. The influence-function SE treats the fitted nuisances as known, which holds to first
order. Under poor overlap it does not hold in samples of realistic size: where the estimated
propensities sit at the clip the estimate leans on the outcome models' extrapolation, and their
estimation error is invisible in the realised influence values (on a funnel with 20% of rows at the
clip the IF SE averaged 0.025 against an actual spread of 0.033: 95% intervals covered 0.86). So the
rule, declared before any outcome is looked at: when more than `JACKKNIFE_OVERLAP_SHARE` of rows
have an estimated propensity at the clip, the SE is the delete-a-group jackknife over
`JACKKNIFE_GROUPS` groups of clusters, every nuisance refitted without the group (its model as chosen
on all rows), and the interval uses Student's t with groups - 1 degrees of freedom. Otherwise the IF
SE (cheap, and right there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


JACKKNIFE_OVERLAP_SHARE = 0.05  # share of rows at the propensity clip above which the SE is the jackknife's
JACKKNIFE_GROUPS = 20


@dataclass(frozen=True)
class Estimate:
    value: float
    se: float
    df: int | None = None  # degrees of freedom of the SE (the jackknife's); None: normal

    @property
    def ci(self) -> tuple[float, float]:
        q = Z95 if self.df is None else float(stats.t.ppf(0.975, self.df))
        return (self.value - q * self.se, self.value + q * self.se)

    def to_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci)}


def _se(influence: np.ndarray, clusters: np.ndarray | None) -> float:
    """Standard error of a mean of influence values, summing within clusters first."""
    n = len(influence)
    if clusters is None:
        return float(np.std(influence, ddof=1) / np.sqrt(n))
    sums = pd.Series(influence).groupby(clusters).sum().to_numpy()
    return float(np.sqrt(np.sum(sums ** 2)) / n)


def _design(df: pd.DataFrame, cols: list[str], t: np.ndarray | None = None, modifiers: list[str] = (),
            m: np.ndarray | None = None) -> np.ndarray:
    """Covariates [, T, T x modifiers] [, M] as columns (the logistic model adds the intercept)."""
    parts = [df[c].to_numpy(float) for c in cols]
    if t is not None:
        parts += [t] + [t * df[c].to_numpy(float) for c in modifiers]
    if m is not None:
        parts += [m]
    return np.column_stack(parts)


def _logistic():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1e6, max_iter=1000)  # ~unpenalised maximum likelihood: the linear SEM's logit twin


def _boosting():
    from sklearn.ensemble import HistGradientBoostingClassifier

    # shallow trees, many rows per leaf, shrinkage: thresholds and interactions without chasing noise;
    # fixed settings (no early stopping: its random validation split would ignore the clusters)
    return HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=40,
                                          l2_regularization=1.0, early_stopping=False, random_state=0)


NUISANCE_MODELS = {"logistic": _logistic, "boosting": _boosting}
NUISANCES = ("auto", *NUISANCE_MODELS)  # auto: per nuisance, the model with the lower out-of-fold log loss


def _folds(n: int, clusters: np.ndarray | None, k: int, seed: int) -> np.ndarray:
    """Fold of each row; rows of one cluster share a fold (an item's impressions are not independent)."""
    units, inverse = np.unique(clusters, return_inverse=True) if clusters is not None else (np.arange(n), np.arange(n))
    fold_of_unit = np.random.default_rng(seed).permutation(len(units)) % k
    return fold_of_unit[inverse]


def _log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


class Nuisance:
    """One cross-fitted nuisance model: P(target = 1 | features), each row predicted by the models fitted
    on the other folds, for the observed features and for counterfactual ones (T or M set to a value).
    With several candidates, the one with the lower mean out-of-fold log loss is used (a discrete
    super learner: chosen on held-out rows, declared before the effects are computed), and the paired
    per-row loss difference, summed within clusters, is kept for the specification check."""

    def __init__(self, name: str, target: np.ndarray, designs: dict, folds: np.ndarray, candidates: list[str],
                 clusters: np.ndarray | None, in_sample: bool = False):
        """designs: {key: (linear design, tree design)}, key "observed" and the counterfactual keys.
        in_sample: fit on every row and predict every row (no cross-fitting: the logistic plug-in)."""
        from threadpoolctl import threadpool_limits

        self.name, self.candidates = name, candidates
        preds = {c: {key: np.empty(len(target)) for key in designs} for c in candidates}
        # one OpenMP thread: the trees are small, and two busy-waiting thread teams (two analyses, or an
        # analysis beside a training process, on 2 cores) slowed a fit 10-20x
        with threadpool_limits(limits=1, user_api="openmp"):
            self._fit(preds, target, designs, folds, candidates, in_sample)
        losses = {c: _log_loss(target, preds[c]["observed"]) for c in candidates}
        self.oof_log_loss = {c: float(v.mean()) for c, v in losses.items()}
        self.chosen = min(candidates, key=self.oof_log_loss.get)
        self.predictions = preds[self.chosen]
        self.test = None
        if set(candidates) >= {"logistic", "boosting"}:
            diff = losses["logistic"] - losses["boosting"]  # > 0: the flexible model predicts held-out rows better
            se = _se(diff - diff.mean(), clusters)
            z = float(diff.mean() / se) if se > 0 else 0.0
            self.test = {"linear_minus_flexible_log_loss": float(diff.mean()), "se": se, "z": z}

    @staticmethod
    def _fit(preds: dict, target: np.ndarray, designs: dict, folds: np.ndarray, candidates: list[str],
             in_sample: bool) -> None:
        for c in candidates:
            col = 0 if c == "logistic" else 1
            for f in np.unique(folds):
                test = folds == f
                train = test if in_sample else ~test
                if len(np.unique(target[train])) < 2:  # a fold with one class (tiny data): its rate
                    for key in designs:
                        preds[c][key][test] = target[train].mean() if train.any() else 0.5
                    continue
                model = NUISANCE_MODELS[c]().fit(designs["observed"][col][train], target[train])
                for key, design in designs.items():
                    preds[c][key][test] = model.predict_proba(design[col][test])[:, 1]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.predictions[key]


class DoublyRobust:
    """AIPW / multiply robust estimates from one cross-fitted fit of the nuisance models.

    nuisance: "logistic" (logit-linear in Z, T, T x modifiers, M), "boosting" (gradient-boosted trees on
    the same columns) or "auto" (per nuisance model, the one with the lower out-of-fold log loss).
    folds: cross-fitting folds (by cluster); 1 = no cross-fitting (each model fitted and evaluated on
    every row, as a plain plug-in; only for the logistic models)."""

    def __init__(self, treatment: str, outcome: str, adjustment: list[str], mediator: str | None = None,
                 modifiers: list[str] = (), cluster: str | None = None, clip: float = 0.01,
                 nuisance: str = "auto", folds: int = 5, seed: int = 0, jackknife: bool = True):
        """jackknife: the grouped-jackknife SE under poor overlap (the module's rule); False: IF SEs always."""
        if nuisance not in NUISANCES:
            raise ValueError(f"nuisance must be one of {NUISANCES}, got {nuisance!r}")
        if folds < 1 or (folds == 1 and nuisance != "logistic"):
            raise ValueError("folds must be >= 2 for flexible nuisance models (cross-fitting), or 1 with logistic")
        self.t, self.y, self.z, self.m = treatment, outcome, list(adjustment), mediator
        self.modifiers, self.cluster, self.clip = list(modifiers), cluster, clip
        self.nuisance, self.folds, self.seed, self.jackknife = nuisance, folds, seed, jackknife
        self._models: dict[str, str] | None = None  # per nuisance, a model fixed in advance (jackknife refits)
        self._fold_ids: np.ndarray | None = None   # cross-fitting folds fixed in advance (jackknife refits)

    @property
    def overlap_share_at_clip(self) -> float:
        """Share of rows whose estimated propensity sits at the clip (after `fit`)."""
        return float(np.mean((self.propensity_ <= self.clip) | (self.propensity_ >= 1 - self.clip)))

    @property
    def variance(self) -> str:
        """How the SEs were computed (after `fit`)."""
        if self.jackknife_ is None:
            return "influence function"
        return (f"grouped jackknife ({len(self.jackknife_)} groups of clusters, nuisances refitted): "
                f"{self.overlap_share_at_clip:.0%} of rows at the propensity clip")

    def fit(self, df: pd.DataFrame) -> DoublyRobust:
        self._fit(df)
        self.jackknife_ = None
        units = len(np.unique(self.clusters_)) if self.clusters_ is not None else len(df)
        if self.jackknife and self.overlap_share_at_clip > JACKKNIFE_OVERLAP_SHARE and units >= 4:
            self.jackknife_ = self._jackknife(df)
        return self

    def _jackknife(self, df: pd.DataFrame) -> list[tuple[np.ndarray, dict]]:
        """(rows kept, psi influence values on them) of each refit without one group of clusters."""
        units = self.clusters_ if self.clusters_ is not None else np.arange(len(df))
        groups = _folds(len(df), units, min(JACKKNIFE_GROUPS, len(np.unique(units))), self.seed + 1)
        out = []
        for g in np.unique(groups):
            keep = groups != g
            refit = DoublyRobust(self.t, self.y, self.z, self.m, self.modifiers, self.cluster, self.clip,
                                 self.nuisance, self.folds, self.seed, jackknife=False)
            # the same models and the same cross-fitting folds: only the deleted group differs (re-drawn folds
            # add the split's own noise to every refit, and the jackknife multiplies it by groups - 1:
            # with boosted nuisances on Coat that made the SE 0.30 for an estimate whose IF SE is 0.03)
            refit._models, refit._fold_ids = self.nuisance_models, self.fold_ids_[keep]
            refit._fit(df[keep].reset_index(drop=True))
            out.append((keep, refit.psi_if_))
        return out

    def _fit(self, df: pd.DataFrame) -> DoublyRobust:
        t, y = df[self.t].to_numpy(float), df[self.y].to_numpy(float)
        n, z_cols = len(df), self.z + [c for c in self.modifiers if c not in self.z]
        self.clusters_ = df[self.cluster].to_numpy() if self.cluster else None
        folds = (np.zeros(n, int) if self.folds == 1 else self._fold_ids if self._fold_ids is not None
                 else _folds(n, self.clusters_, self.folds, self.seed))
        self.fold_ids_ = folds
        candidates = list(NUISANCE_MODELS) if self.nuisance == "auto" else [self.nuisance]
        cov = _design(df, z_cols)

        def designs(with_t: bool, m=None) -> dict:
            """(linear, tree) designs for the observed rows and for T := a [, M := b]."""
            def pair(tt, mm):
                linear = _design(df, z_cols, tt, self.modifiers, mm) if with_t else cov
                tree = np.column_stack([cov, *([tt] if with_t else []), *([] if mm is None else [mm])])
                return linear, tree
            out = {"observed": pair(t if with_t else None, m)}
            if with_t:
                for a in (0, 1):
                    if m is None:
                        out[f"t={a}"] = pair(np.full(n, a), None)
                    else:
                        for b in (0, 1):
                            out[f"t={a},m={b}"] = pair(np.full(n, a), np.full(n, b))
            return out

        def fit_nuisance(name, target, d):
            # folds == 1: one fold, so each model is fitted and evaluated on every row (the former plug-in)
            chosen = candidates if self._models is None else [self._models[name]]
            return Nuisance(name, target, d, folds, chosen, self.clusters_, in_sample=self.folds == 1)

        self.nuisances_ = {"propensity": fit_nuisance("propensity", t, designs(False))}
        self.propensity_ = np.clip(self.nuisances_["propensity"]["observed"], self.clip, 1 - self.clip)
        p_t = {1: self.propensity_, 0: 1 - self.propensity_}
        # total effect: AIPW with an outcome model of Y on T + Z (mediator marginalised)
        out = self.nuisances_["outcome"] = fit_nuisance("outcome", y, designs(True))
        self.psi_if_ = {}
        for a in (0, 1):
            mu = out[f"t={a}"]
            self.psi_if_[(a, a, "total")] = (t == a) / p_t[a] * (y - mu) + mu
        if self.m is not None:
            m = df[self.m].to_numpy(float)
            med = self.nuisances_["mediator"] = fit_nuisance("mediator", m, designs(True))
            f1 = {a: med[f"t={a}"] for a in (0, 1)}                        # P(M = 1 | a, Z)
            f_obs = {a: np.where(m == 1, f1[a], 1 - f1[a]) for a in (0, 1)}  # f(M_i | a, Z_i)
            yout = self.nuisances_["outcome_given_mediator"] = fit_nuisance("outcome_given_mediator", y, designs(True, m))
            for a in (0, 1):
                mu1, mu0 = yout[f"t={a},m=1"], yout[f"t={a},m=0"]  # E[Y | a, M = 1 / 0, Z]
                mu_obs = np.where(m == 1, mu1, mu0)
                for b in (0, 1):  # psi(a, b) = E[Y(a, M(b))]
                    eta = f1[b] * mu1 + (1 - f1[b]) * mu0
                    self.psi_if_[(a, b, "mediation")] = ((t == a) / p_t[a] * f_obs[b] / f_obs[a] * (y - mu_obs)
                                                         + (t == b) / p_t[b] * (mu_obs - eta) + eta)
        return self

    @property
    def nuisance_models(self) -> dict[str, str]:
        """Which model each nuisance used (after `fit`)."""
        return {name: nu.chosen for name, nu in self.nuisances_.items()}

    def specification_check(self, alpha: float = 0.05) -> dict:
        """Are the logit-linear nuisance models misspecified? For each nuisance, the out-of-fold log loss
        of the linear model minus the flexible one's, with a cluster-robust z: when the flexible model
        predicts held-out rows better than chance allows (one-sided, level `alpha` for the family,
        Bonferroni over the nuisance models), the linear form misses a threshold, a curve or an
        interaction: estimates that rely on it are biased (with nuisance "auto" the flexible one is used
        there). Needs both candidates ("auto")."""
        tests = {name: nu.test for name, nu in self.nuisances_.items() if nu.test is not None}
        if not tests:
            return {"ran": False, "passed": None, "flagged": [], "tests": {}}
        z_crit = float(stats.norm.ppf(1 - alpha / len(tests)))
        flagged = [name for name, test in tests.items() if test["z"] > z_crit]
        return {"ran": True, "passed": not flagged, "flagged": flagged, "alpha": alpha, "z_crit": z_crit, "tests": tests}

    def _contrast(self, plus, minus, mask=None) -> Estimate:
        phi = self.psi_if_[plus] - self.psi_if_[minus]
        clusters = self.clusters_
        if mask is not None:
            phi, clusters = phi[mask], (None if clusters is None else clusters[mask])
        value = float(phi.mean())
        if self.jackknife_ is None:
            return Estimate(value, _se(phi - value, clusters))
        within = np.ones(len(self.propensity_), bool) if mask is None else np.asarray(mask, bool)
        leave_out = np.array([float((psi[plus] - psi[minus])[within[keep]].mean()) for keep, psi in self.jackknife_])
        g = len(leave_out)
        return Estimate(value, float(np.sqrt((g - 1) / g * np.sum((leave_out - leave_out.mean()) ** 2))), df=g - 1)

    def total(self, mask: np.ndarray | None = None) -> Estimate:
        return self._contrast((1, 1, "total"), (0, 0, "total"), mask)

    def direct(self, mask: np.ndarray | None = None) -> Estimate:
        return self._contrast((1, 0, "mediation"), (0, 0, "mediation"), mask)

    def indirect(self, mask: np.ndarray | None = None) -> Estimate:
        return self._contrast((1, 1, "mediation"), (1, 0, "mediation"), mask)


def regression(df: pd.DataFrame, treatment: str, outcome: str, adjustment: list[str], mediator: str | None = None,
               cluster: str | None = None) -> dict[str, Estimate]:
    """The linear SEM: OLS with cluster-robust (or HC1) errors; indirect = a * b by the delta method."""
    import statsmodels.api as sm

    def ols(y, cols):
        x = sm.add_constant(df[cols].astype(float))
        kw = {"cov_type": "cluster", "cov_kwds": {"groups": pd.factorize(df[cluster])[0]}} if cluster else {"cov_type": "HC1"}
        return sm.OLS(df[y].astype(float), x).fit(**kw)

    total = ols(outcome, [treatment, *adjustment])
    out = {"total": Estimate(float(total.params[treatment]), float(total.bse[treatment]))}
    if mediator is not None:
        a_fit, y_fit = ols(mediator, [treatment, *adjustment]), ols(outcome, [treatment, mediator, *adjustment])
        a, sa = float(a_fit.params[treatment]), float(a_fit.bse[treatment])
        b, sb = float(y_fit.params[mediator]), float(y_fit.bse[mediator])
        out["direct"] = Estimate(float(y_fit.params[treatment]), float(y_fit.bse[treatment]))
        out["indirect"] = Estimate(a * b, float(np.sqrt(a * a * sb * sb + b * b * sa * sa)))
    return out
