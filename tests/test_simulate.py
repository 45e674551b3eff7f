import hashlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from causalrec.data.simulate import SimulationConfig, World, make_world, simulate


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    cfg = SimulationConfig(n_users=300, n_items=150, n_interactions=30_000, n_topics=8, seed=3)
    summary = simulate(cfg, root / "data", root / "truth", progress=False)
    return cfg, root, summary


def test_deterministic_bytes_per_seed(small, tmp_path):
    cfg, root, _ = small
    simulate(cfg, tmp_path / "data", tmp_path / "truth", progress=False)
    for name in ("interactions", "items", "users"):
        assert _md5(root / "data" / f"{name}.parquet") == _md5(tmp_path / "data" / f"{name}.parquet")
    other = SimulationConfig(**{**cfg.__dict__, "seed": 4})
    simulate(other, tmp_path / "data2", tmp_path / "truth2", progress=False)
    assert _md5(root / "data" / "interactions.parquet") != _md5(tmp_path / "data2" / "interactions.parquet")


def test_contract_and_ground_truth_apart(small):
    cfg, root, summary = small
    assert sorted(p.name for p in (root / "data").iterdir()) == ["interactions.parquet", "items.parquet", "users.parquet"]
    inter = pd.read_parquet(root / "data" / "interactions.parquet")
    assert len(inter) == cfg.n_interactions == summary["interactions"]
    assert inter["propensity"].between(0.01, 0.99).all()
    assert (inter["exposed"] == inter["treatment"]).all()
    assert inter["timestamp"].is_monotonic_increasing
    assert (inter.loc[inter.exposed == 0, "position"] == 0).all()
    assert inter.loc[inter.exposed == 1, "position"].between(1, 10).all()
    assert abs(inter["propensity"].mean() - cfg.exposure_rate) < 0.03
    test = pd.read_parquet(root / "truth" / "test_pairs.parquet")
    assert {"p1", "p0", "y1", "y0"} <= set(test.columns)
    assert (test["p1"] >= test["p0"]).all()  # uplift is non-negative by construction


def test_logged_feedback_is_biased_towards_relevance(small):
    """MNAR: the policy exposes what users like, so exposed positives overstate relevance."""
    _, root, _ = small
    inter = pd.read_parquet(root / "data" / "interactions.parquet")
    test = pd.read_parquet(root / "truth" / "test_pairs.parquet")
    assert inter.loc[inter.exposed == 1, "outcome"].mean() > test["y1"].mean() + 0.05


def test_item_text_carries_topic_signal(small):
    cfg, root, _ = small
    items = pd.read_parquet(root / "data" / "items.parquet")
    world = World.load(root / "truth" / "world")
    from causalrec.data.simulate import TOPICS
    names = list(TOPICS)[: cfg.n_topics]
    dominant = [names[k] for k in world.item_topics.argmax(1)]
    assert (items["category"] == dominant).all()
    hits = [any(w in d.lower() for w in TOPICS[c]) for d, c in zip(items["description"], items["category"])]
    assert np.mean(hits) > 0.9


def test_chunked_writing_bounded(tmp_path):
    cfg = SimulationConfig(n_users=50, n_items=40, n_interactions=5500, chunk_rows=1000, seed=1)
    summary = simulate(cfg, tmp_path / "data", tmp_path / "truth", progress=False)
    meta = pq.ParquetFile(tmp_path / "data" / "interactions.parquet").metadata
    assert summary["chunks"] == 6 and meta.num_row_groups == 6 and meta.num_rows == 5500


def test_drift_moves_interests():
    still = make_world(SimulationConfig(n_users=50, n_items=30, drift=0.0))
    moving = make_world(SimulationConfig(n_users=50, n_items=30, drift=1.0))
    assert np.allclose(still.theta(np.arange(50), 0.0), still.theta(np.arange(50), 1.0))
    assert not np.allclose(moving.theta(np.arange(50), 0.0), moving.theta(np.arange(50), 1.0))


def test_invalid_config():
    with pytest.raises(ValueError, match="n_topics"):
        SimulationConfig(n_topics=99)


def test_uplift_shapes_beyond_the_organic_share():
    """pair_effect: the effect is a nonlinear function of user x item, negative for part of the pairs,
    and orders items differently for different users; saturating: largest for the undecided,
    tau = 0.9 p1 (1 - p1); the default world's truths are untouched by the new shapes."""
    cfg = dict(n_users=200, n_items=150, n_interactions=2000)
    rel, upl = make_world(SimulationConfig(uplift_shape="pair_effect", **cfg)).truth_matrices()
    assert 0.2 < (upl < 0).mean() < 0.6
    order = np.corrcoef(np.argsort(np.argsort(upl, 1), 1))  # rank correlation of the items' order across users
    assert np.median(order[np.triu_indices(len(order), 1)]) < 0.5
    rel_s, upl_s = make_world(SimulationConfig(uplift_shape="saturating", **cfg)).truth_matrices()
    assert np.allclose(upl_s, 0.9 * rel_s * (1 - rel_s), atol=1e-6)
    rel_d, upl_d = make_world(SimulationConfig(**cfg)).truth_matrices()
    assert np.allclose(rel_d, rel) and (upl_d >= 0).all()
