"""User-level differential privacy: the accountant, the mechanism's sensitivity, private fits and the gate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from causalrec.causal import privacy as dpm
from causalrec.causal.debias import DebiasedRecommender
from causalrec.causal.uplift import UpliftLearner
from causalrec.evaluation.metrics import auc


def test_calibrated_noise_spends_the_target_and_composition_spends_more():
    mech = [(0.05, 400)]
    sigma = dpm.calibrate(3.0, 1e-5, mech)
    spent = dpm.spent_epsilon([(sigma, 0.05, 400)], 1e-5)
    assert 2.9 < spent <= 3.0
    # the same noise over two such fits spends more; calibrating for both needs more noise
    assert dpm.spent_epsilon([(sigma, 0.05, 400)] * 2, 1e-5) > 3.0
    assert dpm.calibrate(3.0, 1e-5, mech * 2) > sigma
    with pytest.raises(ValueError, match="epsilon"):
        dpm.UserLevelDP(epsilon=0.0, delta=1e-5)


def _toy_loss(sh, pv, b):
    logits = sh["item"][b["items"]] @ pv["user"] + sh["bias"][0]
    row = torch.nn.functional.binary_cross_entropy_with_logits(logits, b["y"], reduction="none")
    return (row * b["mask"]).sum() / b["mask"].sum()


def _toy_batch(n_users, k, n_items, seed):
    g = torch.Generator().manual_seed(seed)
    return {"items": torch.randint(n_items, (n_users, k), generator=g), "y": torch.randint(2, (n_users, k), generator=g).float(),
            "mask": torch.ones(n_users, k)}


def test_one_user_moves_the_summed_gradient_by_at_most_the_clip_norm():
    """The sensitivity the accountant assumes: adding one user (with arbitrary data) changes the
    clipped sum by at most C. Without clipping it is unbounded (the user's own gradient)."""
    torch.manual_seed(0)
    n_items, d, C = 30, 4, 0.5
    shared = {"item": torch.randn(n_items, d), "bias": torch.zeros(1)}
    private = {"user": torch.randn(9, d) * 5}  # large user vectors: large per-user gradients
    batch = _toy_batch(9, 6, n_items, 0)
    dp = dpm.UserLevelDP(epsilon=1.0, delta=1e-5, max_grad_norm=C)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    without = dpm.private_step(_toy_loss, shared, {"user": private["user"][:8]}, {k: v[:8] for k, v in batch.items()},
                               ("item",), ("items",), dp, 0.0, 1.0, gen())
    with_user = dpm.private_step(_toy_loss, shared, private, batch, ("item",), ("items",), dp, 0.0, 1.0, gen())
    change = torch.sqrt(sum((with_user[k] - without[k]).pow(2).sum() for k in shared))
    assert change <= C + 1e-5
    assert change > 0.5 * C  # a large-gradient user uses the budget
    loose = dpm.UserLevelDP(epsilon=1.0, delta=1e-5, max_grad_norm=1e6)
    a = dpm.private_step(_toy_loss, shared, {"user": private["user"][:8]}, {k: v[:8] for k, v in batch.items()},
                         ("item",), ("items",), loose, 0.0, 1.0, gen())
    b = dpm.private_step(_toy_loss, shared, private, batch, ("item",), ("items",), loose, 0.0, 1.0, gen())
    assert torch.sqrt(sum((b[k] - a[k]).pow(2).sum() for k in shared)) > C


def test_noise_lands_on_every_item_row_touched_or_not():
    shared = {"item": torch.zeros(50, 3), "bias": torch.zeros(1)}
    batch = {"items": torch.zeros(2, 4, dtype=torch.long), "y": torch.ones(2, 4), "mask": torch.ones(2, 4)}  # only item 0
    dp = dpm.UserLevelDP(epsilon=1.0, delta=1e-5)
    g = dpm.private_step(_toy_loss, shared, {"user": torch.ones(2, 3)}, batch, ("item",), ("items",), dp, 1.0, 2.0,
                         torch.Generator().manual_seed(1))
    assert (g["item"][1:].abs() > 0).all()  # which rows a step touched is not published


def _log(n_users=400, n_items=40, rows=20, seed=0):
    """Two groups of users, each liking its own half of the items; treatment raises the outcome."""
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(n_users), rows)
    i = rng.integers(n_items, size=len(u))
    likes = (u % 2) == (i < n_items // 2)
    t = rng.random(len(u)) < 0.5
    y = (rng.random(len(u)) < np.where(likes, 0.7, 0.1) * np.where(t, 1.0, 0.5)).astype(np.float32)
    return u.astype(str), i.astype(str), y, t.astype(int), likes


def test_private_fit_learns_spends_at_most_its_budget_and_survives_a_save():
    from causalrec.persistence import load_model, save_model

    u, i, y, _, likes = _log()
    settings = dict(dim=4, epochs=8, lr=0.02, seed=0)
    # a budget so large the noise is negligible: what the mechanism learns through clipping, sampling and
    # the local user fits (the utility at real budgets: benchmarks/privacy.py)
    m = DebiasedRecommender("naive", privacy={"epsilon": 1e6, "delta": 1e-4, "users_per_step": 100}, **settings)
    m.fit(u, i, y)
    assert m.privacy_["epsilon"] <= 1e6 and m.privacy_["unit"] == "user"
    assert auc(likes, m.predict(u, i)) > 0.9  # it learns who likes what
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        save_model(m, Path(tmp) / "m.pt")
        again = load_model(Path(tmp) / "m.pt")
    assert again.privacy_ == m.privacy_
    np.testing.assert_allclose(again.predict(u[:50], i[:50]), m.predict(u[:50], i[:50]), rtol=1e-5)


def test_private_dr_and_exposure_head_compose_and_unsupported_losses_refuse():
    u, i, y, _, _ = _log(n_users=200)
    p = np.full(len(y), 0.3)
    dp = {"epsilon": 4.0, "delta": 1e-4, "users_per_step": 50}
    dr = DebiasedRecommender("dr", dim=4, epochs=3, privacy=dp).fit(u, i, y, p)
    assert len(dr.privacy_["mechanisms"]) == 2 and dr.privacy_["epsilon"] <= 4.0  # the imputer is a private fit too
    head = DebiasedRecommender("ips", dim=4, epochs=3, exposure_weight=1.0, privacy=dp).fit(u, i, y, p, exposure_log=(u, i, p))
    assert hasattr(head, "head_") and head.privacy_["epsilon"] <= 4.0
    with pytest.raises(ValueError, match="no private fit"):
        DebiasedRecommender("snips", dim=4, epochs=1, privacy=dp).fit(u, i, y, p)


def test_private_uplift_learner_composes_every_fit_within_its_budget():
    u, i, y, t, _ = _log(n_users=200)
    e = np.full(len(y), 0.5)
    dp = {"epsilon": 5.0, "delta": 1e-4, "users_per_step": 50}
    m = UpliftLearner("t_learner", n_bootstrap=2, dim=4, epochs=3, exposure_features=False, privacy=dp).fit(u, i, t, y, e)
    assert m.privacy_["parts"] == 4  # two arms x two bootstrap members
    assert 4.5 < m.privacy_["epsilon"] <= 5.0
    with pytest.raises(ValueError, match="no private fit"):
        UpliftLearner("auto", dim=4, epochs=1, exposure_features=False, privacy=dp).fit(u, i, t, y, e)
    with pytest.raises(ValueError, match="exposure features"):
        UpliftLearner("t_learner", dim=4, epochs=1, privacy=dp).fit(u, i, t, y, e)


def test_config_and_gate_hold_the_budget(tmp_path):
    from causalrec.config import ConfigError, load_params
    from causalrec.pipeline.promote import over_privacy_budget

    on = {"CAUSALREC__TRAIN__PRIVACY": "{enabled: true, epsilon: 3, delta: 1.0e-6, unit: user, epochs: 10, max_grad_norm: 1, "
                                       "users_per_step: 256, rows_per_user: 64, local_passes: 2, user_l2: 0.1}"}
    with pytest.raises(ConfigError, match="train.privacy"):
        load_params("params.yaml", environ=on)  # the default trains five models, popularity among them
    params = load_params("params.yaml", environ={**on, "CAUSALREC__TRAIN__MODELS": "[tt_naive]",
                                                 "CAUSALREC__TRAIN__EXPOSURE_WEIGHT": "1.0",
                                                 "CAUSALREC__UPLIFT__LEARNER": "t_learner",
                                                 "CAUSALREC__UPLIFT__EXPOSURE_FEATURES": "false"})
    assert over_privacy_budget(params, {"privacy": {"epsilon": 2.9}}) is None
    assert "spent epsilon" in over_privacy_budget(params, {"privacy": {"epsilon": 3.5}})
    assert "without it" in over_privacy_budget(params, {"privacy": None})
    assert over_privacy_budget(load_params("params.yaml"), {"privacy": None}) is None  # privacy off: no check


def test_membership_attack_sees_memorisation_and_dp_hides_it():
    """Labels that are pure noise can only be fitted by memorising them: the fold-in attack tells members
    from non-members on a non-private model trained to memorise, and no longer on an epsilon = 1 one."""
    from causalrec.evaluation.membership import attack_auc

    rng = np.random.default_rng(0)
    u = np.repeat(np.arange(300), 15)
    i, y = rng.integers(60, size=len(u)), (rng.random(len(u)) < 0.3).astype(np.float32)
    u, i = u.astype(str), i.astype(str)
    member = np.isin(u, np.arange(0, 300, 2).astype(str))
    rows = lambda mask: (u[mask], i[mask], y[mask])  # noqa: E731
    fit = dict(dim=16, epochs=60, lr=0.02, weight_decay=0.0)
    plain = DebiasedRecommender("naive", **fit).fit(*rows(member))
    private = DebiasedRecommender("naive", privacy={"epsilon": 1.0, "delta": 1e-4, "users_per_step": 50}, **fit).fit(*rows(member))
    assert attack_auc(plain, rows(member), rows(~member)) > 0.62
    assert abs(attack_auc(private, rows(member), rows(~member)) - 0.5) < 0.06
