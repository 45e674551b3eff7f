"""End to end with the real components: Prefect flow (ephemeral API), DVC repo + local remote,
Great Expectations, Evidently, `bentoml build` and a real `bentoml serve` HTTP server."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from conftest import make_project, write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder, prefect_harness):
    """One real retrain flow run on a fresh git+DVC project."""
    from flows.retrain import retrain_flow

    project = make_project(tmp_path_factory.mktemp("flow") / "project", tiny_encoder)
    result = retrain_flow(params_path=str(project / "params.yaml"))
    return project, result


def test_flow_versions_data_and_produces_every_artifact(trained):
    project, result = trained
    dvc_file = project / "data.dvc"
    assert dvc_file.exists() and result["data_md5"] and result["data_md5"] in dvc_file.read_text()
    assert any((project / ".dvcstore").rglob("*")), "dvc push filled the local remote"
    for path in result["artifacts"].values():
        assert Path(path).exists(), path
    metrics = json.loads((project / "artifacts" / "metrics.json").read_text())
    import yaml

    assert set(metrics["models"]) == set(yaml.safe_load((project / "params.yaml").read_text())["train"]["models"])
    assert {"cp@10", "auuc", "cp@10_ratio_to_oracle"} <= set(metrics["uplift"])
    assert (project / "artifacts" / "plots" / "qini.png").exists()
    for row in metrics["models"].values():
        assert {"auc", "ndcg@10", "recall@10", "cp@10"} <= set(row)
        assert 0 <= row["auc"] <= 1 and 0 <= row["ndcg@10"] <= 1
    assert result["package"]["promoted"] and result["package"]["bento_tag"].startswith("causalrec:")
    drift = json.loads((project / "artifacts" / "monitor" / "drift.json").read_text())
    assert isinstance(drift["drift_detected"], bool) and "prediction" in drift["columns"]
    assert "<html" in (project / "artifacts" / "monitor" / "drift_report.html").read_text()[:2000].lower()


def test_flow_publishes_markdown_artifact(trained):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["causalrec-retrain"])))

    artifacts = asyncio.run(read())
    assert artifacts and "best:" in artifacts[0].data and "data version" in artifacts[0].data


def test_rerun_embeds_nothing_and_keeps_production(trained):
    from flows.retrain import retrain_flow

    project, first = trained
    second = retrain_flow(params_path=str(project / "params.yaml"))
    assert second["embed"]["newly_embedded"] == 0
    assert second["data_md5"] == first["data_md5"]  # deterministic simulator: same data version
    assert second["package"]["promoted"] is False  # equal metrics do not replace production
    assert second["package"]["bento_tag"] == first["package"]["bento_tag"]


def test_bad_data_stops_flow_and_keeps_last_good_model(trained, tmp_path):
    from flows.retrain import retrain_flow

    project, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(project / "data", bad)
    inter = pd.read_parquet(bad / "interactions.parquet")
    inter.loc[0, "propensity"] = 0.0
    inter.to_parquet(bad / "interactions.parquet")
    models = project / "artifacts" / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    metrics_before = (project / "artifacts" / "metrics.json").read_text()
    production = (project / "artifacts" / "production.json").read_text()
    params = project / "params_bad.yaml"
    shutil.copy2(project / "params.yaml", params)
    os.environ["CAUSALREC__INGEST__SOURCE"] = "parquet"
    os.environ["CAUSALREC__INGEST__SOURCE_PATH"] = str(bad)
    try:
        with pytest.raises(Exception, match="propensity"):
            retrain_flow(params_path=str(params), version=False)
    finally:
        del os.environ["CAUSALREC__INGEST__SOURCE"], os.environ["CAUSALREC__INGEST__SOURCE_PATH"]
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before
    assert (project / "artifacts" / "metrics.json").read_text() == metrics_before
    assert (project / "artifacts" / "production.json").read_text() == production
    report = json.loads((project / "artifacts" / "validation" / "report.json").read_text())
    assert report["success"] is False and report["failures"][0]["column"] == "propensity"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained):
    project, result = trained
    port = _free_port()
    log = open(project / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", result["package"]["bento_tag"],
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise RuntimeError((project / "serve.log").read_text()[-3000:])
        time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("bentoml serve did not become ready:\n" + (project / "serve.log").read_text()[-3000:])
    yield url, project
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_serve_recommend(server):
    url, project = server
    r = requests.post(f"{url}/recommend", json={"user_id": "u000001", "k": 10}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 10 and body["cold_start"] is False
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    known = set(pd.read_parquet(project / "data" / "items.parquet")["item_id"])
    assert {it["item_id"] for it in body["items"]} <= known


def test_serve_cold_start_and_bad_requests(server):
    url, _ = server
    r = requests.post(f"{url}/recommend", json={"user_id": "someone-new", "k": 3}, timeout=10)
    assert r.status_code == 200 and r.json()["cold_start"] is True and len(r.json()["items"]) == 3
    for bad in ({"user_id": "u000001", "k": 0}, {"user_id": "u000001", "k": "ten"}, {"k": 3}, {"user_id": ""}):
        r = requests.post(f"{url}/recommend", json=bad, timeout=10)
        assert 400 <= r.status_code < 500, (bad, r.status_code, r.text)


def test_dvc_repro_reruns_only_affected_stages(tmp_path, tiny_encoder):
    project = make_project(tmp_path / "p", tiny_encoder, package={"build_bento": False})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def dvc(*args):
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    out = dvc("repro")
    for stage in ("ingest", "validate", "embed", "propensity", "train", "evaluate", "package", "monitor"):
        assert f"Running stage '{stage}'" in out
    assert "Running stage" not in dvc("repro")
    write_params(project, embed={"model_path": str(tiny_encoder)}, package={"build_bento": False},
                 train={"epochs": 5, "dim": 4})
    out = dvc("repro")
    ran = {s for s in ("ingest", "validate", "embed", "propensity", "train", "evaluate", "package", "monitor")
           if f"Running stage '{s}'" in out}
    assert ran == {"train", "evaluate", "package", "monitor"}
    metrics = json.loads(dvc("metrics", "show", "--json"))
    assert "models" in json.dumps(metrics) and "ndcg@10" in json.dumps(metrics)
    dvc("plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists()
