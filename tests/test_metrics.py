import numpy as np
import pytest

from causalrec.evaluation import metrics as M


def test_top_k_orders_and_skips_nan():
    s = np.array([[0.1, 0.9, np.nan, 0.5]])
    assert M.top_k(s, 3).tolist() == [[1, 3, 0]]


def test_ndcg_perfect_and_reversed():
    gains = np.array([[3.0, 2.0, 1.0, 0.0]])
    assert M.ndcg_at_k(gains, gains, 2) == pytest.approx(1.0)
    worst = M.ndcg_at_k(-gains, gains, 2)
    ideal = 3 + 2 / np.log2(3)
    assert worst == pytest.approx((0 + 1 / np.log2(3)) / ideal)


def test_recall_and_causal_precision():
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.0, 0.1, 0.8, 0.9]])
    relevant = np.array([[1, 0, 1, 0], [0, 0, 0, 0]])
    assert M.recall_at_k(scores, relevant, 2) == pytest.approx(0.5)  # second user has none: skipped
    uplift = np.array([[0.5, -0.1, 0.2, 0.0], [0.0, 0.0, 0.3, 0.1]])
    assert M.causal_precision_at_k(scores, uplift, 2) == pytest.approx(((0.5 - 0.1) / 2 + (0.1 + 0.3) / 2) / 2)
    assert M.cdcg_at_k(scores, uplift, 1) == pytest.approx((0.5 + 0.1) / 2)


def test_auc_mse():
    assert M.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert np.isnan(M.auc([1, 1], [0.1, 0.2]))
    assert M.mse([0, 1], [0.5, 0.5]) == 0.25


def test_per_user_ndcg_recall():
    user = np.array(["a", "a", "a", "b", "b", "c"])
    score = np.array([0.9, 0.1, 0.5, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 0, 0, 1, 0])
    ndcg, recall = M.per_user_ndcg_recall(user, score, y, k=2)
    # user a: ranking [1,0,1] -> DCG@2 = 1, ideal = 1 + 1/log2(3); recall@2 = 1/2. user b: [0,1]. c skipped.
    a = 1 / (1 + 1 / np.log2(3))
    b = (1 / np.log2(3)) / 1
    assert ndcg == pytest.approx((a + b) / 2)
    assert recall == pytest.approx((0.5 + 1.0) / 2)


def test_qini_and_auuc():
    rng = np.random.default_rng(0)
    n = 20_000
    tau = rng.uniform(0, 0.4, n)
    t = rng.integers(2, size=n)
    y = (rng.random(n) < 0.2 + t * tau).astype(int)
    x, q = M.qini_curve(tau, t, y)
    assert x[0] == 0 and x[-1] == 1 and q[0] == 0
    # everyone targeted: the average effect times the treated share (Q counts outcomes per population)
    assert q[-1] == pytest.approx(t.mean() * tau.mean(), abs=0.01)
    assert M.auuc(tau, t, y) > 0.01 > abs(M.auuc(rng.random(n), t, y))
    assert M.auuc(-tau, t, y) < 0
