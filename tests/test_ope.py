"""Off-policy estimators on logs with known answers, and agreement with obp."""
import numpy as np
import pytest

from causalrec.evaluation import ope


def _log(n=200_000, n_actions=5, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.1, 0.9, n_actions)                      # true expected reward per action
    pi_b = rng.dirichlet(np.ones(n_actions))                  # logging policy
    pi_e = rng.dirichlet(np.ones(n_actions))                  # evaluation policy
    action = rng.choice(n_actions, size=n, p=pi_b)
    reward = (rng.random(n) < q[action]).astype(float)
    action_dist = np.broadcast_to(pi_e[None, :, None], (n, n_actions, 1))
    return reward, action, pi_b[action], action_dist, q, float(pi_e @ q)


def test_ips_snips_unbiased_with_known_propensities():
    reward, action, pscore, dist, q, truth = _log()
    for est in (ope.InverseProbabilityWeighting(), ope.SelfNormalizedInverseProbabilityWeighting()):
        v = est.estimate_policy_value(reward, action, pscore=pscore, action_dist=dist)
        assert v == pytest.approx(truth, abs=0.01)


@pytest.mark.parametrize("wrong", ["reward_model", "propensities"])
def test_dr_correct_when_either_model_is_right(wrong):
    reward, action, pscore, dist, q, truth = _log()
    q_model = np.broadcast_to(q[None, :, None], dist.shape).copy()
    if wrong == "reward_model":
        q_model = np.clip(q_model + 0.3, 0, 1)               # badly biased regression
    else:
        pscore = np.clip(pscore * np.random.default_rng(1).uniform(0.3, 3, len(pscore)), 1e-3, 1)  # wrong propensities
    for est in (ope.DoublyRobust(), ope.SelfNormalizedDoublyRobust()):
        v = est.estimate_policy_value(reward, action, pscore=pscore, action_dist=dist, estimated_rewards=q_model)
        assert v == pytest.approx(truth, abs=0.015), (est.estimator_name, wrong)
    dm = ope.DirectMethod().estimate_policy_value(reward, action, action_dist=dist, estimated_rewards=q_model)
    if wrong == "reward_model":
        assert abs(dm - truth) > 0.2  # DM alone is not robust


def test_interval_covers_truth_and_input_errors():
    reward, action, pscore, dist, _, truth = _log(n=20_000)
    ci = ope.InverseProbabilityWeighting().estimate_interval(reward, action, pscore=pscore, action_dist=dist,
                                                             n_bootstrap_samples=200, random_state=0)
    assert ci["95.0% CI (lower)"] <= truth <= ci["95.0% CI (upper)"]
    with pytest.raises(ValueError, match="pscore must be > 0"):
        ope.InverseProbabilityWeighting().estimate_policy_value(reward, action, pscore=np.zeros_like(pscore), action_dist=dist)
    with pytest.raises(ValueError, match="estimated_rewards is required"):
        ope.DoublyRobust().estimate_policy_value(reward, action, pscore=pscore, action_dist=dist)


def test_agrees_with_obp():
    from obp import ope as obp_ope

    reward, action, pscore, dist, q, _ = _log(n=5000)
    q_model = np.broadcast_to(q[None, :, None], dist.shape) * 0.9
    pos = np.zeros(len(action), int)
    pairs = [(ope.InverseProbabilityWeighting(), obp_ope.InverseProbabilityWeighting()),
             (ope.SelfNormalizedInverseProbabilityWeighting(), obp_ope.SelfNormalizedInverseProbabilityWeighting()),
             (ope.DirectMethod(), obp_ope.DirectMethod()), (ope.DoublyRobust(), obp_ope.DoublyRobust()),
             (ope.SelfNormalizedDoublyRobust(), obp_ope.SelfNormalizedDoublyRobust()),
             (ope.SwitchDoublyRobust(lambda_=2.0), obp_ope.SwitchDoublyRobust(tau=2.0))]
    for ours, theirs in pairs:
        a = ours.estimate_policy_value(reward, action, pos, pscore, dist, q_model)
        b = theirs.estimate_policy_value(reward=reward, action=action, position=pos, pscore=pscore, action_dist=dist,
                                         estimated_rewards_by_reg_model=q_model)
        assert a == pytest.approx(b, rel=1e-9), ours.estimator_name


def test_the_incremental_value_from_shown_items_and_controls_covers_the_truth():
    """Uniform slates of 3 of 20 items, 4 of the unshown drawn as controls: shown rows minus controls
    (IPW, or SNIPS on each arm) estimate E[Y(1) - Y(0)] per shown item of any policy; the
    policy that ranks by the true uplift beats the one that ranks by relevance on it (and not on the
    outcome rate, where relevance wins)."""
    from causalrec.evaluation.ope import ESTIMATORS, paired_interval

    rng = np.random.default_rng(0)
    n, k, m, slates = 20, 3, 4, 6000
    p1 = rng.uniform(0.2, 0.9, n)
    p0 = p1 * rng.uniform(0.0, 1.0, n)  # the popular-anyway items: high p1, little uplift
    by_uplift, by_relevance = (np.isin(np.arange(n), np.argsort(-v)[:k]).astype(float) for v in (p1 - p0, p1))
    rows = []
    for s in range(slates):
        shown = rng.choice(n, k, replace=False)
        controls = rng.choice(np.setdiff1d(np.arange(n), shown), m, replace=False)
        rows += [(s, i, True, rng.random() < p1[i]) for i in shown] + [(s, i, False, rng.random() < p0[i]) for i in controls]
    slate, item, shown, y = (np.array(c) for c in zip(*rows))
    y = y.astype(float)
    logged = np.where(shown, k / n, (1 - k / n) * m / (n - k))
    truth = [(pi * (p1 - p0)).sum() / k for pi in (by_uplift, by_relevance)]
    widths = {}
    for name in ("ipw", "snipw"):
        res = paired_interval(ESTIMATORS[name], y, logged, by_uplift[item], by_relevance[item], groups=slate,
                              n_bootstrap=400, random_state=0, shown=shown, alpha=0.01)
        for side, true in zip(("a", "b"), truth):
            lo, hi = res[side]["ci"]
            assert lo <= true <= hi, (name, side, lo, true, hi)
        assert res["difference"]["ci"][0] > 0, name  # the uplift ranking adds more
        widths[name] = np.diff(res["difference"]["ci"])[0]
    assert widths["snipw"] < widths["ipw"]  # each arm self-normalised: the narrower interval
    outcome = paired_interval(ESTIMATORS["ipw"], y[shown], logged[shown], by_uplift[item[shown]],
                              by_relevance[item[shown]], groups=slate[shown], n_bootstrap=400, random_state=0)
    assert outcome["difference"]["value"] < 0  # while relevance wins on the outcome rate
