"""The data contract: what data/ must hold, and the one place that reads it.

Every reader goes through `read_table`, which fails with a `DataError` naming the file and what
is wrong (missing, empty, unreadable, missing columns) before any stage touches the rows.
Row-level rules (nulls, ranges, referential integrity) are the Great Expectations suites in
`causalrec.validation`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq


class DataError(ValueError):
    """Input data violates the contract; the message names the table/file and the problem."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    required: dict[str, str]          # column -> kind: "id" | "int" | "float" | "binary" | "text" | "time"
    optional: dict[str, str] = field(default_factory=dict)
    key: str | None = None            # unique id column, if any
    attribute_prefix: str | None = None  # numeric attribute columns (e.g. attr_3): model features

    @property
    def file(self) -> str:
        return f"{self.name}.parquet"

    @property
    def columns(self) -> dict[str, str]:
        return {**self.required, **self.optional}


INTERACTIONS = TableSpec(
    "interactions",
    required={"user_id": "id", "item_id": "id", "timestamp": "time", "exposed": "binary", "outcome": "float"},
    optional={"propensity": "float", "position": "int", "policy": "text", "treatment": "binary", "event_id": "text",
              "rating": "float",
              # served feedback (data.feedback): which model served the slate, the slate's id and size
              "model_version": "text", "request_id": "text", "slate_size": "int", "uniform": "binary",
              # an unexposed served row (a /recommend control): the share of the slate's unshown items drawn
              "control_rate": "float"},
)
ITEMS = TableSpec(
    "items",
    required={"item_id": "id", "title": "text", "description": "text"},
    optional={"category": "text", "price": "float"},
    key="item_id",
    attribute_prefix="attr_",
)
USERS = TableSpec("users", required={"user_id": "id"}, optional={"profile_text": "text"}, key="user_id",
                  attribute_prefix="attr_")
TABLES = (INTERACTIONS, ITEMS, USERS)
# The outcome every learner and metric reads is binary (clicked / liked or not). A graded signal keeps its
# own column: a rating goes in `rating` (Coat: outcome = rating >= 4), a revenue or watch time in a
# column the source names, and the source writes `outcome` as its binarisation (e.g. revenue > 0).
OUTCOME_VALUES = frozenset({0.0, 1.0})


def read_table(data_dir: str | Path, spec: TableSpec, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one contract table from `data_dir`, failing clearly on a missing/empty/unreadable file."""
    path = Path(data_dir) / spec.file
    if not path.exists():
        raise DataError(f"table '{spec.name}': file {path} not found")
    if path.stat().st_size == 0:
        raise DataError(f"table '{spec.name}': file {path} is empty (0 bytes)")
    try:
        schema_names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"table '{spec.name}': {path} is not a readable parquet file ({exc})") from exc
    missing = [c for c in spec.required if c not in schema_names]
    if missing:
        raise DataError(f"table '{spec.name}': required column(s) {missing} missing in {path} (has {schema_names})")
    wanted = columns or [c for c in schema_names if c in spec.columns
                         or (spec.attribute_prefix and c.startswith(spec.attribute_prefix))]
    df = pd.read_parquet(path, columns=wanted)
    for col, kind in spec.columns.items():
        # One convention downstream: timestamps are UTC and timezone-naive.
        if kind == "time" and col in df.columns and isinstance(df[col].dtype, pd.DatetimeTZDtype):
            df[col] = df[col].dt.tz_convert("UTC").dt.tz_localize(None)
    if spec.attribute_prefix:
        bad = [c for c in df.columns if c.startswith(spec.attribute_prefix) and not pd.api.types.is_numeric_dtype(df[c])]
        if bad:
            raise DataError(f"table '{spec.name}': attribute column(s) {bad} must be numeric")
    return df


def attributes(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame | None:
    """The numeric attribute columns of a contract table, indexed by its key (None when it has none)."""
    cols = [c for c in df.columns if spec.attribute_prefix and c.startswith(spec.attribute_prefix)]
    if not cols:
        return None
    return df.set_index(df[spec.key].astype(str))[cols].fillna(0.0).astype("float32")
