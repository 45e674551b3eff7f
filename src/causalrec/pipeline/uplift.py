"""The uplift learner's part of the train stage: fitted on every logged row (treated and untreated),
beside the relevance models in a process of its own (`uplift.own_process`)."""
from __future__ import annotations

import contextlib
import multiprocessing
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, read_table
from causalrec.pipeline.embed import text_features
from causalrec.pipeline.paths import stage_paths


def train_uplift(params: Params, settings: dict, path: Path) -> dict:
    """Fit the uplift learner on every logged row (treated and untreated) with the learners' `settings`
    (train.learner_settings) and save it."""
    from causalrec.causal.uplift import UpliftLearner, logged_treatment_propensity
    from causalrec.persistence import save_model

    d = stage_paths(params)
    inter = read_table(d["data"], INTERACTIONS)
    if "treatment" not in inter or inter["treatment"].nunique() < 2:
        return {"skipped": "the log has no treated-and-untreated 'treatment' column"}
    p = pd.read_parquet(d["propensity"] / "propensities.parquet")["propensity"].to_numpy()
    p = logged_treatment_propensity(inter, p)  # served rows: the controls are a sample of the unshown items
    u = params.uplift
    from causalrec.pipeline.train import private_settings

    model = UpliftLearner(u.learner, n_bootstrap=u.n_bootstrap, arm_method=u.arm_method, exposure_features=u.exposure_features,
                          exposure_weight=u.exposure_weight, privacy=private_settings(params, "uplift"), **settings)
    model.fit(inter["user_id"], inter["item_id"], inter["treatment"], inter["outcome"], p, **text_features(params))
    save_model(model, path)
    return {"learner": model.learner_, "configured": u.learner, "rows": len(inter), "bootstrap_members": u.n_bootstrap,
            # 6 decimals: the stage's summary, not the model (a fit on another thread count differs in the 9th)
            "validation_tau_risk": round(model.validation_tau_risk_, 6),
            **({"privacy": model.privacy_} if getattr(model, "privacy_", None) else {}),
            **({"tau_risk_by_learner": {k: round(v, 6) for k, v in model.search_.items()}} if model.search_ else {}),
            **({"stack_weights": {k: round(v, 4) for k, v in model.stack_.items()}} if getattr(model, "stack_", None) else {})}


def _uplift_in_own_process(params: Params, settings: dict, path: Path, threads: int) -> dict:
    """train_uplift in a spawned process, with its share of the cores; it dies with the stage."""
    import torch

    from causalrec.io import die_with_parent

    die_with_parent()
    torch.set_num_threads(threads)
    return train_uplift(params, settings, path)


@contextlib.contextmanager
def uplift_beside(params: Params, settings: dict, path: Path) -> Iterator[Callable[[], dict]]:
    """Fit the uplift learner while the body fits the relevance models; yields a callable returning its
    summary (called only when uplift.enabled: a disabled learner is never fitted).

    Both are small-batch loops that use a second core poorly: with `uplift.own_process` on a machine of
    two or more cores the uplift learner fits in a process of its own, the cores split between the two
    (the default flow's train stage: 42.8 s against 57.4 s one after the other, BENCHMARKS.md)."""
    import torch

    cores = torch.get_num_threads()
    if not (params.uplift.enabled and params.uplift.own_process and cores >= 2):
        yield lambda: train_uplift(params, settings, path)
        return
    # spawn, not fork: the parent's OpenMP threads (embed ran in this process) do not survive a fork
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        job = pool.apply_async(_uplift_in_own_process, (params, settings, path, cores // 2))
        torch.set_num_threads(cores - cores // 2)
        yield job.get
    finally:
        torch.set_num_threads(cores)
        pool.terminate()  # after job.get, an idle worker; after a failure, a fit nobody waits for
        pool.join()
