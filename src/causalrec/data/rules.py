"""The one rule book for served events: the Recommender service checks a feedback event with
`EventRules.check` before it acknowledges it, and `export-feedback` runs the same `EventRules.broken`
on every logged line before it becomes data, so whatever the service acknowledged the pipeline
accepts. Both sides check the same thing: the log line as stored (pseudonym, ISO timestamp, ...).

The rules come from the data contract (`schema.OUTCOME_VALUES`, the id grammar) and from what only the
live system knows, passed in by the caller: the catalogue's items (the model's and those added through
POST /items) and the registry's model versions. Messages name the field and the rule, never the value
(they are logged; a value may be personal data)."""
from __future__ import annotations

import math
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import pandas as pd

from causalrec.data.schema import OUTCOME_VALUES

EARLIEST = pd.Timestamp("1990-01-01")     # timestamps are UTC; nothing before this is a real event
FUTURE_SKEW = pd.Timedelta(days=1)       # clocks drift: up to a day ahead of now is accepted
MAX_COUNT = 10_000                       # positions and slate sizes
# Ids we store as they are (event, request, policy, model version, new item): letters, digits and . _ : -,
# so an e-mail address, a name with spaces or a path sent as an id is refused, never stored. User ids
# are not held to it: they are stored as pseudonyms (serving.privacy).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,255}")
ID_RULE = "must be 1-256 letters, digits or . _ : - (no spaces, no '@': ids are stored as sent)"


def latest_timestamp() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None) + FUTURE_SKEW


def is_id(value) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def utc_iso(timestamp: datetime) -> str:
    """A timestamp as the log stores it: UTC ISO 8601 with microseconds and 'Z' (naive = UTC)."""
    utc = timestamp.replace(tzinfo=timezone.utc) if timestamp.tzinfo is None else timestamp.astimezone(timezone.utc)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def _timestamp_ok(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        when = pd.Timestamp(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return False
    when = when.tz_convert("UTC").tz_localize(None) if when.tzinfo is not None else when
    return EARLIEST <= when <= latest_timestamp()


def _optional_id(value) -> bool:
    return value == "" or (is_id(value) and len(value) <= 64)


@dataclass(frozen=True)
class Broken:
    """One rule an event breaks: the field and the rule, no value."""
    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field} {self.rule}"


OUTCOME_RULE = (f"must be one of {sorted(int(v) for v in OUTCOME_VALUES)} (the contract's binary outcome: "
                "a graded signal such as a rating belongs in the data's `rating` column)")
# field -> (check on the stored value, rule); a field an older release did not write is checked as its default
FIELD_RULES = {
    "event_id": (is_id, ID_RULE),
    "user_id": (lambda v: isinstance(v, str) and 0 < len(v) <= 256, "must be a non-empty string"),
    # any id the catalogue holds (a source's own ids may have spaces); new ids (POST /items) follow ID_RULE
    "item_id": (lambda v: isinstance(v, str) and 0 < len(v) <= 256, "must be a non-empty string"),
    "outcome": (lambda v: _number(v) and float(v) in OUTCOME_VALUES, OUTCOME_RULE),
    "propensity": (lambda v: _number(v) and 0 < v <= 1, "must be a probability in (0, 1]"),
    "timestamp": (_timestamp_ok, f"must be an ISO 8601 time between {EARLIEST.date()} and now + "
                                 f"{FUTURE_SKEW.days} day (UTC)"),
    "position": (_count, f"must be an integer in [0, {MAX_COUNT}]"),
    "slate_size": (_count, f"must be an integer in [0, {MAX_COUNT}]"),
    "policy": (_optional_id, "must be empty or an id of at most 64 characters (letters, digits, . _ : -)"),
    "request_id": (_optional_id, "must be empty or an id of at most 64 characters (letters, digits, . _ : -)"),
    "model_version": (is_id, ID_RULE),
    "uniform": (lambda v: isinstance(v, bool), "must be true or false"),
    # an unexposed event (exposed = false): the outcome of an item the slate did not show, one of the
    # /recommend answer's `controls` (drawn uniformly from the unshown items at rate control_rate)
    "exposed": (lambda v: isinstance(v, bool), "must be true or false"),
    "control_rate": (lambda v: _number(v) and 0 < v <= 1, "must be a probability in (0, 1]"),
}
DEFAULTS = {"position": 0, "slate_size": 0, "policy": "", "request_id": "", "uniform": False, "exposed": True,
            "control_rate": 1.0}


class EventRules:
    """The rules one served event (a feedback log line) must meet to become data.

    known_items: the item ids feedback may name (None: not checked); known_versions: the model
    versions it may name (None: not checked). Both only need `in`, so a live, growing catalogue or a
    registry read on demand can be passed as they are."""

    def __init__(self, known_items: Container[str] | None = None, known_versions: Container[str] | None = None):
        self.known_items, self.known_versions = known_items, known_versions

    def broken(self, event: Mapping) -> list[Broken]:
        """Every rule `event` breaks (empty: it may become data)."""
        if not isinstance(event, Mapping):
            return [Broken("event", "must be a JSON object")]
        out = []
        for field, (ok, rule) in FIELD_RULES.items():
            if field not in event and field not in DEFAULTS:
                out.append(Broken(field, "is missing"))
            elif not ok(event.get(field, DEFAULTS.get(field))):
                out.append(Broken(field, rule))
        if self.known_items is not None and isinstance(event.get("item_id"), str) and event["item_id"] not in self.known_items:
            out.append(Broken("item_id", "must be an item of the catalogue (the model's items or one added through "
                                         "POST /items)"))
        if event.get("exposed") is False and _number(event.get("propensity")) and event["propensity"] >= 1:
            out.append(Broken("propensity", "must be below 1 for an unexposed event (an item shown for sure was shown)"))
        if (self.known_versions is not None and is_id(event.get("model_version"))
                and event["model_version"] not in self.known_versions):
            out.append(Broken("model_version", "must be a model version the registry knows"))
        return out

    def check(self, event: Mapping) -> None:
        """Raise ValueError naming every broken field and rule (no values)."""
        broken = self.broken(event)
        if broken:
            raise ValueError("; ".join(map(str, broken)))
