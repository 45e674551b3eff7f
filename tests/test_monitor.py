"""Drift is caught where it exists and not where it does not (Evidently's tests decide)."""
import numpy as np
import pandas as pd
import pytest

from causalrec.data.simulate import SimulationConfig, World, simulate
from causalrec.monitoring.drift import drift_report, history_similarity, time_windows


def _windows(tmp_path, drift: float, seed: int):
    cfg = SimulationConfig(n_users=400, n_items=300, n_interactions=40_000, n_topics=8, drift=drift, seed=seed)
    simulate(cfg, tmp_path / "data", tmp_path / "truth", progress=False)
    inter = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    items = pd.read_parquet(tmp_path / "data" / "items.parquet")
    ref, cur = time_windows(inter.merge(items[["item_id", "category", "price"]], on="item_id"), 0.3)
    # The item texts are rendered from the topic mixes: those stand in for the text embeddings here.
    vectors = World.load(tmp_path / "truth" / "world").item_topics
    return history_similarity(ref[ref["exposed"] == 1], cur[cur["exposed"] == 1], items["item_id"], vectors)


@pytest.mark.parametrize("seed", [1, 2])
def test_interest_drift_is_flagged_and_a_stationary_world_is_not(tmp_path, seed):
    decisions = {}
    for drift in (0.0, 1.0):
        ref, cur = _windows(tmp_path / str(drift), drift, seed)
        decisions[drift] = drift_report(ref, cur, tmp_path / f"report{drift}", 0.5, ("history_similarity",))
    assert not decisions[0.0]["drift_detected"] and decisions[0.0]["failed_tests"] == []
    assert decisions[1.0]["drift_detected"] and decisions[1.0]["key_columns_drifted"] == ["history_similarity"]
    # Aggregate columns alone do not see it: the population's mix of interests stays the same.
    assert not decisions[1.0]["share_test_failed"]
    assert (tmp_path / "report1.0" / "drift_report.html").read_text()[:2000].lower().count("<html") == 1


def test_history_similarity_leaves_the_own_click_out():
    ref = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "outcome": [1, 1]})
    cur = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "x"], "outcome": [0, 0]})
    r, c = history_similarity(ref, cur, ["x", "y"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert np.allclose(r["history_similarity"], [0.0, 0.0])  # each click compared with the other one only
    assert list(c["user_id"]) == ["a"] and np.isclose(c["history_similarity"].iloc[0], np.sqrt(0.5))
