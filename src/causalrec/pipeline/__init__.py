"""The pipeline: one small module per stage (+ paths, plots, packaging, versioning).

The CLI, dvc.yaml and the Prefect flows all call `STAGES[name](params)`. Every stage reads params
(causalrec.config.Params), reads its inputs from data/ or artifacts/, writes its outputs under
artifacts/ atomically, and returns a small JSON-able summary. Heavy optional dependencies
(great_expectations, bentoml, evidently, transformers) are imported inside the stage that needs them.
"""
from __future__ import annotations

import logging

from causalrec.config import Params
from causalrec.pipeline.analyze import analyze
from causalrec.pipeline.bundle import write_bundle, write_encoder_bundle
from causalrec.pipeline.embed import embed, item_texts, text_features
from causalrec.pipeline.evaluate import evaluate
from causalrec.pipeline.ingest import ingest, validate
from causalrec.pipeline.monitor import monitor
from causalrec.pipeline.package import package
from causalrec.pipeline.paths import StageError, require, stage_paths
from causalrec.pipeline.propensity import propensity
from causalrec.pipeline.store import build_bento
from causalrec.pipeline.train import make_model, train
from causalrec.pipeline.versioning import data_hash, version_data

log = logging.getLogger(__name__)
__all__ = ["STAGES", "StageError", "build_bento", "data_hash", "item_texts", "make_model", "require", "stage_paths",
           "text_features", "version_data", "write_bundle", "write_encoder_bundle"]


def _logged(name: str, fn):
    """A stage that logs its start, duration and outcome (the summary's top-level scalars)."""
    import functools
    import time

    @functools.wraps(fn)
    def run(params: Params, *args, **kwargs):
        log.info("stage started", extra={"stage": name})
        start = time.perf_counter()
        try:
            result = fn(params, *args, **kwargs)
        except Exception as exc:
            log.error("stage failed: %s", exc, extra={"stage": name, "seconds": round(time.perf_counter() - start, 2)})
            raise
        scalars = {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str, bool))}
        log.info("stage finished", extra={"stage": name, "seconds": round(time.perf_counter() - start, 2), **scalars})
        return result

    return run


# name -> stage; the order they run in is dvc.yaml's (pipeline.dag.stage_order), not this dict's.
STAGES = {name: _logged(name, fn) for name, fn in {
    "ingest": ingest, "validate": validate, "embed": embed, "propensity": propensity, "train": train,
    "evaluate": evaluate, "analyze": analyze, "package": package, "monitor": monitor}.items()}
