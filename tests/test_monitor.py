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


def _served_round(env, round, policy_items, n=3000, k=10, epsilon=0.3, seed=0):
    """n slates of a fixed greedy list (`policy_items`) with epsilon of them drawn uniformly at random."""
    rng = np.random.default_rng([seed, round])
    rows = []
    for r, u in enumerate(rng.choice(env.n_users, size=n, p=env.activity)):
        uniform = rng.random() < epsilon
        items = rng.choice(env.n_items, k, replace=False) if uniform else policy_items
        ids = [f"i{i:06d}" for i in items]
        y = env.respond(round, [f"u{u:06d}"] * k, ids, np.full(k, 0.5), policy="v")
        rows += [{"event_id": f"r{round}-{r}-{j}", "user_id": f"u{u:06d}", "item_id": ids[j], "exposed": 1,
                  "outcome": int(y[j]), "propensity": 0.5, "position": j + 1, "uniform": int(uniform),
                  "timestamp": pd.Timestamp("2026-01-01") + pd.Timedelta(days=round)} for j in range(k)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("world_moves", [False, True])
def test_live_drift_compares_the_explored_slates_so_a_new_champion_is_not_drift(tmp_path, world_moves):
    """Round 2 is served by a wholly different greedy list than round 1. On all served traffic that
    looks like drift (what the monitor compared before); on the clicks of the uniformly drawn slates
    (what it compares now) only a moved world is drift."""
    from causalrec.config import load_params
    from causalrec.data.feedback import write_partition
    from causalrec.data.online import OnlineWorld
    from causalrec.pipeline.monitor import POLICY_COLUMNS, _windows
    from conftest import write_params

    cfg = SimulationConfig(n_users=400, n_items=300, n_interactions=40_000, n_topics=8, seed=3)
    simulate(cfg, tmp_path / "data", tmp_path / "truth", progress=False)
    world = World.load(tmp_path / "truth" / "world")
    env = OnlineWorld(world, seed=1, drift_from_round=2 if world_moves else None)
    write_params(tmp_path)
    params = load_params(tmp_path / "params.yaml")
    base = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    for round, policy in ((1, np.arange(10)), (2, np.arange(10, 20))):
        write_partition(tmp_path / "feedback_data", {"interactions": _served_round(env, round, policy)}, {})
        if round == 1:  # the first served window has nothing served before it: never against the training log
            ref, cur, _, source, explored, served = _windows(params, base)
            assert source.startswith("training log: first vs last") and "first served window" in source
            assert not explored and not served and not ({"r1"} & set(cur.get("event_id", pd.Series([""])).str[:2]))
    items = pd.read_parquet(tmp_path / "data" / "items.parquet")[["item_id", "category", "price"]]
    vectors = world.item_topics

    def decide(ref, cur, profiles, policy_columns):
        ref, cur = (w.merge(items, on="item_id") for w in (ref, cur))
        ref, cur = history_similarity(ref, cur, items["item_id"], vectors, profiles)
        if not policy_columns:
            ref, cur = ref.drop(columns=POLICY_COLUMNS), cur.drop(columns=POLICY_COLUMNS)
        return drift_report(ref, cur, tmp_path / "report", 0.5, ("history_similarity",))["drift_detected"]

    ref, cur, profiles, source, explored, served = _windows(params, base)
    assert source.startswith("clicks on uniformly drawn slates: live (part-00002) vs earlier (part-00001)")
    assert explored == ["part-00002"]
    assert set(ref["event_id"].str[:2]) == {"r1"} and set(cur["event_id"].str[:2]) == {"r2"}
    assert (ref["uniform"] == 1).all() and (ref["outcome"] > 0).all() and (cur["outcome"] > 0).all()
    assert decide(ref, cur, profiles, policy_columns=False) is world_moves
    # all served traffic, round 1 vs round 2: the new greedy list alone reads as drift
    everything = pd.read_parquet(tmp_path / "feedback_data" / "part-00001" / "interactions.parquet")
    assert decide(everything, pd.read_parquet(tmp_path / "feedback_data" / "part-00002" / "interactions.parquet"),
                  base, policy_columns=True)
    # The stage: drift on the explored slates marks the first drifted partition, and the next ingest
    # (ingest.after_drift) trains on what was served since; a stationary world leaves no mark.
    from causalrec.data.feedback import drift_mark, merge_into
    from causalrec.pipeline.monitor import monitor

    emb = tmp_path / "artifacts" / "embeddings"
    emb.mkdir(parents=True)
    items[["item_id"]].to_parquet(emb / "items_index.parquet", index=False)
    np.save(emb / "items.npy", vectors.astype(np.float32))
    report = monitor(params, base)
    assert report["drift_detected"] is world_moves and report["drift_mark"] == ("part-00002" if world_moves else None)
    mark = drift_mark(tmp_path / "feedback_data")
    assert (mark and mark["since_partition"]) == report["drift_mark"]
    counts = merge_into(tmp_path / "data", tmp_path / "feedback_data", since=report["drift_mark"])
    assert counts["base_interactions"] is not world_moves
    kept = pd.read_parquet(tmp_path / "data" / "interactions.parquet")["event_id"].dropna().str[:2]
    assert set(kept) == ({"r2"} if world_moves else {"r1", "r2"})
    # the model trained on that cut data explores more (serve.epsilon_after_drift) until the next retrain
    from causalrec.pipeline.bundle import exploration_boost

    boost = exploration_boost(params)
    assert boost == ({"epsilon": params.serve.epsilon_after_drift, "since_partition": "part-00002"} if world_moves else None)
    assert params.serve.epsilon_after_drift > params.serve.epsilon
    write_partition(tmp_path / "feedback_data", {"interactions": _served_round(env, 3, np.arange(10))}, {})
    assert exploration_boost(params) is None  # the next retrain has a round more: the boost ends
