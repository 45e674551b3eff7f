"""Uplift learners on a synthetic log with known effects."""
import numpy as np
import pytest

from causalrec.causal.uplift import LEARNERS, UpliftLearner


def _log(n=30_000, seed=0):
    """Even items: recommending adds +0.4 to the purchase probability; odd items: +0.0 (bought
    anyway). The policy recommends odd items more often (confounded by popularity)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(40, size=n)
    i = rng.integers(20, size=n)
    tau = np.where(i % 2 == 0, 0.4, 0.0)
    base = np.where(i % 2 == 0, 0.1, 0.5)
    e = np.where(i % 2 == 0, 0.2, 0.6)
    t = (rng.random(n) < e).astype(int)
    y = (rng.random(n) < base + t * tau).astype(float)
    return np.array([f"u{x}" for x in u]), np.array([f"i{x}" for x in i]), t, y, e


@pytest.mark.parametrize("learner", LEARNERS)
def test_learners_rank_high_uplift_items_first(learner):
    users, items, t, y, e = _log()
    m = UpliftLearner(learner, dim=2, epochs=15, lr=0.02, batch_size=512, seed=0).fit(users, items, t, y, e)
    S = m.score_matrix(["u0", "u1"], [f"i{k}" for k in range(20)])
    even, odd = S[:, ::2].mean(), S[:, 1::2].mean()
    assert even > odd + 0.15, (learner, even, odd)


def test_dlce_recovers_the_effect_scale():
    users, items, t, y, e = _log(n=60_000)
    m = UpliftLearner("dlce", dim=2, epochs=20, lr=0.02, batch_size=512).fit(users, items, t, y, e)
    S = m.score_matrix([f"u{k}" for k in range(40)], [f"i{k}" for k in range(20)])
    assert S[:, ::2].mean() == pytest.approx(0.4, abs=0.1)
    assert S[:, 1::2].mean() == pytest.approx(0.0, abs=0.1)


def test_bootstrap_interval_and_input_errors():
    users, items, t, y, e = _log(n=8000)
    m = UpliftLearner("t_learner", dim=2, epochs=5, lr=0.02, batch_size=512, n_bootstrap=3).fit(users, items, t, y, e)
    iv = m.predict_interval(["u0", "u1"], ["i0", "i1"])
    assert (iv["lower"] <= iv["mean"]).all() and (iv["mean"] <= iv["upper"]).all()
    with pytest.raises(ValueError, match="both treated and untreated"):
        UpliftLearner("t_learner").fit(users, items, np.ones_like(t), y, e)
    with pytest.raises(ValueError, match="unknown uplift learner"):
        UpliftLearner("magic").fit(users, items, t, y, e)
