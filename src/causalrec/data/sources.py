"""Loaders that turn public data sets into the data contract (data/*.parquet).

* Coat-format ratings (Coat, Schnabel et al. 2016, or any directory in its format): MNAR training
  ratings + randomized test ratings, optional propensities and binary user/item attributes (kept
  as numeric attr_* columns; item/user texts rendered from them). Ratings >= 4 are positive. A
  small share of the randomized ratings becomes the log's uniform sample (policy "uniform"); the
  rest is the test set in the ground-truth directory, never in data/.
* parquet: a directory already holding the three contract files (copied as they are).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.data.schema import TABLES, DataError
from causalrec.io import atomic_dir

RATINGS_FILES = ("train.ascii", "test.ascii")
FEATURE_FILES = ("user_item_features/item_features.ascii", "user_item_features/item_features_map.txt",
                 "user_item_features/user_features.ascii", "user_item_features/user_features_map.txt")
UNIFORM_POLICY = "uniform"  # rows exposed uniformly at random: the unbiased sample for validation


def _read_matrix(path: Path) -> np.ndarray:
    try:
        return np.loadtxt(path, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: not a whitespace-separated numeric matrix ({exc})") from exc


def _features_text(matrix: np.ndarray, names: list[str]) -> list[str]:
    out = []
    for row in matrix:
        parts = {}
        for j in np.flatnonzero(row > 0):
            key, _, value = names[j].partition(":")
            parts.setdefault(key, []).append(value)
        out.append("; ".join(f"{k}: {', '.join(v)}" for k, v in parts.items()))
    return out


def load_ratings_dir(path: str | Path, positive_threshold: float = 4) -> dict[str, pd.DataFrame]:
    """A rating data set in Coat's format (Schnabel et al. 2016) as contract tables.

    Required: train.ascii (MNAR ratings) and test.ascii (ratings of uniformly random items), dense
    users x items matrices with 0 = not rated. Optional: propensities.ascii (P(O=1 | u,i) of the
    training ratings) and user_item_features/ (binary attribute matrices + their names, as Coat ships
    them). Ratings >= positive_threshold are positive. Returns interactions, items, users, `test`
    (the randomized ratings) and `item_features` / `user_features` (attribute frames, or None).
    """
    path = Path(path)
    missing = [f for f in RATINGS_FILES if not (path / f).is_file()]
    if missing:
        raise DataError(f"rating directory {path}: missing file(s) {missing}")
    train, test = _read_matrix(path / "train.ascii"), _read_matrix(path / "test.ascii")
    if train.shape != test.shape:
        raise DataError(f"rating directory {path}: train {train.shape} and test {test.shape} differ in shape")
    n_users, n_items = train.shape
    uid = np.array([f"u{u:05d}" for u in range(n_users)])
    iid = np.array([f"i{i:05d}" for i in range(n_items)])
    u, i = np.nonzero(train)
    interactions = pd.DataFrame({
        "user_id": uid[u], "item_id": iid[i],
        # No timestamps in this format: rows get one synthetic hour each in user order (documented).
        "timestamp": pd.Timestamp("2016-01-01") + pd.to_timedelta(np.arange(len(u)), unit="h"),
        "exposed": np.ones(len(u), dtype=np.int8), "outcome": (train[u, i] >= positive_threshold).astype(np.float32),
        "rating": train[u, i].astype(np.float32), "policy": "mnar_log",
    })
    propensities = None
    if (path / "propensities.ascii").is_file():
        prop = _read_matrix(path / "propensities.ascii")
        if prop.shape != train.shape:
            raise DataError(f"rating directory {path}: propensities {prop.shape} differ in shape from train {train.shape}")
        interactions["propensity"] = prop[u, i].astype(np.float32)
        propensities = pd.DataFrame(prop, index=uid, columns=iid)
    items = pd.DataFrame({"item_id": iid, "title": [f"item {k}" for k in range(n_items)], "description": ""})
    users = pd.DataFrame({"user_id": uid})
    item_feat = user_feat = None
    if all((path / f).is_file() for f in FEATURE_FILES):
        item_m = _read_matrix(path / FEATURE_FILES[0])
        user_m = _read_matrix(path / FEATURE_FILES[2])
        item_names = [n for n in (path / FEATURE_FILES[1]).read_text().split("\n") if n]
        user_names = [n for n in (path / FEATURE_FILES[3]).read_text().split("\n") if n]
        if item_m.shape[0] != n_items or user_m.shape[0] != n_users:
            raise DataError(f"rating directory {path}: item features {item_m.shape} / user features {user_m.shape} "
                            f"do not match {n_users} users x {n_items} items")
        item_text = _features_text(item_m, item_names)
        items["title"] = [t.split(";")[0] for t in item_text]
        items["description"] = item_text
        items["category"] = [t.split(";")[1].split(":")[1].strip() if ";" in t else "other" for t in item_text]
        users["profile_text"] = _features_text(user_m, user_names)
        item_feat = pd.DataFrame(item_m, index=iid).add_prefix("attr_").astype(np.float32)
        user_feat = pd.DataFrame(user_m, index=uid).add_prefix("attr_").astype(np.float32)
    tu, ti = np.nonzero(test)
    test_df = pd.DataFrame({"user_id": uid[tu], "item_id": iid[ti], "y1": (test[tu, ti] >= positive_threshold).astype(np.int8),
                            "rating": test[tu, ti].astype(np.float32)})
    return {"interactions": interactions, "items": items, "users": users, "test": test_df,
            "item_features": item_feat, "user_features": user_feat, "propensities": propensities,
            "uniform_rate": len(test_df) / (n_users * n_items)}


def pair_propensity(propensities: pd.DataFrame, users, items) -> np.ndarray:
    """P(O=1 | u,i) of the MNAR log for aligned (user, item) pairs, from the full matrix."""
    rows = propensities.index.get_indexer(np.asarray(users))
    cols = propensities.columns.get_indexer(np.asarray(items))
    if (rows < 0).any() or (cols < 0).any():
        raise DataError("pair_propensity: unknown user or item id")
    return propensities.to_numpy()[rows, cols]


def every_pair(propensities: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, P(O=1 | u,i)) of every user x item pair of the full propensity matrix."""
    P = propensities
    return np.repeat(P.index.to_numpy(), P.shape[1]), np.tile(P.columns.to_numpy(), P.shape[0]), P.to_numpy().ravel()


def pairs_in(users: np.ndarray, items: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    """True where (users[k], items[k]) is one of `rows`' (user_id, item_id) pairs."""
    return pd.MultiIndex.from_arrays([users, items]).isin(pd.MultiIndex.from_frame(rows[["user_id", "item_id"]]))


def with_attributes(table: pd.DataFrame, features: pd.DataFrame | None, key: str) -> pd.DataFrame:
    """Attach numeric attribute columns (attr_*) to a contract table, keyed by its id column."""
    return table if features is None else table.merge(features, left_on=key, right_index=True, how="left")


def _unrated_pairs(t: dict) -> pd.DataFrame:
    """With a propensity file, the pairs the MNAR log did not rate, as unexposed rows with their
    propensity: users chose what to rate from the whole catalogue, so every pair was a visit of the
    self-selection policy. The population DR averages over and the exposure head's target are then
    the selection model over every pair (benchmarks/coat.py's `_head` methods use the same). Their
    timestamp is the log's first (when the catalogue was offered), no rating, and outcome 0: the
    contract's outcome of an unexposed row is what happened without exposure, and an unchosen item
    got no rating (the implicit-feedback convention; relevance learners read exposed rows only)."""
    if t["propensities"] is None:
        return pd.DataFrame()
    rated = t["interactions"]
    users, items, p = every_pair(t["propensities"])
    keep = ~pairs_in(users, items, rated)
    return pd.DataFrame({
        "user_id": users[keep], "item_id": items[keep], "timestamp": rated["timestamp"].min(),
        "exposed": np.zeros(keep.sum(), dtype=np.int8), "outcome": np.float32(0.0), "rating": np.float32(np.nan),
        "policy": rated["policy"].iloc[0], "propensity": p[keep].astype(np.float32)})


def ingest_ratings(path: str | Path, data_dir: str | Path, truth_dir: str | Path, seed: int,
                   uniform_share: float = 0.1) -> dict:
    """Coat-format ratings into the contract: the MNAR log (with a propensity file, its unrated pairs
    too, unexposed: `_unrated_pairs`), plus `uniform_share` of the randomized ratings as logged rows of
    policy "uniform" (the unbiased sample that validation and debiasing use; AutoDebias protocol: 5%
    fit + 5% validation), the rest as the test set in ground truth."""
    from causalrec.data.split import split_randomized

    t = load_ratings_dir(path)
    uniform, test = split_randomized(t["test"], uniform_share, seed)
    uniform_rows = pd.DataFrame({
        "user_id": uniform["user_id"], "item_id": uniform["item_id"],
        "timestamp": t["interactions"]["timestamp"].max() + pd.to_timedelta(np.arange(1, len(uniform) + 1), unit="h"),
        "exposed": np.ones(len(uniform), dtype=np.int8), "outcome": uniform["y1"].astype(np.float32),
        "rating": uniform["rating"], "policy": UNIFORM_POLICY,
        # The probability that the uniform policy put a pair into this log: the survey's rate x our share.
        **({"propensity": np.float32(t["uniform_rate"] * uniform_share)} if "propensity" in t["interactions"] else {})})
    interactions = pd.concat([t["interactions"], _unrated_pairs(t), uniform_rows], ignore_index=True)
    with atomic_dir(Path(data_dir)) as tmp:
        interactions.to_parquet(tmp / "interactions.parquet", index=False)
        with_attributes(t["items"], t["item_features"], "item_id").to_parquet(tmp / "items.parquet", index=False)
        with_attributes(t["users"], t["user_features"], "user_id").to_parquet(tmp / "users.parquet", index=False)
    with atomic_dir(Path(truth_dir)) as tmp:
        test.to_parquet(tmp / "test_pairs.parquet", index=False)
    return {"interactions": len(interactions), "exposed": int(interactions["exposed"].sum()),
            "uniform_rows": len(uniform_rows), "items": len(t["items"]),
            "users": len(t["users"]), "test": len(test)}


def ingest_test_pairs(path: str | Path, truth_dir: str | Path) -> int:
    """A user's randomized test set (uniform exposure, or an A/B holdout): a parquet of user_id,
    item_id and a 0/1 outcome observed under exposure, stored as the ground truth evaluate reads."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"test set {path} not found")
    try:
        test = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"test set {path}: not a readable parquet file ({exc})") from exc
    missing = [c for c in ("user_id", "item_id", "outcome") if c not in test.columns]
    if missing:
        raise DataError(f"test set {path}: missing column(s) {missing} (needs user_id, item_id, outcome)")
    bad = test[~test["outcome"].isin([0, 1])]
    if len(bad) or test[["user_id", "item_id"]].isna().any().any():
        raise DataError(f"test set {path}: outcome must be 0/1 and ids non-null; e.g. rows {bad.head(3).to_dict('records')}")
    if test["outcome"].nunique() < 2:
        raise DataError(f"test set {path}: needs both outcomes (0 and 1) to measure ranking quality")
    with atomic_dir(Path(truth_dir)) as tmp:
        pd.DataFrame({"user_id": test["user_id"].astype(str), "item_id": test["item_id"].astype(str),
                      "y1": test["outcome"].astype(np.int8)}).to_parquet(tmp / "test_pairs.parquet", index=False)
    return len(test)


def ingest_parquet(path: str | Path, data_dir: str | Path) -> dict:
    path = Path(path)
    missing = [spec.file for spec in TABLES if not (path / spec.file).is_file()]
    if missing:
        raise DataError(f"parquet source {path}: missing {missing}")
    with atomic_dir(Path(data_dir)) as tmp:
        for spec in TABLES:
            shutil.copy2(path / spec.file, tmp / spec.file)
    return {"copied": [spec.file for spec in TABLES]}
