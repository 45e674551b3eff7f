"""Append-only feedback log: one JSON line per event, idempotent by event_id, fsynced before
the caller acknowledges. Safe across threads and worker processes: an exclusive lock on a sidecar
file (`<log>.lock`) guards check-then-append, and each writer first reads what others appended. A
torn last line (a crash mid-write) is ignored when reading and never acknowledged.

Rotation is explicit: past `max_bytes` (serve.feedback_max_bytes), or when an operator calls
`rotate()` (`causalrec rotate-feedback`), the log is renamed to `<log>.<UTC time>` and a fresh file
begins. Writers notice the rename under the lock and reopen; deduplication spans every segment, and
`read_events` / export read them all, in order.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path


def segments(path: str | Path) -> list[Path]:
    """The rotated segments of the log at `path`, oldest first (the live file not included)."""
    path = Path(path)
    found = [p for p in path.parent.glob(f"{path.name}.*") if p.name[len(path.name) + 1:].isdigit()]
    return sorted(found)


def _ids(data: bytes) -> set[str]:
    out = set()
    for line in data.splitlines():
        try:
            out.add(json.loads(line)["event_id"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn line from a crash, followed by a newline of a later write
    return out


class FeedbackLog:
    def __init__(self, path: str | Path, max_bytes: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._lockfile = open(self.path.with_name(self.path.name + ".lock"), "a+b")
        self._seen: set[str] = set()
        with self._locked():
            for segment in segments(self.path):
                self._seen |= _ids(segment.read_bytes())
            self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_APPEND, 0o640)
        self._fh = os.fdopen(fd, "r+b", buffering=0)
        self._offset = 0

    @contextlib.contextmanager
    def _locked(self):
        fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)

    def _catch_up(self) -> None:
        """Read lines appended since our last look (by us or another process); follow a rotation."""
        self._fh.seek(self._offset)
        data = self._fh.read()
        end = data.rfind(b"\n") + 1  # only whole lines; a torn tail stays unread
        self._seen |= _ids(data[:end])
        self._offset += end
        try:
            rotated = os.stat(self.path).st_ino != os.fstat(self._fh.fileno()).st_ino
        except FileNotFoundError:
            rotated = True
        if rotated:  # another writer rotated: what we just read was the old segment's tail
            self._fh.close()
            self._open()
            self._catch_up()

    def append(self, event: dict) -> bool:
        """Durably append `event` unless its event_id is already logged. Returns True if written."""
        return self.append_many([event])[0]

    def append_many(self, events: list[dict]) -> list[bool]:
        """Durably append the events whose event_id is not logged yet (nor earlier in `events`), with
        one write and one fsync for all (e.g. a served slate's outcomes). Returns, per event, whether
        it was written."""
        with self._lock, self._locked():
            self._catch_up()
            written, lines = [], []
            for event in events:
                new = event["event_id"] not in self._seen
                if new:
                    self._seen.add(event["event_id"])
                    lines.append(json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n")
                written.append(new)
            if lines:
                data = "".join(lines).encode()
                if os.fstat(self._fh.fileno()).st_size > self._offset:
                    # A torn tail from a crash: start on a fresh line so the first event parses.
                    data = b"\n" + data
                os.write(self._fh.fileno(), data)
                os.fsync(self._fh.fileno())
                self._offset = os.fstat(self._fh.fileno()).st_size
                if self.max_bytes is not None and self._offset >= self.max_bytes:
                    self._rotate()
            return written

    def rotate(self) -> Path | None:
        """Close the live segment now (e.g. daily); returns its new name (None when it is empty)."""
        with self._lock, self._locked():
            self._catch_up()
            return self._rotate()

    def _rotate(self) -> Path | None:
        if os.fstat(self._fh.fileno()).st_size == 0:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S%f")
        target = self.path.with_name(f"{self.path.name}.{stamp}")
        os.rename(self.path, target)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename is durable before anyone appends to the new file
        finally:
            os.close(fd)
        self._fh.close()
        self._open()
        return target

    def __len__(self) -> int:
        with self._lock, self._locked():
            self._catch_up()
            return len(self._seen)


def read_events(path: str | Path) -> list[dict]:
    """Every complete, parseable event in the log and its rotated segments, oldest first (first
    occurrence of each event_id)."""
    events, seen = [], set()
    path = Path(path)
    for part in [*segments(path), path]:
        if not part.exists():
            continue
        for line in part.read_bytes().split(b"\n"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event_id") not in seen:
                seen.add(event.get("event_id"))
                events.append(event)
    return events


def _known_users(log_path: Path, data_dir: Path, key: bytes | None) -> dict[str, str]:
    """pseudonym -> user id for the users in the data (the service stores only pseudonyms)."""
    from causalrec.data.schema import USERS, read_table
    from causalrec.serving.privacy import pseudonym_key, pseudonymize

    key = key if key is not None else pseudonym_key(log_path.parent)
    return {pseudonymize(u, key): u for u in read_table(data_dir, USERS)["user_id"].astype(str)}


class TooMuchQuarantined(ValueError):
    """An export whose share of events breaking a rule is over feedback.max_quarantine_share."""


def export_feedback(log_path: str | Path, data_dir: str | Path, feedback_dir: str | Path, validation_dir: str | Path,
                    catalogue: str | Path | None = None, key: bytes | None = None,
                    known_versions: set[str] | None = None, max_quarantine_share: float = 1.0,
                    retention_days: float | None = None, now=None) -> dict:
    """The logged events no partition holds yet become the next partition of `feedback_dir`
    (causalrec.data.feedback); `data_dir` is only read (ingest merges the partitions).

    Each event is checked by the rule book the service checks before it acknowledges (data.rules:
    the contract's domains, known items: the data's, earlier partitions' and the `catalogue` store's,
    known model versions: `known_versions`, None = not checked). An event that breaks a rule (an older
    release wrote it, the disk flipped a bit, a rule changed) is set aside in the quarantine
    (data.quarantine) with the rules it broke, and the rest are exported: one bad event never blocks
    the loop. When more than `max_quarantine_share` of the new events break a rule, something is wrong
    upstream: TooMuchQuarantined is raised and nothing is written. The good events then pass the
    feedback suite (the contract's types and domains, event ids unique and new; report in
    `validation_dir`); nothing is written when it fails.

    Each exported event is an exposed, treated row (a control: unexposed, untreated, with its
    control_rate) with its outcome, the served propensity and
    position, policy 'serving:<name>', the model version that served it, its slate (request id, size,
    whether it was drawn uniformly). Items added at serving time join the partition's items with their
    texts. The log holds pseudonyms (serving.privacy): each maps back to a known user through the key
    beside the log (or `key`); a user first seen at serving time enters under the pseudonym. With
    `retention_days` (privacy.retention_days), events older than that before `now` (default the clock)
    are not exported (counted as expired)."""
    import pandas as pd

    from causalrec.data.feedback import exported_event_ids, read_partitions, retention_cutoff, write_partition
    from causalrec.data.quarantine import Quarantine
    from causalrec.data.rules import EventRules
    from causalrec.data.schema import ITEMS, USERS, read_table
    from causalrec.serving.catalogue import read_items
    from causalrec.serving.privacy import pseudonym_key
    from causalrec.validation import validate_feedback

    data_dir = Path(data_dir)
    quarantine = Quarantine(feedback_dir)
    events = read_events(log_path)
    done = exported_event_ids(feedback_dir)
    set_aside, released = quarantine.pending()
    skip = done | set_aside
    new = [e for e in events if str(e.get("event_id")) not in skip]
    retried = [e for e in released if str(e.get("event_id")) not in done]
    new = list({str(e.get("event_id")): e for e in [*retried, *new]}.values())  # a released event once
    counts = {"events": len(events), "exported": 0, "partition": None, "new_items": 0, "new_users": 0,
              "quarantined": 0, "quarantined_by_rule": {}, "retried_from_quarantine": len(retried)}
    if not new:
        return counts

    def known(spec) -> set[str]:  # keys in the base data or an earlier partition
        earlier = read_partitions(feedback_dir, spec)
        return set(read_table(data_dir, spec)[spec.key].astype(str)) | set(earlier.get(spec.key, pd.Series()).astype(str))

    have_items = known(ITEMS)
    added = [r for r in (read_items(catalogue) if catalogue is not None else []) if r["item_id"] not in have_items]
    rules = EventRules(known_items=have_items | {r["item_id"] for r in added}, known_versions=known_versions)
    broken = [rules.broken(e) for e in new]
    bad = [(e, [str(rule) for rule in b]) for e, b in zip(new, broken) if b]
    good = [e for e, b in zip(new, broken) if not b]
    if good:  # people erased (causalrec forget) stay erased, whatever the log still holds
        from causalrec.serving.erasure import Tombstones

        erased = Tombstones(feedback_dir).erased([str(e["user_id"]) for e in good],
                                                 key if key is not None else pseudonym_key(Path(log_path).parent))
        counts["erased"] = int(erased.sum())
        good = [e for e, gone in zip(good, erased) if not gone]
    cutoff = retention_cutoff(retention_days, now)
    if cutoff is not None and good:
        stamps = pd.to_datetime([e["timestamp"] for e in good], utc=True).tz_localize(None)
        counts["expired"] = int((stamps < cutoff).sum())
        good = [e for e, t in zip(good, stamps) if not t < cutoff]
    if bad and len(bad) > max_quarantine_share * len(new):
        raise TooMuchQuarantined(
            f"{len(bad)} of {len(new)} new feedback events ({len(bad) / len(new):.0%}) break a rule, over "
            f"feedback.max_quarantine_share = {max_quarantine_share:g}; nothing was written. Most common: "
            f"{_by_rule(b for _, b in bad)}. Fix the writer (or the rule), then export again; to set them aside "
            "anyway, raise feedback.max_quarantine_share for this export")
    path = None
    if good:
        users = _known_users(Path(log_path), data_dir, key)
        shown = [int(e.get("exposed", True)) for e in good]
        rows = pd.DataFrame({
            "event_id": [str(e["event_id"]) for e in good], "user_id": [users.get(e["user_id"], e["user_id"]) for e in good],
            "item_id": [e["item_id"] for e in good],
            "timestamp": pd.to_datetime([e["timestamp"] for e in good], utc=True).tz_localize(None),
            # a control (exposed = false): an unshown item's outcome, drawn at the request's control_rate
            "exposed": shown, "treatment": shown,
            "control_rate": [float(e.get("control_rate", 1.0)) for e in good],
            "outcome": [float(e["outcome"]) for e in good],
            # served propensities stay float64 (float32 would round a tiny probability to 0)
            "propensity": pd.array([float(e["propensity"]) for e in good], dtype="float64"),
            "position": [int(e.get("position", 0)) for e in good],
            "policy": [f"serving:{e.get('policy') or 'unknown'}" for e in good],
            "model_version": [e["model_version"] for e in good],
            "request_id": [e.get("request_id", "") for e in good],
            "slate_size": [int(e.get("slate_size", 0)) for e in good],
            "uniform": [int(e.get("uniform", False)) for e in good]})
        validate_feedback(rows, validation_dir, done)
        items = pd.DataFrame({"item_id": [r["item_id"] for r in added], "title": [r["title"] for r in added],
                              "description": [r["description"] for r in added]}, dtype=object)
        new_users = pd.DataFrame({"user_id": sorted(set(rows["user_id"]) - known(USERS))}, dtype=object)
        path = write_partition(feedback_dir, {"interactions": rows, "items": items, "users": new_users},
                               {"log": str(log_path), "events": len(rows), "first": rows["timestamp"].min(),
                                "last": rows["timestamp"].max(), "quarantined": len(bad),
                                "model_versions": sorted(rows["model_version"].unique())})
        counts.update(exported=len(rows), partition=str(path), new_items=len(items), new_users=len(new_users))
    # after the partition: a crash in between leaves the bad events in the log, held at the next export
    held = quarantine.hold([e for e, _ in bad], ["; ".join(b) for _, b in bad], path and path.name)
    counts.update(quarantined=len(bad), quarantined_by_rule=_by_rule(b for _, b in bad),
                  quarantine=str(held) if held else None)
    return counts


def _by_rule(broken) -> dict[str, int]:
    """How many events broke each rule (an event may break several), most common first."""
    from collections import Counter

    tally = Counter(rule for rules in broken for rule in rules)
    return dict(tally.most_common())
