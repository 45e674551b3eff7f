"""Time the default retrain flow (what `make run` runs after set-up) on this machine.

    python benchmarks/pipeline_time.py [--project DIR] [--measure-setup]
    PYTHONPATH=<other checkout>/src python benchmarks/pipeline_time.py --project <other checkout>   # older code

Runs `causalrec retrain` in DIR (default: a fresh clone of this repository in a temp directory, removed at exit,
so the timing includes DVC init-free versioning, GE, embedding from an empty cache, training,
`bentoml build` and Evidently) and records the wall time of the whole flow. With --measure-setup
it first times `make setup` in that clone (a fresh .venv from constraints.txt) and runs the flow
from the clone's own environment, so both figures come from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, scratch_dir, write_result


def _code_version(env_bin: Path, env: dict) -> str:
    """The commit of the checkout whose causalrec the flow imports (+ "-dirty" with uncommitted changes)."""
    where = subprocess.run([str(env_bin / "python"), "-c", "import causalrec; print(causalrec.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    git = ["git", "-C", str(Path(where).parent)]
    sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
    return f"{sha}{'-dirty' if dirty.strip() else ''} ({Path(where).parent})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--project", type=Path, default=None)
    ap.add_argument("--measure-setup", action="store_true", help="time `make setup` in the clone first")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    project = args.project
    if project is None:
        project = scratch_dir("causalrec-time-") / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(project)], check=True)
    env_bin, setup_seconds = Path(sys.executable).parent, None
    if args.measure_setup:
        start = time.perf_counter()
        subprocess.run(["make", "setup"], cwd=project, check=True, capture_output=True)
        setup_seconds, env_bin = round(time.perf_counter() - start, 1), project / ".venv" / "bin"
    env = {"PATH": f"{env_bin}:/usr/bin:/bin", "PREFECT_HOME": str(project / ".prefect"),
           "BENTOML_HOME": str(project / ".bentoml"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HOME": str(Path.home()),
           # another checkout's code (an A/B against older code) reaches the child too
           **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})}
    code = _code_version(env_bin, env)
    start = time.perf_counter()
    proc = subprocess.run([str(env_bin / "causalrec"), "retrain", "--params", "params.yaml"], cwd=project,
                          capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stderr[-3000:])
    stages = {}  # from the stages' own JSON log lines ("stage finished", seconds)
    for line in proc.stderr.splitlines():
        try:
            record = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == "stage finished":
            stages[record["stage"]] = record["seconds"]
    write_result("pipeline", {"code": code, "retrain_flow_seconds": round(seconds, 1), "setup_seconds": setup_seconds,
                              "stage_seconds": stages, "outside_stages_seconds": round(seconds - sum(stages.values()), 1),
                              "budget_seconds": 600, "data": "simulator default (100k interactions, 2k users, 1k items)"},
                 args.out)


if __name__ == "__main__":
    main()
