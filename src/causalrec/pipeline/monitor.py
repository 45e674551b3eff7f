"""Stage monitor: Evidently drift report on what was shown (with served feedback: the clicks on the
latest uniformly drawn slates against the earlier ones; served traffic is never compared with the
logging policy's log), and the champion against the previous one on the latest served traffic
(rollback)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, ITEMS, read_table
from causalrec.pipeline.paths import require, stage_paths


# What a serving policy decides (which items, at which place, with which probability): a new champion
# moves these on its own, so they are not compared on the uniformly drawn slates.
POLICY_COLUMNS = ["outcome", "propensity", "position"]


def _windows(params: Params, inter: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, str, list, bool]:
    """(reference, current, click profiles or None, what they are, the live partitions compared on their
    uniformly drawn slates or [], whether the policy's columns are left out).

    Served traffic is compared with served traffic, never with the logging policy's training log:
    every column of what was shown (which items, their price, their place, their propensity, the
    outcome) depends on the policy that showed it, so the first served window against the log would
    flag a new policy as drift in a world that never moved.
    * Served partitions before the latest ones, with uniformly drawn slates on both sides: the clicks
      on those slates, latest vs earlier (what users pick among items shown at random depends on the
      world, not on which champion served). The click profiles are the training data without the
      compared rows.
    * Served partitions before the latest ones, without uniform slates on both sides: all shown rows,
      latest vs earlier, the policy's own columns left out (a new champion between them moves them).
    * The first served window (nothing served before it to compare with) or no served feedback: the
      earliest vs the latest window of the training log."""
    from causalrec.data.feedback import read_partitions
    from causalrec.monitoring.drift import time_windows

    n = params.promote.partitions
    live = read_partitions(params.paths.feedback_dir, last=n)
    if len(live):
        parts = sorted(live["partition"].unique())
        earlier = read_partitions(params.paths.feedback_dir, last=2 * n)
        earlier = earlier[~earlier["partition"].isin(parts)] if len(earlier) else earlier
        if len(earlier):
            named = f"live ({', '.join(parts)}) vs earlier ({', '.join(sorted(earlier['partition'].unique()))})"
            if "uniform" in live and "uniform" in earlier:
                before = earlier[(earlier["uniform"] == 1) & (earlier["outcome"] > 0)]
                now = live[(live["uniform"] == 1) & (live["outcome"] > 0)]
                if len(before) and len(now):
                    ids = inter["event_id"].astype(str) if "event_id" in inter else pd.Series("", index=inter.index)
                    compared = set(before["event_id"].astype(str)) | set(now["event_id"].astype(str))
                    return (before.drop(columns="partition"), now.drop(columns="partition"), inter[~ids.isin(compared)],
                            f"clicks on uniformly drawn slates: {named}", parts, True)
            return (earlier.drop(columns="partition"), live.drop(columns="partition"), None,
                    f"served traffic without the policy's columns: {named} (no uniformly drawn slates on both sides)",
                    [], True)
        first = (f"training log: first vs last {params.monitor.window_fraction:.0%} by time (the first served window, "
                 f"{', '.join(parts)}, has no served traffic before it to compare with)")
    else:
        first = f"training log: first vs last {params.monitor.window_fraction:.0%} by time (no served feedback yet)"
    ref, cur = time_windows(inter, params.monitor.window_fraction)
    return ref, cur, None, first, [], False


def monitor(params: Params, interactions: pd.DataFrame | None = None) -> dict:
    """Evidently drift report on what was shown (served traffic against earlier served traffic, or two
    windows of the training log: `_windows`), with prediction drift and (given item embeddings) the similarity of shown
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

    ref, cur, profiles, source, explored, served = _windows(params, inter)
    ref, cur = described(ref), described(cur)
    if (d["embeddings"] / "items.npy").exists():
        index = pd.read_parquet(d["embeddings"] / "items_index.parquet")["item_id"]
        ref, cur = history_similarity(ref, cur, index, np.load(d["embeddings"] / "items.npy"),
                                      None if profiles is None else profiles[profiles["exposed"] == 1])
    if served:
        ref, cur = ref.drop(columns=POLICY_COLUMNS, errors="ignore"), cur.drop(columns=POLICY_COLUMNS, errors="ignore")
    report = drift_report(ref, cur, d["monitor"], params.monitor.drift_share, tuple(params.monitor.key_columns))
    report["drift_mark"] = None
    if report["drift_detected"] and explored:
        # Drift between uniformly drawn slates is the users' interests moving (not a new champion, not
        # the first served policy against the logging policy): the next ingest trains on what was
        # served since (ingest.after_drift).
        from causalrec.data.feedback import mark_drift

        report["drift_mark"] = mark_drift(params.paths.feedback_dir, explored[0],
                                          {"compared": source, "failed_tests": report["failed_tests"]})["since_partition"]
    # the champion against the previous one on the latest served traffic: a significant drop rolls back
    return {**report, "compared": source, "champion_check": check_champion(params)}
