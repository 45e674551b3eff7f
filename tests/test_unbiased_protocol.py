"""Honest evaluation: choices are made on validation before the test set is read; any data set in
Coat's format, and a user's own parquet log with a randomized test set, get unbiased metrics."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, make_project


def write_coat_format(root: Path, n_users: int = 40, n_items: int = 30, seed: int = 0, features: bool = True) -> Path:
    """A small MNAR world in Coat's three-file format: users rate what they like (self-selection)."""
    rng = np.random.default_rng(seed)
    pref = rng.normal(size=(n_users, 3)) @ rng.normal(size=(3, n_items))
    rating = np.clip(np.round(3 + 1.2 * pref + rng.normal(scale=0.7, size=pref.shape)), 1, 5)
    shown = rng.random(pref.shape) < 1 / (1 + np.exp(-(pref - 1.5)))  # likes are shown (MNAR)
    test_mask = np.zeros_like(shown)
    for u in range(n_users):  # 8 uniformly random test items per user
        test_mask[u, rng.choice(n_items, 8, replace=False)] = True
    root.mkdir(parents=True)
    np.savetxt(root / "train.ascii", np.where(shown & ~test_mask, rating, 0), fmt="%d")
    np.savetxt(root / "test.ascii", np.where(test_mask, rating, 0), fmt="%d")
    np.savetxt(root / "propensities.ascii", np.clip(shown.mean(0, keepdims=True).repeat(n_users, 0), 0.05, 1))
    if features:
        (root / "user_item_features").mkdir()
        np.savetxt(root / "user_item_features/item_features.ascii", rng.integers(0, 2, (n_items, 4)), fmt="%d")
        np.savetxt(root / "user_item_features/user_features.ascii", rng.integers(0, 2, (n_users, 3)), fmt="%d")
        (root / "user_item_features/item_features_map.txt").write_text("\n".join(f"colour:c{j}" for j in range(4)))
        (root / "user_item_features/user_features_map.txt").write_text("\n".join(f"age:a{j}" for j in range(3)))
    return root


@pytest.fixture(scope="module")
def coat_bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module("coat")


def test_coat_choices_never_read_the_test_labels(coat_bench, tmp_path):
    from causalrec.data.sources import load_ratings_dir

    data = load_ratings_dir(write_coat_format(tmp_path / "d"))
    grid = {"dim": [2, 4], "weight_decay": [1e-3], "lr": [0.05]}
    methods = ["popularity", "mf_naive", "mf_ips", "tt_naive", "mf_naive_head", "mf_ips_head"]
    splits = coat_bench.make_splits(data, 2)
    choices, _ = coat_bench.choose(data, splits, methods, grid)
    assert not any(s.test.opened for s in splits)  # the labels stayed sealed through every choice
    for split in splits:  # the test pairs are never validated on
        assert split.test.pairs.merge(split.val, on=["user_id", "item_id"]).empty
    # Flip every sealed test label: the choices must not move (a choice that peeked at them would).
    for split in splits:
        split.test = coat_bench.SealedTest(split.test.pairs, 1 - split.test.open())
    again, _ = coat_bench.choose(data, splits, methods, grid)
    strip = lambda c: {k: v for k, v in c.items() if k != "tuned"} | {  # noqa: E731
        n: (t["hyperparameters"], t.get("exposure_weight_per_seed")) for n, t in c["tuned"].items()}
    assert strip(again) == strip(choices)  # the head's weights too, chosen per fit by validation loss
    assert all(w in (0.0, 1.0, 3.0, 10.0) for w in choices["tuned"]["mf_ips_head"]["exposure_weight_per_seed"])


@pytest.mark.slow  # the benchmark script in its own process (tests/test_benchmarks.py's are slow too)
def test_coat_benchmark_takes_any_directory_in_the_format(tmp_path):
    data = write_coat_format(tmp_path / "other", features=False)
    proc = subprocess.run([sys.executable, "coat.py", "--data", str(data), "--seeds", "2", "--grid-dims", "2",
                           "--methods", "popularity", "mf_naive", "mf_snips", "mf_dr", "--out", str(tmp_path)],
                          cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "coat.json").read_text())
    assert "best" not in result and result["chosen"]["method"] in result["methods"]
    chosen = result["chosen"]["method"]
    assert result["methods"][chosen]["validation_auc"] == max(m["validation_auc"] for m in result["methods"].values())
    d = result["debias_vs_naive"]
    assert d["method"] in ("mf_snips", "mf_dr") and {"mean", "sd"} <= set(d["auc"]) and {"mean", "sd"} <= set(d["ndcg@5"])


@pytest.mark.slow
def test_pipeline_on_coat_format_uses_attributes_and_the_uniform_sample(tmp_path, tiny_encoder):
    from causalrec import pipeline
    from causalrec.config import load_params

    data = write_coat_format(tmp_path / "coat")
    root = make_project(tmp_path / "p", tiny_encoder, git=False, ingest={"source": "coat", "source_path": str(data)},
                        paths={"input_dirs": [str(tmp_path)]},  # the download lies beside the project
                        train={"models": ["popularity", "mf_naive", "tt_naive", "ti_naive"], "exposure_weight": 0.0},
                        uplift={"enabled": False})
    params = load_params(root / "params.yaml")
    for stage in ("ingest", "validate", "embed", "propensity", "train", "evaluate"):
        pipeline.STAGES[stage](params)
    inter = pd.read_parquet(root / "data" / "interactions.parquet")
    test = pd.read_parquet(root / "artifacts" / "ground_truth" / "test_pairs.parquet")
    uniform = inter[inter["policy"] == "uniform"]
    assert len(uniform) > 0 and uniform.merge(test, on=["user_id", "item_id"]).empty  # test rows never in data/
    # The self-selection policy's log: every pair once, rated (exposed) or not, with the file's propensity.
    mnar = inter[inter["policy"] != "uniform"]
    assert len(mnar) == 40 * 30 and not mnar.duplicated(["user_id", "item_id"]).any()
    assert 0 < (mnar["exposed"] == 0).sum() < len(mnar) and (mnar.loc[mnar["exposed"] == 0, "outcome"] == 0).all()
    file_p = np.loadtxt(data / "propensities.ascii")
    rows, cols = mnar["user_id"].str[1:].astype(int), mnar["item_id"].str[1:].astype(int)
    np.testing.assert_allclose(mnar["propensity"], file_p[rows, cols], rtol=1e-6)
    features = pipeline.text_features(params)
    assert any(c.startswith("attr_") for c in features["item_features"].columns)
    train = json.loads((root / "artifacts" / "models" / "train.json").read_text())
    assert train["chosen"]["validation"].startswith("uniform sample")
    metrics = json.loads((root / "artifacts" / "metrics.json").read_text())
    assert metrics["chosen"]["model"] == max(("popularity", "mf_naive", "tt_naive", "ti_naive"),
                                              key=lambda n: train[n]["validation_auc"])
    assert metrics["protocol"] == "randomized test pairs" and 0 <= metrics["models"]["tt_naive"]["auc"] <= 1
    # the backbones' towers: tt reads both sides' features, ti the items' alone, mf none
    from causalrec.persistence import load_model
    nets = {n: load_model(root / "artifacts" / "models" / f"{n}.pt").net_ for n in ("mf_naive", "tt_naive", "ti_naive")}
    widths = {n: (net.user_x.shape[1], net.item_z.shape[1]) for n, net in nets.items()}
    n_user, n_item = features["user_features"].shape[1], features["item_features"].shape[1]
    assert widths == {"mf_naive": (0, 0), "tt_naive": (n_user, n_item), "ti_naive": (0, n_item)} and n_user > 0


def test_parquet_source_with_own_test_set_evaluates(tmp_path, tiny_encoder):
    """Bring your own data: a parquet log + a randomized test set give the same unbiased metrics."""
    from causalrec import pipeline
    from causalrec.config import load_params
    from causalrec.data.sources import load_ratings_dir

    tables = load_ratings_dir(write_coat_format(tmp_path / "coat"))
    own = tmp_path / "own"
    own.mkdir()
    tables["interactions"].to_parquet(own / "interactions.parquet")
    tables["items"].to_parquet(own / "items.parquet")
    tables["users"].to_parquet(own / "users.parquet")
    tables["test"].rename(columns={"y1": "outcome"})[["user_id", "item_id", "outcome"]].to_parquet(tmp_path / "ab.parquet")
    root = make_project(tmp_path / "p", tiny_encoder, git=False,
                        ingest={"source": "parquet", "source_path": str(own), "test_path": str(tmp_path / "ab.parquet")},
                        paths={"input_dirs": [str(tmp_path)]},
                        train={"models": ["popularity", "mf_naive"], "exposure_weight": "auto"}, uplift={"enabled": False})
    params = load_params(root / "params.yaml")
    for stage in ("ingest", "validate", "embed", "propensity", "train", "evaluate"):
        pipeline.STAGES[stage](params)
    metrics = json.loads((root / "artifacts" / "metrics.json").read_text())
    assert metrics["protocol"] == "randomized test pairs"
    assert {"auc", "ndcg@10", "recall@10"} <= set(metrics["models"]["mf_naive"])
    # exposure_weight auto: the search's choice is what was saved, reported and is the lowest validation loss.
    from causalrec.causal.debias import AUTO_EXPOSURE_WEIGHTS
    from causalrec.persistence import load_model

    saved = load_model(root / "artifacts" / "models" / "mf_naive.pt")
    losses = saved.search_["validation_loss"]
    assert set(losses) == {str(float(w)) for w in AUTO_EXPOSURE_WEIGHTS}
    chosen = float(min(losses, key=losses.get))
    assert saved.exposure_weight_ == chosen
    assert json.loads((root / "artifacts" / "models" / "train.json").read_text())["mf_naive"]["exposure_weight"] == chosen
    # A test set without both outcomes is refused by name.
    tables["test"].assign(outcome=1)[["user_id", "item_id", "outcome"]].to_parquet(tmp_path / "bad.parquet")
    bad = params.model_copy(update={"ingest": params.ingest.model_copy(update={"test_path": tmp_path / "bad.parquet"})})
    with pytest.raises(ValueError, match="needs both outcomes"):
        pipeline.ingest(bad)
