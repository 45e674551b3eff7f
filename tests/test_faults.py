"""Faults leave nothing behind: a writer killed with SIGKILL leaves temp files the next write removes,
a crash between atomic_dir's two renames keeps the old version, and children die with their parent."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from causalrec.io import atomic_dir, atomic_write_json, pid_alive, sweep_stale


def _killed_writer(target: Path, body: str) -> None:
    """A process that starts writing `target` and SIGKILLs itself in the middle."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from causalrec.io import atomic_dir, atomic_write_bytes
        target = Path({str(target)!r})
        {body}
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_killed_writers_leave_nothing_the_next_write_keeps(tmp_path):
    target = tmp_path / "models"
    with atomic_dir(target) as tmp:
        (tmp / "model.pt").write_text("v1")
    _killed_writer(target, """
        with atomic_dir(target) as tmp:
            (tmp / "model.pt").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)""")
    _killed_writer(tmp_path / "metrics.json", """
        import tempfile
        fd, _ = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
        os.write(fd, b"half")
        os.kill(os.getpid(), signal.SIGKILL)""")
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert len(leftovers) == 2 and leftovers[0].startswith(".metrics.json.") and leftovers[1].startswith(".models.")
    assert (target / "model.pt").read_text() == "v1"  # the killed write never showed
    with atomic_dir(target) as tmp:
        (tmp / "model.pt").write_text("v2")
    atomic_write_json(tmp_path / "metrics.json", {"auc": 0.5})
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert (target / "model.pt").read_text() == "v2"


def test_a_live_writers_temp_is_left_alone_and_a_lost_rename_is_undone(tmp_path):
    live = tmp_path / f".models.{os.getpid()}.abc.tmp"  # this process: alive
    live.mkdir()
    assert sweep_stale(tmp_path / "models") == [] and live.exists()
    # A crash after `models -> .models.old` and before `tmp -> models`: the old version is put back.
    (tmp_path / ".models.old").mkdir()
    (tmp_path / ".models.old" / "model.pt").write_text("v1")
    sweep_stale(tmp_path / "models")
    assert (tmp_path / "models" / "model.pt").read_text() == "v1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_children_of_a_killed_run_do_not_outlive_it(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = textwrap.dedent(f"""
        import sys
        from causalrec.io import run_child
        run_child([sys.executable, "-c", "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"])
    """)
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    assert pid_alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while pid_alive(child) and time.time() < deadline:
        try:  # reap it if it was re-parented to us (it is not our child: ignore)
            os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    assert not pid_alive(child), "the child outlived its killed parent"


def test_package_prunes_what_it_created_and_no_longer_serves(tmp_path):
    """Store entries this project created that the registry no longer needs (not a champion, past or
    present, nor the challenger) are deleted; entries it did not create (a shared store) are not."""
    code = textwrap.dedent(f"""
        import json
        from pathlib import Path
        import bentoml
        from causalrec.pipeline.store import MODEL_STORE_NAME, prune_store, record_created
        log = Path({str(tmp_path / "created.json")!r})
        tags = []
        for _ in range(3):
            with bentoml.models.create(MODEL_STORE_NAME) as m:
                pass
            tags.append(str(m.tag))
            record_created(log, tags[-1])
        with bentoml.models.create("someone-elses-model") as other:
            pass
        removed = prune_store({{tags[2], tags[1]}}, log)
        left = sorted(str(m.tag) for m in bentoml.models.list())
        print(json.dumps({{"tags": tags, "removed": removed, "left": left, "other": str(other.tag),
                          "log": json.loads(log.read_text())}}))
    """)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "store"), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert out["removed"] == [out["tags"][0]]
    assert out["left"] == sorted([out["tags"][1], out["tags"][2], out["other"]])
    assert out["log"] == out["tags"][1:]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_a_killed_retrain_leaves_no_prefect_server_running(tmp_path):
    """`causalrec retrain` runs its flow on an API server it started (causalrec.flows.api); SIGKILL on
    the run takes the server with it (Prefect's own temporary server would be orphaned)."""
    pid_file = tmp_path / "server.pid"
    code = textwrap.dedent(f"""
        import os, signal, subprocess
        from prefect import flow
        from causalrec.flows.api import run_api_server

        @flow
        def doomed():
            children = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "uvicorn"], capture_output=True, text=True)
            open({str(pid_file)!r}, "w").write(children.stdout.split()[0])
            os.kill(os.getpid(), signal.SIGKILL)

        with run_api_server():
            doomed()
    """)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    server = int(pid_file.read_text())
    deadline = time.time() + 10
    while pid_alive(server) and time.time() < deadline:
        time.sleep(0.1)
    assert not pid_alive(server), "the Prefect API server outlived the killed run"


@pytest.mark.slow
def test_a_finished_run_sends_its_logs_before_its_server_stops(tmp_path):
    """Prefect's log and event workers are drained before the run's API server stops: nothing is left
    to retry against a stopped server at exit (which held `causalrec retrain` ~75 s and printed
    "Error logging to API")."""
    flow_code = "\n".join([
        "import time", "from prefect import flow, get_run_logger", "from causalrec.flows.api import run_api_server",
        "@flow", "def chatty():", "    print('flow', flush=True)", "    for i in range(50): get_run_logger().info('line %d', i)",
        "with run_api_server(meanwhile=lambda: print('meanwhile', flush=True)): chatty()", "print(time.time(), flush=True)"])
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-c", flow_code], capture_output=True, text=True, env=env, timeout=300)
    exited = time.time()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Error logging to API" not in proc.stderr and "connection attempts failed" not in proc.stderr
    assert exited - float(proc.stdout.split()[-1]) < 5, "the process lingered after its flow and server had finished"
    # what the CLI does while the server starts (import the stages' libraries) ran once, before the flow
    assert [w for w in proc.stdout.split() if w in ("meanwhile", "flow")] == ["meanwhile", "flow"]
