"""Coat (or any data set in its format): learn from MNAR ratings, evaluate on randomized ratings.

    python benchmarks/coat.py [--data ../shared/data/coat] [--seeds 5]

Protocol (AutoDebias, Chen et al. 2021): per seed, the randomized ratings are split into 5% for
fitting (the uniform sample), 5% for validation and 90% for test. Every method trains on the MNAR
ratings plus the 5% uniform sample (naive pools them; propensity methods weight every row by the
balance heuristic of multiple importance sampling, 1 / (p_mnar(u,i) + p_uniform), p_uniform the
probability that a pair is in the 5% sample); early stopping and every choice use the 5% validation
ratings, which are unbiased because they were exposed at random. Ratings >= 4 are positive.

Choices, all on validation, before the test ratings are read (they stay sealed until then):
  1. each method's hyper-parameters (GRID), by mean validation AUC over seeds;
  2. `chosen`: the method with the best mean validation AUC (the headline, HEADLINE_RULE);
  3. `debias_vs_naive`: among the debiasing methods on the MF backbone (ids only), the one with the
     best mean validation AUC, compared with mf_naive on the same backbone and inputs: the paired
     per-seed test differences (same splits), mean and sd. Where the chosen one is an estimator with
     the exposure head, `estimator_vs_head_alone` compares it with mf_naive_head the same way (what
     the reweighting adds beyond the head).
Then the test set is opened once: AUC over all test pairs; NDCG@5 and Recall@5 per user over that
user's test items (binary relevance), averaged over users with a positive; MSE.
Propensities: the data set's propensities.ascii when present (clipped at 0.01), else naive Bayes
propensities P(O=1 | rating) fitted with the uniform sample. Backbones: mf (ids) and tt (ids +
the user/item attributes, when the data set has them), every method on both.
With a propensity file, every estimator on the MF backbone also runs with the exposure head
(`mf_<estimator>_head`): the propensities of every user x item pair (the file's P(O=1 | u,i) plus
p_uniform: every pair could have been rated) are a second target sharing the factors, the
selection model learned jointly with relevance; its weight (0, 1, 3, 10) is chosen per fit by
validation loss (`exposure_weight: auto`). mf_naive_head reads the propensities through the head
only, so it counts as a debiasing method; mf_naive reads none. Without a propensity file (naive-Bayes
propensities depend on the rating, unknown for unrated pairs) the head learns what the log itself
says: which pairs the MNAR log rated (0/1 over every pair; `--head-target observed` asks for that
control on a data set with a file too).
"""
from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from _common import REPO, write_result
from causalrec.causal.debias import METHODS as ESTIMATORS
from causalrec.causal.debias import DebiasedRecommender, auto_exposure_weight
from causalrec.causal.propensity import NaiveBayesPropensity
from causalrec.data.sources import load_ratings_dir, pair_propensity, pairs_in
from causalrec.data.split import split_randomized
from causalrec.evaluation.metrics import auc, mse, per_user_ndcg_recall
from causalrec.models import Popularity

GRID = {"dim": [4, 8, 16, 32], "weight_decay": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2], "lr": [0.01]}
UNIFORM_SHARE, VAL_SHARE_OF_UNIFORM = 0.10, 0.5  # 5% fit + 5% validation of the randomized ratings
HEADLINE_RULE = "the method (and its hyper-parameters) with the best mean validation AUC over seeds"
CLIP = 0.01


@dataclass
class SealedTest:
    """The test ratings: their (user, item) pairs are public (models predict them), their labels are
    not, until `open()` is called once every choice has been made."""

    pairs: pd.DataFrame
    _labels: pd.DataFrame = field(repr=False)
    opened: bool = False

    def open(self) -> pd.DataFrame:
        self.opened = True
        return self._labels


HEAD = "_head"  # method-name suffix: with the exposure head over every user x item pair


@dataclass
class Split:
    fit: pd.DataFrame      # MNAR ratings + the uniform fitting sample, with `propensity`
    val: pd.DataFrame      # uniform validation ratings
    test: SealedTest
    exposure_log: tuple | None = None  # (users, items, propensity) of every pair: the head's target


def make_splits(data: dict, seeds: int, propensity: str = "file", head_target: str = "propensity") -> list[Split]:
    out = []
    for seed in range(seeds):
        uniform, test = split_randomized(data["test"], UNIFORM_SHARE, seed)
        uniform_fit, uniform_val = split_randomized(uniform, 1 - VAL_SHARE_OF_UNIFORM, seed + 10_000)
        mnar = data["interactions"].copy()
        uniform_fit = uniform_fit.assign(outcome=uniform_fit["y1"].astype(np.float32))
        n_pairs = data["users"].shape[0] * data["items"].shape[0]
        if propensity == "naive_bayes" or data["propensities"] is None:  # Schnabel et al. 2016, uniform sample
            nb = NaiveBayesPropensity().fit(mnar["rating"], n_pairs, uniform_ratings=uniform_fit["rating"])
            p_mnar = {"mnar": nb.predict(mnar["rating"]), "uniform": nb.predict(uniform_fit["rating"])}
        else:
            p_mnar = {name: pair_propensity(data["propensities"], rows["user_id"], rows["item_id"])
                      for name, rows in (("mnar", mnar), ("uniform", uniform_fit))}
        p_uniform = len(uniform_fit) / n_pairs
        cols = ["user_id", "item_id", "outcome"]
        fit = pd.concat([mnar[cols].assign(propensity=p_mnar["mnar"] + p_uniform),
                         uniform_fit[cols].assign(propensity=p_mnar["uniform"] + p_uniform)], ignore_index=True)
        fit["propensity"] = fit["propensity"].clip(lower=CLIP, upper=1.0)
        val = uniform_val.assign(outcome=uniform_val["y1"].astype(np.float32))[["user_id", "item_id", "outcome"]]
        # the exposure head's target over every user x item pair: the file's P(O=1 | u,i) where the data set
        # has one (and it is asked for), else what the log itself says, which pairs the MNAR log rated
        user_ids, item_ids = data["users"]["user_id"].to_numpy(), data["items"]["item_id"].to_numpy()
        users, items = np.repeat(user_ids, len(item_ids)), np.tile(item_ids, len(user_ids))
        if head_target == "propensity" and propensity == "file" and data["propensities"] is not None:
            target = np.clip(pair_propensity(data["propensities"], users, items) + p_uniform, CLIP, 1.0)
        else:
            target = pairs_in(users, items, mnar).astype(np.float64)
        exposure_log = (users, items, target)
        out.append(Split(fit, val, SealedTest(test[["user_id", "item_id"]], test[["y1"]]), exposure_log))
    return out


def method_names(has_attributes: bool, has_head: bool) -> list[str]:
    backbones = ["mf", "tt"] if has_attributes else ["mf"]
    return ["popularity", *(f"{b}_{m}" for b in backbones for m in ESTIMATORS),
            *(f"mf_{m}{HEAD}" for m in ESTIMATORS if has_head)]


def fit_method(name: str, hp: dict, split: Split, data: dict, seed: int):
    f, v = split.fit, split.val
    if name == "popularity":
        return Popularity().fit(f["user_id"], f["item_id"], f["outcome"])
    backbone, method = name.removesuffix(HEAD).split("_", 1)
    features = ({"user_features": data["user_features"], "item_features": data["item_features"]}
                if backbone == "tt" else {})
    model = DebiasedRecommender(method, dim=hp["dim"], weight_decay=hp["weight_decay"], lr=hp["lr"], batch_size=512,
                                epochs=200, patience=8, seed=seed)
    if name.endswith(HEAD):
        model, features = auto_exposure_weight(model), {**features, "exposure_log": split.exposure_log}
    fitted = model.fit(f["user_id"].to_numpy(), f["item_id"].to_numpy(), f["outcome"].to_numpy(),
                       f["propensity"].to_numpy(), val=(v["user_id"].to_numpy(), v["item_id"].to_numpy(),
                                                        v["outcome"].to_numpy(), None), **features)
    return getattr(fitted, "best_estimator_", fitted)


def choose(data: dict, splits: list[Split], methods: list[str], grid: dict) -> tuple[dict, dict]:
    """Every choice, from the validation ratings only. Returns (choices, test predictions of every fit,
    keyed by (method, hyper-parameters), made from the test pairs' ids alone)."""
    configs = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    val_auc, predictions, head_weights = {}, {}, {}
    for name in tqdm(methods, desc="methods"):
        for hp in ([{}] if name == "popularity" else configs):
            key = (name, tuple(hp.items()))
            scores, preds, weights = [], [], []
            for seed, split in enumerate(splits):
                model = fit_method(name, hp, split, data, seed)
                scores.append(auc(split.val["outcome"], model.predict(split.val["user_id"].to_numpy(),
                                                                         split.val["item_id"].to_numpy())))
                preds.append(model.predict(split.test.pairs["user_id"].to_numpy(), split.test.pairs["item_id"].to_numpy()))
                weights.append(getattr(model, "exposure_weight_", None))
            val_auc[key], predictions[key], head_weights[key] = float(np.mean(scores)), preds, weights
    tuned = {}
    for name in methods:
        key = max((k for k in val_auc if k[0] == name), key=val_auc.get)
        tuned[name] = {"hyperparameters": dict(key[1]), "validation_auc": val_auc[key], "key": key}
        if name.endswith(HEAD):  # the head's weight each seed's fit chose by validation loss
            tuned[name]["exposure_weight_per_seed"] = head_weights[key]
    chosen = max(tuned, key=lambda n: tuned[n]["validation_auc"])
    debiasing = [n for n in methods if n.startswith("mf_") and n != "mf_naive"]
    chosen_debiasing = max(debiasing, key=lambda n: tuned[n]["validation_auc"]) if debiasing else None
    return {"tuned": tuned, "chosen": chosen, "chosen_debiasing": chosen_debiasing}, predictions


def test_metrics(pred: np.ndarray, pairs: pd.DataFrame, y: np.ndarray) -> dict:
    ndcg, recall = per_user_ndcg_recall(pairs["user_id"].to_numpy(), pred, y, 5)
    return {"auc": auc(y, pred), "ndcg@5": ndcg, "recall@5": recall, "mse": mse(y, pred)}


def paired(method: str, baseline: str, per_seed: dict, flag: str = "better_by_more_than_sd") -> dict:
    """Per-seed test differences method - baseline (the same splits), their mean and sd; `flag`: whether
    the mean exceeds the sd on both metrics."""
    diff = {m: np.array([a[m] - b[m] for a, b in zip(per_seed[method], per_seed[baseline])]) for m in ("auc", "ndcg@5")}
    return {"method": method, "baseline": baseline,
            **{m: {"mean": float(v.mean()), "sd": float(v.std(ddof=1)), "seeds_better": int((v > 0).sum())}
               for m, v in diff.items()},
            flag: bool(all(v.mean() > v.std(ddof=1) for v in diff.values()))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "coat",
                    help="directory with train.ascii, test.ascii [, propensities.ascii, user_item_features/]")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--grid-dims", type=int, nargs="+", default=GRID["dim"])
    ap.add_argument("--propensity", choices=["file", "naive_bayes"], default="file",
                    help="file: the data set's propensities.ascii (naive Bayes when it has none)")
    ap.add_argument("--head-target", choices=["propensity", "observed"], default="propensity",
                    help="the exposure head's target: the file's propensities, or (a control) the 0/1 rated indicator")
    ap.add_argument("--name", default="coat")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.time()
    data = load_ratings_dir(args.data)
    has_attributes = data["item_features"] is not None
    methods = args.methods or method_names(has_attributes, True)
    splits = make_splits(data, args.seeds, args.propensity, args.head_target)
    choices, predictions = choose(data, splits, methods, {**GRID, "dim": args.grid_dims})
    assert not any(s.test.opened for s in splits), "a choice read the test set"

    # The test set is opened once, after every choice.
    per_seed = {name: [] for name in methods}
    for seed, split in enumerate(splits):
        y = split.test.open()["y1"].to_numpy()
        for name in methods:
            per_seed[name].append(test_metrics(predictions[choices["tuned"][name]["key"]][seed], split.test.pairs, y))
    summary = {}
    for name, rows in per_seed.items():
        df = pd.DataFrame(rows)
        t = choices["tuned"][name]
        summary[name] = {**{k: float(df[k].mean()) for k in df}, **{f"{k}_sd": float(df[k].std(ddof=1)) for k in df},
                         "validation_auc": t["validation_auc"], "hyperparameters": t["hyperparameters"],
                         **({"exposure_weight_per_seed": t["exposure_weight_per_seed"]} if name.endswith(HEAD) else {})}
    chosen = choices["chosen"]
    protocol = next(p for p in __doc__.split("\n\n") if p.startswith("Protocol"))
    result = {"data": str(args.data), "protocol": protocol.replace("\n", " "), "seeds": args.seeds,
              "grid": {**GRID, "dim": args.grid_dims}, "headline_rule": HEADLINE_RULE, "head_target": args.head_target,
              "propensities": ("propensities.ascii" if args.propensity == "file" and "propensity" in data["interactions"]
                               else "naive Bayes (uniform sample)"),
              "methods": summary,
              "chosen": {"method": chosen, "auc": summary[chosen]["auc"], "ndcg@5": summary[chosen]["ndcg@5"],
                         "hyperparameters": summary[chosen]["hyperparameters"]}}
    d = choices["chosen_debiasing"]
    if d and "mf_naive" in per_seed:
        result["debias_vs_naive"] = paired(d, "mf_naive", per_seed, flag="beats_naive_by_more_than_sd")
    if d and d.endswith(HEAD) and d != f"mf_naive{HEAD}" and f"mf_naive{HEAD}" in per_seed:
        result["estimator_vs_head_alone"] = paired(d, f"mf_naive{HEAD}", per_seed)
    result["seconds"] = round(time.time() - t0, 1)
    write_result(args.name, result, args.out)


if __name__ == "__main__":
    main()
