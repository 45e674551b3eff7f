"""Loaders that turn public data sets into the data contract (data/*.parquet).

* Coat (Schnabel et al. 2016): MNAR training ratings + randomized test ratings, binary user and
  item attributes. Item texts are rendered from the attributes. Ratings >= 4 are positive.
  The randomized test set goes to the ground-truth directory, never into data/.
* parquet: a directory already holding the three contract files (copied as they are).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.data.schema import TABLES, DataError
from causalrec.io import atomic_dir

COAT_FILES = ("train.ascii", "test.ascii", "user_item_features/item_features.ascii",
              "user_item_features/item_features_map.txt", "user_item_features/user_features.ascii",
              "user_item_features/user_features_map.txt")


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


def load_coat(path: str | Path) -> dict[str, pd.DataFrame]:
    """Coat as contract tables plus `test` (randomized ratings) and `features` (binary attribute matrices)."""
    path = Path(path)
    missing = [f for f in COAT_FILES if not (path / f).is_file()]
    if missing:
        raise DataError(f"coat directory {path}: missing file(s) {missing}")
    train, test = _read_matrix(path / "train.ascii"), _read_matrix(path / "test.ascii")
    item_feat = _read_matrix(path / "user_item_features/item_features.ascii")
    user_feat = _read_matrix(path / "user_item_features/user_features.ascii")
    item_names = (path / "user_item_features/item_features_map.txt").read_text().split("\n")
    user_names = (path / "user_item_features/user_features_map.txt").read_text().split("\n")
    if train.shape != test.shape or item_feat.shape[0] != train.shape[1] or user_feat.shape[0] != train.shape[0]:
        raise DataError(f"coat directory {path}: inconsistent shapes train {train.shape}, test {test.shape}, "
                        f"item features {item_feat.shape}, user features {user_feat.shape}")
    n_users, n_items = train.shape
    uid = np.array([f"u{u:04d}" for u in range(n_users)])
    iid = np.array([f"i{i:04d}" for i in range(n_items)])
    u, i = np.nonzero(train)
    interactions = pd.DataFrame({
        "user_id": uid[u], "item_id": iid[i],
        # Coat has no timestamps; rows get one synthetic day each in user order (documented).
        "timestamp": pd.Timestamp("2016-01-01") + pd.to_timedelta(np.arange(len(u)) // 24, unit="h"),
        "exposed": np.ones(len(u), dtype=np.int8), "outcome": (train[u, i] >= 4).astype(np.float32),
        "rating": train[u, i].astype(np.float32),
    })
    item_text = _features_text(item_feat, item_names)
    items = pd.DataFrame({"item_id": iid, "title": [t.split(";")[0] + " jacket" for t in item_text],
                          "description": item_text,
                          "category": [t.split(";")[1].split(":")[1].strip() if ";" in t else "other" for t in item_text]})
    users = pd.DataFrame({"user_id": uid, "profile_text": _features_text(user_feat, user_names)})
    tu, ti = np.nonzero(test)
    test_df = pd.DataFrame({"user_id": uid[tu], "item_id": iid[ti], "y1": (test[tu, ti] >= 4).astype(np.int8),
                            "rating": test[tu, ti].astype(np.float32)})
    out = {"interactions": interactions, "items": items, "users": users, "test": test_df,
           "item_features": pd.DataFrame(item_feat, index=iid, columns=item_names[: item_feat.shape[1]]),
           "user_features": pd.DataFrame(user_feat, index=uid, columns=user_names[: user_feat.shape[1]])}
    if (path / "propensities.ascii").is_file():
        # The authors' propensities of observation p(O=1 | u, i) (naive Bayes with a uniform sample).
        prop = _read_matrix(path / "propensities.ascii")
        interactions["propensity"] = prop[u, i].astype(np.float32)
    return out


def ingest_coat(path: str | Path, data_dir: str | Path, truth_dir: str | Path) -> dict:
    tables = load_coat(path)
    with atomic_dir(Path(data_dir)) as tmp:
        for name in ("interactions", "items", "users"):
            tables[name].to_parquet(tmp / f"{name}.parquet", index=False)
    with atomic_dir(Path(truth_dir)) as tmp:
        tables["test"].to_parquet(tmp / "test_pairs.parquet", index=False)
    return {name: len(tables[name]) for name in ("interactions", "items", "users", "test")}


def ingest_parquet(path: str | Path, data_dir: str | Path) -> dict:
    path = Path(path)
    missing = [spec.file for spec in TABLES if not (path / spec.file).is_file()]
    if missing:
        raise DataError(f"parquet source {path}: missing {missing}")
    with atomic_dir(Path(data_dir)) as tmp:
        for spec in TABLES:
            shutil.copy2(path / spec.file, tmp / spec.file)
    return {"copied": [spec.file for spec in TABLES]}
