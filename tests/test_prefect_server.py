"""prefect.yaml against a real `prefect server start` on 127.0.0.1: `prefect deploy --all` creates the
two deployments (the monitor's daily schedule, the retrain's trigger as an automation), and the drift
event the monitor flow emits makes Prefect's own trigger service start a retrain flow run.

Everything Prefect runs in child processes with their own PREFECT_HOME and PREFECT_API_URL, apart
from the session's test harness. No worker is started: the run the automation creates waits,
Scheduled, for `prefect worker start --pool causalrec` (a retrain is not a test's work)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

from causalrec.io import die_with_parent, free_port, stop_child

pytestmark = pytest.mark.slow
PREFECT = str(Path(sys.executable).parent / "prefect")


def _api(url: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _wait_for(check, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            found = check()
        except OSError:  # the server is not answering yet
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds} s")


EMIT = """
import sys
from causalrec.config import load_params
from causalrec.flows.monitor import emit_drift
from prefect.events import emit_event
emit_event(event="causalrec.something.else", resource={"prefect.resource.id": "causalrec.project.other"})
emit_drift(load_params(sys.argv[1]), {"compared": "live traffic (part-00007)", "failed_tests": ["history_similarity"],
                                      "drifted_share": 0.5, "key_columns_drifted": ["history_similarity"]})
"""


def test_drift_event_starts_the_retrain_deployment_on_a_real_prefect_server(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("prefect.yaml", "params.yaml"):
        shutil.copy2(REPO / name, project / name)
    shutil.copytree(REPO / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        _wait_for(lambda: _api(url, "/health"), 120, "prefect server start answering /health")
        run = lambda *cmd: subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True,  # noqa: E731
                                          timeout=180, preexec_fn=die_with_parent)
        for cmd in ([PREFECT, "work-pool", "create", "causalrec", "--type", "process"],
                    [PREFECT, "--no-prompt", "deploy", "--all"]):
            done = run(*cmd)
            assert done.returncode == 0, f"{' '.join(cmd[1:])}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        retrain = _api(url, "/deployments/name/causalrec-retrain/retrain")
        monitor = _api(url, "/deployments/name/causalrec-monitor/monitor-daily")
        assert [s["schedule"]["cron"] for s in monitor["schedules"]] == ["0 6 * * *"]
        automations = _api(url, "/automations/filter", {})
        assert [a["actions"][0]["deployment_id"] for a in automations] == [retrain["id"]]
        assert _api(url, "/flow_runs/filter", {}) == []  # nothing runs before the event

        emitted = run(sys.executable, "-c", EMIT, str(project / "params.yaml"))
        assert emitted.returncode == 0, emitted.stderr[-3000:]
        runs = _wait_for(lambda: _api(url, "/flow_runs/filter", {}), 60, "a flow run started by the drift trigger")
        time.sleep(2)  # the unrelated event, sent first, must not have started one as well
        runs = _api(url, "/flow_runs/filter", {})
        assert len(runs) == 1, runs
        assert runs[0]["deployment_id"] == retrain["id"] and runs[0]["parameters"] == {"params_path": "params.yaml"}
        assert runs[0]["state"]["type"] == "SCHEDULED"  # waiting for a worker on the causalrec pool
    finally:
        stop_child(server, timeout=30)
        log.close()
