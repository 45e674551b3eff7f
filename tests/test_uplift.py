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


def test_a_saved_bootstrap_learner_holds_its_feature_tables_once(tmp_path):
    """Every member and part carries the same feature tables: the file stores them once, and the
    loaded learner scores as the fitted one."""
    import pandas as pd

    from causalrec.persistence import load_model, save_model

    users, items, t, y, e = _log(n=8000)
    rng = np.random.default_rng(0)
    feats = pd.DataFrame(rng.normal(size=(40, 1024)), index=[f"u{k}" for k in range(40)]).astype(np.float32)
    m = UpliftLearner("t_learner", dim=2, epochs=2, batch_size=512, n_bootstrap=3).fit(users, items, t, y, e,
                                                                                         user_features=feats)
    save_model(m, tmp_path / "uplift.pt")
    one_table = 40 * 1025 * 4  # the features and the exposure column, float32: held by 3 x 2 parts
    assert (tmp_path / "uplift.pt").stat().st_size < 2 * one_table  # with the six towers (3 x 1025 each)
    again = load_model(tmp_path / "uplift.pt")
    ids, cols = [f"u{k}" for k in range(5)], [f"i{k}" for k in range(20)]
    assert np.array_equal(again.score_matrix(ids, cols), m.score_matrix(ids, cols))


def test_a_learner_over_a_large_catalogue_without_item_features_saves_and_loads(tmp_path):
    """Without item features the item table is the exposure column alone, (n_items, 1) built by a
    transpose: serving_load.py's 100k-item bundle failed to save it (hashing a column whose stride
    was the row's) while every smaller test passed."""
    from causalrec.persistence import load_model, save_model

    rng = np.random.default_rng(1)
    n, n_items = 12_000, 4200  # a column of >= 4,096 entries is hashed (smaller ones are kept as they are)
    users = np.array([f"u{x}" for x in rng.integers(30, size=n)])
    items = np.array([f"i{x}" for x in np.concatenate([np.arange(n_items), rng.integers(n_items, size=n - n_items)])])
    t, y = rng.integers(2, size=n), rng.integers(2, size=n).astype(float)
    m = UpliftLearner("t_learner", dim=2, epochs=1, batch_size=2048).fit(users, items, t, y, np.full(n, 0.5))
    save_model(m, tmp_path / "uplift.pt")
    ids, cols = [f"u{k}" for k in range(3)], [f"i{k}" for k in range(0, n_items, 7)]
    assert np.array_equal(load_model(tmp_path / "uplift.pt").score_matrix(ids, cols), m.score_matrix(ids, cols))


def test_exposure_features_are_standardised_per_user_and_item():
    import pandas as pd

    from causalrec.causal.uplift import with_exposure_features

    users = np.array(["u0", "u0", "u1", "u1"])
    items = np.array(["a", "b", "a", "b"])
    e = np.array([0.5, 0.9, 0.5, 0.1])
    text = pd.DataFrame([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], index=["a", "b", "cold"])
    out = with_exposure_features(users, items, e, {"item_features": text})
    items_f = out["item_features"]
    # item a: mean logit 0; item b: mean of logit(.9) and logit(.1) = 0; so both 0 after centring
    assert list(items_f.columns) == ["f0", "f1", "exposure_logit"]
    assert items_f.loc["cold", "exposure_logit"] == 0.0 and items_f.loc["cold", "f1"] == 6.0
    user_stat = out["user_features"]["exposure_logit"]  # no user features given: the statistic alone
    assert user_stat["u0"] > 0 > user_stat["u1"] and user_stat.mean() == pytest.approx(0.0, abs=1e-6)


def _preference_log(n=6000, informative=True, seed=0):
    """Two user groups x two item groups; liking = same group. Outcomes are rare, so a user's few
    positives say little; the logging policy shows liked items more often (its propensities carry
    the preference) unless informative=False."""
    rng = np.random.default_rng(seed)
    u, i = rng.integers(200, size=n), rng.integers(100, size=n)
    match = (u % 2) == (i % 2)
    p1 = np.where(match, 0.25, 0.05)
    e = np.where(match, 0.8, 0.2) if informative else np.full(n, 0.5)
    t = (rng.random(n) < e).astype(int)
    y = (rng.random(n) < np.where(t == 1, p1, 0.3 * p1)).astype(float)
    return np.array([f"u{x}" for x in u]), np.array([f"i{x}" for x in i]), t, y, e


def _match_auc(model):
    from causalrec.evaluation.metrics import auc

    users, items = [f"u{k}" for k in range(200)], [f"i{k}" for k in range(100)]
    S = model.score_matrix(users, items)
    match = (np.arange(200)[:, None] % 2) == (np.arange(100)[None, :] % 2)
    return auc(match.ravel().astype(float), S.ravel())


def test_exposure_head_learns_preferences_from_the_policy():
    users, items, t, y, e = _preference_log()
    kw = dict(dim=4, epochs=30, lr=0.02, batch_size=256, seed=0)
    outcome_only = UpliftLearner("shared", exposure_weight=0, **kw).fit(users, items, t, y, e)
    with_head = UpliftLearner("shared", exposure_weight=1.0, **kw).fit(users, items, t, y, e)
    assert with_head.members_[0].extra["alpha"] > 0.5  # the head uses the shared interaction
    assert _match_auc(with_head) > 0.9 > _match_auc(outcome_only) + 0.05


def test_exposure_head_learns_to_ignore_an_uninformative_policy():
    users, items, t, y, e = _preference_log(n=20_000, informative=False)
    m = UpliftLearner("shared", exposure_weight=1.0, dim=4, epochs=30, lr=0.02, batch_size=256, seed=0).fit(
        users, items, t, y, e)
    assert abs(m.members_[0].extra["alpha"]) < 0.2
    assert _match_auc(m) > 0.7  # still learns from the outcomes


def test_auto_exposure_weight_picks_by_the_tau_risk():
    users, items, t, y, e = _preference_log()
    m = UpliftLearner("shared", dim=4, epochs=30, lr=0.02, batch_size=256, seed=0).fit(users, items, t, y, e)
    chosen, risks = m.members_[0].extra["exposure_weight"], m.members_[0].extra["validation_tau_risk"]
    assert set(risks) == {"0.0", "1.0", "3.0", "10.0"}
    assert risks[str(chosen)] == min(risks.values())
    with pytest.raises(ValueError, match="exposure_weight"):
        UpliftLearner("shared", exposure_weight=-1.0).fit(users, items, t, y, e)


def test_shared_learner_search_in_one_pass_equals_a_fit_per_weight():
    """The shared learner's `auto` trains its candidate weights side by side: each must be its own fit."""
    from dataclasses import replace

    import pandas as pd

    from causalrec.causal.uplift import SharedUplift

    users, items, t, y, e = _preference_log(n=6000)
    val = np.random.default_rng(1).random(len(y)) < 0.2
    feats = {"item_features": pd.DataFrame(np.eye(100, 3), index=[f"i{k}" for k in range(100)])}
    base = SharedUplift(dim=4, epochs=8, lr=0.02, batch_size=256, patience=2)
    weights = (0.0, 3.0)
    some = (users[:100], items[:100])
    for w, stacked in zip(weights, base.fit_path("exposure_weight", weights, users, items, t, y, e, val, feats)):
        alone = replace(base, exposure_weight=w).fit(users, items, t, y, e, val, feats)
        np.testing.assert_allclose([r["val_loss"] for r in stacked.history], [r["val_loss"] for r in alone.history], atol=1e-5)
        for a, b in zip(stacked.as_recommenders(), alone.as_recommenders()):
            np.testing.assert_allclose(a.predict(*some), b.predict(*some), atol=1e-5)
        assert float(stacked.modules_["exposure"].alpha.detach()) == pytest.approx(float(alone.modules_["exposure"].alpha.detach()), abs=1e-5)


def test_the_train_stage_fits_the_uplift_learner_beside_the_relevance_models_with_the_same_result(tmp_path, tiny_encoder,
                                                                                                  monkeypatch):
    """uplift.own_process on two cores: a spawned process, one core each, the same fitted model as in-process."""
    import time

    import torch

    from conftest import make_project

    from causalrec import pipeline
    from causalrec.config import load_params
    from causalrec.persistence import load_model
    from causalrec.pipeline import uplift
    from causalrec.pipeline.train import learner_settings

    root = make_project(tmp_path / "p", tiny_encoder, git=False, train={"models": ["popularity", "mf_naive"]})
    params = load_params(root / "params.yaml")
    for stage in ("ingest", "embed", "propensity"):
        pipeline.STAGES[stage](params)
    threads, fitted, started = torch.get_num_threads(), {}, []
    get_context = uplift.multiprocessing.get_context
    monkeypatch.setattr(uplift.multiprocessing, "get_context", lambda method: started.append(method) or get_context(method))
    try:
        torch.set_num_threads(2)  # the suite runs torch on one thread: this path needs two
        for own_process in (False, True):
            params.uplift.own_process = own_process
            summary = pipeline.STAGES["train"](params)
            assert torch.get_num_threads() == 2  # the stage gives the cores back
            fitted[own_process] = (summary["uplift"], load_model(params.paths.artifacts_dir / "models" / "uplift.pt"))
            assert started == (["spawn"] if own_process else [])
        # a failing stage does not wait for the fit beside it, and the fit never lands
        start = time.perf_counter()
        with pytest.raises(RuntimeError, match="relevance failed"):
            with uplift.uplift_beside(params, learner_settings(params), tmp_path / "never.pt"):
                raise RuntimeError("relevance failed")
        assert time.perf_counter() - start < 5 and started == ["spawn", "spawn"]
        time.sleep(1)
        assert not (tmp_path / "never.pt").exists()
    finally:
        torch.set_num_threads(threads)
    users, items = [f"u{u:06d}" for u in range(20)], [f"i{i:06d}" for i in range(30)]
    (alone, a), (beside, b) = fitted[False], fitted[True]
    assert alone == beside and alone["bootstrap_members"] == 2
    np.testing.assert_allclose(a.score_matrix(users, items), b.score_matrix(users, items), atol=1e-6)


def _effect_log(n=30_000, seed=0):
    """200 users x 100 items in two groups each; P(Y=1 | recommended) = 0.3 everywhere. Without a
    recommendation, users of group 0 find items of their own group themselves (P = 0.27) and not the
    others (0.03); for users of group 1 a recommendation of an item of their group backfires (0.45
    without it) and the other group's items are found half the time (0.15). True uplift: 0.03 / 0.27
    (group 0), -0.15 / 0.15 (group 1): it depends on the pair and is negative for a quarter of pairs."""
    rng = np.random.default_rng(seed)
    u, i = rng.integers(200, size=n), rng.integers(100, size=n)
    match = (u % 2) == (i % 2)
    p0 = np.where(u % 2 == 0, np.where(match, 0.27, 0.03), np.where(match, 0.45, 0.15))
    e = np.full(n, 0.5)
    t = (rng.random(n) < e).astype(int)
    y = (rng.random(n) < np.where(t == 1, 0.3, p0)).astype(float)
    tau = lambda uu, ii: 0.3 - np.where(uu % 2 == 0, np.where(uu % 2 == ii % 2, 0.27, 0.03),  # noqa: E731
                                         np.where(uu % 2 == ii % 2, 0.45, 0.15))
    return np.array([f"u{x}" for x in u]), np.array([f"i{x}" for x in i]), t, y, e, tau


def test_tau_risk_ranks_the_true_effect_first():
    """The criterion every uplift choice uses: lower for the true effect than for no effect or for the
    outcome rate (relevance), with any fixed baseline m."""
    from causalrec.causal.uplift import outcome_baseline, tau_risk

    users, items, t, y, e, tau = _effect_log(n=60_000)
    uu, ii = (np.array([int(x[1:]) for x in a]) for a in (users, items))
    fit = np.arange(len(y)) % 2 == 0
    m = outcome_baseline(users, y, fit)[~fit]
    truth = tau(uu, ii)[~fit]
    risks = {name: tau_risk(guess, t[~fit], y[~fit], e[~fit], m)
             for name, guess in (("truth", truth), ("zero", np.zeros_like(truth)), ("relevance", np.full_like(truth, 0.3)),
                                 ("negated", -truth))}
    assert risks["truth"] == min(risks.values()) and risks["negated"] > risks["truth"], risks  # the order counts, not the scale
    assert tau_risk(truth, t[~fit], y[~fit], e[~fit], np.zeros_like(m)) < tau_risk(np.zeros_like(truth), t[~fit], y[~fit],
                                                                                    e[~fit], np.zeros_like(m))


def test_the_r_stack_weighs_learners_by_what_the_held_out_rows_support():
    """stack_weights: all weight on the true effect beside noise and beside the negated effect; near
    half each for two partial views whose average is the truth (each alone misses half of it)."""
    from causalrec.causal.uplift import outcome_baseline, stack_weights

    users, items, t, y, e, tau = _effect_log(n=60_000)
    uu, ii = (np.array([int(x[1:]) for x in a]) for a in (users, items))
    fit = np.arange(len(y)) % 2 == 0
    m = outcome_baseline(users, y, fit)[~fit]
    truth = tau(uu, ii)[~fit]
    noise = np.random.default_rng(1).normal(size=truth.size)
    held = (t[~fit], y[~fit], e[~fit], m)
    w = stack_weights(np.column_stack([noise, truth, -truth]), *held)
    assert w[1] > 0.9 and abs(w.sum() - 1) < 1e-9, w
    by_user = np.where(uu[~fit] % 2 == 0, truth.mean(), truth)  # right across items, blind to the user's group
    by_item = 2 * truth - by_user                               # the rest: their average is the truth
    w = stack_weights(np.column_stack([by_user, by_item]), *held)
    assert 0.3 < w[0] < 0.7 and 0.3 < w[1] < 0.7, w
    assert not stack_weights(np.column_stack([-truth]), *held).any()  # only a reversed effect: no signal, no weight


def test_shared_learners_represent_pair_dependent_and_negative_effects_and_auto_chooses_by_tau_risk():
    """shared_shift's organic part has user x item factors, so users differ in what they find
    themselves, and it can say that a recommendation hurts; `auto` keeps the learner with the lowest
    validation tau-risk, and the choice survives a save."""
    from scipy.stats import spearmanr

    users, items, t, y, e, tau = _effect_log()
    kw = dict(dim=4, epochs=30, lr=0.02, batch_size=512, seed=0, exposure_weight=0.0, exposure_features=False)
    ids_u, ids_i = [f"u{k}" for k in range(200)], [f"i{k}" for k in range(100)]
    truth = tau(np.arange(200)[:, None], np.arange(100)[None, :])
    shift = UpliftLearner("shared_shift", **kw).fit(users, items, t, y, e)
    organic = shift.members_[0].parts[1].score_matrix(ids_u[:2], ids_i)  # the shift h for a user of each group
    assert spearmanr(organic[0], organic[1])[0] < 0  # opposite orders of what each finds alone
    S = shift.score_matrix(ids_u, ids_i)
    backfires = truth < 0
    assert (S[backfires] < 0).mean() > 0.7 and (S[~backfires] > 0).mean() > 0.7, ((S[backfires] < 0).mean(), (S[~backfires] > 0).mean())
    assert spearmanr(S.ravel(), truth.ravel())[0] > 0.8
    auto = UpliftLearner("auto", **{**kw, "epochs": 10}).fit(users, items, t, y, e)
    assert set(auto.search_) == set(LEARNERS) and auto.members_[0].name == auto.learner_
    if auto.learner_ == "stacked":  # a convex combination of the learners the held-out rows weigh
        member = auto.members_[0]
        assert set(auto.stack_) <= set(LEARNERS) and len(auto.stack_) > 1 and abs(sum(auto.stack_.values()) - 1) < 1e-9
        parts = [np.clip(m.score_matrix(ids_u[:3], ids_i), -1, 1) for m in member.members]
        assert np.allclose(auto.score_matrix(ids_u[:3], ids_i), sum(w * p for w, p in zip(auto.stack_.values(), parts)))
    else:
        assert auto.learner_ in (*auto.stack_, min(auto.search_, key=auto.search_.get))
    again = UpliftLearner.from_state(auto.to_state())
    assert again.learner_ == auto.learner_ and np.allclose(again.score_matrix(ids_u[:3], ids_i), auto.score_matrix(ids_u[:3], ids_i))
