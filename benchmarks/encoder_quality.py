"""Does text help? Cold-start items scored from text only: random (no text) vs frozen
MiniLM vs MiniLM fine-tuned on the platform's own interactions.

    python benchmarks/encoder_quality.py --coat ../shared/data/coat --seeds 0 1 2

Per seed: hold out 20% of items entirely (no interaction of theirs is seen), fine-tune on pairs
mined from the remaining training interactions (co-liked items; profile -> liked item), embed all
item texts, and score each held-out (user, item) test pair by
    score = <e_item, mean(e of items the user liked) - mean(e of items the user disliked) + 0.5 e_profile>.
Test pairs: Coat's randomized test ratings (>= 4 positive) / the simulator's randomized pairs
(realised Y(1)), restricted to held-out items. AUC over pairs; NDCG@5 per user over that user's
held-out test items, averaged over users with a positive. "random": an unseen item has no popularity and
no text, so a constant score with random tie-breaking (AUC 0.5 by construction): the floor text must beat.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from _common import REPO, scratch_dir, write_result
from causalrec.evaluation.metrics import auc, per_user_ndcg_recall
from causalrec.text import TextEncoder
from causalrec.text.finetune import FinetuneConfig, finetune, mine_pairs


def coat(path: Path) -> dict:
    from causalrec.data.sources import load_ratings_dir

    t = load_ratings_dir(path)
    items = t["items"]
    return {"interactions": t["interactions"][["user_id", "item_id", "outcome"]],
            "item_text": dict(zip(items["item_id"], items["title"] + ". " + items["description"])),
            "user_text": dict(zip(t["users"]["user_id"], t["users"]["profile_text"])),
            "test": t["test"][["user_id", "item_id", "y1"]]}


def simulator(seed: int = 7) -> dict:
    from causalrec.data.simulate import SimulationConfig, simulate

    root = scratch_dir("encq-sim-")
    simulate(SimulationConfig(seed=seed), root / "data", root / "truth", progress=False)
    inter = pd.read_parquet(root / "data" / "interactions.parquet")
    items = pd.read_parquet(root / "data" / "items.parquet")
    users = pd.read_parquet(root / "data" / "users.parquet")
    return {"interactions": inter.loc[inter["exposed"] == 1, ["user_id", "item_id", "outcome"]],
            "item_text": dict(zip(items["item_id"], items["title"] + ". " + items["description"])),
            "user_text": dict(zip(users["user_id"], users["profile_text"])),
            "test": pd.read_parquet(root / "truth" / "test_pairs.parquet")[["user_id", "item_id", "y1"]]}


def text_scores(emb: dict, data: dict, train: pd.DataFrame, test: pd.DataFrame, profile_emb: dict) -> np.ndarray:
    dim = len(next(iter(emb.values())))
    liked = train[train["outcome"] > 0].groupby("user_id")["item_id"].apply(list)
    disliked = train[train["outcome"] <= 0].groupby("user_id")["item_id"].apply(list)

    def mean(ids):
        return np.mean([emb[i] for i in ids], 0) if isinstance(ids, list) and ids else np.zeros(dim)

    user_vec = {u: mean(liked.get(u)) - mean(disliked.get(u)) + 0.5 * profile_emb.get(u, np.zeros(dim))
                for u in test["user_id"].unique()}
    return np.array([emb[i] @ user_vec[u] for u, i in zip(test["user_id"], test["item_id"])])


def one_seed(data: dict, seed: int, model_path, cfg: FinetuneConfig, max_pairs: int) -> dict:
    rng = np.random.default_rng(seed)
    items = np.array(sorted(data["item_text"]))
    held = set(rng.choice(items, size=len(items) // 5, replace=False))
    train = data["interactions"][~data["interactions"]["item_id"].isin(held)]
    test = data["test"][data["test"]["item_id"].isin(held)].reset_index(drop=True)
    seen_text = {i: t for i, t in data["item_text"].items() if i not in held}
    pairs = mine_pairs(train, seen_text, data["user_text"], seed=seed)
    if len(pairs) > max_pairs:
        pairs = pairs.sample(max_pairs, random_state=seed).reset_index(drop=True)
    out_dir = scratch_dir("encq-ft-")
    ft = finetune(pairs, out_dir, model_path, FinetuneConfig(**{**cfg.__dict__, "seed": seed}))
    results = {}
    user_ids = sorted(data["user_text"])
    for name, path in (("frozen", model_path), ("finetuned", out_dir / "best")):
        enc = TextEncoder(path, batch_size=64, max_length=cfg.max_length, progress=False).load()
        vec = enc.embed([data["item_text"][i] for i in items])
        emb = dict(zip(items, vec))
        prof = dict(zip(user_ids, enc.embed([data["user_text"][u] for u in user_ids])))
        s = text_scores(emb, data, train, test, prof)
        results[name] = s
    results["random"] = np.full(len(test), 0.5) + rng.uniform(0, 1e-6, len(test))  # ties broken at random
    row = {}
    for name, s in results.items():
        ndcg, _ = per_user_ndcg_recall(test["user_id"].to_numpy(), s, test["y1"].to_numpy(), 5)
        row[name] = {"auc": auc(test["y1"], s), "ndcg@5": ndcg}
    row["finetune"] = {"pairs": len(pairs), "best_val_recall": ft["best_val_recall"], "steps": ft["steps"],
                       "seconds": round(ft["seconds"], 1)}
    row["held_out"] = {"items": len(held), "test_pairs": len(test), "positives": int(test["y1"].sum())}
    return row


def summarise(rows: list[dict]) -> dict:
    out = {}
    for method in ("random", "frozen", "finetuned"):
        for metric in ("auc", "ndcg@5"):
            vals = np.array([r[method][metric] for r in rows])
            out.setdefault(method, {})[metric] = float(vals.mean())
            out[method][f"{metric}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    out["per_seed"] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coat", type=Path, default=REPO.parent / "shared" / "data" / "coat")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--max-pairs", type=int, default=4000)
    ap.add_argument("--datasets", nargs="+", default=["coat", "simulator"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from causalrec.text import default_model_path

    model_path = args.model or default_model_path()
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=64, patience=2,
                         progress=False)
    figures = {"protocol": __doc__.split("\n\n")[2].strip(), "seeds": args.seeds, "model_path": str(model_path),
               "finetune_config": cfg.__dict__, "max_pairs": args.max_pairs}
    for name in args.datasets:
        data = coat(args.coat) if name == "coat" else simulator()
        rows = []
        for seed in args.seeds:
            rows.append(one_seed(data, seed, model_path, cfg, args.max_pairs))
            print(name, seed, {k: v for k, v in rows[-1].items() if k in ("random", "frozen", "finetuned")}, flush=True)
        figures[name] = summarise(rows)
        s = figures[name]
        figures[name]["finetuned_beats_frozen_beyond_spread"] = bool(
            s["finetuned"]["auc"] - s["frozen"]["auc"] > max(s["finetuned"]["auc_std"], s["frozen"]["auc_std"]))
    write_result("encoder_quality", figures, args.out)


if __name__ == "__main__":
    main()
