"""Served feedback as data: append-only partitions beside the base data, never inside it.

    feedback_data/                      (params.paths.feedback_dir; DVC-tracked: feedback_data.dvc)
      part-00001/interactions.parquet   the events of one export: event_id, user_id, item_id, timestamp,
                                        outcome, propensity, position, policy, model_version,
                                        request_id, slate_size, uniform (exposed = treatment = 1; a
                                        /recommend control: 0, with its control_rate)
      part-00001/items.parquet          items first added at serving time (POST /items)
      part-00001/users.parquet          users first seen in feedback (under their pseudonym)
      part-00001/manifest.json          when, how many events, from which log
      drift.json                        the monitor's drift mark: the first partition served after
                                        the users' interests moved (ingest.after_drift)

A partition is written once, whole (temp directory + rename), and never rewritten: a later export
writes the next one with only the events no partition holds yet, so nothing acknowledged is lost or
counted twice across rounds. `merge_into` is what ingest runs after the source wrote the base
tables: it appends every partition, so the training data = base + all served feedback.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.data.schema import INTERACTIONS, ITEMS, USERS, DataError, TableSpec, read_table
from causalrec.io import atomic_dir, atomic_write_bytes

PART = re.compile(r"^part-(\d{5})$")
def partitions(feedback_dir: str | Path) -> list[Path]:
    """The partitions, oldest first (directories of an interrupted write are not partitions)."""
    root = Path(feedback_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and PART.match(p.name))


def read_partitions(feedback_dir: str | Path, table: TableSpec = INTERACTIONS, last: int | None = None) -> pd.DataFrame:
    """One table across the partitions (the `last` n only, when given); empty when there are none."""
    parts = partitions(feedback_dir)[-last:] if last else partitions(feedback_dir)
    frames = []
    for part in parts:
        path = part / table.file
        if path.exists():
            try:
                frames.append(pd.read_parquet(path).assign(partition=part.name))
            except Exception as exc:  # a damaged partition is named, not skipped
                raise DataError(f"feedback partition {path} cannot be read ({exc}); restore it with `dvc checkout`") from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def exported_event_ids(feedback_dir: str | Path) -> set[str]:
    events = read_partitions(feedback_dir)
    return set(events["event_id"].astype(str)) if len(events) else set()


def write_partition(feedback_dir: str | Path, tables: dict[str, pd.DataFrame], manifest: dict) -> Path:
    """The next partition, written whole; `tables` maps interactions/items/users to their new rows."""
    root = Path(feedback_dir)
    existing = partitions(root)
    number = int(PART.match(existing[-1].name).group(1)) + 1 if existing else 1
    path = root / f"part-{number:05d}"
    with atomic_dir(path) as tmp:
        for name, df in tables.items():
            if len(df):
                df.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "manifest.json").write_text(json.dumps({"partition": path.name, **manifest}, indent=2, default=str))
    return path


def gate_slates(rows: pd.DataFrame, max_slates: int | None = None, max_share: float = 1.0) -> pd.Series:
    """(rows,) bool: the promotion gate's evaluation set among served rows: the uniformly drawn slates,
    at most `max_slates` of them (None: all) and at most `max_share` of them, always the same ones for
    the same rows (the lowest hashes of their request ids: pandas' hash has a fixed key), so ingest
    leaves out exactly what the gate scores."""
    uniform = rows["uniform"].eq(1).fillna(False).astype(bool)  # (a nullable column: missing = not uniform)
    request = rows["request_id"].astype(str)
    slates = pd.Series(request[uniform].unique())
    cap = int(len(slates) * max_share)
    max_slates = cap if max_slates is None else min(max_slates, cap)
    if len(slates) > max_slates:
        order = pd.util.hash_pandas_object(slates, index=False).to_numpy().argsort(kind="stable")
        slates = slates.iloc[order[:max_slates]]
    return uniform & request.isin(slates)


def request_control_rate(rows: pd.DataFrame) -> np.ndarray:
    """(rows,) the control_rate of each row's request, read from its controls (exposed = 0: the unshown items
    /recommend named, drawn at that rate); 0 where the request has none."""
    rate = rows["control_rate"].where(rows["exposed"] == 0)
    return rate.groupby(rows["request_id"]).transform("max").fillna(0.0).to_numpy(np.float64)


DRIFT_MARK = "drift.json"


def _require_partition(feedback_dir: str | Path, name: str, what: str) -> None:
    if name not in {p.name for p in partitions(feedback_dir)}:
        raise DataError(f"{what}: no feedback partition {name!r} in {feedback_dir}")


def mark_drift(feedback_dir: str | Path, partition: str, details: dict) -> dict:
    """Record that the users' interests moved before `partition` (the monitor's decision on the uniformly
    drawn slates), written whole; the latest mark replaces an earlier one."""
    from datetime import datetime, timezone

    _require_partition(feedback_dir, partition, "drift mark")
    mark = {"since_partition": partition, "marked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **details}
    atomic_write_bytes(Path(feedback_dir) / DRIFT_MARK, json.dumps(mark, indent=2, default=str).encode())
    return mark


def drift_mark(feedback_dir: str | Path) -> dict | None:
    """The latest drift mark, or None."""
    path = Path(feedback_dir) / DRIFT_MARK
    if not path.exists():
        return None
    try:
        mark = json.loads(path.read_text())
    except ValueError:
        mark = None
    if not (isinstance(mark, dict) and PART.match(str(mark.get("since_partition")))):
        raise DataError(f"{path} is not a drift mark (a JSON object with since_partition: part-NNNNN); "
                        "restore it with `dvc checkout` or delete it")
    return mark


def retention_cutoff(retention_days: float | None, now=None):
    """The oldest timestamp a served event may have (UTC-naive, as the partitions hold them); None: no limit."""
    if retention_days is None:
        return None
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    now = now.tz_convert("UTC").tz_localize(None) if now.tzinfo is not None else now
    return now - pd.Timedelta(days=retention_days)


def merge_into(data_dir: str | Path, feedback_dir: str | Path, window: int | None = None, holdout: int = 0,
               holdout_slates: int | None = None, holdout_share: float = 1.0, since: str | None = None,
               retention_days: float | None = None, now=None) -> dict:
    """Append the partitions' rows to the base tables in `data_dir` (items and users by key, first
    occurrence wins, from every partition; interactions from the last `window` logs, the base log
    counting as the oldest: with window w and at least w partitions, the base interactions are
    dropped and the last w partitions kept; None keeps all). With `since` (a partition name), the
    interactions logged before it, the base log's included, are dropped first: they record interests
    users no longer have. The uniformly drawn slates of the last `holdout` partitions (at most
    `holdout_slates` of them and at most the share `holdout_share`: `gate_slates`) stay out: they are
    the promotion gate's evaluation set, and a candidate trained on them would be scored on its own
    training data. With `retention_days`, served events older than that (before `now`, default the
    clock) are dropped (privacy.retention_days). Returns counts per table."""
    import io

    data_dir, parts = Path(data_dir), partitions(feedback_dir)
    if since is not None:
        _require_partition(feedback_dir, since, "training since the drift mark")
    current = [p for p in parts if since is None or p.name >= since]
    recent = current[-window:] if window else current
    counts = {"partitions": len(recent),
              "base_interactions": bool(since is None and (window is None or len(parts) < window))}
    if since is not None:
        counts["since_partition"] = since
    for spec in (ITEMS, USERS, INTERACTIONS):
        rows = read_partitions(feedback_dir, spec, last=len(recent) if spec is INTERACTIONS else None)
        counts[spec.name] = 0
        if not len(rows):
            continue
        # interactions through the contract reader (timestamps UTC-naive, as in the partitions); the keyed
        # tables whole (columns the contract does not name stay)
        base = read_table(data_dir, spec) if spec is INTERACTIONS else pd.read_parquet(data_dir / spec.file)
        cutoff = retention_cutoff(retention_days, now)
        if spec is INTERACTIONS and cutoff is not None:
            expired = (rows["timestamp"] < cutoff).to_numpy()
            counts["expired"] = int(expired.sum())
            rows = rows[~expired]
        if spec is INTERACTIONS and holdout and "uniform" in rows:
            latest = rows["partition"].isin([p.name for p in parts[-holdout:]]).to_numpy()
            held = np.zeros(len(rows), bool)
            held[latest] = gate_slates(rows[latest], holdout_slates, holdout_share).to_numpy()
            counts["held_out_for_the_gate"] = int(held.sum())
            rows = rows[~held]
        rows = rows.drop(columns="partition")
        if spec.key:
            rows = rows[~rows[spec.key].astype(str).isin(base[spec.key].astype(str))].drop_duplicates(spec.key)
        else:
            if not counts["base_interactions"]:
                base = base.iloc[:0]
            # base rows were not served: no model version or slate id, slate size 0 (= unknown, as /feedback)
            for col in sorted(set(rows.columns) - set(base.columns)):  # sorted: the same bytes in every process
                base[col] = 0 if spec.columns.get(col) in ("int", "binary") else None
            if "propensity" in base:  # served propensities stay float64 (float32 rounds tiny ones to 0)
                base["propensity"] = base["propensity"].astype("float64")
            rows = rows.astype({c: base[c].dtype for c in rows.columns
                                if c in base and c not in ("event_id", "propensity") and base[c].notna().any()})
        merged = pd.concat([base, rows], ignore_index=True)
        buf = io.BytesIO()
        merged.to_parquet(buf, index=False)
        atomic_write_bytes(data_dir / spec.file, buf.getvalue())
        counts[spec.name] = len(rows)
    return counts
