"""The train stage's rows: the exposed rows split for fitting and validation, with what the learners
need besides them (the population, the exposure log)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, read_table
from causalrec.pipeline.paths import StageError, require, stage_paths


class TrainingRows(NamedTuple):
    fit: pd.DataFrame        # user_id, item_id, outcome, propensity
    val: pd.DataFrame        # the same columns (propensities as logged, used by a refit)
    weighted_val: bool       # validation weighted by inverse propensity (the log has no uniform sample)
    population: tuple | None  # (users, items) of every logged visit; None: every user x item pair
    exposure_log: tuple      # (users, items, propensity) of every logged visit, for the exposure head
    how: str                 # how the validation rows were drawn, in words

    def val_tuple(self) -> tuple:
        """The learners' `val`: (users, items, y, propensity or None when unweighted)."""
        v = self.val
        return (v["user_id"].to_numpy(), v["item_id"].to_numpy(), v["outcome"].to_numpy(),
                v["propensity"].to_numpy() if self.weighted_val else None)


def training_rows(params: Params) -> TrainingRows:
    """The exposed rows split for fitting and validation.

    Validation is unbiased where the log has uniformly exposed rows (policy "uniform", or served
    slates drawn uniformly: `uniform` = 1): half of them validate (unweighted), the other half
    train. Otherwise a random share of the exposed rows validates with inverse-propensity weights."""
    from causalrec.data.sources import UNIFORM_POLICY
    from causalrec.data.split import split_randomized

    d = stage_paths(params)
    inter = read_table(d["data"], INTERACTIONS)
    p = pd.read_parquet(require(d["propensity"] / "propensities.parquet", "train"))["propensity"].to_numpy()
    if len(p) != len(inter):
        raise StageError(f"train: {len(p)} propensities for {len(inter)} interactions; rerun the propensity stage")
    inter["propensity"] = p
    cols = ["user_id", "item_id", "outcome", "propensity"]
    exposed = inter[inter["exposed"] == 1]
    uniform = np.zeros(len(exposed), bool)
    if "policy" in exposed:
        uniform |= (exposed["policy"] == UNIFORM_POLICY).to_numpy()
    if "uniform" in exposed:  # the ε share of served slates (feedback partitions)
        uniform |= (exposed["uniform"].fillna(0) == 1).to_numpy()
    if uniform.sum() >= 20:  # fewer uniform rows cannot validate anything; fall back to the weighted split
        uniform_fit, val = split_randomized(exposed[uniform][cols], 0.5, params.seed)
        fit = pd.concat([exposed[~uniform][cols], uniform_fit], ignore_index=True)
        how, weighted = f"uniform sample ({len(val)} rows, unweighted)", False
    else:
        exposed = exposed[cols].reset_index(drop=True)
        is_val = np.random.default_rng(params.seed).random(len(exposed)) < params.train.val_fraction
        fit, val = exposed[~is_val], exposed[is_val]
        how, weighted = f"random {params.train.val_fraction:.0%} of exposed rows ({len(val)}), inverse-propensity weighted", True
    # The population D the relevance estimand averages over: every logged visit, exposed or not; a log
    # of exposed rows only (ratings) has no visits to average over, so D is every user x item pair.
    visits = (inter["user_id"].to_numpy(), inter["item_id"].to_numpy())
    population = None if (inter["exposed"] == 1).all() else visits
    return TrainingRows(fit, val, weighted, population, (*visits, p), how)
