"""Drift reports with Evidently: reference window vs current window of the interaction log.

Columns compared: the logged behaviour (exposed, outcome, propensity, position), what was shown
(item category and price) and the model's prediction for each row (prediction drift).
Drift is declared when the share of drifted columns reaches `drift_share`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from causalrec.io import atomic_write_json, atomic_write_text

NUMERIC = ["exposed", "outcome", "propensity", "position", "price", "prediction"]
CATEGORICAL = ["category"]


def time_windows(frame: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Earliest and latest `fraction` of rows by timestamp."""
    frame = frame.sort_values("timestamp", kind="stable")
    n = max(1, int(len(frame) * fraction))
    return frame.iloc[:n], frame.iloc[-n:]


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, out_dir: str | Path, drift_share: float) -> dict:
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
    snapshot = Report([DataDriftPreset(drift_share=drift_share)]).run(current_data=cur, reference_data=ref)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "drift_report.html", snapshot.get_html_str(as_iframe=False))
    result = snapshot.dict()
    atomic_write_text(out_dir / "drift_report.json", snapshot.json())
    count = next(m for m in result["metrics"] if m["metric_name"].startswith("DriftedColumnsCount"))["value"]
    per_column = {m["config"]["column"]: {"method": m["config"]["method"], "score": m["value"],
                                          "threshold": m["config"]["threshold"]}
                  for m in result["metrics"] if m["metric_name"].startswith("ValueDrift")}
    summary = {"drift_detected": bool(count["share"] >= drift_share), "drifted_share": count["share"],
               "drifted_columns": int(count["count"]), "drift_share_threshold": drift_share,
               "columns": per_column, "reference_rows": len(reference), "current_rows": len(current),
               "html": str(out_dir / "drift_report.html")}
    atomic_write_json(out_dir / "drift.json", summary)
    return summary
