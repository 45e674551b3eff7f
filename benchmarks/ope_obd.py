"""Off-policy evaluation on real logs: the Open Bandit Dataset sample shipped in the obp wheel.

    python benchmarks/ope_obd.py [--campaign all] [--n-bootstrap 1000]

Estimate the value (click rate) of the Bernoulli-TS policy from the Random policy's logs and compare
with BTS's on-policy mean click. The evaluation policy's action probabilities pi_e(a | position) are
BTS's empirical item distribution per position in its own logs (BTS is context-free and was
updated in batches, so its logged choices are draws from its average action distribution). The
reward model for DM/DR is the smoothed click rate per (item, position) fitted on the Random logs,
cross-fitted in two folds so that no round's reward predicts itself. obp's own estimators run on
the same arrays in the same script as a cross-check. The sample has about 40 clicks per policy:
the truth itself has a sampling error of about 15%.

Headline: DECLARED_ESTIMATOR, fixed here before the run (every estimator is reported beside it).
SNIPW needs no reward model, so it carries no modelling choice that could be tuned to the truth,
and self-normalisation keeps it stable with OBD's uniform-random logging propensities.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd

from _common import write_result
from causalrec.evaluation import ope

DECLARED_ESTIMATOR = "snipw"


def read_obd(policy: str, campaign: str) -> pd.DataFrame:
    import obp

    path = os.path.join(os.path.dirname(obp.__file__), "dataset", "obd", policy, campaign, f"{campaign}.csv")
    return pd.read_csv(path, index_col=0)  # obp's own loader fails with current pandas


def reward_model(train: pd.DataFrame, n_actions: int, n_pos: int, prior_strength: float = 20.0) -> np.ndarray:
    """(n_actions, n_pos) smoothed click rate, shrunk towards the position's mean."""
    q = np.zeros((n_actions, n_pos))
    for k in range(n_pos):
        rows = train[train["position"] == k + 1]
        prior = rows["click"].mean() if len(rows) else 0.0
        g = rows.groupby("item_id")["click"].agg(["sum", "count"]).reindex(range(n_actions), fill_value=0)
        q[:, k] = (g["sum"] + prior_strength * prior) / (g["count"] + prior_strength)
    return q


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--campaign", default="all")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--switch-lambda", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    random, bts = read_obd("random", args.campaign), read_obd("bts", args.campaign)
    n_actions = int(max(random["item_id"].max(), bts["item_id"].max())) + 1
    n_pos = int(random["position"].max())
    truth = float(bts["click"].mean())

    # pi_e(a | k): BTS's empirical item distribution at each position.
    counts = bts.groupby(["position", "item_id"]).size().unstack(fill_value=0).reindex(columns=range(n_actions), fill_value=0)
    pi_e = (counts.to_numpy() / counts.to_numpy().sum(1, keepdims=True)).T  # (n_actions, n_pos)
    n = len(random)
    action = random["item_id"].to_numpy()
    position = random["position"].to_numpy() - 1
    reward = random["click"].to_numpy().astype(float)
    pscore = random["propensity_score"].to_numpy()
    action_dist = np.broadcast_to(pi_e, (n, n_actions, n_pos)).copy()
    fold = np.random.default_rng(0).integers(2, size=n)
    q_hat = np.empty((n, n_actions, n_pos))
    for f in (0, 1):
        q_hat[fold == f] = reward_model(random[fold != f], n_actions, n_pos)

    ours = {"dm": ope.DirectMethod(), "ipw": ope.InverseProbabilityWeighting(),
            "snipw": ope.SelfNormalizedInverseProbabilityWeighting(), "dr": ope.DoublyRobust(),
            "sndr": ope.SelfNormalizedDoublyRobust(), "switch-dr": ope.SwitchDoublyRobust(lambda_=args.switch_lambda)}
    from obp import ope as obp_ope

    theirs = {"dm": obp_ope.DirectMethod(), "ipw": obp_ope.InverseProbabilityWeighting(),
              "snipw": obp_ope.SelfNormalizedInverseProbabilityWeighting(), "dr": obp_ope.DoublyRobust(),
              "sndr": obp_ope.SelfNormalizedDoublyRobust(), "switch-dr": obp_ope.SwitchDoublyRobust(tau=args.switch_lambda)}
    rows = {}
    for name, est in ours.items():
        kw = dict(reward=reward, action=action, position=position, pscore=pscore, action_dist=action_dist,
                  estimated_rewards=q_hat)
        value = est.estimate_policy_value(**kw)
        ci = est.estimate_interval(**kw, n_bootstrap_samples=args.n_bootstrap, random_state=0)
        lo, hi = ci["95.0% CI (lower)"], ci["95.0% CI (upper)"]
        obp_value = float(theirs[name].estimate_policy_value(
            reward=reward, action=action, position=position, pscore=pscore, action_dist=action_dist,
            estimated_rewards_by_reg_model=q_hat))
        rows[name] = {"estimate": value, "ci_95": [lo, hi], "relative_error": abs(value - truth) / truth,
                      "ci_covers_truth": bool(lo <= truth <= hi), "obp_estimate": obp_value,
                      "agrees_with_obp": bool(np.isclose(value, obp_value, rtol=1e-6, atol=1e-12))}
        print(f"{name:>10}: {value:.5f} [{lo:.5f}, {hi:.5f}] rel.err {rows[name]['relative_error']:.3f} "
              f"obp {obp_value:.5f}", flush=True)
    write_result("ope_obd", {
        "data": f"Open Bandit Dataset sample in obp {__import__('obp').__version__}, campaign '{args.campaign}'",
        "evaluation_policy": "bernoulli_ts", "behavior_policy": "random", "n_rounds": n,
        "on_policy_value": truth, "on_policy_clicks": int(bts["click"].sum()), "naive_random_value": float(reward.mean()),
        "estimators": rows,
        "declared": {"estimator": DECLARED_ESTIMATOR, "estimate": rows[DECLARED_ESTIMATOR]["estimate"],
                     "relative_error": rows[DECLARED_ESTIMATOR]["relative_error"],
                     "ci_covers_truth": rows[DECLARED_ESTIMATOR]["ci_covers_truth"]}}, args.out)


if __name__ == "__main__":
    main()
