"""Stage train: every model of train.models on the exposed rows, the shipped one chosen by
validation AUC; and the uplift learner."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, read_table
from causalrec.io import atomic_dir, atomic_write_json
from causalrec.pipeline import plots
from causalrec.pipeline.embed import text_features
from causalrec.pipeline.paths import StageError, require, stage_paths


def _training_rows(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, tuple, tuple, str]:
    """(fit rows, validation rows, population, exposure log, how validation was drawn).

    Validation is unbiased where the log has uniformly exposed rows (policy "uniform", or served
    slates drawn uniformly: `uniform` = 1): half of them validate (unweighted), the other half
    train. Otherwise a random share of the exposed rows validates with inverse-propensity weights
    (`propensity` is set to None on uniform validation)."""
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
        val = val.assign(propensity=None)
        how = f"uniform sample ({len(val)} rows, unweighted)"
    else:
        exposed = exposed[cols].reset_index(drop=True)
        is_val = np.random.default_rng(params.seed).random(len(exposed)) < params.train.val_fraction
        fit, val = exposed[~is_val], exposed[is_val]
        how = f"random {params.train.val_fraction:.0%} of exposed rows ({len(val)}), inverse-propensity weighted"
    # The population D the relevance estimand averages over: every logged visit, exposed or not; a log
    # of exposed rows only (ratings) has no visits to average over, so D is every user x item pair.
    visits = (inter["user_id"].to_numpy(), inter["item_id"].to_numpy())
    population = None if (inter["exposed"] == 1).all() else visits
    exposure_log = (*visits, p)  # for the exposure head: every logged visit with its propensity
    return fit, val, population, exposure_log, how


# the feature towers of each backbone (mf: ids alone)
TOWER_FEATURES = {"tt": ("user_features", "item_features"), "ti": ("item_features",)}


def make_model(name: str, params: Params):
    """`popularity`, or `<backbone>_<method>`: backbone mf (ids), tt (two-tower: ids + features of items and
    users) or ti (ids + item features: a user is known by their rows alone, not a profile that may be stale),
    method one of causalrec.causal.debias.METHODS."""
    from causalrec.causal.debias import DebiasedRecommender, auto_exposure_weight, auto_weight_decay
    from causalrec.models import Popularity

    t = params.train
    if name == "popularity":
        return Popularity()
    settings = {**learner_settings(params), "exposure_weight": t.exposure_weight}
    # a setting left to the search is not the learner's: the search sets each candidate's value (config allows one)
    model = DebiasedRecommender(method=name.split("_", 1)[1], **{k: v for k, v in settings.items() if v != "auto"})
    if t.exposure_weight == "auto":
        return auto_exposure_weight(model)
    return auto_weight_decay(model) if t.weight_decay == "auto" else model


def learner_settings(params: Params) -> dict:
    """train.* as the learners' FitSettings (relevance and uplift train alike)."""
    t = params.train
    return {"dim": t.dim, "epochs": t.epochs, "lr": t.lr, "weight_decay": t.weight_decay, "batch_size": t.batch_size,
            "patience": t.patience, "seed": params.seed}


def train_uplift(params: Params, path: Path) -> dict:
    """Fit the uplift learner on every logged row (treated and untreated) and save it."""
    from causalrec.causal.uplift import UpliftLearner
    from causalrec.persistence import save_model

    d = stage_paths(params)
    inter = read_table(d["data"], INTERACTIONS)
    if "treatment" not in inter or inter["treatment"].nunique() < 2:
        return {"skipped": "the log has no treated-and-untreated 'treatment' column"}
    p = pd.read_parquet(d["propensity"] / "propensities.parquet")["propensity"].to_numpy()
    u = params.uplift
    model = UpliftLearner(u.learner, n_bootstrap=u.n_bootstrap, arm_method=u.arm_method, exposure_features=u.exposure_features,
                          exposure_weight=u.exposure_weight, **learner_settings(params))
    model.fit(inter["user_id"], inter["item_id"], inter["treatment"], inter["outcome"], p, **text_features(params))
    save_model(model, path)
    return {"learner": u.learner, "rows": len(inter), "bootstrap_members": u.n_bootstrap}



def _validation_auc(model, val: pd.DataFrame) -> float:
    """The choice criterion: AUC on the validation rows, inverse-propensity weighted unless uniform."""
    from causalrec.evaluation.metrics import auc

    weight = None if val["propensity"].isna().all() else 1.0 / val["propensity"].to_numpy(np.float64)
    return auc(val["outcome"].to_numpy(), model.predict(val["user_id"].to_numpy(), val["item_id"].to_numpy()), weight)


def fit_model(params: Params, name: str, fit_rows: pd.DataFrame, val_rows: pd.DataFrame, population=None,
              exposure_log=None, features: dict | None = None, progress: bool = False):
    """One model of train.models fitted as the stage fits it (validation rows for early stopping);
    two-tower models get `features`, default the stage's text_features(params)."""
    cols = ["user_id", "item_id", "outcome", "propensity"]
    val = (*(val_rows[c].to_numpy() for c in cols[:3]),
           None if val_rows["propensity"].isna().all() else val_rows["propensity"].to_numpy())
    extra = {} if population is None else {"population": population}
    if params.train.exposure_weight != 0:
        extra["exposure_log"] = exposure_log
    sides = TOWER_FEATURES.get(name.split("_", 1)[0], ())
    if sides:
        features = text_features(params) if features is None else features
        extra.update({side: features[side] for side in sides if side in features})
    model = make_model(name, params).fit(*(fit_rows[c].to_numpy() for c in cols), val=val, progress=progress, **extra)
    return getattr(model, "best_estimator_", model)  # exposure_weight auto: the search's choice


def train(params: Params) -> dict:
    """Fit every model in train.models on exposed rows (validation split for early stopping)."""
    from causalrec.persistence import save_model

    d = stage_paths(params)
    fit_rows, val_rows, population, exposure_log, how = _training_rows(params)
    # the embeddings read once for every two-tower model (fit_model would read them per model)
    features = text_features(params) if any(n.split("_", 1)[0] in TOWER_FEATURES for n in params.train.models) else None
    summary, curves = {}, []
    with atomic_dir(d["models"]) as tmp:
        for name in params.train.models:
            model = fit_model(params, name, fit_rows, val_rows, population, exposure_log, features, progress=True)
            save_model(model, tmp / f"{name}.pt")
            curves += [{"model": name, **row} for row in model.history]
            summary[name] = {"epochs": len(model.history), "fit_rows": len(fit_rows), "val_rows": len(val_rows),
                             "exposure_weight": getattr(model, "exposure_weight_", None),
                             "weight_decay": getattr(model, "weight_decay", None),
                             "validation_auc": _validation_auc(model, val_rows)}
        scored = [n for n in params.train.models if not np.isnan(summary[n]["validation_auc"])]
        if not scored:
            raise StageError(f"train: the validation rows ({how}) hold a single outcome; no model can be chosen")
        chosen = max(scored, key=lambda n: summary[n]["validation_auc"])
        summary["chosen"] = {"model": chosen, "validation_auc": summary[chosen]["validation_auc"], "validation": how,
                             "rule": "best validation AUC"}
        if params.uplift.enabled:
            summary["uplift"] = train_uplift(params, tmp / "uplift.pt")
        curve = pd.DataFrame(curves, columns=["model", "epoch", "train_loss", "val_loss"])
        curve.to_csv(tmp / "training_curves.csv", index=False)
        plots.training_curves(curve, tmp / "training_curves.png")
        atomic_write_json(tmp / "train.json", summary)
    return summary
