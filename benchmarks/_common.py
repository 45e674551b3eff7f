"""Shared by the benchmark scripts: where results go and what every result records."""
from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def scratch_dir(prefix: str) -> Path:
    """A working directory that is removed when this process exits, however the script ends (but a
    kill): the scripts' simulated worlds, bento stores, clones and logs (5 MB to several GB a run) were
    left in the temp directory, and the test suite runs several scripts on every `make test`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    for name in ("transformers", "sentence_transformers", "numpy", "pandas", "sklearn", "obp"):
        try:
            info[name] = __import__(name).__version__
        except Exception:
            pass
    return info


def write_result(name: str, figures: dict, out_dir: str | Path | None = None) -> Path:
    out_dir = Path(out_dir) if out_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine(), **figures}
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=float) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return path
