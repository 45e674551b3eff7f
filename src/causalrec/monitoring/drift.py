"""Drift reports with Evidently: reference window vs current window of the interaction log.

Rows compared: what was shown (exposed rows). Columns: the logged behaviour (outcome, propensity,
position), the shown item's category and price, the model's prediction (prediction drift) and
`history_similarity`: the cosine between the shown item's text embedding and the user's reference
profile (mean embedding of the items the user clicked in the reference window, leaving the row's
own click out). Interest drift barely moves aggregate columns (the population's mix of interests
can stay the same while every user's changes), but it lowers how similar what a user is shown and
clicks is to what that user clicked before.

The decision is Evidently's own tests (`include_tests=True`): drift is declared when the share of
drifted columns reaches `drift_share`, or when the value-drift test of a key column fails.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.io import atomic_write_json, atomic_write_text

NUMERIC = ["outcome", "propensity", "position", "price", "prediction", "history_similarity"]
CATEGORICAL = ["category"]
MONITORED_COLUMNS = tuple(NUMERIC + CATEGORICAL)


def time_windows(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Earliest and latest `fraction` of rows by timestamp."""
    frame = frame.sort_values("timestamp", kind="stable")
    n = max(1, int(len(frame) * fraction))
    return frame.iloc[:n], frame.iloc[-n:]


def history_similarity(reference: pd.DataFrame, current: pd.DataFrame, item_ids, item_vectors: np.ndarray,
                       profiles: pd.DataFrame | None = None):
    """Each row's cosine between its item's vector and the user's click profile: the clicks of
    `profiles`, or of the reference window (its own click left out there) when None; rows of users
    without profile clicks are dropped."""
    pos = pd.Index(pd.Series(item_ids).astype(str))
    vectors = np.asarray(item_vectors, dtype=np.float64)
    own_in_profile = profiles is None
    profiles = reference if profiles is None else profiles
    clicks = profiles[profiles["outcome"] > 0]
    sums = pd.DataFrame(vectors[pos.get_indexer(clicks["item_id"].astype(str))]).groupby(clicks["user_id"].to_numpy()).sum()
    counts = clicks.groupby("user_id").size()

    def score(rows: pd.DataFrame, leave_own_out: bool) -> pd.DataFrame:
        rows = rows[rows["user_id"].isin(sums.index)]
        e = vectors[pos.get_indexer(rows["item_id"].astype(str))]
        profile = sums.loc[rows["user_id"]].to_numpy()
        n = counts.loc[rows["user_id"]].to_numpy().astype(float)[:, None]
        if leave_own_out:
            own = (rows["outcome"].to_numpy() > 0)[:, None]
            profile, n = profile - e * own, n - own
        keep = n[:, 0] > 0
        profile = profile[keep] / n[keep]
        cos = (e[keep] * profile).sum(1) / (np.linalg.norm(e[keep], axis=1) * np.linalg.norm(profile, axis=1) + 1e-12)
        return rows[keep].assign(history_similarity=cos)

    return score(reference, own_in_profile), score(current, False)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, out_dir: str | Path, drift_share: float,
                 key_columns: tuple[str, ...] = ()) -> dict:
    """Write drift_report.html / drift_report.json to `out_dir` and return the decision summary."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    num = [c for c in NUMERIC if c in reference.columns]
    cat = [c for c in CATEGORICAL if c in reference.columns]
    if not num and not cat:
        raise ValueError("drift report: no monitored column present")
    definition = DataDefinition(numerical_columns=num, categorical_columns=cat)
    ref = Dataset.from_pandas(reference[num + cat].reset_index(drop=True), data_definition=definition)
    cur = Dataset.from_pandas(current[num + cat].reset_index(drop=True), data_definition=definition)
    snapshot = Report([DataDriftPreset(drift_share=drift_share)], include_tests=True).run(current_data=cur,
                                                                                          reference_data=ref)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "drift_report.html", snapshot.get_html_str(as_iframe=False))
    result = snapshot.dict()
    atomic_write_text(out_dir / "drift_report.json", snapshot.json())
    count = next(m for m in result["metrics"] if m["metric_name"].startswith("DriftedColumnsCount"))["value"]
    per_column = {m["config"]["column"]: {"method": m["config"]["method"], "score": m["value"],
                                          "threshold": m["config"]["threshold"]}
                  for m in result["metrics"] if m["metric_name"].startswith("ValueDrift")}
    failed = [t for t in result["tests"] if str(t["status"]).endswith("FAIL")]
    share_failed = any(t["metric_config"]["params"]["type"].endswith("DriftedColumnsCount") for t in failed)
    key_failed = sorted(t["metric_config"]["params"]["column"] for t in failed
                        if t["metric_config"]["params"].get("column") in key_columns)
    summary = {"drift_detected": bool(share_failed or key_failed), "share_test_failed": share_failed,
               "key_columns_drifted": key_failed, "key_columns": list(key_columns),
               "failed_tests": [t["name"] for t in failed], "drifted_share": count["share"],
               "drifted_columns": int(count["count"]), "drift_share_threshold": drift_share,
               "columns": per_column, "reference_rows": len(reference), "current_rows": len(current),
               "html": str(out_dir / "drift_report.html")}
    atomic_write_json(out_dir / "drift.json", summary)
    return summary
