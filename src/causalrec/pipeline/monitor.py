"""Stage monitor: Evidently drift report on what was shown (live traffic against the training log when
there is served feedback), and the champion's live outcome rate (rollback on a drop)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, ITEMS, read_table
from causalrec.pipeline.paths import require, stage_paths

def _windows(params: Params, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(reference, current, what they are): live traffic (the latest served feedback partitions, the
    same "latest served traffic" the gate uses) against everything the model was trained on before it;
    without served feedback, the earliest vs the latest window of the training log."""
    from causalrec.data.feedback import read_partitions
    from causalrec.monitoring.drift import time_windows

    live = read_partitions(params.paths.feedback_dir, last=params.promote.partitions)
    if len(live) and "event_id" in frame:
        served = frame["event_id"].astype(str).isin(set(live["event_id"].astype(str)))
        if served.any():
            return frame[~served], frame[served], f"live traffic ({', '.join(sorted(live['partition'].unique()))}) vs training log"
    ref, cur = time_windows(frame, params.monitor.window_fraction)
    return ref, cur, f"training log: first vs last {params.monitor.window_fraction:.0%} by time (no served feedback yet)"


def monitor(params: Params, interactions: pd.DataFrame | None = None) -> dict:
    """Evidently drift report on what was shown: the earliest vs latest window of the log, with
    prediction drift and (given item embeddings) the similarity of shown items to each user's history;
    then the champion's live outcome rate against the previous champion's (rollback on a drop)."""
    from causalrec.persistence import load_model
    from causalrec.monitoring.drift import drift_report, history_similarity

    d = stage_paths(params)
    inter = interactions if interactions is not None else read_table(d["data"], INTERACTIONS)
    items = read_table(d["data"], ITEMS)
    keep = [c for c in ("item_id", "category", "price") if c in items.columns]
    frame = inter.merge(items[keep], on="item_id", how="left")
    metrics_path = d["metrics"]
    if metrics_path.exists():
        best = json.loads(metrics_path.read_text())["chosen"]["model"]
        model = load_model(require(d["models"] / f"{best}.pt", "monitor"))
        frame["prediction"] = model.predict(frame["user_id"].to_numpy(), frame["item_id"].to_numpy())
    ref, cur, source = _windows(params, frame)
    ref, cur = ref[ref["exposed"] == 1], cur[cur["exposed"] == 1]
    if (d["embeddings"] / "items.npy").exists():
        index = pd.read_parquet(d["embeddings"] / "items_index.parquet")["item_id"]
        ref, cur = history_similarity(ref, cur, index, np.load(d["embeddings"] / "items.npy"))
    report = drift_report(ref, cur, d["monitor"], params.monitor.drift_share, tuple(params.monitor.key_columns))
    report["compared"] = source
    from causalrec.pipeline.promote import check_champion

    # the champion on live traffic: a significant drop in its outcome rate rolls back (registry.json)
    return {**report, "champion_check": check_champion(params)}
