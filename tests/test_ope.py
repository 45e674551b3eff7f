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
