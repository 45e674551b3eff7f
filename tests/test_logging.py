"""The console script logs JSON lines per module, at the level from the environment."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

CLI = str(Path(sys.executable).parent / "causalrec")


def _run(tmp_path, level=None):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    env = {**os.environ, **({"CAUSALREC_LOG_LEVEL": level} if level else {})}
    return subprocess.run([CLI, "validate", "-p", "params.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=120)


def test_console_script_logs_stage_lines_as_json(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 2 and "items.parquet not found" in proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [(r["logger"], r["message"].split(":")[0], r["stage"]) for r in lines] == [
        ("causalrec.pipeline", "stage started", "validate"), ("causalrec.pipeline", "stage failed", "validate")]
    assert lines[1]["level"] == "ERROR" and lines[1]["seconds"] >= 0


def test_log_level_from_the_environment(tmp_path):
    quiet = _run(tmp_path, "ERROR")
    assert [json.loads(x)["level"] for x in quiet.stderr.splitlines() if x.startswith("{")] == ["ERROR"]
    bad = _run(tmp_path, "loud")
    assert bad.returncode == 2 and "CAUSALREC_LOG_LEVEL='LOUD' is not a logging level" in bad.stderr
    assert "Traceback" not in bad.stderr
