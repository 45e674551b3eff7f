"""Data versions: `dvc add` / `dvc push` of data/ and the md5 DVC recorded."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from causalrec.config import Params
from causalrec.io import run_child
from causalrec.pipeline.paths import StageError

def _dvc(root: Path, *args: str) -> str:
    proc = run_child([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageError(f"dvc {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def data_hash(params: Params) -> str | None:
    """The md5 DVC recorded for data/ in data.dvc (None before the data is versioned)."""
    import yaml

    dvc_file = params.root / "data.dvc"
    if not dvc_file.exists():
        return None
    outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
    return outs[0].get("md5") if outs else None


def version_data(params: Params, push: bool = True) -> dict:
    """`dvc add data`, the feedback partitions and the registry's exported models (+ `dvc push` to
    the default remote): the data version the run trains on, the served feedback it came from, and
    the champions a fresh machine needs to replay at the gate."""
    root = params.root
    if not (root / ".dvc").is_dir():
        raise StageError(f"{root} is not a DVC repository (no .dvc/); run `dvc init` there first")
    tracked = [params.paths.data_dir] + [p for p in (params.paths.feedback_dir, params.paths.model_store) if p.is_dir()]
    _dvc(root, "add", "--quiet", *(os.path.relpath(p, root) for p in tracked))
    pushed = None
    if push:
        out = _dvc(root, "push", "--jobs", "2")
        pushed = out.strip().splitlines()[-1] if out.strip() else "up to date"
    return {"data_md5": data_hash(params), "pushed": pushed}


def params_hash(params: Params) -> str:
    """sha256 of the params that shaped a model (paths made project-relative: the same settings on
    another machine hash the same)."""
    import hashlib
    import json

    root = str(params.root)
    text = json.dumps(params.model_dump(mode="json", exclude={"paths"}), sort_keys=True).replace(root, ".")
    return hashlib.sha256(text.encode()).hexdigest()


def code_version(root: Path) -> str | None:
    """The git commit the code was at (`+dirty` with uncommitted changes to tracked files); None
    outside a git repository."""
    head = run_child(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return None
    dirty = run_child(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
