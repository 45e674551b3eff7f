"""The one rule book for logged events: what the Great Expectations suites check on data/ and what
the Recommender service checks before it acknowledges feedback, so that nothing acknowledged can
later fail export or validation."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import pandas as pd

EARLIEST = pd.Timestamp("1990-01-01")     # timestamps are UTC; nothing before this is a real event
FUTURE_SKEW = pd.Timedelta(days=1)       # clocks drift: up to a day ahead of now is accepted
OUTCOME_BOUND = 1e9                      # |outcome| at most this (ratings, clicks, revenue)


def latest_timestamp() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None) + FUTURE_SKEW


def check_event(timestamp: datetime, propensity: float, outcome: float) -> str:
    """Validate one served event; returns its timestamp as UTC ISO 8601 ('...Z'), or raises
    ValueError naming the field. A naive timestamp is taken as UTC (the contract's convention)."""
    if not (isinstance(propensity, (int, float)) and math.isfinite(propensity) and 0 < propensity <= 1):
        raise ValueError(f"propensity must be a probability in (0, 1], got {propensity!r}")
    if not (isinstance(outcome, (int, float)) and math.isfinite(outcome) and abs(outcome) <= OUTCOME_BOUND):
        raise ValueError(f"outcome must be a finite number with |outcome| <= {OUTCOME_BOUND:g}, got {outcome!r}")
    utc = timestamp.replace(tzinfo=timezone.utc) if timestamp.tzinfo is None else timestamp.astimezone(timezone.utc)
    naive = pd.Timestamp(utc.replace(tzinfo=None))
    if not EARLIEST <= naive <= latest_timestamp():
        raise ValueError(f"timestamp must be between {EARLIEST.date()} and now + {FUTURE_SKEW.days} day (UTC), "
                         f"got {timestamp.isoformat()}")
    return naive.isoformat(timespec="microseconds") + "Z"
