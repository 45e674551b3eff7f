"""Where every stage reads and writes, resolved once from the params (paths anchored at the
project root by causalrec.config.load_params), and the one error a stage raises."""
from __future__ import annotations

from pathlib import Path

from causalrec.config import Params


class StageError(RuntimeError):
    """A stage cannot run: a missing upstream output or an external command that failed."""


def stage_paths(params: Params) -> dict[str, Path]:
    a = params.paths.artifacts_dir
    return {"data": params.paths.data_dir, "truth": a / "ground_truth", "validation": a / "validation",
            "embeddings": a / "embeddings", "propensity": a / "propensity", "models": a / "models",
            "metrics": a / "metrics.json", "plots": a / "plots", "package": a / "package",
            "monitor": a / "monitor", "analysis": a / "analysis", "analysis_truth": a / "analysis_truth",
            "store_tags": a / "bentoml_tags.json",
            "cache": params.paths.cache_dir}


def require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise StageError(f"{stage}: required input {path} does not exist; run the upstream stage first")
    return path
