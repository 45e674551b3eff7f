"""Training speed of every method, in memory and streaming, measured side by side in one run.

    python benchmarks/train_speed.py [--interactions 1000000] [--batch-sizes 1024 4096 8192] [--epochs 3]

The log is the simulator's (default world, 15,000 users x 1,000 items; about 30% of the visits
exposed, so ~300k observed rows per million visits: the size of a public MNAR log). Both trainers
share the loop and the loss table (causalrec.causal.training / losses); the in-memory one fits the
exposed rows with the log as the DR population, the streaming one reads the parquet file in chunks.
Per method, trainer and batch size: `observed_rows_per_second` (exposed training rows / seconds of
the fastest epoch) and `rows_per_second` (every row the epoch's loss runs over; for the DR family
that includes the population rows). Set-up (id encoding, the frozen imputer of `dr`) is per fit,
not per epoch, and is excluded. The goal in issue #11 is >= 500,000 training rows/s for every method on
2 cores; `headline` checks it as declared below (HEADLINE_UNIT, headline_batch_sizes) and every other cell
is reported beside it (`meets_goal_at_batch_size`).

`auto_search`: `exposure_weight: auto` as the train stage runs it (the product's learner settings,
a log of the default flow's size, a 10% validation split) in one pass (the candidate weights
trained side by side, ValidationSearch over `fit_path`) and as one fit per weight, side by side:
seconds of each, their ratio, and whether both chose the same weight (they should: each candidate of
the pass is its own fit up to floating-point summation order).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import REPO, write_result
from causalrec.causal.debias import AUTO_EXPOSURE_WEIGHTS, DebiasedRecommender, auto_exposure_weight
from causalrec.causal.losses import DR_METHODS, METHODS
from causalrec.causal.streaming import fit_streaming
from causalrec.causal.training import FitSettings
from causalrec.config import load_params
from causalrec.data.simulate import SimulationConfig, simulate

GOAL = 500_000
# The goal's check, declared here, not chosen per run: the rows an epoch trains on (the DR family's population
# rows are training rows: its imputed-error term trains f on them), at each trainer's default batch size.
HEADLINE_UNIT = "rows_per_second"


def headline_batch_sizes() -> dict[str, int]:
    """The in-memory trainer at params.yaml's train.batch_size (what the train stage runs); the streaming
    trainer, which no stage runs (a library API for logs larger than memory), at the learners' default."""
    return {"in_memory": load_params(REPO / "params.yaml").train.batch_size, "streaming": FitSettings().batch_size}


def headline(results: dict, batch_sizes: dict[str, int]) -> dict:
    """Per trainer, the methods below GOAL in HEADLINE_UNIT at its headline batch size."""
    missing = {kind: bs for kind, bs in batch_sizes.items()
               if any(str(bs) not in per for per in results[kind].values())}
    if missing:
        return {"unit": HEADLINE_UNIT, "batch_size": batch_sizes, "not_measured": missing}
    below = {kind: sorted(m for m, per in results[kind].items() if per[str(bs)][HEADLINE_UNIT] < GOAL)
             for kind, bs in batch_sizes.items()}
    return {"unit": HEADLINE_UNIT, "batch_size": batch_sizes, "below_goal": below,
            "every_method_meets_goal": not any(below.values())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=15_000)
    ap.add_argument("--items", type=int, default=1_000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--auto-visits", type=int, default=100_000, help="auto_search: log size (the default flow's)")
    ap.add_argument("--auto-methods", nargs="+", default=["naive", "ips", "dr", "sdr"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        simulate(SimulationConfig(n_users=args.users, n_items=args.items, n_interactions=args.interactions),
                 Path(tmp) / "data", Path(tmp) / "truth", progress=False)
        path = Path(tmp) / "data" / "interactions.parquet"
        log = pd.read_parquet(path, columns=["user_id", "item_id", "exposed", "outcome", "propensity"])
        users, items = sorted(log["user_id"].unique()), sorted(log["item_id"].unique())
        exposed = log[log["exposed"] == 1]
        population = (log["user_id"].to_numpy(), log["item_id"].to_numpy())
        results = {"in_memory": {}, "streaming": {}}
        for method in args.methods:
            for bs in args.batch_sizes:
                kw = dict(dim=16, epochs=args.epochs, lr=0.005, batch_size=bs, seed=0)
                model = DebiasedRecommender(method, **kw).fit(
                    exposed["user_id"].to_numpy(), exposed["item_id"].to_numpy(), exposed["outcome"].to_numpy(),
                    exposed["propensity"].to_numpy(), population=population)
                fastest = min(model.history, key=lambda r: r["seconds"])
                # the DR family's loss also runs over imputation_ratio population pairs per observed row
                scale = 1 + model.imputation_ratio if method in DR_METHODS else 1
                memory = {"observed_rows_per_second": round(fastest["rows"] / fastest["seconds"]),
                          "rows_per_second": round(scale * fastest["rows"] / fastest["seconds"])}
                res = fit_streaming(DebiasedRecommender(method, **kw), path, users, items)
                fastest = min(res["epochs"], key=lambda r: r["seconds"])
                streaming = {"observed_rows_per_second": round(fastest["exposed_rows"] / fastest["seconds"]),
                             "rows_per_second": round(fastest["rows"] / fastest["seconds"])}
                for kind, figures in (("in_memory", memory), ("streaming", streaming)):
                    results[kind].setdefault(method, {})[str(bs)] = figures
                print(f"{method:8s} batch {bs:5d}: in memory {memory}   streaming {streaming}", flush=True)
    searches = auto_search(args.auto_visits, args.auto_methods)
    write_result("train_speed", {
        "data": f"simulator, {args.interactions:,} visits, {len(exposed):,} exposed (training rows), "
                f"{args.users:,} users x {args.items:,} items",
        "unit": "rows per second of the fastest epoch: observed (exposed) rows, and every row the epoch's loss "
                "runs over (for the DR family also the population rows: imputation_ratio sampled pairs per observed "
                "row in memory, every logged row when streaming)", "torch_threads": torch.get_num_threads(),
        "rows_per_second": results, "goal": GOAL, "headline": headline(results, headline_batch_sizes()),
        "meets_goal_at_batch_size": {str(bs): {kind: {unit: sorted(m for m, r in per.items() if r[str(bs)][unit] >= GOAL)
                                                      for unit in ("observed_rows_per_second", "rows_per_second")}
                                               for kind, per in results.items()} for bs in args.batch_sizes},
        "auto_search": searches, "seconds": round(time.time() - t0, 1)}, args.out)


def auto_search(visits: int, methods: list[str]) -> dict:
    """`exposure_weight: auto` in one pass vs one fit per candidate weight, on the same data and settings."""
    with tempfile.TemporaryDirectory() as tmp:
        simulate(SimulationConfig(n_users=2000, n_items=1000, n_interactions=visits), Path(tmp) / "data",
                 Path(tmp) / "truth", progress=False)
        log = pd.read_parquet(Path(tmp) / "data" / "interactions.parquet",
                              columns=["user_id", "item_id", "exposed", "outcome", "propensity"])
    exposed = log[log["exposed"] == 1]
    is_val = np.random.default_rng(0).random(len(exposed)) < 0.1
    cols = ["user_id", "item_id", "outcome", "propensity"]
    fit_rows = [exposed[~is_val][c].to_numpy() for c in cols]
    kwargs = {"val": tuple(exposed[is_val][c].to_numpy() for c in cols),
              "population": (log["user_id"].to_numpy(), log["item_id"].to_numpy()),
              "exposure_log": (log["user_id"].to_numpy(), log["item_id"].to_numpy(), log["propensity"].to_numpy())}
    out = {"data": f"simulator, {visits:,} visits, {len(exposed):,} exposed, 2,000 users x 1,000 items",
           "settings": "dim 16, lr 0.005, batch 1024, epochs 30, patience 4 (params.yaml train)",
           "candidates": list(AUTO_EXPOSURE_WEIGHTS)}
    for method in methods:
        model = DebiasedRecommender(method, dim=16, epochs=30, lr=0.005, batch_size=1024, patience=4, seed=0)
        start = time.perf_counter()
        one_pass = auto_exposure_weight(model).fit(*fit_rows, **kwargs)
        one_pass_seconds = time.perf_counter() - start
        start = time.perf_counter()
        fits = {w: replace(model, exposure_weight=w).fit(*fit_rows, **kwargs) for w in AUTO_EXPOSURE_WEIGHTS}
        per_weight_seconds = time.perf_counter() - start
        per_weight_loss = {w: min(r["val_loss"] for r in m.history) for w, m in fits.items()}
        out[method] = {
            "one_pass_seconds": round(one_pass_seconds, 1), "per_weight_seconds": round(per_weight_seconds, 1),
            "speedup": round(per_weight_seconds / one_pass_seconds, 2),
            "epochs": {str(w): len(m.history) for w, m in fits.items()},
            "chosen_one_pass": one_pass.best_estimator_.exposure_weight_,
            "chosen_per_weight": min(per_weight_loss, key=per_weight_loss.get),
            "max_validation_loss_difference": float(max(abs(one_pass.results_[w] - per_weight_loss[w])
                                                        for w in AUTO_EXPOSURE_WEIGHTS))}
        print(f"auto {method:8s}: {out[method]}", flush=True)
    return out


if __name__ == "__main__":
    main()
