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
  promotion seen in many impressions). Nuisance models: logistic regressions of T on Z, M on T+Z
  and Y on T+M+Z, with T x modifier interactions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


@dataclass(frozen=True)
class Estimate:
    value: float
    se: float

    @property
    def ci(self) -> tuple[float, float]:
        return (self.value - Z95 * self.se, self.value + Z95 * self.se)

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


def _logit(x: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1e6, max_iter=1000).fit(x, y)  # ~unpenalised maximum likelihood


class DoublyRobust:
    """AIPW / multiply robust estimates from one fit of the three nuisance models."""

    def __init__(self, treatment: str, outcome: str, adjustment: list[str], mediator: str | None = None,
                 modifiers: list[str] = (), cluster: str | None = None, clip: float = 0.01):
        self.t, self.y, self.z, self.m = treatment, outcome, list(adjustment), mediator
        self.modifiers, self.cluster, self.clip = list(modifiers), cluster, clip

    def fit(self, df: pd.DataFrame) -> DoublyRobust:
        t, y = df[self.t].to_numpy(float), df[self.y].to_numpy(float)
        n, z_cols = len(df), self.z + [c for c in self.modifiers if c not in self.z]
        covariates = _design(df, z_cols)
        self.propensity_ = np.clip(_logit(covariates, t).predict_proba(covariates)[:, 1], self.clip, 1 - self.clip)
        self.clusters_ = df[self.cluster].to_numpy() if self.cluster else None
        p_t = {1: self.propensity_, 0: 1 - self.propensity_}

        def predict(model, a, mm=None):  # P(1 | T = a [, M = mm], Z) for every row
            x = _design(df, z_cols, np.full(n, a), self.modifiers, None if mm is None else np.full(n, mm))
            return model.predict_proba(x)[:, 1]

        # total effect: AIPW with an outcome model of Y on T + Z (mediator marginalised)
        out = _logit(_design(df, z_cols, t, self.modifiers), y)
        self.psi_if_ = {}
        for a in (0, 1):
            mu = predict(out, a)
            self.psi_if_[(a, a, "total")] = (t == a) / p_t[a] * (y - mu) + mu
        if self.m is not None:
            m = df[self.m].to_numpy(float)
            med = _logit(_design(df, z_cols, t, self.modifiers), m)
            f1 = {a: predict(med, a) for a in (0, 1)}                      # P(M = 1 | a, Z)
            f_obs = {a: np.where(m == 1, f1[a], 1 - f1[a]) for a in (0, 1)}  # f(M_i | a, Z_i)
            yout = _logit(_design(df, z_cols, t, self.modifiers, m), y)
            for a in (0, 1):
                mu1, mu0 = predict(yout, a, 1), predict(yout, a, 0)  # E[Y | a, M = 1 / 0, Z]
                mu_obs = np.where(m == 1, mu1, mu0)
                for b in (0, 1):  # psi(a, b) = E[Y(a, M(b))]
                    eta = f1[b] * mu1 + (1 - f1[b]) * mu0
                    self.psi_if_[(a, b, "mediation")] = ((t == a) / p_t[a] * f_obs[b] / f_obs[a] * (y - mu_obs)
                                                         + (t == b) / p_t[b] * (mu_obs - eta) + eta)
        return self

    def _contrast(self, plus, minus, mask=None) -> Estimate:
        phi = self.psi_if_[plus] - self.psi_if_[minus]
        clusters = self.clusters_
        if mask is not None:
            phi, clusters = phi[mask], (None if clusters is None else clusters[mask])
        value = float(phi.mean())
        return Estimate(value, _se(phi - value, clusters))

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
