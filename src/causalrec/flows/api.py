"""A Prefect API server for one CLI run that dies with the run.

Without PREFECT_API_URL, Prefect 3 starts a temporary API server (uvicorn) in a subprocess; if the
run is killed with SIGKILL that server is orphaned and keeps running. `run_api_server` starts the same
server itself, as a child that receives SIGKILL when the run dies (causalrec.io.run_child's
parent-death signal), waits for it to answer (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
default 120 s: a busy 2-core machine needs more than Prefect's 20 s), and points the flow at it.
With PREFECT_API_URL set (a `prefect server start` of your own) it does nothing.

The server takes about 8 s to answer on a fresh PREFECT_HOME (its database migrations), on a core of
its own: `meanwhile` runs in that time (the CLI imports the flow and the stages' libraries there,
which it would otherwise do afterwards: about 7 s of the default flow). The price: a rerun whose
stages are all skipped (cached) imports them for nothing, and its server, on an existing database,
answers in about 3 s: such a rerun takes about 3 s longer (13.2–13.8 s against 9.9–11.1 s with nothing
imported meanwhile, the default project, all stages cached).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from causalrec.io import die_with_parent, free_port, stop_child


@contextlib.contextmanager
def run_api_server(log_dir: Path | None = None, meanwhile: Callable[[], object] | None = None) -> Iterator[str | None]:
    """Yield the API URL the flow reports to: PREFECT_API_URL when set, else a server started here.
    `meanwhile` is called once before the URL is yielded (while the server starts)."""
    if os.environ.get("PREFECT_API_URL"):
        if meanwhile is not None:
            meanwhile()
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = open(Path(log_dir or ".") / "prefect-api.log", "ab") if log_dir else subprocess.DEVNULL
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, preexec_fn=die_with_parent)
    try:
        if meanwhile is not None:
            meanwhile()
        deadline = time.time() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the Prefect API server exited ({proc.returncode}) before answering")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            if time.time() > deadline:
                raise RuntimeError(f"the Prefect API server did not answer on {url} in time "
                                   "(raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain_prefect_workers()
    finally:
        stop_child(proc)
        if log is not subprocess.DEVNULL:
            log.close()


def _drain_prefect_workers(timeout: float = 30.0) -> None:
    """Send the logs and events Prefect still holds before the server stops (as Prefect's own test
    harness does): otherwise its background workers retry against the stopped server at exit, which
    held every `causalrec retrain` about 75 s after the flow had finished."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)
