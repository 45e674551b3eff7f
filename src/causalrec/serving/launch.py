"""Start and stop a real `bentoml serve`: the environment every server gets (`serve_env`: a temp
directory of its own, removed at the next start once the server is gone, however it died), and
BentoServer for tests and benchmarks (a free port, readiness by /readyz, and a stop that reaches every
worker: BentoML's workers leave the process group; they also die with the server, io.die_with_parent)."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from causalrec.io import free_port, pid_alive

SERVER_TMP = "causalrec-serve-"
PARENT_ENV = "CAUSALREC_SERVE_PID"  # the server's pid, for its workers (set by `causalrec serve`)
_started = itertools.count()


def server_pid() -> int | None:
    """The pid of the server this worker belongs to, when `causalrec serve` started it (None: unknown)."""
    value = os.environ.get(PARENT_ENV, "")
    return int(value) if value.isdigit() else None


def serve_env(owner: int, server: int | None = None) -> dict[str, str]:
    """Environment additions for a server started by process `owner`: TMPDIR = a directory of its own
    (BentoML's sockets and client directories go there), and, when known, the server's pid (its workers
    end themselves if they find another parent). First removes the directories of servers whose owner
    is dead: a server killed with SIGKILL cleans nothing up itself."""
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{SERVER_TMP}*"):
        pid = stale.name[len(SERVER_TMP):].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    own = base / f"{SERVER_TMP}{owner}-{next(_started)}"
    own.mkdir(mode=0o700)
    return {"TMPDIR": str(own), **({PARENT_ENV: str(server)} if server is not None else {})}


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [d for c in map(int, out) for d in (c, *_descendants(c))]


class BentoServer:
    """`bentoml serve <target>` on 127.0.0.1 with `env` added and `args` as bento arguments (`--arg
    key=value`: what a service from the source tree needs; a built bento has its own); output to `log`."""

    def __init__(self, target: str, cwd: str | Path, log: str | Path, env: dict[str, str] | None = None,
                 ready_timeout: float = 180, args: dict[str, str] | None = None, command: list[str] | None = None):
        """command: what starts the server instead of `python -m bentoml serve <target>` (e.g.
        `causalrec serve --params ...`); it is given --host and --port."""
        self.target, self.cwd, self.log, self.env, self.ready_timeout = target, Path(cwd), Path(log), env or {}, ready_timeout
        self.args = [a for k, v in (args or {}).items() for a in ("--arg", f"{k}={v}")]
        self.command = command or [sys.executable, "-m", "bentoml", "serve", target]
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, port: int | None = None) -> "BentoServer":
        """port: where to listen (default: a free one)."""
        import requests

        port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        # `bentoml serve` gets a temp directory of its own; a command that sets one itself (`causalrec
        # serve`: serve_env) is left to do so
        self.tmp = serve_env(os.getpid())["TMPDIR"] if self.command[1:3] == ["-m", "bentoml"] else None
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen([*self.command, "--host", "127.0.0.1", "--port", str(port), *self.args], cwd=self.cwd,
                                         env={**os.environ, **({"TMPDIR": self.tmp} if self.tmp else {}), **self.env},
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + self.ready_timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        self.stop(9)
        raise RuntimeError(f"bentoml serve {self.target} did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = 15) -> None:
        """Signal the server's group and every worker (9 = SIGKILL: no clean shutdown, no flush)."""
        if self.proc is None:
            return
        for pid in [-self.proc.pid, *_descendants(self.proc.pid)]:  # -pid: the whole group
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        self.proc = None
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BentoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
