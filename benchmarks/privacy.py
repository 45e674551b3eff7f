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
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from _common import REPO, RESULTS, scratch_dir, write_result
from causalrec.causal.debias import DebiasedRecommender
from causalrec.config import load_params
from causalrec.data.simulate import SimulationConfig, World, simulate
from causalrec.evaluation import metrics as M
from causalrec.evaluation.membership import attack_auc

EPSILONS = (1.0, 3.0, 10.0, float("inf"))
# every fit per backbone and seed: (epsilon, trainer); the last is the noise-free reference of the private trainer
FITS = [*((e, "product") for e in EPSILONS), (float("inf"), "private_no_noise")]
HEADLINE = {"epsilon": 3.0, "backbone": "ti"}
DELTA_SHARE = 0.1          # delta = 0.1 / users
MEMBER_SHARE = 0.8
EVAL_USERS, MIA_USERS = 3000, 1000
PARAMS = load_params(REPO / "params.yaml")
RESULTS_ROWS = RESULTS / "privacy_rows.jsonl"


def fit(method: str, backbone: str, epsilon: float, n_users: int, seed: int, rows: pd.DataFrame, val: pd.DataFrame | None,
        item_features: pd.DataFrame | None, settings: dict, privacy: dict, trainer: str = "product") -> tuple[DebiasedRecommender, float]:
    """One model as the product fits it: early-stopped without privacy, train.privacy's fixed epochs with it.
    trainer "private_no_noise": the private trainer (sampling, clipping, local user fits, fixed epochs)
    with negligible noise: what the mechanism costs apart from the noise."""
    features = {"item_features": item_features} if backbone == "ti" else {}
    prop = rows["propensity"].to_numpy() if method != "naive" else None
    cols = [rows[c].to_numpy() for c in ("user_id", "item_id", "outcome")]
    t0 = time.perf_counter()
    if trainer == "private_no_noise":
        dp = {**privacy, "epsilon": 1e6, "delta": DELTA_SHARE / n_users, "noise_multiplier": 1e-6}
        m = DebiasedRecommender(method, **{**settings, "epochs": PARAMS.train.privacy.epochs}, seed=seed, privacy=dp)
        m.fit(*cols, prop, **features)
    elif np.isinf(epsilon):
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


def keep(row: dict, rows_file: Path) -> dict:
    """Print a finished fit's row and append it to the rows file (a rerun resumes after it)."""
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    with open(rows_file, "a") as fh:
        fh.write(json.dumps(row, default=float) + "\n")
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return row


def fit_key(row: dict) -> tuple:
    eps = row["epsilon"]
    return (row["dataset"], row["seed"], row["backbone"], "none" if eps is None else float(eps), row.get("trainer", "product"))


def simulator_rows(n_users: int, seeds: list[int], root: Path, settings: dict, privacy: dict, rows_file: Path,
                   done: set) -> list[dict]:
    pending = {(seed, bb, eps, tr) for seed in seeds for bb in ("mf", "ti") for eps, tr in FITS
               if (f"simulator_{n_users}", seed, bb, eps, tr) not in done}
    if not pending:
        return []
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
    for seed in seeds:
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
            for eps, trainer in FITS:
                if (seed, backbone, eps, trainer) not in pending:
                    continue
                early_stopped = np.isinf(eps) and trainer == "product"
                m, seconds = fit("naive", backbone, eps, int(member.sum()), seed, train_rows[~is_val] if early_stopped else train_rows,
                                 train_rows[is_val], text, settings, privacy, trainer)
                S = m.score_matrix(user_ids[eval_idx], item_ids)
                out.append({"dataset": f"simulator_{n_users}", "users": n_users, "seed": seed, "backbone": backbone,
                            "trainer": trainer, "text_features": backbone == "ti", "epsilon": eps, "unit": "user",
                            "delta": None if np.isinf(eps) else DELTA_SHARE / int(member.sum()),
                            "spent_epsilon": getattr(m, "privacy_", {}).get("epsilon", float("inf")),
                            "ndcg@10": M.ndcg_at_k(S, rel[eval_idx], 10),
                            "cp@10_ratio_to_oracle": M.causal_precision_at_k(S, upl[eval_idx], 10) / oracle_cp[seed],
                            "mia_auc": attack_auc(m, attack_rows(mia_in), attack_rows(mia_out)), "seconds": seconds})
                keep(out[-1], rows_file)
    return out


def coat_rows(data_dir: Path, seeds: int, settings: dict, privacy: dict, rows_file: Path, done: set) -> list[dict]:
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
        if ("coat", seed, "popularity", "none", "product") not in done:
            out.append({"dataset": "coat", "users": n_users, "seed": seed, "backbone": "popularity", "text_features": False,
                        "epsilon": None, "unit": None, **coat_bench.test_metrics(pop.predict(pairs["user_id"].to_numpy(),
                                                                                           pairs["item_id"].to_numpy()), pairs, labels)})
            keep(out[-1], rows_file)
        members = f["user_id"].unique()
        for backbone in ("mf", "ti"):
            for eps, trainer in FITS:
                if ("coat", seed, backbone, eps, trainer) in done:
                    continue
                m, seconds = fit("naive", backbone, eps, n_users, seed, f, v.assign(propensity=1.0), data["item_features"],
                                 settings, privacy, trainer)
                pred = m.predict(pairs["user_id"].to_numpy(), pairs["item_id"].to_numpy())
                out.append({"dataset": "coat", "users": n_users, "seed": seed, "backbone": backbone, "trainer": trainer,
                            "text_features": backbone == "ti", "epsilon": eps, "unit": "user",
                            "delta": None if np.isinf(eps) else DELTA_SHARE / n_users,
                            "spent_epsilon": getattr(m, "privacy_", {}).get("epsilon", float("inf")),
                            **coat_bench.test_metrics(pred, pairs, labels), "seconds": seconds, "members": len(members)})
                keep(out[-1], rows_file)
    return out


def forget_timing(n_rows: int, root: Path) -> dict:
    """`causalrec forget` of one served person in a project whose log has `n_rows` interactions (git + DVC
    + a local remote, the data versioned and pushed, a feedback partition and log holding the person):
    seconds, the places searched afterwards and where they were still found (none expected)."""
    import yaml

    from causalrec.data.simulate import SimulationConfig
    from causalrec.pipeline.forget import forget
    from causalrec.pipeline.versioning import version_data
    from causalrec.serving.feedback import FeedbackLog, export_feedback
    from causalrec.serving.privacy import pseudonymize

    project = root / "project"
    project.mkdir(parents=True)
    os.environ["PREFECT_HOME"] = str(root / "prefect")  # the search covers Prefect's home: this run's own
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["simulate"].update({"n_users": max(1000, n_rows // 50), "n_interactions": n_rows})
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(root / "remote")]):
        subprocess.run(cmd, cwd=project, check=True)
    params = load_params(project / "params.yaml")
    simulate(SimulationConfig(**{**PARAMS.simulate.model_dump(), "n_users": raw["simulate"]["n_users"],
                                 "n_interactions": n_rows}), params.paths.data_dir, project / "truth", progress=False)
    os.environ["CAUSALREC_PSEUDONYM_KEY"] = "privacy-benchmark-key"
    person = "planted-person-for-timing"
    log = FeedbackLog(params.serve.feedback_log)
    for j in range(20):
        log.append({"event_id": f"p{j}", "user_id": pseudonymize(person, b"privacy-benchmark-key"), "item_id": f"i{j:06d}",
                    "outcome": 1.0, "propensity": 0.1, "timestamp": "2026-12-07T08:00:00Z", "position": j + 1,
                    "model_version": "causalrec-recommender:timing"})
    exported = export_feedback(params.serve.feedback_log, params.paths.data_dir, params.paths.feedback_dir, project / "validation")
    if exported["exported"] != 20:
        raise RuntimeError(f"the planted person's events were not exported: {exported}")
    from causalrec.data.feedback import merge_into

    merge_into(params.paths.data_dir, params.paths.feedback_dir)
    version_data(params, push=True)
    t0 = time.perf_counter()
    result = forget(params, person)
    seconds = time.perf_counter() - t0
    shutil.rmtree(project / ".git", ignore_errors=True)
    return {"found_after": result["found_after"], "places_checked": result["places_checked"], "seconds_1M_rows": seconds,
            "log_rows": n_rows, "data_rows_removed": result["data_rows"], "partitions_rewritten": result["feedback"]["partitions_rewritten"],
            "dvc": result["dvc"]}


def summarise(rows: list[dict]) -> tuple[list[dict], dict]:
    """Mean over seeds per (dataset, backbone, trainer, epsilon); each private row's ratio to the best
    non-private reference of its backbone (the product's early-stopped fit, or the private trainer
    without noise, whichever scores higher: a privacy cost is never flattered by a weak reference),
    with both ratios beside it; the summary's keys."""
    if not rows:
        return [], {}
    frame = pd.DataFrame(rows)
    frame["trainer"] = frame["trainer"].fillna("product") if "trainer" in frame else "product"
    frame["epsilon_key"] = frame["epsilon"].map(lambda e: "none" if e is None or pd.isna(e) else ("inf" if np.isinf(e) else f"{e:g}"))
    metrics = [c for c in ("ndcg@10", "cp@10_ratio_to_oracle", "auc", "ndcg@5", "mia_auc", "seconds") if c in frame]
    table = []
    for (dataset, backbone, trainer, _), g in frame.groupby(["dataset", "backbone", "trainer", "epsilon_key"], sort=False):
        row = {"dataset": dataset, "backbone": backbone, "trainer": trainer, "epsilon": g["epsilon"].iloc[0],
               "unit": g["unit"].iloc[0], "text_features": bool(g["text_features"].iloc[0]), "seeds": len(g),
               "users": int(g["users"].iloc[0])}
        for c in metrics:
            if g[c].notna().any():
                row[c], row[f"{c}_sd"] = float(g[c].mean()), float(g[c].std(ddof=1)) if len(g) > 1 else 0.0
        table.append(row)
    primary = lambda d: "ndcg@10" if d.startswith("simulator") else "ndcg@5"  # noqa: E731

    def reference(dataset, backbone, trainer):
        return next((r for r in table if r["dataset"] == dataset and r["backbone"] == backbone and r["trainer"] == trainer
                     and r["epsilon"] is not None and np.isinf(r["epsilon"])), None)

    for row in table:
        if row["backbone"] == "popularity" or row["trainer"] != "product":
            continue
        metric = primary(row["dataset"])
        refs = {t: reference(row["dataset"], row["backbone"], t) for t in ("product", "private_no_noise")}
        refs = {t: r[metric] for t, r in refs.items() if r is not None and metric in r}
        if refs:
            row["ratio_to_nonprivate"] = row[metric] / max(refs.values())
            row["nonprivate_reference"] = max(refs, key=refs.get)
            row.update({f"ratio_to_{t}": row[metric] / v for t, v in refs.items()})

    def ratio(dataset, eps, backbone=HEADLINE["backbone"]):
        r = next((r for r in table if r["dataset"] == dataset and r["backbone"] == backbone and r["trainer"] == "product"
                  and r["epsilon"] == eps), None)
        return None if r is None else r.get("ratio_to_nonprivate")

    sims = sorted({r["users"] for r in table if r["dataset"].startswith("simulator")})
    by_users = {str(n): ratio(f"simulator_{n}", 3.0) for n in sims}
    text_gain = {str(n): (None if ratio(f"simulator_{n}", 3.0, "mf") is None else
                          ratio(f"simulator_{n}", 3.0, "ti") - ratio(f"simulator_{n}", 3.0, "mf")) for n in sims}
    largest = f"simulator_{sims[-1]}" if sims else None
    mia, mia_by = {}, {}
    for key in ("inf", "10", "3", "1"):
        e = float(key)
        vals = [r["mia_auc"] for r in table if r.get("mia_auc") is not None and r["dataset"] == largest
                and r["backbone"] == HEADLINE["backbone"] and r["trainer"] == "product" and r["epsilon"] == e]
        mia[key] = vals[0] if vals else None
    for r in table:
        if r.get("mia_auc") is not None and r["trainer"] == "product":
            summary_key = f"{r['dataset']}/{r['backbone']}"
            mia_by.setdefault(summary_key, {})["inf" if np.isinf(r["epsilon"]) else f"{r['epsilon']:g}"] = r["mia_auc"]
    product = frame[frame["trainer"] == "product"]
    finite = product["epsilon"].map(lambda e: e is not None and not pd.isna(e) and np.isfinite(e))
    plain = product["epsilon"].map(lambda e: e is not None and not pd.isna(e) and np.isinf(e))
    summary = {"headline": HEADLINE, "coat_ratio_at_eps3": ratio("coat", 3.0),
               "simulator_ratio_at_eps3": ratio(largest, 3.0) if largest else None, "simulator_largest_users": sims[-1] if sims else None,
               "simulator_ratio_at_eps3_by_users": by_users,
               "text_minus_ids_ratio_at_eps3_by_users": text_gain,
               "mia_auc": mia, "mia_auc_dataset": largest,
               # every size and backbone beside the declared one: where a non-private model leaks, and where it does not
               "mia_auc_by_dataset": mia_by,
               "goal_ratio_at_eps3_100k": 0.9,
               "goal_met": (by_users.get("100000") or 0) >= 0.9,
               "training_time_ratio_private_to_nonprivate": {
                   d: float(product[finite & (product["dataset"] == d)]["seconds"].mean()
                            / product[plain & (product["dataset"] == d)]["seconds"].mean()) for d in product["dataset"].unique()
                   if (plain & (product["dataset"] == d)).any()}}
    return table, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, nargs="*", default=[2000, 20000, 100000])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--large-seeds", type=int, default=None,
                    help="seeds at 100,000 users and more (default: --seeds); each costs ~30 min on 2 cores")
    ap.add_argument("--rows", type=Path, default=RESULTS_ROWS,
                    help="per-fit rows, appended as they finish; a rerun skips the (dataset, seed) runs found there")
    ap.add_argument("--forget-rows", type=int, default=1_000_000, help="log size of the forget timing (0: skip)")
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
    root = scratch_dir("privacy-")
    done = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()] if args.rows.exists() else []
    have = {fit_key(r) for r in done}
    rows = list(done)
    for n in tqdm(args.users, desc="sizes"):
        seeds = args.large_seeds if (n >= 100_000 and args.large_seeds is not None) else args.seeds
        rows += simulator_rows(n, list(range(seeds)), root / f"sim{n}", settings, privacy, args.rows, have)
        rows = [r for r in rows if not (r["dataset"] == f"simulator_{n}" and r["seed"] >= seeds)]
    if not args.no_coat and args.coat.exists():
        rows += coat_rows(args.coat, args.seeds, settings, privacy, args.rows, have)
    rows = [r for r in rows if r["dataset"] == "coat" or int(r["dataset"].split("_")[1]) in args.users]
    table, summary = summarise(rows)
    forget_figures = forget_timing(args.forget_rows, root / "forget") if args.forget_rows else None
    write_result(args.name, {"settings": {"learner": "naive", "backbones": {"mf": "ids", "ti": "ids + item text tower"},
                                          "fit": settings, "privacy": privacy, "private_epochs": PARAMS.train.privacy.epochs,
                                          "delta": f"{DELTA_SHARE} / users", "member_share": MEMBER_SHARE,
                                          "eval_users": EVAL_USERS, "mia_users": MIA_USERS},
                             "rows": table, "per_seed": rows, "summary": summary, "forget": forget_figures,
                             "seconds": time.time() - t0}, args.out)


if __name__ == "__main__":
    main()
