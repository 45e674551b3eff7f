"""Stage evaluate: unbiased metrics of every model (simulator ground truth or randomized test
pairs); the chosen model is only measured here."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.io import atomic_dir, atomic_write_json
from causalrec.pipeline import plots
from causalrec.pipeline.paths import StageError, require, stage_paths

def evaluate(params: Params) -> dict:
    """Unbiased evaluation: simulator ground truth when present, else the randomized test pairs."""
    from causalrec.evaluation import metrics as M
    from causalrec.persistence import load_model

    d = stage_paths(params)
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
        model = load_model(require(d["models"] / f"{name}.pt", "evaluate"))
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
    chosen = json.loads(require(d["models"] / "train.json", "evaluate").read_text())["chosen"]
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
            plots.qini(uplift_result["qini"], tmp / "qini.png")
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
