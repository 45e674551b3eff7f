"""Stage train: every model of train.models on the exposed rows, the shipped one chosen by
validation AUC; and the uplift learner."""
from __future__ import annotations

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.io import atomic_dir, atomic_write_json
from causalrec.pipeline import plots
from causalrec.pipeline.embed import text_features
from causalrec.pipeline.paths import StageError, stage_paths
from causalrec.pipeline.rows import TrainingRows, training_rows
from causalrec.pipeline.uplift import uplift_beside


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
    settings = {**learner_settings(params), "exposure_weight": t.exposure_weight, "privacy": private_settings(params, "relevance")}
    # a setting left to the search is not the learner's: the search sets each candidate's value (config allows one)
    model = DebiasedRecommender(method=name.split("_", 1)[1], **{k: v for k, v in settings.items() if v != "auto"})
    if t.exposure_weight == "auto":
        return auto_exposure_weight(model)
    return auto_weight_decay(model) if t.weight_decay == "auto" else model


def private_settings(params: Params, part: str) -> dict | None:
    """The `privacy` argument of the shipped relevance model or the uplift learner (None: off). The two are
    trained on the same users and shipped together: with the uplift learner on, each gets half of
    train.privacy's epsilon and delta (basic composition: the bundle spends at most the sum; the train
    stage records the accountant's composition of both, tighter)."""
    settings = params.train.privacy.fit_settings()
    if settings is None:
        return None
    if part not in ("relevance", "uplift"):
        raise ValueError(f"unknown part {part!r}")
    halves = 2 if params.uplift.enabled else 1
    return {**settings, "epsilon": settings["epsilon"] / halves, "delta": settings["delta"] / halves}


def check_private_population(params: Params, users) -> None:
    """delta must lie below 1 / n (a mechanism may leak a whole user with probability delta)."""
    n = len(pd.unique(pd.Series(users)))
    delta = params.train.privacy.delta
    if params.train.privacy.enabled and delta >= 1.0 / n:
        raise StageError(f"train.privacy.delta = {delta:g} is not below 1 / {n} users in the log ({1.0 / n:.3g}): with "
                         "that delta a mechanism may publish one whole user's rows; lower it")


def learner_settings(params: Params) -> dict:
    """train.* as the learners' FitSettings (relevance and uplift train alike)."""
    t = params.train
    return {"dim": t.dim, "epochs": t.privacy.epochs if t.privacy.enabled else t.epochs, "lr": t.lr, "weight_decay": t.weight_decay, "batch_size": t.batch_size,
            "patience": t.patience, "seed": params.seed}


def _validation_auc(model, rows: TrainingRows) -> float:
    """The choice criterion: AUC on the validation rows, inverse-propensity weighted unless uniform."""
    from causalrec.evaluation.metrics import auc

    users, items, y, p = rows.val_tuple()
    return auc(y, model.predict(users, items), None if p is None else 1.0 / p.astype(np.float64))


def _fit_inputs(params: Params, name: str, rows: TrainingRows, features: dict | None) -> dict:
    """What a learner's fit takes besides the rows: population, exposure log, the backbone's features."""
    extra = {} if rows.population is None else {"population": rows.population}
    if params.train.exposure_weight != 0:
        extra["exposure_log"] = rows.exposure_log
    sides = TOWER_FEATURES.get(name.split("_", 1)[0], ())
    if sides:
        features = text_features(params) if features is None else features
        extra.update({side: features[side] for side in sides if side in features})
    return extra


def _columns(frame: pd.DataFrame) -> list[np.ndarray]:
    return [frame[c].to_numpy() for c in ("user_id", "item_id", "outcome", "propensity")]


def fit_model(params: Params, name: str, rows: TrainingRows, features: dict | None = None, progress: bool = False):
    """One model of train.models fitted as the stage fits it (validation rows for early stopping);
    two-tower models get `features`, default the stage's text_features(params)."""
    model = make_model(name, params).fit(*_columns(rows.fit), val=rows.val_tuple(), progress=progress,
                                         **_fit_inputs(params, name, rows, features))
    return getattr(model, "best_estimator_", model)  # a search (auto): its choice


def refit(params: Params, name: str, model, rows: TrainingRows, features: dict | None = None, progress: bool = False):
    """`model`'s settings (a search's choice included) fitted again on the fit and validation rows
    together, for the epochs its early stopping kept (scikit-learn's refit). Validation rows are a
    uniform sample where the log has one: the rows most like what the model will face, left out of
    the fit only while a choice was being made on them."""
    from dataclasses import replace

    from causalrec.causal.training import best_epoch

    both = pd.concat([rows.fit, rows.val], ignore_index=True)
    if not hasattr(model, "history"):  # popularity: no epochs, counted on every row
        return make_model(name, params).fit(*_columns(both))
    epochs = best_epoch(model.history)
    if epochs == 0:  # no epoch was validated (epochs: 0): nothing to repeat
        return model
    again = replace(model, epochs=epochs).fit(*_columns(both), progress=progress, **_fit_inputs(params, name, rows, features))
    if hasattr(model, "search_"):
        again.search_ = model.search_  # what chose its settings (saved with it)
    return again


def train(params: Params) -> dict:
    """Fit every model in train.models on exposed rows (validation split for early stopping)."""
    from causalrec.persistence import save_model

    d = stage_paths(params)
    rows = training_rows(params)
    check_private_population(params, rows.fit["user_id"])
    # the embeddings read once for every two-tower model (fit_model would read them per model)
    features = text_features(params) if any(n.split("_", 1)[0] in TOWER_FEATURES for n in params.train.models) else None
    summary, curves, models = {}, [], {}
    with atomic_dir(d["models"]) as tmp, \
            uplift_beside(params, learner_settings(params), tmp / "uplift.pt") as uplift_summary:
        for name in params.train.models:
            models[name] = model = fit_model(params, name, rows, features, progress=True)
            curves += [{"model": name, **row} for row in model.history]
            summary[name] = {"epochs": len(model.history), "fit_rows": len(rows.fit), "val_rows": len(rows.val),
                             "exposure_weight": getattr(model, "exposure_weight_", None),
                             "weight_decay": getattr(model, "weight_decay", None),
                             "validation_auc": _validation_auc(model, rows), "privacy": getattr(model, "privacy_", None)}
        scored = [n for n in params.train.models if not np.isnan(summary[n]["validation_auc"])]
        if not scored:
            raise StageError(f"train: the validation rows ({rows.how}) hold a single outcome; no model can be chosen")
        chosen = max(scored, key=lambda n: summary[n]["validation_auc"])
        summary["chosen"] = {"model": chosen, "validation_auc": summary[chosen]["validation_auc"], "validation": rows.how,
                             "rule": "best validation AUC"}
        if params.train.refit:  # the chosen model only: the others are reported, never shipped
            stopped, models[chosen] = models[chosen], refit(params, chosen, models[chosen], rows, features, progress=True)
            summary["chosen"]["refit"] = {"rows": len(rows.fit) + len(rows.val),  # not refitted (the start kept): None
                                          "epochs": None if models[chosen] is stopped else len(getattr(models[chosen], "history", []))}
        for name, model in models.items():
            save_model(model, tmp / f"{name}.pt")
        if params.uplift.enabled:
            summary["uplift"] = uplift_summary()
        if params.train.privacy.enabled:  # what the shipped bundle spends: the chosen model and the uplift learner
            from causalrec.causal.privacy import composed

            parts = [summary[chosen]["privacy"]] + ([summary["uplift"]["privacy"]] if "privacy" in summary.get("uplift", {}) else [])
            summary["privacy"] = composed(parts, params.train.privacy.delta, params.train.privacy.epsilon)
        curve = pd.DataFrame(curves, columns=["model", "epoch", "train_loss", "val_loss"])
        curve.to_csv(tmp / "training_curves.csv", index=False)
        plots.training_curves(curve, tmp / "training_curves.png")
        atomic_write_json(tmp / "train.json", summary)
    return summary
