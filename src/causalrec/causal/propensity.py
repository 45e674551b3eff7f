"""Exposure propensities p(O=1 | u, i): logged by the policy, or estimated, then clipped.

Estimators are small sklearn-style objects: `fit(interactions)` then `predict(users, items)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression


@dataclass
class PopularityPropensity:
    """p(exposed | item) = the item's share of exposures among its logged visits (smoothed)."""

    smoothing: float = 1.0
    rates_: dict = field(default_factory=dict, init=False, repr=False)

    def fit(self, interactions: pd.DataFrame) -> "PopularityPropensity":
        g = interactions.groupby("item_id")["exposed"].agg(["sum", "count"])
        prior = interactions["exposed"].mean()
        self.rates_ = ((g["sum"] + self.smoothing * prior) / (g["count"] + self.smoothing)).to_dict()
        self.prior_ = float(prior)
        return self

    def predict(self, users, items) -> np.ndarray:
        return np.array([self.rates_.get(i, self.prior_) for i in items], dtype=np.float64)


@dataclass
class LogisticPropensity:
    """Logistic exposure model on user and item activity (log counts) and, when given, item text
    embeddings (reduced to `text_components` principal components) and their product with the
    user's profile embedding (user-item text affinity)."""

    C: float = 1.0
    text_components: int = 8
    model_: object = field(default=None, init=False, repr=False)

    def _features(self, users, items) -> np.ndarray:
        u = np.log1p(pd.Series(users).map(self.user_counts_).fillna(0).to_numpy())
        i = np.log1p(pd.Series(items).map(self.item_counts_).fillna(0).to_numpy())
        cols = [u, i, u * i]
        if self.item_text_ is not None:
            t = self.item_text_.reindex(pd.Index(np.asarray(items).astype(str))).fillna(0.0).to_numpy()
            cols.append(t)
            if self.user_text_ is not None:
                ut = self.user_text_.reindex(pd.Index(np.asarray(users).astype(str))).fillna(0.0).to_numpy()
                cols.append((t * ut).sum(1, keepdims=True))
        return np.column_stack(cols)

    def fit(self, interactions: pd.DataFrame, item_features: pd.DataFrame | None = None,
            user_features: pd.DataFrame | None = None) -> "LogisticPropensity":
        from sklearn.decomposition import PCA

        exposed = interactions[interactions["exposed"] == 1]
        self.user_counts_ = exposed["user_id"].value_counts().to_dict()
        self.item_counts_ = exposed["item_id"].value_counts().to_dict()
        self.item_text_ = self.user_text_ = None
        if item_features is not None:
            k = min(self.text_components, item_features.shape[1], len(item_features))
            pca = PCA(k, random_state=0).fit(item_features.to_numpy())
            self.item_text_ = pd.DataFrame(pca.transform(item_features.to_numpy()), index=item_features.index.astype(str))
            if user_features is not None and user_features.shape[1] == item_features.shape[1]:
                self.user_text_ = pd.DataFrame(pca.transform(user_features.to_numpy()), index=user_features.index.astype(str))
        x = self._features(interactions["user_id"], interactions["item_id"])
        self.model_ = LogisticRegression(C=self.C, max_iter=500).fit(x, interactions["exposed"].to_numpy())
        return self

    def predict(self, users, items) -> np.ndarray:
        return self.model_.predict_proba(self._features(users, items))[:, 1]


@dataclass
class NaiveBayesPropensity:
    """Schnabel et al. 2016: P(O=1 | Y=y) = P(Y=y | O=1) P(O=1) / P(Y=y).

    P(Y=y | O=1) and P(O=1) come from the MNAR log; P(Y=y), the rating distribution over all
    pairs, needs a small uniformly-random sample (e.g. 5% of Coat's randomized ratings). Without
    one, pass `marginal` (a prior over ratings) explicitly: there is no way around it.
    """

    smoothing: float = 1.0
    table_: dict = field(default_factory=dict, init=False, repr=False)

    def fit(self, observed_ratings, n_pairs: int, uniform_ratings=None, marginal: dict | None = None) -> "NaiveBayesPropensity":
        observed = pd.Series(np.asarray(observed_ratings))
        values = sorted(set(observed.unique()) | set(np.unique(uniform_ratings) if uniform_ratings is not None else []))
        if uniform_ratings is not None:
            u = pd.Series(np.asarray(uniform_ratings)).value_counts().reindex(values, fill_value=0) + self.smoothing
            p_y = u / u.sum()
        elif marginal is not None:
            p_y = pd.Series(marginal).reindex(values).fillna(0)
            p_y = p_y / p_y.sum()
        else:
            raise ValueError("naive Bayes propensities need a uniform sample (uniform_ratings) or a rating marginal")
        o = observed.value_counts().reindex(values, fill_value=0) + self.smoothing
        p_y_given_o = o / o.sum()
        p_o = len(observed) / n_pairs
        self.table_ = (p_y_given_o * p_o / p_y).clip(upper=1.0).to_dict()
        return self

    def predict(self, ratings) -> np.ndarray:
        return np.array([self.table_[r] for r in np.asarray(ratings)], dtype=np.float64)


def clip_propensity(p: np.ndarray, clip_min: float) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64), clip_min, 1.0)


def calibration_table(propensity: np.ndarray, exposed: np.ndarray, bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Reliability of propensities: per quantile bin, mean predicted vs observed exposure rate, and the
    expected calibration error (row-weighted mean |gap|). For logged propensities this checks that
    the log is consistent with the policy that wrote it."""
    p = np.asarray(propensity, dtype=np.float64)
    e = np.asarray(exposed, dtype=np.float64)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    table = (pd.DataFrame({"bin": which, "predicted": p, "observed": e}).groupby("bin")
             .agg(predicted=("predicted", "mean"), observed=("observed", "mean"), rows=("observed", "size")).reset_index())
    ece = float((table["rows"] * (table["predicted"] - table["observed"]).abs()).sum() / table["rows"].sum())
    return table, ece


def calibrate_isotonic(propensity: np.ndarray, exposed: np.ndarray) -> np.ndarray:
    """Monotone recalibration of estimated propensities to the observed exposure frequencies."""
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(propensity, exposed).predict(propensity)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's ESS of importance weights: how many unweighted samples they are worth."""
    w = np.asarray(weights, dtype=np.float64)
    return float(w.sum() ** 2 / (w ** 2).sum())


def estimate_propensities(interactions: pd.DataFrame, method: str, clip_min: float,
                          text_features: dict | None = None, calibrate: bool = False) -> np.ndarray:
    """Propensity of exposure for every row of `interactions`, clipped to [clip_min, 1]."""
    if method == "logged":
        if "propensity" not in interactions or interactions["propensity"].isna().any():
            raise ValueError("propensity.method is 'logged' but the interactions have no (complete) 'propensity' column; "
                             "use 'popularity' or 'logistic'")
        p = interactions["propensity"].to_numpy()
    elif method == "popularity":
        p = PopularityPropensity().fit(interactions).predict(interactions["user_id"], interactions["item_id"])
    elif method == "logistic":
        p = LogisticPropensity().fit(interactions, **(text_features or {})).predict(interactions["user_id"], interactions["item_id"])
    else:
        raise ValueError(f"unknown propensity method {method!r}")
    if calibrate and method != "logged":  # logged propensities are the policy's own: never rewritten
        p = calibrate_isotonic(p, interactions["exposed"].to_numpy())
    return clip_propensity(p, clip_min)
