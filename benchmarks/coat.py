"""Coat (Schnabel et al. 2016): learn from MNAR ratings, evaluate on the randomized test ratings.

    python benchmarks/coat.py [--coat ../shared/data/coat] [--seeds 10]

Protocol: train on train.ascii; ratings >= 4 are positive. Per seed, 10% of the training ratings
are a validation split (early stopping and tuning; test data never touch either). Test on
test.ascii: AUC over all test pairs; NDCG@5 and Recall@5 per user over that user's test items
(binary relevance), averaged over users with a positive; MSE of the predicted probability.
Hyper-parameters: each method picks (dim, weight_decay) from a small grid by its validation loss
on seed 0's split, then runs on every seed. Propensities: the authors' propensities.ascii,
clipped at 0.01. All methods run side by side in one run.

`uses` says which inputs a method sees: ids, attributes (user/item binary features), text
(MiniLM embeddings of the attribute texts), ratings (the 1-5 training ratings as soft labels
(r-1)/4 instead of the binary >= 4 label).
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _common import REPO, write_result
from causalrec.causal.debias import DebiasedEnsemble, DebiasedRecommender
from causalrec.data.sources import load_coat
from causalrec.evaluation.metrics import auc, mse, per_user_ndcg_recall
from causalrec.models import Popularity

GRID = {"dim": [4, 8, 16], "weight_decay": [1e-4, 1e-3]}
# name: (method, inputs)
METHODS = {
    "mf_naive": ("naive", {"ids"}), "mf_ips": ("ips", {"ids"}), "mf_snips": ("snips", {"ids"}),
    "mf_dr": ("dr", {"ids"}), "mf_dr_jl": ("dr_jl", {"ids"}), "mf_mrdr_jl": ("mrdr_jl", {"ids"}),
    "mf_sdr": ("sdr", {"ids"}),
    "tt_naive_attr": ("naive", {"ids", "attributes"}), "tt_sdr_attr": ("sdr", {"ids", "attributes"}),
    "tt_sdr_text": ("sdr", {"ids", "text"}),
    "tt_naive_attr_ratings": ("naive", {"ids", "attributes", "ratings"}),
    "tt_sdr_attr_ratings": ("sdr", {"ids", "attributes", "ratings"}),
    "tt_dr_jl_attr_ratings": ("dr_jl", {"ids", "attributes", "ratings"}),
}
ENSEMBLE = ["tt_naive_attr_ratings", "tt_sdr_attr_ratings", "tt_dr_jl_attr_ratings"]


def features(data: dict, uses: set, text: dict | None) -> dict:
    out = {}
    if "attributes" in uses:
        out = {"user_features": data["user_features"], "item_features": data["item_features"]}
    if "text" in uses:
        out = {"user_features": text["users"], "item_features": text["items"]}
    return out


def split(inter: pd.DataFrame, seed: int):
    is_val = np.random.default_rng(seed).random(len(inter)) < 0.1
    return inter[~is_val], inter[is_val]


def fit_one(name: str, hp: dict, data: dict, seed: int, text: dict | None, member_seed: int | None = None):
    method, uses = METHODS[name]
    fit_rows, val_rows = split(data["interactions"], seed)
    label = (lambda r: ((r["rating"] - 1) / 4).to_numpy()) if "ratings" in uses else (lambda r: r["outcome"].to_numpy())
    model = DebiasedRecommender(method, dim=hp["dim"], weight_decay=hp["weight_decay"], lr=0.01, batch_size=256,
                                epochs=100, patience=5, seed=seed if member_seed is None else member_seed)
    model.fit(fit_rows["user_id"].to_numpy(), fit_rows["item_id"].to_numpy(), label(fit_rows), fit_rows["propensity"].to_numpy(),
              val=(val_rows["user_id"].to_numpy(), val_rows["item_id"].to_numpy(), label(val_rows), val_rows["propensity"].to_numpy()),
              **features(data, uses, text))
    return model


def evaluate(pred: np.ndarray, test: pd.DataFrame) -> dict:
    ndcg, recall = per_user_ndcg_recall(test["user_id"].to_numpy(), pred, test["y1"].to_numpy(), 5)
    return {"auc": auc(test["y1"], pred), "ndcg@5": ndcg, "recall@5": recall, "mse": mse(test["y1"], pred)}


def text_features(data: dict, model_path) -> dict:
    from causalrec.text import TextEncoder

    enc = TextEncoder(model_path, progress=False).load()
    items, users = data["items"], data["users"]
    return {"items": pd.DataFrame(enc.embed((items["title"] + ". " + items["description"]).tolist()), index=items["item_id"]),
            "users": pd.DataFrame(enc.embed(users["profile_text"].tolist()), index=users["user_id"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coat", type=Path, default=REPO.parent / "shared" / "data" / "coat")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--model", type=Path, default=None, help="encoder for the text features (default: packaged MiniLM)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    data = load_coat(args.coat)
    data["interactions"]["propensity"] = data["interactions"]["propensity"].clip(lower=0.01)
    test = data["test"]
    text = text_features(data, args.model) if any("text" in METHODS[m][1] for m in args.methods) else None

    # Tuning on seed 0's validation split only.
    tuned = {}
    for name in args.methods:
        scores = {}
        for dim, wd in itertools.product(GRID["dim"], GRID["weight_decay"]):
            model = fit_one(name, {"dim": dim, "weight_decay": wd}, data, 0, text)
            scores[(dim, wd)] = min(r["val_loss"] for r in model.history)
        dim, wd = min(scores, key=scores.get)
        tuned[name] = {"dim": dim, "weight_decay": wd}
        print(f"tuned {name}: {tuned[name]}", flush=True)

    per_seed = {name: [] for name in ["popularity", *args.methods, "causalrec_ensemble"]}
    t0 = time.time()
    for seed in range(args.seeds):
        fit_rows, _ = split(data["interactions"], seed)
        pop = Popularity().fit(fit_rows["user_id"], fit_rows["item_id"], fit_rows["outcome"])
        per_seed["popularity"].append(evaluate(pop.predict(test["user_id"], test["item_id"]), test))
        preds = {}
        for name in args.methods:
            model = fit_one(name, tuned[name], data, seed, text)
            preds[name] = model.predict(test["user_id"].to_numpy(), test["item_id"].to_numpy())
            per_seed[name].append(evaluate(preds[name], test))
        members = [m for m in ENSEMBLE if m in args.methods]
        if members:
            # Ensemble: the tuned members plus a second initialisation of each at half the size.
            extra = [fit_one(m, {**tuned[m], "dim": max(2, tuned[m]["dim"] // 2)}, data, seed, text, member_seed=1000 + seed)
                     for m in members]
            ens = DebiasedEnsemble(extra)
            pred = np.mean([preds[m] for m in members] + [e.predict(test["user_id"].to_numpy(), test["item_id"].to_numpy())
                                                          for e in ens.members], 0)
            per_seed["causalrec_ensemble"].append(evaluate(pred, test))
        print(f"seed {seed}: " + ", ".join(f"{n} {r[-1]['auc']:.4f}/{r[-1]['ndcg@5']:.4f}" for n, r in per_seed.items() if r),
              flush=True)
    uses = {n: sorted(METHODS[n][1]) for n in args.methods}
    uses.update(popularity=["ids"], causalrec_ensemble=sorted(set().union(*(METHODS[m][1] for m in ENSEMBLE))))
    methods = {}
    for name, rows in per_seed.items():
        if not rows:
            continue
        df = pd.DataFrame(rows)
        methods[name] = {**{k: float(df[k].mean()) for k in df}, **{f"{k}_std": float(df[k].std(ddof=1)) for k in df},
                         "uses": uses[name], "hyperparameters": tuned.get(name)}
    best = max(methods, key=lambda n: methods[n]["auc"])
    naive = methods["mf_naive"]["ndcg@5"] if "mf_naive" in methods else float("nan")
    write_result("coat", {
        "protocol": __doc__.split("\n\n")[2].replace("\n", " "), "seeds": args.seeds, "grid": GRID,
        "seconds": round(time.time() - t0, 1), "methods": methods,
        "best": {"method": best, "auc": methods[best]["auc"], "ndcg@5": methods[best]["ndcg@5"],
                 "ndcg@5_gain_over_mf_naive": methods[best]["ndcg@5"] / naive - 1},
        "references": {"published_mf_backbone_neurips2024": {"naive": 0.743, "dr_jl": 0.757, "mrdr_jl": 0.759,
                                                             "stable_dr": 0.765, "their_best": 0.780}}}, args.out)


if __name__ == "__main__":
    main()
