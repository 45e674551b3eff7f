"""Stage monitor: Evidently drift report on what was shown (live traffic against the training data when
there is served feedback), and the champion against the previous one on that traffic (rollback)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, ITEMS, read_table
from causalrec.pipeline.paths import require, stage_paths


def _windows(params: Params, inter: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(reference, current, what they are): live traffic (the latest served feedback partitions, the
    same "latest served traffic" the gate uses) against what the model was trained on (data/ without
    those events: it holds them or not, as the monitor runs after or before a retrain's ingest);
    without served feedback, the earliest vs the latest window of the training log."""
    from causalrec.data.feedback import read_partitions
    from causalrec.monitoring.drift import time_windows

    live = read_partitions(params.paths.feedback_dir, last=params.promote.partitions)
    if len(live):
        reference = inter[~inter["event_id"].astype(str).isin(set(live["event_id"].astype(str)))] if "event_id" in inter else inter
        if len(reference):
            return (reference, live.drop(columns="partition"),
                    f"live traffic ({', '.join(sorted(live['partition'].unique()))}) vs training data")
    ref, cur = time_windows(inter, params.monitor.window_fraction)
    return ref, cur, f"training log: first vs last {params.monitor.window_fraction:.0%} by time (no served feedback yet)"


def monitor(params: Params, interactions: pd.DataFrame | None = None) -> dict:
    """Evidently drift report on what was shown (live traffic against the training data, or two
    windows of the log), with prediction drift and (given item embeddings) the similarity of shown
    items to each user's history; then the champion against the previous one on the latest served
    traffic (rollback on a significant drop)."""
    from causalrec.monitoring.drift import drift_report, history_similarity
    from causalrec.persistence import load_model
    from causalrec.pipeline.promote import check_champion

    d = stage_paths(params)
    inter = interactions if interactions is not None else read_table(d["data"], INTERACTIONS)
    items = read_table(d["data"], ITEMS)
    attributes = items[[c for c in ("item_id", "category", "price") if c in items.columns]]
    model = None
    if d["metrics"].exists():
        best = json.loads(d["metrics"].read_text())["chosen"]["model"]
        model = load_model(require(d["models"] / f"{best}.pt", "monitor"))

    def described(rows: pd.DataFrame) -> pd.DataFrame:
        """What the report compares: the shown rows, their item's attributes, the model's prediction."""
        rows = rows[rows["exposed"] == 1].merge(attributes, on="item_id", how="left")
        if model is not None:
            rows["prediction"] = model.predict(rows["user_id"].to_numpy(), rows["item_id"].to_numpy())
        return rows

    ref, cur, source = _windows(params, inter)
    ref, cur = described(ref), described(cur)
    if (d["embeddings"] / "items.npy").exists():
        index = pd.read_parquet(d["embeddings"] / "items_index.parquet")["item_id"]
        ref, cur = history_similarity(ref, cur, index, np.load(d["embeddings"] / "items.npy"))
    report = drift_report(ref, cur, d["monitor"], params.monitor.drift_share, tuple(params.monitor.key_columns))
    # the champion against the previous one on the latest served traffic: a significant drop rolls back
    return {**report, "compared": source, "champion_check": check_champion(params)}
