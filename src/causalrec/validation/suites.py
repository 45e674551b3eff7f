"""One Great Expectations suite per contract table, run before anything trains.

A failed expectation raises `ValidationFailed` whose message names the table, the column, the
rule and example rows; the JSON report and GE's HTML data docs are written to the output
directory either way, so the failure can be read in a browser.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from causalrec.data.rules import EARLIEST, latest_timestamp
from causalrec.data.schema import INTERACTIONS, ITEMS, OUTCOME_VALUES, USERS, TableSpec, read_table
from causalrec.io import atomic_write_json, pid_alive

log = logging.getLogger(__name__)

# dtype names GE sees through pandas, by contract kind.
_INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "Int8", "Int16", "Int32", "Int64"]
_FLOATS = ["float16", "float32", "float64", "Float32", "Float64"]
TYPE_LISTS = {
    "id": ["object", "string", "str", *_INTS],
    "text": ["object", "string", "str"],
    "int": _INTS,
    "float": _INTS + _FLOATS,
    "binary": _INTS + ["bool", "boolean"],
    "time": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],  # read_table makes them UTC-naive
}


class ValidationFailed(ValueError):
    """Data broke a suite; `.failures` lists {table, column, rule, examples}."""

    def __init__(self, message: str, failures: list[dict]):
        super().__init__(message)
        self.failures = failures


@dataclass
class _Check:
    table: str
    expectation: object  # a gx expectation


def _expectations(spec: TableSpec, df: pd.DataFrame, ids: dict[str, set], min_rows: int,
                  duplicate_rows: str = "reject") -> list:
    import great_expectations as gx

    E = gx.expectations
    out = [E.ExpectTableRowCountToBeBetween(min_value=min_rows)]
    for col, kind in spec.columns.items():
        if col not in df.columns:
            continue
        out.append(E.ExpectColumnValuesToBeInTypeList(column=col, type_list=TYPE_LISTS[kind]))
        if col in spec.required:
            out.append(E.ExpectColumnValuesToNotBeNull(column=col))
    if spec.key:
        out.append(E.ExpectColumnValuesToBeUnique(column=spec.key))
    if spec is INTERACTIONS:
        for col in ("exposed", "treatment"):
            if col in df.columns:
                out.append(E.ExpectColumnValuesToBeInSet(column=col, value_set=[0, 1]))
        if pd.api.types.is_numeric_dtype(df["exposed"]):
            # Every learner trains on exposed rows: a log without one has nothing to learn from.
            out.append(E.ExpectColumnMaxToBeBetween(column="exposed", min_value=1))
        if duplicate_rows == "reject":
            # The same event twice (a replayed export, a double append) would count twice in every loss.
            out.append(E.ExpectCompoundColumnsToBeUnique(column_list=list(df.columns)))
        if pd.api.types.is_numeric_dtype(df["outcome"]):
            # binary (schema.OUTCOME_VALUES): every learner and metric reads 0/1
            out.append(E.ExpectColumnValuesToBeInSet(column="outcome", value_set=sorted(OUTCOME_VALUES)))
        if "propensity" in df.columns and pd.api.types.is_numeric_dtype(df["propensity"]):
            # Propensities are probabilities of exposure: 0 would make inverse weights infinite.
            out.append(E.ExpectColumnValuesToBeBetween(column="propensity", min_value=0, max_value=1, strict_min=True))
        for col in ("position", "slate_size"):
            if col in df.columns and pd.api.types.is_numeric_dtype(df[col]):
                out.append(E.ExpectColumnValuesToBeBetween(column=col, min_value=0))
        if pd.api.types.is_datetime64_any_dtype(df["timestamp"]):
            out.append(E.ExpectColumnValuesToBeBetween(column="timestamp", min_value=EARLIEST, max_value=latest_timestamp()))
        for col, table in (("item_id", "items"), ("user_id", "users")):
            if table in ids:
                out.append(E.ExpectColumnValuesToBeInSet(column=col, value_set=sorted(ids[table])))
    return out


def _examples(df: pd.DataFrame, result: dict, max_examples: int) -> list:
    idx = (result.get("result") or {}).get("unexpected_index_list") or []
    if idx:
        rows = [i for i in idx[:max_examples] if not isinstance(i, dict)]
        if rows:
            return df.loc[rows].astype(str).to_dict("records")
    partial = (result.get("result") or {}).get("partial_unexpected_list") or []
    if partial:
        return [str(v) for v in partial[:max_examples]]
    observed = (result.get("result") or {}).get("observed_value")
    return [f"observed: {observed}"] if observed is not None else []


def validate_data(data_dir: str | Path, out_dir: str | Path, max_examples: int = 5, min_rows: int = 1,
                  duplicate_rows: str = "reject") -> dict:
    """Validate interactions/items/users in `data_dir`; write report.json and data_docs/ to `out_dir`.
    duplicate_rows: "reject" fails on exact duplicate interaction rows, "allow" accepts them."""
    tables = {spec.name: (spec, read_table(data_dir, spec)) for spec in (ITEMS, USERS, INTERACTIONS)}
    ids = {}
    for name, (spec, df) in tables.items():
        if spec.key and df[spec.key].notna().all():
            ids[name] = set(df[spec.key].tolist())
    return _run_suites({name: (df, _expectations(spec, df, ids, min_rows, duplicate_rows))
                        for name, (spec, df) in tables.items()}, out_dir, max_examples, "data")


EARLIER = "event_id_in_earlier_partition"


def feedback_expectations(events: pd.DataFrame) -> list:
    """The rules a served feedback partition meets before anything trains on it: the interactions
    contract's (types, propensity in (0, 1], binary outcome, sane timestamps, ...; cold-start ids
    are allowed), and what served events need besides. Known items and model versions are the rule
    book's (data.rules.EventRules), checked per event before the batch gets here: one decision, not
    two that could disagree and block the export."""
    import great_expectations as gx

    E = gx.expectations
    out = _expectations(INTERACTIONS, events, {}, min_rows=1)
    out += [E.ExpectColumnToExist(column=c) for c in FEEDBACK_COLUMNS]
    out += [E.ExpectColumnValuesToNotBeNull(column=c) for c in FEEDBACK_COLUMNS if c in events.columns]
    if "event_id" in events.columns:
        out.append(E.ExpectColumnValuesToBeUnique(column="event_id"))
    if EARLIER in events.columns:
        # an event already in an earlier partition would be counted twice; the membership is computed
        # in pandas (validate_feedback): a value set of every exported id would be written into the
        # suite, its results and the data docs, a cost growing with the whole history at every export
        out.append(E.ExpectColumnValuesToBeInSet(column=EARLIER, value_set=[False]))
    return out


FEEDBACK_COLUMNS = ("event_id", "user_id", "item_id", "timestamp", "outcome", "propensity", "model_version")


def validate_feedback(events: pd.DataFrame, out_dir: str | Path, exported: set[str], max_examples: int = 5) -> dict:
    """The feedback suite on one export's events (before it becomes a partition): event ids unique
    and new, propensities in (0, 1], binary outcomes, sane timestamps. Raises ValidationFailed naming
    column, rule, examples."""
    if "event_id" in events.columns:
        events = events.assign(**{EARLIER: events["event_id"].astype(str).isin(exported)})
    return _run_suites({"feedback": (events, feedback_expectations(events))},
                       out_dir, max_examples, "feedback")


def _run_suites(tables: dict[str, tuple[pd.DataFrame, list]], out_dir: str | Path, max_examples: int, what: str) -> dict:
    """One GE suite + checkpoint per table; report.json and data docs in `out_dir`; raises on failures."""
    import great_expectations as gx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = out_dir / "data_docs"
    shutil.rmtree(docs_dir, ignore_errors=True)
    for stale in Path(tempfile.gettempdir()).glob("causalrec-gx-*"):  # left by a killed run
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    gx_root = Path(tempfile.mkdtemp(prefix=f"causalrec-gx-{os.getpid()}-"))
    try:
        ctx = gx.get_context(mode="file", project_root_dir=str(gx_root))
        ctx.add_data_docs_site(site_name="causalrec", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        source = ctx.data_sources.add_pandas("causalrec")
        failures, summary = [], {}
        for name, (df, expectations) in tables.items():
            batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_all")
            suite = ctx.suites.add(gx.ExpectationSuite(name=f"{name}_contract", expectations=expectations))
            vdef = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{name}_validation", data=batch_def, suite=suite))
            # no per-checkpoint UpdateDataDocsAction: each would rebuild the whole site (once below)
            checkpoint = ctx.checkpoints.add(gx.Checkpoint(
                name=f"{name}_checkpoint", validation_definitions=[vdef], result_format={"result_format": "COMPLETE"}))
            run = checkpoint.run(batch_parameters={"dataframe": df})
            for vres in run.run_results.values():
                checked = 0
                for res in vres.results:
                    checked += 1
                    if res.success:
                        continue
                    r = res.to_json_dict()
                    cfg = r["expectation_config"]
                    exc = (r.get("exception_info") or {}).get("exception_message")
                    failures.append({
                        "table": name, "column": cfg.get("kwargs", {}).get("column"), "rule": cfg["type"],
                        "examples": _examples(df, r, max_examples), **({"error": exc} if exc else {}),
                    })
                summary[name] = {"rows": len(df), "expectations": checked, "success": bool(vres.success)}
        ctx.build_data_docs(site_names=["causalrec"])  # every suite and validation result of this run
    finally:
        shutil.rmtree(gx_root, ignore_errors=True)
    report = {"success": not failures, "tables": summary, "failures": failures,
              "data_docs": str(docs_dir / "index.html")}
    atomic_write_json(out_dir / "report.json", report)
    if failures:
        lines = [f"  - table '{f['table']}', column '{f['column']}', rule {f['rule']}: examples {f['examples']}"
                 + (f" ({f['error']})" if f.get("error") else "") for f in failures]
        raise ValidationFailed(
            f"{what} validation failed ({len(failures)} rule(s)); report: {out_dir / 'report.json'}, "
            f"data docs: {docs_dir / 'index.html'}\n" + "\n".join(lines), failures)
    return report
