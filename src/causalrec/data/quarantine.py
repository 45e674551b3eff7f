"""Logged events that broke a rule at export, kept apart instead of blocking the loop.

    feedback_data/quarantine/           (inside paths.feedback_dir: DVC-versioned with the partitions)
      00001-held.parquet                events one export set aside: event_id, rules (what each broke),
                                        event (the log line as JSON), held_at, export (the partition
                                        written beside them, or none)
      00002-release.json                an operator's decision: {action: release | drop, event_ids,
                                        reason, at}

Append-only: a file is written once, whole (temp + rename), numbered in order; an event's status is
its latest record: held, released (the next export checks it again, from the line kept here: it
becomes data or is held again with the rule it still breaks) or dropped (never exported).
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from causalrec.data.schema import DataError
from causalrec.io import atomic_write_bytes

RECORD = re.compile(r"^(\d{5})-(held|release|drop)\.(parquet|json)$")
ACTIONS = ("release", "drop")
STATUS = {"release": "released", "drop": "dropped"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Quarantine:
    def __init__(self, feedback_dir: str | Path):
        self.root = Path(feedback_dir) / "quarantine"

    def _records(self) -> list[tuple[int, str, Path]]:
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), m.group(2), p) for p in self.root.iterdir() if (m := RECORD.match(p.name))]
        return sorted(found)

    def _next(self, kind: str, suffix: str) -> Path:
        records = self._records()
        return self.root / f"{(records[-1][0] + 1 if records else 1):05d}-{kind}.{suffix}"

    def hold(self, events: list[dict], rules: list[str], export: str | None) -> Path | None:
        """Set `events` aside, each with the rules it broke; returns the record (None: nothing to hold)."""
        if not events:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        rows = pd.DataFrame({"event_id": [str(e.get("event_id")) if isinstance(e, dict) else "" for e in events],
                             "rules": rules, "event": [json.dumps(e, sort_keys=True, default=str) for e in events],
                             "held_at": _now(), "export": export}, dtype=object)
        path = self._next("held", "parquet")
        atomic_write_bytes(path, rows.to_parquet(index=False))
        return path

    def state(self) -> pd.DataFrame:
        """One row per quarantined event: event_id, rules, event, held_at, status, decided_at, reason."""
        held, decisions = [], []
        for seq, kind, path in self._records():
            try:
                if kind == "held":
                    held.append(pd.read_parquet(path).assign(seq=seq))
                else:
                    record = json.loads(path.read_text())
                    decisions += [{"event_id": e, "seq": seq, "status": STATUS[kind],
                                   "decided_at": record["at"], "reason": record["reason"]} for e in record["event_ids"]]
            except Exception as exc:  # a damaged record is named, never skipped
                raise DataError(f"quarantine record {path} cannot be read ({exc}); restore it with `dvc checkout`") from None
        if not held:
            return pd.DataFrame(columns=["event_id", "rules", "event", "held_at", "status", "decided_at", "reason"])
        rows = pd.concat(held, ignore_index=True).assign(status="held", decided_at=None, reason=None)
        # the latest record of each event decides: a later hold (a released event that broke a rule again)
        # or a later decision
        events = pd.concat([rows, pd.DataFrame(decisions, columns=["event_id", "seq", "status", "decided_at", "reason"])],
                           ignore_index=True).sort_values("seq", kind="stable")
        latest = events.groupby("event_id", sort=False).tail(1).set_index("event_id")
        out = rows.sort_values("seq", kind="stable").groupby("event_id", sort=False).tail(1).set_index("event_id")
        out[["status", "decided_at", "reason"]] = latest.loc[out.index, ["status", "decided_at", "reason"]]
        return out.reset_index()[["event_id", "rules", "event", "held_at", "status", "decided_at", "reason"]]

    def pending(self) -> tuple[set[str], list[dict]]:
        """What export needs, from one read: the ids it must not take from the log (held or dropped) and
        the released events, as logged, which it checks again."""
        state = self.state()
        released = state["status"] == "released"
        return set(state.loc[~released, "event_id"]), [json.loads(e) for e in state.loc[released, "event"]]

    def decide(self, action: str, event_ids: list[str] | None, reason: str) -> dict:
        """Release (retry at the next export) or drop the held events named (None: every held one)."""
        if action not in ACTIONS:
            raise DataError(f"quarantine action must be one of {ACTIONS}, got {action!r}")
        if not reason.strip():
            raise DataError("a quarantine decision needs a reason (it is kept with the data)")
        state = self.state()
        held = set(state.loc[state["status"] == "held", "event_id"])
        ids = sorted(held) if event_ids is None else list(dict.fromkeys(event_ids))
        unknown = [e for e in ids if e not in held]
        if unknown:
            raise DataError(f"{len(unknown)} event id(s) are not held in {self.root} (see `causalrec quarantine "
                            f"list`): {unknown[:5]}")
        if not ids:
            return {"action": action, "event_ids": [], "record": None}
        record = {"action": action, "event_ids": ids, "reason": reason, "at": _now()}
        path = self._next(action, "json")
        atomic_write_bytes(path, json.dumps(record, indent=2).encode())
        return {**record, "record": str(path)}

    def counts(self) -> dict:
        state = self.state()
        return {status: int((state["status"] == status).sum()) for status in ("held", "released", "dropped")}
