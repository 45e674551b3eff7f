"""Crash-safe file writing: nothing a stage writes is ever seen half-written, and a writer killed
mid-way (kill -9) leaves nothing that survives the next write of the same path.

Temp files and directories carry their writer's pid (`.<name>.<pid>.<random>.tmp`); the next writer
of that path removes those whose process is gone, and puts back `.<name>.old` when a crash fell
between the two renames of `atomic_dir`. Child processes (dvc, bentoml) die with their parent
(`run_child`), so a killed run leaves no orphans either."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def sweep_stale(path: str | Path) -> list[Path]:
    """Remove temp files/dirs of `path` left by writers that no longer run; restore `.<name>.old`
    if `path` itself went missing in a crash. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for leftover in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid = leftover.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            removed.append(leftover)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        old.rename(path)  # the crash fell between `path -> old` and `tmp -> path`: the old version stands
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def die_with_parent(parent: int | None = None) -> None:
    """Tie this process's life to its parent's: on Linux the kernel sends it SIGKILL when the parent
    dies (PR_SET_PDEATHSIG), however the parent dies, `kill -9` included; elsewhere a no-op. Used as
    the preexec_fn of the children a stage drives (dvc, bentoml), and called first by each BentoML
    service's `__init__`: circus starts BentoML's workers in sessions of their own (setsid), so a kill
    of the server's process group does not reach them, and BentoML has no setting for it. A parent that
    died before the call (the process was re-parented to init, or its parent is not `parent`) ends this
    process at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1 or (parent is not None and os.getppid() != parent):
        os._exit(1)  # orphaned already: the server that started us is gone


def stop_child(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM a child server, SIGKILL it when it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a child server we start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run for the tools a stage drives (dvc, bentoml): never outlives a killed run."""
    return subprocess.run(cmd, preexec_fn=die_with_parent, **kwargs)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def append_line_durably(path: str | Path, line: str) -> None:
    """Append one line to an append-only log and fsync it (a record is whole or absent after a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o640)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path` whole, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp"))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
