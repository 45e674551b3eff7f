"""`dvc repro` and the retrain job (.ci/retrain) on a fresh project: which stages DVC reruns, its
metrics and plots, and served feedback as a dependency. Its own module: it needs no trained
project, so a parallel test run can schedule it beside test_integration.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_project, write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_dvc_repro_reruns_only_affected_stages(tmp_path, tiny_encoder):
    # Few models: this test is about which stages DVC reruns, not about the models.
    small = {"train": {"models": ["popularity", "mf_naive"]}, "uplift": {"enabled": False}}
    project = make_project(tmp_path / "p", tiny_encoder, package={"build_bento": False}, **small)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def dvc(*args):
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    # the retrain workflow's job: dvc pull -> dvc repro -> dvc push, against the project's local remote
    (project / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "retrain", project / ".ci" / "retrain")
    job = subprocess.run(["bash", ".ci/retrain"], cwd=project, env=env, capture_output=True, text=True)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    out = job.stdout
    for stage in ("ingest", "validate", "embed", "propensity", "train", "evaluate", "analyze", "package", "monitor"):
        assert f"Running stage '{stage}'" in out
    assert "in sync" in dvc("status", "--cloud")  # the remote has every version the run made
    assert (project / "dvc.lock").exists() and (project / "registry.json").exists() and (project / "data.dvc").exists()
    assert "Running stage" not in dvc("repro")
    write_params(project, embed={"model_path": str(tiny_encoder)}, package={"build_bento": False},
                 train={"models": ["popularity", "mf_naive"], "epochs": 5, "dim": 4}, uplift={"enabled": False})
    out = dvc("repro")
    ran = {s for s in ("ingest", "validate", "embed", "propensity", "train", "evaluate", "package", "monitor")
           if f"Running stage '{s}'" in out}
    assert ran == {"train", "evaluate", "package", "monitor"}
    shown = json.loads(dvc("metrics", "show", "--json"))
    on_disk = json.loads((project / "artifacts" / "metrics.json").read_text())
    # DVC reads the metrics file the evaluate stage wrote: every model's NDCG@10, value for value.
    flat = json.dumps(shown)
    assert all(f'"ndcg@10": {row["ndcg@10"]}' in flat for row in on_disk["models"].values())
    dvc("plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists()
    # served feedback is a dependency: a new partition makes ingest, the gate and the monitor stale
    # (not train: it reads data/, which only a rerun of ingest changes)
    part = project / "feedback_data" / "part-00001"
    part.mkdir()
    (part / "manifest.json").write_text("{}")
    stale = json.loads(dvc("status", "--json"))
    assert {"ingest", "package", "monitor"} <= set(stale) and "train" not in stale, stale
    assert {"feedback_data": "modified"} in [c.get("changed deps") for c in stale["ingest"] if isinstance(c, dict)]
