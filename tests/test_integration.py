"""End to end with the real components: Prefect flow (ephemeral API), DVC repo + local remote,
Great Expectations, Evidently, `bentoml build` and a real `bentoml serve` HTTP server."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests
from conftest import REPO, make_project

from causalrec.serving.launch import BentoServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder, prefect_harness):
    """One real retrain flow run on a fresh git+DVC project."""
    from causalrec.flows.retrain import retrain_flow

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
    assert result["package"]["promoted"] and result["package"]["bento_tag"].startswith("causalrec-bento:")
    import bentoml

    # the package at the root of the bento's sources, where BentoML imports the service from: the bento
    # serves the code it was built with, not whatever causalrec is installed beside it
    sources = Path(bentoml.bentos.get(result["package"]["bento_tag"]).path) / "src"
    assert (sources / "causalrec" / "service.py").is_file() and not (sources / "src").exists()
    drift = json.loads((project / "artifacts" / "monitor" / "drift.json").read_text())
    assert drift["drift_detected"] is False and drift["key_columns_drifted"] == []  # a stationary world
    assert {"prediction", "history_similarity"} <= set(drift["columns"])
    assert "<html" in (project / "artifacts" / "monitor" / "drift_report.html").read_text()[:2000].lower()


def test_live_drift_emits_the_event_the_retrain_trigger_answers(trained, tmp_path, prefect_events):
    """The monitor flow on a copy of the project: without served feedback it compares the training log's
    windows (a stationary world: no drift, no event); then served traffic from a world whose users'
    interests moved arrives as the first feedback partition and ingest merges it: with nothing served
    before it to compare with, the monitor compares the log's own windows (never served traffic with
    the logging policy's log), whose latest window is now that traffic; Evidently's test on
    history_similarity fails, the flow emits DRIFT_EVENT about the project, and the trigger of the
    retrain deployment in prefect.yaml (validated as Prefect's own trigger model) covers it."""
    import numpy as np
    import yaml
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent

    from causalrec.data.feedback import merge_into, write_partition
    from causalrec.data.simulate import SimulationConfig, World, simulate
    from causalrec.flows.monitor import DRIFT_EVENT, monitor_flow

    project = tmp_path / "copy"
    shutil.copytree(trained[0], project, ignore=shutil.ignore_patterns(".dvcstore", ".bentoml"))
    still = monitor_flow(params_path=str(project / "params.yaml"))
    assert still["monitor"]["drift_detected"] is False and still["event"] is None
    assert still["monitor"]["compared"].startswith("training log")
    sizes = yaml.safe_load((project / "params.yaml").read_text())["simulate"]
    cfg = SimulationConfig(**{**sizes, "n_users": 400, "n_items": 300, "n_interactions": 40_000, "drift": 1.0})
    simulate(cfg, tmp_path / "drifted", tmp_path / "truth", progress=False)
    log = pd.read_parquet(tmp_path / "drifted" / "interactions.parquet").sort_values("timestamp", ignore_index=True)
    cut = int(len(log) * 0.7)
    log.iloc[:cut].to_parquet(project / "data" / "interactions.parquet")  # what the model was trained on
    shutil.copy2(tmp_path / "drifted" / "items.parquet", project / "data" / "items.parquet")
    shutil.copy2(tmp_path / "drifted" / "users.parquet", project / "data" / "users.parquet")
    served = log.iloc[cut:].assign(event_id=[f"ev{i}" for i in range(len(log) - cut)], model_version="m1",
                                   request_id="", slate_size=0)
    served["timestamp"] = pd.to_datetime(served["timestamp"], utc=True).dt.tz_localize(None)
    write_partition(project / "feedback_data", {"interactions": served[served["exposed"] == 1]}, {"test": True})
    merge_into(project / "data", project / "feedback_data")  # what ingest does
    # The tiny test encoder's vectors are random; the world's topic mixes stand in for text embeddings.
    emb = project / "artifacts" / "embeddings"
    pd.DataFrame({"item_id": pd.read_parquet(tmp_path / "drifted" / "items.parquet")["item_id"]}).to_parquet(
        emb / "items_index.parquet", index=False)
    np.save(emb / "items.npy", World.load(tmp_path / "truth" / "world").item_topics.astype(np.float32))
    moved = monitor_flow(params_path=str(project / "params.yaml"))
    assert moved["monitor"]["compared"].startswith("training log") and "first served window, part-00001" in moved["monitor"]["compared"]
    assert moved["monitor"]["drift_detected"] is True and moved["monitor"]["key_columns_drifted"] == ["history_similarity"]
    assert moved["event"]["event"] == DRIFT_EVENT
    prefect_events.drain()
    emitted = [e for client in AssertingEventsClient.all for e in client.events if e.event == DRIFT_EVENT]
    assert len(emitted) == 1 and emitted[0].resource.id == f"causalrec.project.{project.name}"
    assert emitted[0].payload["key_columns_drifted"] == ["history_similarity"]
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert deployments["monitor-daily"]["schedules"][0]["cron"]
    spec = dict(deployments["retrain"]["triggers"][0])
    DeploymentEventTrigger.model_validate(spec)  # what `prefect deploy` reads
    spec.pop("parameters"), spec.pop("type"), spec.pop("enabled")
    trigger = EventTrigger.model_validate(spec)
    assert trigger.covers(ReceivedEvent(**emitted[0].model_dump()))
    assert not trigger.covers(ReceivedEvent(**{**emitted[0].model_dump(), "event": "causalrec.something.else"}))


def test_flow_publishes_markdown_artifact(trained):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["causalrec-retrain"])))

    artifacts = asyncio.run(read())
    assert artifacts and "chosen (validation):" in artifacts[0].data and "data version" in artifacts[0].data
    assert "causal analysis: total effect" in artifacts[0].data and "analysis/report.html" in artifacts[0].data
    assert "quarantined events: 0 held, 0 released, 0 dropped" in artifacts[0].data  # export's set-aside events


def test_rerun_skips_unchanged_stages_and_keeps_production(trained, monkeypatch):
    from causalrec.flows.retrain import retrain_flow

    project, first = trained
    stages = ["validate", "embed", "propensity", "train", "evaluate", "analyze", "package", "monitor"]
    # nothing changed: the flow skips what `dvc repro` would (ingest runs: its sources are outside dvc.yaml)
    same = retrain_flow(params_path=str(project / "params.yaml"))
    assert same["skipped"] == stages and same["package"] == first["package"]
    monkeypatch.setenv("CAUSALREC__MONITOR__DRIFT_SHARE", "0.6")  # an override counts as a params change
    moved = retrain_flow(params_path=str(project / "params.yaml"), version=False)
    assert moved["skipped"] == stages[:-1] and moved["monitor"] != first["monitor"]
    monkeypatch.delenv("CAUSALREC__MONITOR__DRIFT_SHARE")
    second = retrain_flow(params_path=str(project / "params.yaml"), force=True)  # every stage again
    assert second["skipped"] == [] and second["embed"]["newly_embedded"] == 0
    assert second["data_md5"] == first["data_md5"]  # deterministic simulator: same data version
    assert second["package"]["promoted"] is False  # equal metrics do not replace the champion
    assert second["package"]["bento_tag"] == first["package"]["bento_tag"]
    assert "offline ndcg@10 on the same data version" in second["package"]["reason"]
    from causalrec.registry import Registry

    state = Registry(project / "registry.json").state()  # both candidates registered, one decision each
    assert sorted(m["status"] for m in state["models"].values()) == ["blocked", "champion"]
    champion = state["models"][state["aliases"]["champion"]]
    assert champion["data_md5"] == first["data_md5"] and champion["git_sha"] and len(champion["params_sha256"]) == 64
    # serve.bandit: a candidate becomes the challenger that serves beside the champion, undecided; the next
    # package run's gate decides on it (here: no served traffic and the same data, so no evidence to promote)
    from causalrec import pipeline
    from causalrec.config import load_params

    monkeypatch.setenv("CAUSALREC__SERVE__BANDIT__ENABLED", "true")
    params = load_params(project / "params.yaml")
    waiting = pipeline.STAGES["package"](params)
    registry = Registry(project / "registry.json")
    assert waiting["promoted"] is False and waiting["reason"].startswith("challenger") and "challenger_decision" not in waiting
    assert registry.alias("challenger")["model_tag"] == waiting["model_tag"] and registry.alias("challenger")["status"] == "challenger"
    decided = pipeline.STAGES["package"](params)
    assert decided["challenger_decision"]["model_tag"] == waiting["model_tag"] and not decided["challenger_decision"]["promoted"]
    assert registry.get(waiting["model_tag"])["status"] == "blocked" and registry.champion["model_tag"] == champion["model_tag"]


def test_a_fresh_machine_replays_the_champion_from_its_export(trained):
    """The registry's models are exported beside the data (paths.model_store, versioned by DVC): with
    the champion gone from BentoML's store (a fresh CI runner after `dvc pull`), the gate and the
    monitor still find it: model_path imports it back from the export."""
    import bentoml

    from causalrec.config import load_params
    from causalrec.pipeline.store import model_path
    from causalrec.registry import Registry
    from causalrec.serving.core import RecommenderCore

    project, _ = trained
    params = load_params(project / "params.yaml")
    champion = Registry(params.paths.registry).champion
    exports = {p.name for p in params.paths.model_store.iterdir()}
    assert {f"{champion[k].replace(':', '-')}.bentomodel.tar.gz" for k in ("model_tag", "encoder_tag")} <= exports
    bentoml.models.delete(champion["model_tag"])
    path = model_path(params, champion["model_tag"])
    assert str(bentoml.models.get(champion["model_tag"]).tag) == champion["model_tag"]
    assert RecommenderCore(path, seed=0).recommend("u000001", 3)["slate_size"] == 3

    # an export an earlier version wrote (BentoML's xz, `<tag>.bentomodel`) is found when it is the only one
    gz = params.paths.model_store / f"{champion['model_tag'].replace(':', '-')}.bentomodel.tar.gz"
    legacy, aside = gz.with_name(gz.name.removesuffix(".tar.gz")), gz.with_name("aside")
    bentoml.models.export_model(champion["model_tag"], str(legacy))
    gz.rename(aside)
    try:
        bentoml.models.delete(champion["model_tag"])
        assert RecommenderCore(model_path(params, champion["model_tag"]), seed=0).recommend("u000001", 3)["slate_size"] == 3
    finally:
        aside.rename(gz)
        legacy.unlink()


def test_bad_data_stops_flow_and_keeps_last_good_model(trained, tmp_path):
    from causalrec.flows.retrain import retrain_flow

    project, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(project / "data", bad)
    inter = pd.read_parquet(bad / "interactions.parquet")
    inter.loc[0, "propensity"] = 0.0
    inter.to_parquet(bad / "interactions.parquet")
    models = project / "artifacts" / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    metrics_before = (project / "artifacts" / "metrics.json").read_text()
    registry = (project / "registry.json").read_text()
    params = project / "params_bad.yaml"
    shutil.copy2(project / "params.yaml", params)
    os.environ["CAUSALREC__INGEST__SOURCE"] = "parquet"
    os.environ["CAUSALREC__INGEST__SOURCE_PATH"] = str(bad)
    os.environ["CAUSALREC__PATHS__INPUT_DIRS"] = json.dumps([str(tmp_path)])  # inputs outside the project: declared
    try:
        with pytest.raises(Exception, match="propensity"):
            retrain_flow(params_path=str(params), version=False)
    finally:
        for name in ("CAUSALREC__INGEST__SOURCE", "CAUSALREC__INGEST__SOURCE_PATH", "CAUSALREC__PATHS__INPUT_DIRS"):
            del os.environ[name]
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before
    assert (project / "artifacts" / "metrics.json").read_text() == metrics_before
    assert (project / "registry.json").read_text() == registry
    report = json.loads((project / "artifacts" / "validation" / "report.json").read_text())
    assert report["success"] is False and report["failures"][0]["column"] == "propensity"


API_KEY = "integration-test-key"


def start_server(tag: str, workdir: Path, feedback_log: Path, command: list[str] | None = None) -> BentoServer:
    env = {"CAUSALREC_API_KEY": API_KEY, "CAUSALREC_FEEDBACK_LOG": str(feedback_log),
           "CAUSALREC_CATALOGUE": str(feedback_log.parent / "catalogue.sqlite"),
           "CAUSALREC_PSEUDONYM_KEY": "test-pseudonym-key"}
    return BentoServer(tag, workdir, workdir / "serve.log", env, ready_timeout=120, command=command).start()


@pytest.fixture(scope="module")
def server(trained):
    """What an operator runs: `causalrec serve`, the registry champion's bento."""
    project, result = trained
    cli = [str(Path(sys.executable).parent / "causalrec"), "serve", "--params", str(project / "params.yaml")]
    server = start_server(result["package"]["bento_tag"], project, project / "feedback" / "fb.jsonl", command=cli)
    yield server.url, project
    server.stop()


def test_a_killed_server_dies_whole_and_a_restart_binds_its_port(trained, tmp_path):
    """`kill -9` of the `causalrec serve` process group: BentoML's workers (each in a session of its own)
    die with the server, nothing answers on the port, a new server binds it, and the killed one's temp
    directory is removed when the next one starts."""
    import tempfile
    import time

    import psutil

    from causalrec.serving.launch import _descendants

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    project, result = trained
    cli = [str(Path(sys.executable).parent / "causalrec"), "serve", "--params", str(project / "params.yaml")]
    first = start_server(result["package"]["bento_tag"], tmp_path, tmp_path / "fb.jsonl", command=cli)
    workers = _descendants(first.proc.pid)
    own_tmp = list(Path(tempfile.gettempdir()).glob(f"causalrec-serve-{first.proc.pid}-*"))
    assert len(workers) >= 2 and len(own_tmp) == 1
    assert all(os.getpgid(w) != first.proc.pid for w in workers)  # out of the group a kill of it reaches
    os.killpg(first.proc.pid, 9)
    first.proc.wait(timeout=10)
    deadline = time.time() + 10
    while any(map(running, workers)) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(map(running, workers)), [w for w in workers if running(w)]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{first.url}/readyz", timeout=2)
    first.proc = None
    second = BentoServer(result["package"]["bento_tag"], tmp_path, tmp_path / "serve2.log", first.env, ready_timeout=120,
                         command=cli).start(port=int(first.url.rsplit(":", 1)[1]))
    try:
        assert requests.get(f"{second.url}/readyz", timeout=5).status_code == 200 and second.url == first.url
        assert not own_tmp[0].exists()
    finally:
        second.stop()


def test_causalrec_serve_serves_the_pinned_champion(server):
    from causalrec.registry import Registry

    url, project = server
    champion = Registry(project / "registry.json").champion
    answer = _post(url, "/recommend", {"user_id": "u000001", "k": 3}).json()
    assert answer["model_version"] == champion["model_tag"] and answer["slate_size"] == 3
    info = _post(url, "/model_info", {}).json()
    assert info["data_md5"] == champion["data_md5"]
    # no drift mark in this project: no boost, it serves with params.yaml's exploration
    assert info["exploration_boost"] is None and info["serving"] == {"policy": "epsilon_greedy", "epsilon": info["serve"]["epsilon"],
                                                                     "traffic": None}  # serve.bandit off: one policy


def _post(url, path, body, key=None, **kw):
    headers = {"x-api-key": key} if key else {}
    return requests.post(f"{url}{path}", json=body, headers=headers, timeout=10, **kw)


def test_serve_recommend(server):
    url, project = server
    r = _post(url, "/recommend", {"user_id": "u000001", "k": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 10 and body["cold_start"] is False
    known = set(pd.read_parquet(project / "data" / "items.parquet")["item_id"])
    assert {it["item_id"] for it in body["items"]} <= known
    for it in body["items"]:
        assert 0 < it["propensity"] <= 1 and -1 <= it["uplift"] <= 1 and 0 <= it["score"] <= 1
    excluded = body["items"][0]["item_id"]
    again = _post(url, "/recommend", {"user_id": "u000001", "k": 10, "exclude": [excluded]}).json()
    assert excluded not in {it["item_id"] for it in again["items"]}


def test_serve_cold_start_and_bad_requests(server):
    url, _ = server
    r = _post(url, "/recommend", {"user_id": "someone-new", "k": 3})
    assert r.status_code == 200 and r.json()["cold_start"] is True and len(r.json()["items"]) == 3
    for bad in ({"user_id": "u000001", "k": 0}, {"user_id": "u000001", "k": "ten"}, {"k": 3}, {"user_id": ""},
                {"user_id": "u1", "k": 10_001}, {"user_id": "x" * 10_000}, {"user_id": "u1", "k": 2.0}):
        r = _post(url, "/recommend", bad)
        assert 400 <= r.status_code < 500, (bad, r.status_code, r.text)
    info = requests.post(f"{url}/model_info", json={}, timeout=10).json()
    capped = min(info["serve"]["k_max"], info["catalogue_size"])  # k above k_max: k_max items, as documented
    assert len(_post(url, "/recommend", {"user_id": "u1", "k": 10_000}).json()["items"]) == capped
    r = requests.post(f"{url}/recommend", data=b'{"user_id": "\xff\xfe", "k": 3}', headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500
    huge = {"user_id": "u000001", "k": 3, "exclude": ["i000001"] * 500_000}  # ~6 MB body
    r = _post(url, "/recommend", huge)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    for path in ("/recommend", "/explain", "/feedback", "/items"):  # no boundary: was a 500 in every endpoint
        r = requests.post(f"{url}{path}", data=b"{}", headers={"content-type": "multipart/form-data"}, timeout=10)
        assert r.status_code == 415, (path, r.status_code, r.text)
    assert _post(url, "/recommend", {"user_id": "u000001", "k": 3}).status_code == 200  # and still serving


def test_feedback_the_pipeline_would_refuse_is_refused_and_never_logged_with_its_values(server):
    """What export would quarantine, the service refuses first (the same rule book, on the catalogue and the
    registry it serves with); strict JSON; the 4xx log lines name fields and rules, not what was sent."""
    url, project = server
    served = _post(url, "/recommend", {"user_id": "u000002", "k": 1}).json()
    good = {"event_id": "strict-0", "user_id": "u000002", "item_id": served["items"][0]["item_id"], "outcome": 1,
            "propensity": served["items"][0]["propensity"], "timestamp": "2026-11-01T07:00:00Z",
            "model_version": served["model_version"]}
    planted = {"item_id": "i999999-planted", "outcome": 2, "model_version": "causalrec-recommender:planted0",
               "event_id": "planted@example.com", "request_id": "planted@example.org", "timestamp": 1767225600}
    for field, value in planted.items():
        r = _post(url, "/feedback", {**good, "event_id": f"strict-{field}", field: value}, key=API_KEY)
        assert r.status_code == 400 and field in r.json()["error"] + json.dumps(r.json().get("detail")), (field, r.text)
    body = json.dumps(good)[:-1] + ', "outcome": 0}'  # the same key twice: refused, not "last one wins"
    r = requests.post(f"{url}/feedback", data=body, headers={"content-type": "application/json", "x-api-key": API_KEY})
    assert r.status_code == 400 and "repeats a key" in r.json()["error"]
    assert _post(url, "/feedback", good, key=API_KEY).json()["status"] == "logged"
    r = _post(url, "/items", {"title": "t", "description": "d", "item_id": "planted@example.net"}, key=API_KEY)
    assert r.status_code == 400  # an id stored as sent: an address is refused, never stored
    log = (project / "serve.log").read_text(errors="replace")
    for value in ("i999999-planted", "planted0", "planted@example", "1767225600", "planted@example.net"):
        assert value not in log, value


def test_serve_explain_items_feedback_and_metrics(server):
    url, project = server
    item = _post(url, "/recommend", {"user_id": "u000001", "k": 1}).json()["items"][0]["item_id"]
    r = _post(url, "/explain", {"user_id": "u000001", "item_id": item})
    assert r.status_code == 200 and r.json()["reasons"] and r.json()["uplift_interval"] is not None
    # the bundle carries the analysis: the split for a returning user's segment, and the score's parts
    assert r.json()["mediation"]["segment_label"].startswith("segment=1") and r.json()["mediation"]["indirect"]["ci95"]
    assert set(r.json()["score_drivers"]["parts"]) >= {"user bias", "match: user x item features"}
    assert _post(url, "/explain", {"user_id": "u000001", "item_id": "nope"}).status_code == 404
    new = {"title": "Waterproof trail boots", "description": "durable boots for summit trails"}
    assert _post(url, "/items", new).status_code == 401
    assert _post(url, "/items", new, key="wrong").status_code == 401
    r = _post(url, "/items", new, key=API_KEY)
    assert r.status_code == 200, r.text
    new_id = r.json()["item_id"]
    assert r.json()["text_scored"] is True
    r = _post(url, "/recommend", {"user_id": "u000001", "k": 100})  # the whole (small) catalogue
    assert new_id in {it["item_id"] for it in r.json()["items"]}  # recommendable at once, no retraining
    for bad in ({"title": "", "description": "x"}, {"title": "t", "description": "y" * 20_000}):
        assert _post(url, "/items", bad, key=API_KEY).status_code == 400
    event = {"event_id": "ev-1", "user_id": "u000001", "item_id": item, "outcome": 1, "propensity": 0.3,
             "timestamp": "2026-11-23T07:00:00Z", "position": 1}
    assert _post(url, "/feedback", event).status_code == 401
    assert _post(url, "/feedback", event, key=API_KEY).json()["status"] == "logged"
    assert _post(url, "/feedback", event, key=API_KEY).json()["status"] == "duplicate"
    for bad in ({**event, "propensity": 0}, {**event, "propensity": 1.5}, {**event, "timestamp": "yesterday"}):
        assert _post(url, "/feedback", bad, key=API_KEY).status_code == 400
    lines = (project / "feedback" / "fb.jsonl").read_text().splitlines()
    assert [json.loads(x)["event_id"] for x in lines].count("ev-1") == 1
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    # The Prometheus counter of this service's requests, with the endpoints just called.
    assert "bentoml_service_request_total" in metrics and 'endpoint="/feedback"' in metrics


def test_published_openapi_is_valid_and_documents_every_error(server):
    import schemathesis

    url, _ = server
    doc = requests.get(f"{url}/docs.json", timeout=10).json()
    schemathesis.openapi.from_dict(doc).validate()  # OpenAPI 3.0 meta-schema
    feedback = doc["paths"]["/feedback"]["post"]
    assert {"400", "401", "413", "415", "500"} <= set(feedback["responses"])
    assert feedback["requestBody"]["content"]["application/json"]["schema"]["properties"]["propensity"][
        "exclusiveMinimum"] is True
    r = requests.post(f"{url}/feedback", data="{}", headers={"content-type": "multipart/form-data"}, timeout=10)
    assert r.status_code == 415 and set(r.json()) == {"error"}
    r = _post(url, "/items", {"title": "t", "description": "d", "item_id": "i000001"}, key=API_KEY)
    assert r.status_code == 409 and "already exists" in r.json()["error"]  # one object, not BentoML's list


def test_reliability_probes_on_the_served_api(trained, tmp_path):
    """benchmarks/reliability.py on tiny inputs against this project's bento: schemathesis (all checks,
    with and without the key) gets no 5xx; a planted e-mail address is in no log; every feedback event
    acknowledged before a SIGKILL is stored once."""
    import reliability  # benchmarks/reliability.py (conftest puts benchmarks/ on the path)

    project, result = trained
    figures = reliability.main(["--project", str(project), "--bento", result["package"]["bento_tag"], "--examples", "8",
                                "--rounds", "1", "--events", "60", "--kill-rounds", "1", "--no-pytest-probes",
                                "--out", str(tmp_path)])
    fuzz = figures["schemathesis"]
    assert fuzz["requests"] > 200 and fuzz["server_errors"] == 0
    assert fuzz["recommender_workers"] == 2  # set through BentoML's configuration (BENTOML_CONFIG_OVERRIDES)
    assert [r["exit_code"] for r in fuzz["runs"]] == [0, 0], fuzz["runs"]
    privacy = figures["privacy"]
    assert 200 in privacy["planted_statuses"] and 400 in privacy["planted_statuses"]  # good and bad requests
    assert privacy["planted_feedback_stored_as"] == "anon-..."
    assert privacy["planted_email_found"] == 0 and privacy["tracebacks_in_log"] == 0
    kill = figures["feedback_sigkill"]
    assert kill["acknowledged"] >= 60 and kill["lost"] == 0 and kill["duplicated"] == 0
    loop = figures["loop"]  # every acknowledged event exported, each poison class quarantined, same bytes twice
    assert loop["acknowledged"] >= 60 and loop["accepted_then_blocked"] == 0 and loop["export_error"] is None
    assert loop["ingested_data_validates"] and loop["poison_quarantined"] == loop["poison_written"] == 5
    assert figures["data_version_stable"] is True
    assert figures["orphan_workers_after_kill"] == 0 and figures["group_kill"]["restarts_bound_the_same_port"] == 1
    assert figures["group_kill"]["killed_servers_temp_dirs_left_after_restart"] == 0


def test_forget_erases_a_served_person_everywhere_and_keeps_them_out(trained, server, monkeypatch):
    """The loop with a planted person: served (HTTP), their feedback exported, retrained (the Prefect flow:
    data versioned and pushed, models in BentoML's store and exports). `causalrec forget` then leaves
    neither their id nor their pseudonym in the project, the DVC cache and remote, BentoML's store, the
    registry or Prefect's database; a re-ingest from the source does not bring an erased simulator user
    back; the registry marks the models and the gate replaces such a champion. Runs last: it erases."""
    from causalrec import pipeline
    from causalrec.config import load_params
    from causalrec.serving.erasure import find
    from causalrec.flows.retrain import retrain_flow
    from causalrec.pipeline.forget import forget, places
    from causalrec.pipeline.promote import decide
    from causalrec.registry import Registry
    from causalrec.serving.feedback import export_feedback
    from causalrec.serving.privacy import pseudonymize

    url, project = server
    monkeypatch.setenv("CAUSALREC_PSEUDONYM_KEY", "test-pseudonym-key")  # the server's
    monkeypatch.setenv("CAUSALREC__SERVE__FEEDBACK_LOG", "feedback/fb.jsonl")  # where the server logs
    monkeypatch.setenv("CAUSALREC__PACKAGE__BUILD_BENTO", "false")  # the bento build is tested above
    planted = "planted-person-q7x2"
    pseudonym = pseudonymize(planted, b"test-pseudonym-key")
    slate = _post(url, "/recommend", {"user_id": planted, "k": 5}).json()
    for rank, it in enumerate(slate["items"], 1):
        event = {"event_id": f"planted-{rank}", "user_id": planted, "item_id": it["item_id"], "outcome": int(rank < 3),
                 "propensity": it["propensity"], "timestamp": "2026-12-07T08:00:00Z", "position": rank,
                 "request_id": slate["request_id"], "slate_size": 5, "model_version": slate["model_version"]}
        assert _post(url, "/feedback", event, key=API_KEY).json()["status"] == "logged"
    # learned between retrains: the next slate already comes from their re-estimated vector (serve.online)
    assert _post(url, "/recommend", {"user_id": planted, "k": 5}).json()["online_update"] is True
    params = load_params(project / "params.yaml")
    exported = export_feedback(params.serve.feedback_log, params.paths.data_dir, params.paths.feedback_dir,
                               project / "artifacts" / "validation_feedback")
    assert exported["exported"] >= 5 and exported["new_users"] >= 1
    retrain_flow(params_path=str(project / "params.yaml"))
    needles = (planted, pseudonym)
    before = find(places(params), needles)
    assert any("feedback_data" in p for p in before) and any("causalrec-recommender" in p for p in before)  # BentoML's store
    assert any(".dvc/cache" in p for p in before)
    result = forget(params, planted)
    assert result["found_after"] == [] and find(places(params), needles) == []  # forget raises otherwise; again by hand
    assert result["dvc"]["remotes_collected"] and result["feedback_log_events"] == 5
    # the running service's online state forgot them too (it rebuilds when the log is rewritten)
    assert _post(url, "/recommend", {"user_id": planted, "k": 5}).json()["online_update"] is False
    registry = Registry(params.paths.registry)
    assert all(m.get("trained_on_erased_data") for m in registry.state()["models"].values())
    clean = {"model_tag": "x", "primary_metric": "ndcg@10", "score": 0.0}
    assert decide(params, clean, project, registry.champion, None)["promote"] is True
    # an erased simulator user: the simulator's seed regenerates them, the tombstone keeps them out
    forget(params, "u000003")
    pipeline.STAGES["ingest"](params)
    assert "u000003" not in set(pd.read_parquet(project / "data" / "users.parquet")["user_id"])
    assert "u000003" not in set(pd.read_parquet(project / "data" / "interactions.parquet")["user_id"])
