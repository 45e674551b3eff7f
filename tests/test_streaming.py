import pytest

from causalrec.causal.debias import DebiasedRecommender
from causalrec.causal.streaming import fit_streaming
from causalrec.data.simulate import SimulationConfig, simulate
from causalrec.evaluation.metrics import auc


def test_streaming_fit_learns_and_scores(tmp_path):
    cfg = SimulationConfig(n_users=200, n_items=100, n_interactions=40_000, chunk_rows=5000, n_topics=6)
    simulate(cfg, tmp_path / "data", tmp_path / "truth", progress=False)
    users, items = [f"u{u:06d}" for u in range(200)], [f"i{i:06d}" for i in range(100)]
    model = DebiasedRecommender("ips", dim=8, epochs=3, lr=0.01, batch_size=512)
    res = fit_streaming(model, tmp_path / "data" / "interactions.parquet", users, items, chunk_rows=7000)
    assert len(res["epochs"]) == 3 and res["epochs"][0]["exposed_rows"] > 10_000
    import pandas as pd

    test = pd.read_parquet(tmp_path / "truth" / "test_pairs.parquet")
    assert auc(test["y1"], model.predict(test["user_id"], test["item_id"])) > 0.6
    with pytest.raises(ValueError, match="streaming fit supports"):
        fit_streaming(DebiasedRecommender("magic"), tmp_path / "data" / "interactions.parquet", users, items)
    with pytest.raises(ValueError, match="outside the given catalogue"):
        fit_streaming(DebiasedRecommender("naive", epochs=1), tmp_path / "data" / "interactions.parquet", users[:10], items)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("world")
    cfg = SimulationConfig(n_users=200, n_items=100, n_interactions=40_000, chunk_rows=5000, n_topics=6)
    simulate(cfg, tmp_path / "data", tmp_path / "truth", progress=False)
    return tmp_path


@pytest.mark.parametrize("method", ["dr", "dr_jl", "mrdr_jl", "sdr"])
def test_streaming_doubly_robust_matches_the_in_memory_fit(small_world, method):
    """The streamed DR family trains on every logged row as the population and reaches the
    quality of the in-memory fit (population = the log) on the same data."""
    import pandas as pd

    tmp_path = small_world
    users, items = [f"u{u:06d}" for u in range(200)], [f"i{i:06d}" for i in range(100)]
    log = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    test = pd.read_parquet(tmp_path / "truth" / "test_pairs.parquet")
    kw = dict(dim=8, epochs=4, lr=0.01, batch_size=512, seed=0)
    streamed = DebiasedRecommender(method, **kw)
    res = fit_streaming(streamed, tmp_path / "data" / "interactions.parquet", users, items, chunk_rows=7000)
    assert res["epochs"][0]["rows"] == len(log) and res["epochs"][0]["exposed_rows"] == int(log["exposed"].sum())
    exposed = log[log["exposed"] == 1]
    in_memory = DebiasedRecommender(method, **kw).fit(exposed["user_id"], exposed["item_id"], exposed["outcome"],
                                                       exposed["propensity"], population=(log["user_id"], log["item_id"]))
    a_stream = auc(test["y1"], streamed.predict(test["user_id"], test["item_id"]))
    a_memory = auc(test["y1"], in_memory.predict(test["user_id"], test["item_id"]))
    assert a_stream > 0.6 and a_stream > a_memory - 0.03, (a_stream, a_memory)


def test_streaming_reads_a_partitioned_directory(tmp_path):
    """A hive-partitioned directory of parquet files trains like the single file it was split from."""
    import pandas as pd

    cfg = SimulationConfig(n_users=200, n_items=100, n_interactions=20_000, n_topics=6)
    simulate(cfg, tmp_path / "data", tmp_path / "truth", progress=False)
    log = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    for day, part in log.groupby(log["timestamp"].dt.dayofyear % 3):
        (tmp_path / "log" / f"day={day}").mkdir(parents=True)
        part.to_parquet(tmp_path / "log" / f"day={day}" / "part-0.parquet", index=False)
    users, items = [f"u{u:06d}" for u in range(200)], [f"i{i:06d}" for i in range(100)]
    res = fit_streaming(DebiasedRecommender("dr_jl", dim=8, epochs=1, batch_size=512), tmp_path / "log", users, items,
                        chunk_rows=3000)
    assert res["epochs"][0]["rows"] == len(log) and res["epochs"][0]["exposed_rows"] == int(log["exposed"].sum())
    with pytest.raises(FileNotFoundError, match="not found"):
        fit_streaming(DebiasedRecommender("naive"), tmp_path / "nowhere", users, items)
    log.drop(columns="propensity").to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="lacks columns \\['propensity'\\]"):
        fit_streaming(DebiasedRecommender("naive"), tmp_path / "bad.parquet", users, items)
