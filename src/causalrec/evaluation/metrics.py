"""Ranking, classification and causal metrics as pure functions of numpy arrays.

Matrix metrics take `scores` and a truth matrix of the same (n_users, n_items) shape and
average over users (rows); NaN in `scores` marks an item not to rank for that user.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def auc(y_true: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve (optionally weighted, e.g. by inverse propensities); NaN with one class."""
    y_true = np.asarray(y_true)
    if len(y_true) == 0 or y_true.min() == y_true.max():
        return float("nan")
    return float(roc_auc_score(y_true, score, sample_weight=weight))


def mse(y_true: np.ndarray, prob: np.ndarray) -> float:
    return float(np.mean((np.asarray(y_true, float) - np.asarray(prob, float)) ** 2))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (NaN scores rank last)."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    k = min(k, s.shape[1])
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, k: int) -> float:
    """Mean NDCG@k with graded gains (rows with zero ideal DCG are skipped)."""
    top = top_k(scores, k)
    disc = _discounts(top.shape[1])
    dcg = (np.take_along_axis(gains, top, 1) * disc).sum(1)
    ideal = (np.sort(np.where(np.isnan(scores), 0, gains), 1)[:, ::-1][:, : top.shape[1]] * disc).sum(1)
    ok = ideal > 0
    return float(np.mean(dcg[ok] / ideal[ok])) if ok.any() else float("nan")


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Mean share of each user's relevant items found in the top k (users with none are skipped)."""
    top = top_k(scores, k)
    hits = np.take_along_axis(relevant.astype(bool), top, 1).sum(1)
    n_rel = relevant.astype(bool).sum(1)
    ok = n_rel > 0
    return float(np.mean(hits[ok] / np.minimum(n_rel[ok], top.shape[1]))) if ok.any() else float("nan")


def causal_precision_at_k(scores: np.ndarray, uplift: np.ndarray, k: int) -> float:
    """CP@k (Sato et al. 2020): mean true causal effect of the top-k recommended items."""
    top = top_k(scores, k)
    return float(np.take_along_axis(uplift, top, 1).mean())


def cdcg_at_k(scores: np.ndarray, uplift: np.ndarray, k: int) -> float:
    """Causal DCG@k: position-discounted sum of true causal effects of the top-k."""
    top = top_k(scores, k)
    return float((np.take_along_axis(uplift, top, 1) * _discounts(top.shape[1])).sum(1).mean())


def per_user_ndcg_recall(user: np.ndarray, score: np.ndarray, y: np.ndarray, k: int) -> tuple[float, float]:
    """NDCG@k and Recall@k over each user's own evaluation items (binary relevance), averaged over
    users with at least one positive — the protocol for randomized test sets such as Coat's."""
    order = np.lexsort((-score, user))
    user, score, y = user[order], score[order], y[order]
    bounds = np.flatnonzero(np.r_[True, user[1:] != user[:-1], True])
    ndcgs, recalls = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        yy = y[a:b]
        n_pos = int(yy.sum())
        if n_pos == 0:
            continue
        kk = min(k, b - a)
        disc = _discounts(kk)
        dcg = float((yy[:kk] * disc).sum())
        ideal = float(disc[: min(n_pos, kk)].sum())
        ndcgs.append(dcg / ideal)
        recalls.append(float(yy[:kk].sum()) / n_pos)
    return float(np.mean(ndcgs)), float(np.mean(recalls))


def qini_curve(score: np.ndarray, treatment: np.ndarray, outcome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Qini curve of a randomized (or propensity-balanced) sample: targeting the top fraction x by
    score, Q(x) = Y_treated(x) - Y_control(x) * N_treated(x) / N_control(x), in outcomes per population.
    Returns (fraction targeted, Q / n) with a leading (0, 0)."""
    order = np.argsort(-np.asarray(score), kind="stable")
    t = np.asarray(treatment)[order].astype(float)
    y = np.asarray(outcome)[order].astype(float)
    nt, nc = np.cumsum(t), np.cumsum(1 - t)
    yt, yc = np.cumsum(y * t), np.cumsum(y * (1 - t))
    q = yt - np.divide(yc * nt, nc, out=np.zeros_like(yc), where=nc > 0)
    n = len(t)
    return np.r_[0.0, np.arange(1, n + 1) / n], np.r_[0.0, q / n]


def auuc(score: np.ndarray, treatment: np.ndarray, outcome: np.ndarray) -> float:
    """Area under the Qini curve minus the random-targeting diagonal (0 for a random score)."""
    x, q = qini_curve(score, treatment, outcome)
    return float(np.trapezoid(q, x) - q[-1] / 2)


def exposure_coverage(shown: np.ndarray, n_items: int) -> float:
    """Share of the catalogue shown at least once (shown: catalogue indices of every served item)."""
    return float(len(np.unique(shown)) / n_items) if n_items else float("nan")


def exposure_gini(shown: np.ndarray, n_items: int) -> float:
    """Gini coefficient of how often each catalogue item was shown (0: every item equally often,
    -> 1: all exposure on one item); items never shown count as 0."""
    counts = np.sort(np.bincount(np.asarray(shown, dtype=int), minlength=n_items)).astype(float)
    if counts.sum() == 0:
        return float("nan")
    n = len(counts)
    return float((2 * np.arange(1, n + 1) - n - 1) @ counts / (n * counts.sum()))
