import copy

import numpy as np
import pandas as pd
import pytest
import torch

from causalrec.causal.propensity import effective_sample_size, estimate_propensities
from causalrec.causal.debias import METHODS, DebiasedRecommender
from causalrec.causal.losses import DR_METHODS
from causalrec.models import Popularity
from causalrec.persistence import load_model, save_model


def _toy(seed=0, n_users=60, n_items=40, n=6000, population=False):
    """Two user groups liking two item groups; exposure favours liked items (MNAR). With `population`,
    also every drawn (user, item), shown or not: the DR family's D (pairs repeat here, so D is the
    draws, not the distinct pairs)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(n_users, size=n)
    i = rng.integers(n_items, size=n)
    like = ((u % 2) == (i % 2)).astype(float)
    p_expose = np.where(like == 1, 0.6, 0.2)
    exposed = rng.random(n) < p_expose
    y = (rng.random(n) < np.where(like == 1, 0.8, 0.1)).astype(float)
    users = np.array([f"u{x}" for x in u])
    items = np.array([f"i{x}" for x in i])
    if population:
        return users[exposed], items[exposed], y[exposed], p_expose[exposed], (users, items)
    return users[exposed], items[exposed], y[exposed], p_expose[exposed], like


@pytest.mark.parametrize("weighting", METHODS)
def test_mf_learns_preferences_and_roundtrips(tmp_path, weighting):
    users, items, y, p, _ = _toy()
    cut = int(0.9 * len(y))
    model = DebiasedRecommender(weighting, dim=4, epochs=40, lr=0.05, batch_size=256, seed=1).fit(
        users[:cut], items[:cut], y[:cut], p[:cut], val=(users[cut:], items[cut:], y[cut:], p[cut:]))
    S = model.score_matrix(["u0", "u1"], ["i0", "i1"])
    assert S[0, 0] > S[0, 1] and S[1, 1] > S[1, 0]
    assert model.history and "val_loss" in model.history[0]
    save_model(model, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt")
    assert np.allclose(again.score_matrix(["u0"], ["i0", "i1"]), model.score_matrix(["u0"], ["i0", "i1"]))
    # unknown ids fall back to biases, never crash
    assert np.isfinite(model.predict(np.array(["nobody"]), np.array(["nothing"]))).all()


def test_ips_weighting_reduces_selection_bias_in_the_mean():
    """The bias-only model (dim small, strong decay) estimates the population positive rate:
    naive overstates it (exposure favours liked items), IPS is close to the truth."""
    users, items, y, p, population = _toy(n=40_000, population=True)
    truth = 0.5 * 0.8 + 0.5 * 0.1
    est = {}
    for w in ("naive", "ips", "snips", "dr", "dr_jl", "sdr"):
        m = DebiasedRecommender(w, dim=1, epochs=30, lr=0.05, weight_decay=0.1, seed=0).fit(
            users, items, y, p, population=population if w in DR_METHODS else None)
        est[w] = float(m.predict(np.array([f"u{k}" for k in range(60)] * 40), np.repeat([f"i{k}" for k in range(40)], 60)).mean())
    assert est["naive"] > truth + 0.05
    for w in ("ips", "snips", "dr", "dr_jl", "sdr"):
        assert abs(est[w] - truth) < abs(est["naive"] - truth) - 0.02, (w, est)


def test_two_tower_scores_cold_items_from_features():
    """Item features carry the preference: a never-seen item is ranked by its features alone."""
    users, items, y, p, _ = _toy(n=8000)
    feats = pd.DataFrame({"even": [1.0 - k % 2 for k in range(41)], "odd": [float(k % 2) for k in range(41)]},
                         index=[f"i{k}" for k in range(41)])  # i40 is even and never logged
    m = DebiasedRecommender("naive", dim=4, epochs=40, lr=0.05, seed=0).fit(users, items, y, item_features=feats)
    s = m.score_matrix(["u0", "u1"], ["i40", "i39"])  # u0 (even) likes even items; i39 is odd
    assert s[0, 0] > s[0, 1] and s[1, 1] > s[1, 0]


def test_popularity_and_errors():
    m = Popularity().fit(np.array(["a", "b", "c"]), np.array(["x", "x", "y"]), np.array([1, 1, 0]))
    assert m.predict(None, ["x", "y", "zzz"]).argmax() == 0
    # an item never logged counts as one with no positives: level with y, never above it
    s = m.predict(None, ["y", "zzz"])
    assert s[1] == pytest.approx(s[0]) and s[1] == pytest.approx(1 / (2 + 2))
    again = Popularity.from_state(m.to_state())
    assert np.allclose(again.predict(None, ["x", "y", "zzz"]), m.predict(None, ["x", "y", "zzz"]))
    with pytest.raises(ValueError, match="propensities"):
        DebiasedRecommender("ips").fit(np.array(["a"]), np.array(["x"]), np.array([1.0]))
    with pytest.raises(ValueError, match="unknown method"):
        DebiasedRecommender("magic").fit(np.array(["a"]), np.array(["x"]), np.array([1.0]))


def test_propensity_estimators():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": rng.integers(20, size=3000).astype(str), "item_id": rng.integers(10, size=3000).astype(str)})
    df["exposed"] = (rng.random(3000) < np.where(df["item_id"].astype(int) < 5, 0.8, 0.2)).astype(int)
    pop = estimate_propensities(df, "popularity", 0.01)
    assert pop[df["item_id"].astype(int).to_numpy() < 5].mean() == pytest.approx(0.8, abs=0.05)
    assert estimate_propensities(df, "logistic", 0.05).min() >= 0.05
    with pytest.raises(ValueError, match="no \\(complete\\) 'propensity'"):
        estimate_propensities(df, "logged", 0.01)
    assert effective_sample_size(np.ones(10)) == pytest.approx(10)
    assert effective_sample_size(np.r_[np.ones(9), 100.0]) < 2


def test_dr_population_may_hold_never_exposed_ids():
    users, items, y, p, _ = _toy(n=3000)
    pop = (np.r_[users, ["u_never"]], np.r_[items, ["i_never"]])
    m = DebiasedRecommender("dr_jl", dim=2, epochs=2, batch_size=256).fit(users, items, y, p, population=pop)
    assert np.isfinite(m.score_matrix(["u_never"], ["i_never"])).all()


def test_naive_bayes_propensity_recovers_rating_dependent_selection():
    """MNAR: high ratings are observed 4x as often; a uniform sample reveals the true marginal."""
    from causalrec.causal.propensity import NaiveBayesPropensity

    rng = np.random.default_rng(0)
    ratings = rng.choice([1, 2, 3, 4, 5], size=200_000, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    p_obs = np.where(ratings >= 4, 0.08, 0.02)
    observed = ratings[rng.random(len(ratings)) < p_obs]
    uniform = rng.choice(ratings, size=5000)
    nb = NaiveBayesPropensity().fit(observed, n_pairs=len(ratings), uniform_ratings=uniform)
    est = nb.predict([1, 5])
    assert est[0] == pytest.approx(0.02, rel=0.15) and est[1] == pytest.approx(0.08, rel=0.15)
    with pytest.raises(ValueError, match="uniform sample"):
        NaiveBayesPropensity().fit(observed, n_pairs=len(ratings))


def test_logistic_propensity_uses_text_features():
    """Exposure driven by a text direction: the text-aware model fits it, the count model cannot."""
    from sklearn.metrics import roc_auc_score

    from causalrec.causal.propensity import LogisticPropensity

    rng = np.random.default_rng(0)
    emb = pd.DataFrame(rng.normal(size=(50, 16)), index=[f"i{k}" for k in range(50)])
    df = pd.DataFrame({"user_id": rng.integers(30, size=20_000).astype(str), "item_id": [f"i{k}" for k in rng.integers(50, size=20_000)]})
    logit = emb.loc[df["item_id"], 0].to_numpy() * 2 - 1
    df["exposed"] = (rng.random(len(df)) < 1 / (1 + np.exp(-logit))).astype(int)
    with_text = LogisticPropensity().fit(df, item_features=emb).predict(df["user_id"], df["item_id"])
    counts_only = LogisticPropensity().fit(df).predict(df["user_id"], df["item_id"])
    assert roc_auc_score(df["exposed"], with_text) >= roc_auc_score(df["exposed"], counts_only) - 0.01
    assert roc_auc_score(df["exposed"], with_text) > 0.7


def test_propensity_calibration_diagnostics_and_recalibration():
    from causalrec.causal.propensity import calibrate_isotonic, calibration_table

    rng = np.random.default_rng(0)
    true_p = rng.uniform(0.05, 0.9, 50_000)
    exposed = (rng.random(len(true_p)) < true_p).astype(int)
    _, ece_true = calibration_table(true_p, exposed)
    distorted = true_p ** 2  # systematically too low
    _, ece_bad = calibration_table(distorted, exposed)
    assert ece_true < 0.02 < ece_bad
    _, ece_fixed = calibration_table(calibrate_isotonic(distorted, exposed), exposed)
    assert ece_fixed < 0.02


def test_exposure_head_lifts_relevance_when_the_policy_knew_preferences():
    """The relevance model with an exposure head learns group preferences from the logging
    policy's propensities that sparse outcomes alone do not reveal; "auto" picks it on validation."""
    from dataclasses import replace

    from causalrec.causal.debias import DebiasedRecommender, auto_exposure_weight
    from causalrec.evaluation.metrics import auc

    rng = np.random.default_rng(0)
    n = 8000
    u, i = rng.integers(200, size=n), rng.integers(100, size=n)
    match = (u % 2) == (i % 2)
    e = np.where(match, 0.8, 0.2)
    shown = rng.random(n) < e
    y = (rng.random(n) < np.where(match, 0.25, 0.05)).astype(float)
    users, items = np.array([f"u{x}" for x in u]), np.array([f"i{x}" for x in i])
    val = rng.random(n) < 0.15
    fit_rows, val_rows = shown & ~val, shown & val
    log = (users, items, e)

    def fitted(weight):
        model = DebiasedRecommender("naive", dim=4, epochs=30, lr=0.02, batch_size=256, exposure_weight=weight)
        if weight == "auto":
            model = auto_exposure_weight(replace(model, exposure_weight=0.0))
        fit = model.fit(users[fit_rows], items[fit_rows], y[fit_rows], e[fit_rows], exposure_log=log,
                        val=(users[val_rows], items[val_rows], y[val_rows], e[val_rows]))
        return getattr(fit, "best_estimator_", fit)

    truth = ((np.arange(200)[:, None] % 2) == (np.arange(100)[None, :] % 2)).ravel().astype(float)
    users_all, items_all = [f"u{k}" for k in range(200)], [f"i{k}" for k in range(100)]
    plain, auto = fitted(0.0), fitted("auto")
    assert auto.exposure_weight_ > 0
    losses = auto.search_["validation_loss"]
    assert set(losses) == {"0.0", "1.0", "3.0", "10.0"}
    assert losses[str(auto.exposure_weight_)] == min(losses.values())
    assert auc(truth, auto.score_matrix(users_all, items_all).ravel()) > 0.9
    assert auc(truth, auto.score_matrix(users_all, items_all).ravel()) > auc(truth, plain.score_matrix(users_all, items_all).ravel()) + 0.05
    with pytest.raises(ValueError, match="exposure_log"):
        DebiasedRecommender("naive", exposure_weight=1.0).fit(users, items, y)
    with pytest.raises(ValueError, match="exposure_weight must be"):
        DebiasedRecommender("naive", exposure_weight=-2).fit(users, items, y)


def _search_log():
    """A small log where exposure follows preferences (fit args, fit kwargs with validation rows,
    item features and the exposure log, all users, all items) for the one-pass search tests."""
    rng = np.random.default_rng(0)
    u, i = rng.integers(100, size=8000), rng.integers(60, size=8000)
    e = np.where((u % 2) == (i % 2), 0.8, 0.2)
    shown = rng.random(8000) < e
    y = (rng.random(8000) < np.where((u % 3) == (i % 3), 0.6, 0.1)).astype(float)
    users, items = np.array([f"u{x}" for x in u]), np.array([f"i{x}" for x in i])
    fit, val = shown & (rng.random(8000) < 0.8), shown & (rng.random(8000) >= 0.8)
    item_features = pd.DataFrame(rng.normal(size=(60, 3)), index=[f"i{k}" for k in range(60)])
    args = (users[fit], items[fit], y[fit], e[fit])
    kwargs = {"val": (users[val], items[val], y[val], None), "item_features": item_features, "exposure_log": (users, items, e)}
    return args, kwargs, users, items


def _path_equals_fits_alone(base, param: str, values: tuple):
    """base.fit_path(param, values) on _search_log: each candidate must be what a fit of its own gives
    (same start, batches, samples; own early stopping), and the candidates must differ. Returns
    (path, fit args, fit kwargs)."""
    from dataclasses import replace

    args, kwargs, users, items = _search_log()
    path = base.fit_path(param, values, *args, **kwargs)
    some = (users[:200], items[:200])
    for value, stacked in zip(values, path):
        alone = replace(base, **{param: value}).fit(*args, **kwargs)
        assert getattr(stacked, param) == value and len(stacked.history) == len(alone.history) > 1
        np.testing.assert_allclose([r["val_loss"] for r in stacked.history], [r["val_loss"] for r in alone.history], atol=1e-5)
        np.testing.assert_allclose(stacked.predict(*some), alone.predict(*some), atol=1e-5)
    assert not np.allclose(path[0].predict(*some), path[-1].predict(*some), atol=1e-3)  # no weights shared
    return path, args, kwargs


@pytest.mark.parametrize("method", ["naive", "dr_jl"])
def test_the_auto_search_in_one_pass_equals_a_fit_per_weight(method):
    """`auto` trains its candidate weights side by side (stacked weights, one step for all)."""
    base = DebiasedRecommender(method, dim=4, epochs=10, lr=0.03, batch_size=128, patience=2, seed=1)
    path, _, _ = _path_equals_fits_alone(base, "exposure_weight", (0.0, 1.0, 30.0))
    assert [m.exposure_weight_ for m in path] == [0.0, 1.0, 30.0] and [hasattr(m, "head_") for m in path] == [False, True, True]
    assert len({len(m.history) for m in path}) > 1  # each stopped on its own


@pytest.mark.parametrize("method", ["naive", "dr_jl", "dr"])
def test_the_weight_decay_search_in_one_pass_equals_a_fit_per_value(method):
    """`weight_decay: auto` trains its candidates side by side too: Adam's L2 decay applied per copy
    (the tower, the exposure head and DR-JL's imputer included) gives each candidate what a fit of its
    own gives; DR's fixed imputer depends on the decay, so it falls back to one fit per value."""
    from causalrec.causal.debias import auto_weight_decay

    base = DebiasedRecommender(method, dim=4, epochs=10, lr=0.03, batch_size=128, patience=2, seed=1, exposure_weight=1.0)
    path, args, kwargs = _path_equals_fits_alone(base, "weight_decay", (0.0, 0.003, 0.1))
    # the search keeps the lowest validation loss, and says so
    search = auto_weight_decay(base).fit(*args, **kwargs)
    losses = {wd: min(r["val_loss"] for r in m.history) for wd, m in
              zip(search.candidates, base.fit_path("weight_decay", search.candidates, *args, **kwargs))}
    assert search.best_estimator_.weight_decay == search.best_estimator_.weight_decay_ == min(losses, key=losses.get)


def test_validation_search_fits_one_copy_per_value_without_a_path():
    """A learner without `fit_path` is searched by one fit per candidate value; the lowest
    validation loss wins (the first of equals) and is recorded on the chosen fit."""
    from dataclasses import dataclass, field

    from causalrec.causal.training import ValidationSearch

    @dataclass
    class Quadratic:  # validation loss (x - 2)^2 + 1 at its fitted x
        x: float = 0.0
        history: list = field(default_factory=list)

        def fit(self, offset=0.0):
            self.history = [{"epoch": 1, "val_loss": (self.x - 2 + offset) ** 2 + 1}]
            return self

    search = ValidationSearch(Quadratic(), "x", (0.0, 1.0, 3.0, 2.0)).fit(offset=1.0)  # fit's arguments passed on
    assert search.best_estimator_.x == 1.0 and search.best_estimator_.x_ == 1.0
    assert search.results_ == {0.0: 2.0, 1.0: 1.0, 3.0: 5.0, 2.0: 2.0}
    assert search.best_estimator_.search_["chosen"] == 1.0
    tie = ValidationSearch(Quadratic(), "x", (3.0, 1.0, 0.0)).fit()  # 3 and 1 both at loss 2: the first
    assert tie.best_estimator_.x == 3.0


@pytest.mark.parametrize("method", ["naive", "dr_jl"])
def test_early_stopping_keeps_what_a_fit_of_best_epoch_epochs_ends_with(method):
    """What a refit repeats (train.refit): the state early stopping restores is the state a fit
    without validation rows reaches after best_epoch(history) epochs (same seed, same batches)."""
    from dataclasses import replace

    from causalrec.causal.training import best_epoch

    args, kwargs, users, items = _search_log()
    base = DebiasedRecommender(method, dim=8, epochs=30, lr=0.05, weight_decay=0.0, batch_size=128, patience=2, seed=1,
                               exposure_weight=1.0)
    stopped = replace(base).fit(*args, **kwargs)
    n, losses = best_epoch(stopped.history), [r["val_loss"] for r in stopped.history]
    assert 0 < n < len(stopped.history) and losses[n - 1] == min(losses)  # it overfitted, and kept an earlier epoch
    plain = replace(base, epochs=n).fit(*args, **{k: v for k, v in kwargs.items() if k != "val"})
    assert len(plain.history) == n
    some = (users[:300], items[:300])
    np.testing.assert_allclose(plain.predict(*some), stopped.predict(*some), atol=1e-5)
    off_by_one = replace(base, epochs=n + 1).fit(*args, **{k: v for k, v in kwargs.items() if k != "val"})
    assert not np.allclose(off_by_one.predict(*some), stopped.predict(*some), atol=1e-4)


def test_refit_repeats_the_kept_epochs_on_the_fit_and_validation_rows():
    """train.refit: the chosen model's settings (a search's choice too) fitted again without
    validation on fit + validation rows, for the epochs its early stopping kept."""
    from conftest import REPO

    from causalrec.causal.training import best_epoch
    from causalrec.config import load_params
    from causalrec.pipeline.rows import TrainingRows
    from causalrec.pipeline.train import fit_model, refit

    args, kwargs, users, items = _search_log()
    frame = lambda u, i, y, p: pd.DataFrame({"user_id": u, "item_id": i, "outcome": y, "propensity": p})  # noqa: E731
    v = kwargs["val"]
    rows = TrainingRows(frame(*args), frame(*v[:3], np.full(len(v[0]), 0.5)), False, None, kwargs["exposure_log"], "test")
    params = load_params(REPO / "params.yaml")
    params.train = params.train.model_copy(update={"exposure_weight": 0.0, "weight_decay": "auto", "dim": 8, "lr": 0.05,
                                                   "epochs": 30, "patience": 2, "batch_size": 128})
    stopped = fit_model(params, "mf_naive", rows)
    n = best_epoch(stopped.history)
    assert 0 < n < len(stopped.history) and stopped.search_["param"] == "weight_decay"
    again = refit(params, "mf_naive", stopped, rows)
    assert again.weight_decay == stopped.weight_decay_ and again.search_ == stopped.search_  # the search's choice
    assert len(again.history) == n and all(r["rows"] == len(rows.fit) + len(rows.val) and "val_loss" not in r
                                           for r in again.history)
    some = (users[:300], items[:300])
    assert not np.allclose(again.predict(*some), stopped.predict(*some), atol=1e-3)


def test_minibatches_are_one_permutation_per_epoch_sliced_across_aligned_columns():
    import platform

    import torch

    from causalrec.causal.training import keep_freed_memory, minibatches

    ids = torch.arange(10)
    labels = ids.float() * 10
    epoch = minibatches(4, np.random.default_rng(0), ids, labels)
    first, second = list(epoch()), list(epoch())
    assert [len(b[0]) for b in first] == [4, 4, 2]
    for batches in (first, second):
        rows = torch.cat([b[0] for b in batches])
        assert sorted(rows.tolist()) == list(range(10))  # every row once per epoch
        assert all(torch.equal(b[1], b[0].float() * 10) for b in batches)  # the columns stay aligned
    assert not torch.equal(torch.cat([b[0] for b in first]), torch.cat([b[0] for b in second]))  # a fresh order
    # the same order as gathering each column per step with the generator's permutation
    assert torch.equal(torch.cat([b[0] for b in first]), torch.as_tensor(np.random.default_rng(0).permutation(10)))
    if platform.libc_ver()[0] == "glibc":
        assert keep_freed_memory() is True  # mallopt accepted both settings


def test_a_feature_table_of_few_distinct_rows_or_low_rank_trains_with_the_same_scores_and_gradients():
    """Users sharing a few profile texts: the tower maps each distinct row once (models.factor.distinct_rows),
    in coordinates of the table's row space (row_space), with the scores and tower gradients of mapping the
    features row by row."""
    import torch

    from causalrec.models.factor import FactorModel, row_space

    gen = torch.Generator().manual_seed(0)
    profiles = torch.randn(5, 32, generator=gen)
    X = profiles[torch.randint(5, (60,), generator=gen)]  # 60 users, 5 distinct rows: rank 5
    coords, basis = row_space(X)
    assert basis.shape == (32, 5) and torch.allclose(coords @ basis.T, X, atol=1e-5)
    assert row_space(torch.randn(60, 32, generator=gen)) is None  # full rank: nothing to gain
    torch.manual_seed(1)
    # items: 40 rows of 8 features, 20 distinct (full rank: no row space, each distinct row mapped once)
    Z = torch.randn(20, 8, generator=gen)[torch.randperm(40, generator=gen) % 20]
    model = FactorModel(60, 40, 4, X, Z)
    assert model.user_table.shape == (5, 5) and len(model.user_row_of) == 60  # 5 distinct rows, 5 coordinates
    assert model.item_table.shape == (20, 8) and model.item_basis is None
    assert torch.equal(model.item_table[model.item_row_of], Z)
    assert FactorModel(60, 40, 4, None, torch.randn(40, 8, generator=gen)).item_table is None  # nothing to gain
    plain = copy.deepcopy(model)
    plain.user_table = plain.user_basis = plain.user_row_of = plain.item_table = plain.item_row_of = None  # as they are
    for n in (25, 120):  # fewer rows than the tables (map the rows), more (map the table, then gather)
        u, i = torch.randint(60, (n,), generator=gen), torch.randint(40, (n,), generator=gen)
        for net in (model, plain):
            net.zero_grad()
            net(u, i).pow(2).sum().backward()
        assert torch.allclose(model(u, i), plain(u, i), atol=1e-5)
        for tower in ("user_tower", "item_tower"):
            assert torch.allclose(getattr(model, tower).weight.grad, getattr(plain, tower).weight.grad, atol=1e-4)


def test_early_stopping_never_returns_the_untrained_start():
    """A model whose validation loss only worsens keeps its first trained epoch, not its random start."""
    from causalrec.causal.training import best_epoch, train_loop

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 1)
    start = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(64, 3)
    losses = iter(np.arange(1.0, 10.0))  # every epoch validates worse than the one before

    def step(batch):
        opt.zero_grad()
        loss = ((layer(batch) - 1.0) ** 2).mean()
        loss.backward()
        opt.step()
        return float(loss.detach()), len(batch)

    history = train_loop(step, lambda: [x], epochs=6, modules={"m": layer}, validate=lambda: next(losses), patience=2)[0]
    assert best_epoch(history) == 1 and len(history) == 3
    assert not torch.allclose(layer.weight, start)


def test_dr_objective_is_bounded_below_on_a_sparse_mnar_log(tmp_path):
    """5,400 users x 1,000 items at 2% density (Yahoo! R3's shape), ratings 1-5 missing by rating,
    naive-Bayes propensities from a small uniform sample (coat.py's protocol), weight decay 1e-6 and
    no early stopping: DR's pseudo-labels leave [0, 1] there, and with an objective linear in the logit
    the training loss ran to -2.1 and falling by epoch 13 while validation loss climbed to 2.5.
    Bounded by construction, both level off."""
    import coat
    import make_mnar_ratings
    from causalrec.data.sources import load_ratings_dir
    from causalrec.evaluation.metrics import auc

    data = load_ratings_dir(make_mnar_ratings.write(tmp_path / "mnar", 5400, 1000, 20, 10, seed=0))
    split = coat.make_splits(data, 1, propensity="naive_bayes")[0]
    f, v = split.fit, split.val
    model = DebiasedRecommender("dr", dim=32, weight_decay=1e-6, lr=0.01, batch_size=512, epochs=15, patience=15,
                                seed=0).fit(f["user_id"].to_numpy(), f["item_id"].to_numpy(), f["outcome"].to_numpy(),
                                            f["propensity"].to_numpy(), val=(v["user_id"].to_numpy(), v["item_id"].to_numpy(),
                                                                             v["outcome"].to_numpy(), None))
    train, val = [row["train_loss"] for row in model.history], [row["val_loss"] for row in model.history]
    assert len(train) == 15 and min(train) > -0.5 and max(val) < 1.2, (train, val)
    pairs, labels = split.test.pairs, split.test.open()["y1"].to_numpy()
    assert auc(labels, model.predict(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy())) > 0.75
