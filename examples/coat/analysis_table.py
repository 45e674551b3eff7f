"""Coat (Schnabel et al. 2016) as a table for `causalrec analyze` with graphs/coat.yaml.

    python examples/coat/analysis_table.py ../shared/data/coat examples/coat/data/analysis.parquet
    causalrec analyze --spec graphs/coat.yaml --data examples/coat/data/analysis.parquet --cluster item_id \
        --out examples/coat/artifacts/analysis

Rows are the randomized ratings (test.ascii: each user rated 16 coats drawn uniformly at random), so
which coats a user rated is not selected by the user. The question: does a coat being on the shop's
front page (an item-level treatment, chosen by the shop, not at random) change whether a user
likes it (rating >= 4)? The shop's choice may depend on the coat's gender and type, which also
drive liking: those are the confounders in the graph. No ground truth: the example shows the steps.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from causalrec.data.sources import load_ratings_dir


def coat_table(source: str | Path) -> pd.DataFrame:
    data = load_ratings_dir(source)
    items, users = data["item_features"], data["user_features"]
    if items is None or users is None:
        raise SystemExit(f"{source}: user_item_features/ is needed for this analysis")
    names = {"item": (Path(source) / "user_item_features" / "item_features_map.txt").read_text().split("\n"),
             "user": (Path(source) / "user_item_features" / "user_features_map.txt").read_text().split("\n")}

    def column(frame, kind, name):
        return frame[f"attr_{names[kind].index(name)}"]

    item_cols = pd.DataFrame({"front_page": column(items, "item", "onfrontpage:yes"),
                              "womens_coat": column(items, "item", "gender:women"),
                              "insulated_or_parka": column(items, "item", "jackettype:insulated")
                              + column(items, "item", "jackettype:parkas")}).astype(int)
    user_cols = pd.DataFrame({"woman": column(users, "user", "gender:women"),
                              "fashion_very": column(users, "user", "fashioninterest:very")}).astype(int)
    rows = data["test"].merge(item_cols, left_on="item_id", right_index=True).merge(user_cols, left_on="user_id",
                                                                                     right_index=True)
    rows["gender_match"] = (rows["womens_coat"] == rows["woman"]).astype(int)
    return rows.rename(columns={"y1": "liked"})[["user_id", "item_id", "front_page", "womens_coat", "insulated_or_parka",
                                                 "woman", "gender_match", "fashion_very", "liked"]]


if __name__ == "__main__":
    out = Path(sys.argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    table = coat_table(sys.argv[1])
    table.to_parquet(out, index=False)
    print(f"{len(table)} rows -> {out}; means:\n{table.drop(columns=['user_id', 'item_id']).mean().round(3)}")
