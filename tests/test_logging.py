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


def test_client_errors_are_one_line_without_input_and_server_errors_keep_the_traceback():
    import logging

    from bentoml.exceptions import InvalidArgument
    from pydantic import BaseModel

    from causalrec.logs import ClientErrorsOnOneLine

    class Body(BaseModel):
        user_id: str
        k: int

    def record_for(exc):
        try:
            raise exc
        except Exception:
            import sys as _sys

            rec = logging.LogRecord("bentoml._internal.server.http_app", logging.ERROR, __file__, 1,
                                    "Exception on %s [%s]", ("/recommend", "POST"), _sys.exc_info())
        assert ClientErrorsOnOneLine().filter(rec)
        return rec

    try:
        Body(user_id="alice@example.com", k="many")
    except Exception as exc:
        invalid = record_for(exc)
    line = logging.Formatter().format(invalid)
    assert invalid.levelname == "WARNING" and "\n" not in line and "Traceback" not in line
    assert "-> 400" in line and "k: Input should be a valid integer" in line and "alice" not in line
    named = record_for(InvalidArgument("k=0 is below 1"))
    assert "-> 400 InvalidArgument: k=0 is below 1" in named.getMessage() and named.exc_info is None
    crash = record_for(RuntimeError("boom"))
    assert crash.levelname == "ERROR" and "Traceback" in logging.Formatter().format(crash)


def test_the_console_script_ends_with_its_status_and_all_it_printed(tmp_path):
    """The console script ends the process without the interpreter's teardown (cli._end_process), with
    the command's own status (0; 2 on bad input) and its output whole."""
    proc = subprocess.run([CLI, "simulate-funnel", "--out", str(tmp_path / "f"), "--truth", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) >= {"config", "effects"}
    failed = subprocess.run([CLI, "graph", "--spec", str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 2 and "missing.yaml" in failed.stderr
