"""What user-level differential privacy costs, and what it buys (train.privacy).

    python benchmarks/privacy.py [--users 2000 20000 100000] [--seeds 3] [--coat DIR]

Declared before the run (nothing below is chosen by a test figure):
* The learner: naive relevance (the product's default method) on two backbones: `mf` (ids alone) and
  `ti` (ids + the item text tower: MiniLM embeddings of item texts, public). Non-private (epsilon = inf):
  the product's fit (early stopping on 10% of the members' rows). Private: train.privacy's settings from
  params.yaml (its epochs, clip, sampling, local passes), epsilon in EPSILONS, delta = DELTA_SHARE / users
  (below 1 / users), the same dim / lr / weight decay as the non-private fit.
* Simulator: one world per size (50 interactions per user, 1,000 items), each seed drawing its own
  members (80% of users: the training set) and its own initialisation and noise. Metrics over up to
  EVAL_USERS members: NDCG@10 against the true relevance, CP@10 against the oracle that ranks by true
  uplift (ratio). Coat: the standard protocol of benchmarks/coat.py (MNAR ratings + 5% uniform sample
  to fit, 5% uniform to validate, the rest of the randomized ratings to test), AUC and NDCG@5 on the
  test ratings; the item attributes are its public features; popularity beside it.
* Membership inference (causalrec.evaluation.membership): the fold-in loss-threshold attack on up to
  MIA_USERS members against as many non-members (the 20% left out), per model; 0.5 = chance.
* Headline: epsilon = 3, the text backbone (`ti`), NDCG@10 as a ratio to the same backbone's
  non-private fit, at the largest simulated size; the goal is >= 0.9 at 100k users.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from _common import REPO, scratch_dir, write_result
from causalrec.causal.debias import DebiasedRecommender
from causalrec.config import load_params
from causalrec.data.simulate import SimulationConfig, World, simulate
from causalrec.evaluation import metrics as M
from causalrec.evaluation.membership import attack_auc

EPSILONS = (1.0, 3.0, 10.0, float("inf"))
HEADLINE = {"epsilon": 3.0, "backbone": "ti"}
DELTA_SHARE = 0.1          # delta = 0.1 / users
MEMBER_SHARE = 0.8
EVAL_USERS, MIA_USERS = 3000, 1000
PARAMS = load_params(REPO / "params.yaml")


def fit(method: str, backbone: str, epsilon: float, n_users: int, seed: int, rows: pd.DataFrame, val: pd.DataFrame | None,
        item_features: pd.DataFrame | None, settings: dict, privacy: dict) -> tuple[DebiasedRecommender, float]:
    """One model as the product fits it: early-stopped without privacy, train.privacy's fixed epochs with it."""
    features = {"item_features": item_features} if backbone == "ti" else {}
    prop = rows["propensity"].to_numpy() if method != "naive" else None
    cols = [rows[c].to_numpy() for c in ("user_id", "item_id", "outcome")]
    t0 = time.perf_counter()
    if np.isinf(epsilon):
        m = DebiasedRecommender(method, **settings, seed=seed)
        m.fit(*cols, prop, val=(val["user_id"].to_numpy(), val["item_id"].to_numpy(), val["outcome"].to_numpy(),
                                None if prop is None else val["propensity"].to_numpy()), **features)
    else:
        dp = {**privacy, "epsilon": epsilon, "delta": DELTA_SHARE / n_users}
        m = DebiasedRecommender(method, **{**settings, "epochs": PARAMS.train.privacy.epochs}, seed=seed, privacy=dp)
        m.fit(*cols, prop, **features)
    return m, time.perf_counter() - t0


def item_text(items: pd.DataFrame) -> pd.DataFrame:
    from causalrec.text import TextEncoder

    enc = TextEncoder(None, progress=False, cache_dir=REPO / ".cache" / "causalrec" / "embeddings").load()
    return pd.DataFrame(enc.embed((items["title"] + ". " + items["description"]).tolist()), index=items["item_id"].to_numpy())


def simulator_rows(n_users: int, seeds: int, root: Path, settings: dict, privacy: dict) -> list[dict]:
    cfg = SimulationConfig(n_users=n_users, n_interactions=50 * n_users, seed=SimulationConfig.seed)
    simulate(cfg, root / "data", root / "truth", progress=True)
    inter = pd.read_parquet(root / "data" / "interactions.parquet")
    items = pd.read_parquet(root / "data" / "items.parquet")
    user_ids = pd.read_parquet(root / "data" / "users.parquet")["user_id"].to_numpy()
    item_ids = items["item_id"].to_numpy()
    rel, upl = World.load(root / "truth" / "world").truth_matrices()
    text = item_text(items)
    exposed = inter[inter["exposed"] == 1].reset_index(drop=True)
    out, oracle_cp = [], {}
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        member = rng.random(len(user_ids)) < MEMBER_SHARE
        members, others = user_ids[member], user_ids[~member]
        train_rows = exposed[exposed["user_id"].isin(members)]
        is_val = rng.random(len(train_rows)) < 0.1
        eval_idx = np.flatnonzero(member)[rng.permutation(member.sum())[:EVAL_USERS]]
        oracle_cp[seed] = M.causal_precision_at_k(upl[eval_idx], upl[eval_idx], 10)
        mia_in = rng.choice(members, size=min(MIA_USERS, len(members), len(others)), replace=False)
        mia_out = rng.choice(others, size=len(mia_in), replace=False)
        attack_rows = lambda ids: tuple(exposed.loc[exposed["user_id"].isin(ids), c].to_numpy()  # noqa: E731
                                        for c in ("user_id", "item_id", "outcome"))
        for backbone in ("mf", "ti"):
            for eps in EPSILONS:
                m, seconds = fit("naive", backbone, eps, int(member.sum()), seed, train_rows[~is_val] if np.isinf(eps) else train_rows,
                                 train_rows[is_val], text, settings, privacy)
                S = m.score_matrix(user_ids[eval_idx], item_ids)
                out.append({"dataset": f"simulator_{n_users}", "users": n_users, "seed": seed, "backbone": backbone,
                            "text_features": backbone == "ti", "epsilon": eps, "unit": "user",
                            "delta": None if np.isinf(eps) else DELTA_SHARE / int(member.sum()),
                            "spent_epsilon": getattr(m, "privacy_", {}).get("epsilon", float("inf")),
                            "ndcg@10": M.ndcg_at_k(S, rel[eval_idx], 10),
                            "cp@10_ratio_to_oracle": M.causal_precision_at_k(S, upl[eval_idx], 10) / oracle_cp[seed],
                            "mia_auc": attack_auc(m, attack_rows(mia_in), attack_rows(mia_out)), "seconds": seconds})
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out[-1].items()}, flush=True)
    return out


def coat_rows(data_dir: Path, seeds: int, settings: dict, privacy: dict) -> list[dict]:
    import coat as coat_bench
    from causalrec.data.sources import load_ratings_dir
    from causalrec.models import Popularity

    data = load_ratings_dir(data_dir)
    splits = coat_bench.make_splits(data, seeds)
    n_users = data["users"].shape[0]
    out = []
    for seed, split in enumerate(splits):
        f, v, test = split.fit, split.val, split.test
        labels = test.open()["y1"].to_numpy()  # every setting above was declared before this line
        pairs = test.pairs
        pop = Popularity().fit(f["user_id"], f["item_id"], f["outcome"])
        out.append({"dataset": "coat", "users": n_users, "seed": seed, "backbone": "popularity", "text_features": False,
                    "epsilon": None, "unit": None, **coat_bench.test_metrics(pop.predict(pairs["user_id"].to_numpy(),
                                                                                       pairs["item_id"].to_numpy()), pairs, labels)})
        members = f["user_id"].unique()
        for backbone in ("mf", "ti"):
            for eps in EPSILONS:
                m, seconds = fit("naive", backbone, eps, n_users, seed, f, v.assign(propensity=1.0), data["item_features"],
                                 settings, privacy)
                pred = m.predict(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy())
                out.append({"dataset": "coat", "users": n_users, "seed": seed, "backbone": backbone,
                            "text_features": backbone == "ti", "epsilon": eps, "unit": "user",
                            "delta": None if np.isinf(eps) else DELTA_SHARE / n_users,
                            "spent_epsilon": getattr(m, "privacy_", {}).get("epsilon", float("inf")),
                            **coat_bench.test_metrics(pred, pairs, labels), "seconds": seconds, "members": len(members)})
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out[-1].items()}, flush=True)
    return out


def summarise(rows: list[dict]) -> tuple[list[dict], dict]:
    """Mean over seeds per (dataset, backbone, epsilon), each with its ratio to the same backbone's
    non-private fit; the summary's keys."""
    frame = pd.DataFrame(rows)
    frame["epsilon_key"] = frame["epsilon"].map(lambda e: "none" if e is None or pd.isna(e) else ("inf" if np.isinf(e) else f"{e:g}"))
    metrics = [c for c in ("ndcg@10", "cp@10_ratio_to_oracle", "auc", "ndcg@5", "mia_auc", "seconds") if c in frame]
    table = []
    for (dataset, backbone, eps), g in frame.groupby(["dataset", "backbone", "epsilon_key"], sort=False):
        row = {"dataset": dataset, "backbone": backbone, "epsilon": g["epsilon"].iloc[0], "unit": g["unit"].iloc[0],
               "text_features": bool(g["text_features"].iloc[0]), "seeds": len(g), "users": int(g["users"].iloc[0])}
        for c in metrics:
            if g[c].notna().any():
                row[c], row[f"{c}_sd"] = float(g[c].mean()), float(g[c].std(ddof=1)) if len(g) > 1 else 0.0
        table.append(row)
    primary = lambda d: "ndcg@10" if d.startswith("simulator") else "ndcg@5"  # noqa: E731
    for row in table:
        base = next((r for r in table if r["dataset"] == row["dataset"] and r["backbone"] == row["backbone"]
                     and r["epsilon"] is not None and np.isinf(r["epsilon"])), None)
        if base is not None and row["backbone"] != "popularity":
            row["ratio_to_nonprivate"] = row[primary(row["dataset"])] / base[primary(row["dataset"])]
            if "auc" in row:
                row["auc_ratio_to_nonprivate"] = row["auc"] / base["auc"]

    def ratio(dataset, eps, backbone=HEADLINE["backbone"]):
        r = next((r for r in table if r["dataset"] == dataset and r["backbone"] == backbone and r["epsilon"] == eps), None)
        return None if r is None else r.get("ratio_to_nonprivate")

    sims = sorted({r["users"] for r in table if r["dataset"].startswith("simulator")})
    by_users = {str(n): ratio(f"simulator_{n}", 3.0) for n in sims}
    gap_narrowed = {str(n): (None if ratio(f"simulator_{n}", 3.0, "mf") is None else
                             ratio(f"simulator_{n}", 3.0, "ti") - ratio(f"simulator_{n}", 3.0, "mf")) for n in sims}
    largest = f"simulator_{sims[-1]}" if sims else None
    mia = {}
    for key in ("inf", "10", "3", "1"):
        e = float(key)
        vals = [r["mia_auc"] for r in table if r.get("mia_auc") is not None and r["dataset"] == largest
                and r["backbone"] == HEADLINE["backbone"] and r["epsilon"] == e]
        mia[key] = vals[0] if vals else None
    summary = {"headline": HEADLINE, "coat_ratio_at_eps3": ratio("coat", 3.0),
               "simulator_ratio_at_eps3": ratio(largest, 3.0) if largest else None, "simulator_largest_users": sims[-1] if sims else None,
               "simulator_ratio_at_eps3_by_users": by_users,
               "text_minus_ids_ratio_at_eps3_by_users": gap_narrowed,
               "mia_auc": mia, "mia_auc_dataset": largest,
               "goal_ratio_at_eps3_100k": 0.9,
               "goal_met": (by_users.get("100000") or 0) >= 0.9,
               "training_time_ratio_private_to_nonprivate": {
                   d: float(frame[(frame["dataset"] == d) & frame["epsilon"].map(lambda e: e is not None and not pd.isna(e) and np.isfinite(e))]["seconds"].mean()
                            / frame[(frame["dataset"] == d) & frame["epsilon"].map(lambda e: e is not None and not pd.isna(e) and np.isinf(e))]["seconds"].mean())
                   for d in frame["dataset"].unique()}}
    return table, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, nargs="*", default=[2000, 20000, 100000])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--coat", type=Path, default=REPO.parent / "shared" / "data" / "coat")
    ap.add_argument("--no-coat", action="store_true")
    ap.add_argument("--name", default="privacy")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.time()
    t = PARAMS.train
    settings = {"dim": t.dim, "lr": t.lr, "weight_decay": t.weight_decay, "batch_size": t.batch_size, "epochs": t.epochs,
                "patience": t.patience}
    privacy = {k: v for k, v in PARAMS.train.privacy.fit_settings().items() if k not in ("epsilon", "delta")} \
        if PARAMS.train.privacy.enabled else PARAMS.train.privacy.model_dump(exclude={"enabled", "unit", "epochs", "epsilon", "delta"})
    rows = []
    root = scratch_dir("privacy-")
    for n in tqdm(args.users, desc="sizes"):
        rows += simulator_rows(n, args.seeds, root / f"sim{n}", settings, privacy)
    if not args.no_coat and args.coat.exists():
        rows += coat_rows(args.coat, args.seeds, settings, privacy)
    table, summary = summarise(rows)
    write_result(args.name, {"settings": {"learner": "naive", "backbones": {"mf": "ids", "ti": "ids + item text tower"},
                                          "fit": settings, "privacy": privacy, "private_epochs": PARAMS.train.privacy.epochs,
                                          "delta": f"{DELTA_SHARE} / users", "member_share": MEMBER_SHARE,
                                          "eval_users": EVAL_USERS, "mia_users": MIA_USERS},
                             "rows": table, "per_seed": rows, "summary": summary, "seconds": time.time() - t0}, args.out)


if __name__ == "__main__":
    main()
