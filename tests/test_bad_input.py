"""Bad input anywhere stops the pipeline at once with a message naming what is wrong,
and nothing downstream of the failing stage is written."""
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from causalrec.cli import app
from causalrec.data.simulate import SimulationConfig, simulate
from conftest import make_project

DOWNSTREAM = ["embeddings", "propensity", "models", "metrics.json", "package", "monitor"]


@pytest.fixture(scope="module")
def good_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    simulate(SimulationConfig(n_users=60, n_items=40, n_interactions=2000, n_topics=4), root / "data", root / "truth",
             progress=False)
    return root / "data"


def _run_like_dvc(project, stages=("validate", "embed", "propensity", "train")):
    """Run stages in DAG order and stop at the first failure, as `dvc repro` does."""
    runner = CliRunner()
    for stage in stages:
        res = runner.invoke(app, [stage, "--params", str(project / "params.yaml")])
        if res.exit_code != 0:
            return stage, res
    return None, res


def _break(data, case):
    inter = pd.read_parquet(data / "interactions.parquet")
    items = pd.read_parquet(data / "items.parquet")
    if case == "missing file":
        (data / "items.parquet").unlink()
    elif case == "empty file":
        (data / "users.parquet").write_bytes(b"")
    elif case == "wrong dtypes":
        inter["outcome"] = np.where(inter["outcome"] > 0, "yes", "no")
        inter.to_parquet(data / "interactions.parquet")
    elif case == "nulls in keys":
        inter.loc[[3, 7], "user_id"] = None
        inter.to_parquet(data / "interactions.parquet")
    elif case == "unknown item ids":
        inter.loc[5, "item_id"] = "i999999"
        inter.to_parquet(data / "interactions.parquet")
    elif case == "propensity 0":
        inter.loc[2, "propensity"] = 0.0
        inter.to_parquet(data / "interactions.parquet")
    elif case == "propensity > 1":
        inter.loc[4, "propensity"] = 1.7
        inter.to_parquet(data / "interactions.parquet")
    elif case == "duplicate ids":
        pd.concat([items, items.iloc[[0]]]).to_parquet(data / "items.parquet")
    elif case == "no exposed rows":
        inter.assign(exposed=0).to_parquet(data / "interactions.parquet")
    elif case == "duplicate rows":
        pd.concat([inter, inter.iloc[[9]]], ignore_index=True).to_parquet(data / "interactions.parquet")
    elif case == "missing column":
        inter.drop(columns=["outcome"]).to_parquet(data / "interactions.parquet")
    elif case in EDITS:  # one cell of one table set to a value the contract refuses
        table, row, column, value = EDITS[case]
        df = {"interactions": inter, "items": items, "users": pd.read_parquet(data / "users.parquet")}[table]
        df[column] = df[column].astype(object) if isinstance(value, str) or value is None else df[column]
        df.loc[row, column] = value
        df.to_parquet(data / f"{table}.parquet")
    elif case == "duplicate user ids":
        users = pd.read_parquet(data / "users.parquet")
        pd.concat([users, users.iloc[[0]]]).to_parquet(data / "users.parquet")
    elif case == "non-numeric attribute":
        items.assign(attr_size="big").to_parquet(data / "items.parquet")


EDITS = {  # case: (table, row, column, value)
    "outcome not binary": ("interactions", 1, "outcome", 2.0),
    "negative outcome": ("interactions", 1, "outcome", -1.0),
    "timestamp before 1990": ("interactions", 0, "timestamp", pd.Timestamp("1970-01-01", tz="UTC")),
    "timestamp in the future": ("interactions", 0, "timestamp", pd.Timestamp("2100-01-01", tz="UTC")),
    "exposed not binary": ("interactions", 3, "exposed", 2),
    "treatment not binary": ("interactions", 3, "treatment", 3),
    "negative position": ("interactions", 6, "position", -1),
    "unknown user ids": ("interactions", 8, "user_id", "u999999"),
    "null titles": ("items", 2, "title", None),
}


CASES = {
    "missing file": ["items", "not found"],
    "empty file": ["users", "empty"],
    "wrong dtypes": ["interactions", "outcome", "expect_column_values_to_be_in_type_list", "yes"],
    "nulls in keys": ["interactions", "user_id", "expect_column_values_to_not_be_null"],
    "unknown item ids": ["interactions", "item_id", "expect_column_values_to_be_in_set", "i999999"],
    "propensity 0": ["interactions", "propensity", "expect_column_values_to_be_between", "0.0"],
    "propensity > 1": ["interactions", "propensity", "expect_column_values_to_be_between", "1.7"],
    "duplicate ids": ["items", "item_id", "expect_column_values_to_be_unique", "i000000"],
    "missing column": ["interactions", "outcome", "missing"],
    "no exposed rows": ["interactions", "exposed", "expect_column_max_to_be_between", "observed: 0"],
    "duplicate rows": ["interactions", "expect_compound_columns_to_be_unique", "u0"],
    "outcome not binary": ["interactions", "outcome", "expect_column_values_to_be_in_set", "2.0"],
    "negative outcome": ["interactions", "outcome", "expect_column_values_to_be_in_set", "-1.0"],
    "timestamp before 1990": ["interactions", "timestamp", "expect_column_values_to_be_between", "1970"],
    "timestamp in the future": ["interactions", "timestamp", "expect_column_values_to_be_between", "2100"],
    "exposed not binary": ["interactions", "exposed", "expect_column_values_to_be_in_set", "2"],
    "treatment not binary": ["interactions", "treatment", "expect_column_values_to_be_in_set", "3"],
    "negative position": ["interactions", "position", "expect_column_values_to_be_between", "-1"],
    "unknown user ids": ["interactions", "user_id", "expect_column_values_to_be_in_set", "u999999"],
    "null titles": ["items", "title", "expect_column_values_to_not_be_null"],
    "duplicate user ids": ["users", "user_id", "expect_column_values_to_be_unique", "u000000"],
    "non-numeric attribute": ["items", "attr_size", "must be numeric"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_fails_validation_and_writes_nothing_downstream(tmp_path, good_data, case):
    project = make_project(tmp_path / "p", git=False)
    shutil.copytree(good_data, project / "data")
    _break(project / "data", case)
    stage, res = _run_like_dvc(project)
    assert stage == "validate", res.output
    assert res.exit_code == 2
    for fragment in CASES[case]:
        assert fragment in res.output, (fragment, res.output)
    for name in DOWNSTREAM:
        assert not (project / "artifacts" / name).exists()


def test_good_data_passes(tmp_path, good_data, tiny_encoder):
    project = make_project(tmp_path / "p", tiny_encoder, git=False)
    shutil.copytree(good_data, project / "data")
    stage, res = _run_like_dvc(project)
    assert stage is None, res.output
    assert (project / "artifacts" / "validation" / "data_docs" / "index.html").exists()
    assert (project / "artifacts" / "models" / "mf_ips.pt").exists()


def test_malformed_params_stops_before_anything(tmp_path, good_data):
    project = make_project(tmp_path / "p", git=False)
    shutil.copytree(good_data, project / "data")
    (project / "params.yaml").write_text("train:\n  epochs: -3\n")
    stage, res = _run_like_dvc(project)
    assert stage == "validate" and res.exit_code == 2
    assert "train.epochs" in res.output
    assert not (project / "artifacts").exists()


def test_duplicate_rows_policy_allow_accepts_them(tmp_path, good_data):
    from causalrec.validation import ValidationFailed, validate_data

    shutil.copytree(good_data, tmp_path / "data")
    _break(tmp_path / "data", "duplicate rows")
    assert validate_data(tmp_path / "data", tmp_path / "v", duplicate_rows="allow")["success"]
    with pytest.raises(ValidationFailed, match="expect_compound_columns_to_be_unique"):
        validate_data(tmp_path / "data", tmp_path / "v", duplicate_rows="reject")
