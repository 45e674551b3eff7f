"""A synthetic rating data set in Coat's format, of another shape: for checking that the Coat
protocol (benchmarks/coat.py --data DIR) holds up on data it was not developed on.

    python benchmarks/make_mnar_ratings.py OUT [--users 5400] [--items 1000] [--mnar-per-user 20] [--test-per-user 10]

Defaults follow Yahoo! R3's shape (users rate about 20 self-selected songs; 10 uniformly random
songs per user form the test set). Ratings 1-5 from a rank-`rank` preference model; users rate
what they like (selection probability grows steeply with the rating, Marlin & Zemel's finding on
Yahoo), so the MNAR log over-represents high ratings. No propensities file: coat.py then fits naive
Bayes propensities with the uniform sample, as one must on such data. Item/user attributes
(noisy views of the latent factors) with --features.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SELECT_BY_RATING = np.array([0.03, 0.04, 0.08, 0.2, 0.4])  # relative P(rated | rating 1..5)


def write(out: Path, users: int, items: int, mnar_per_user: int, test_per_user: int, rank: int = 4,
          features: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pref = rng.normal(size=(users, rank)) @ rng.normal(size=(rank, items)) / np.sqrt(rank)
    pref += rng.normal(scale=0.6, size=items) + rng.normal(scale=0.4, size=(users, 1))
    cuts = np.quantile(pref, [0.35, 0.6, 0.8, 0.92])  # most pairs would be rated low
    rating = 1 + np.searchsorted(cuts, pref + rng.normal(scale=0.5, size=pref.shape))
    train = np.zeros((users, items))
    test = np.zeros((users, items))
    for u in range(users):
        t = rng.choice(items, test_per_user, replace=False)
        test[u, t] = rating[u, t]
        w = SELECT_BY_RATING[rating[u] - 1].astype(float)
        w[t] = 0
        m = rng.choice(items, mnar_per_user, replace=False, p=w / w.sum())
        train[u, m] = rating[u, m]
    out.mkdir(parents=True, exist_ok=True)
    np.savetxt(out / "train.ascii", train, fmt="%d")
    np.savetxt(out / "test.ascii", test, fmt="%d")
    if features:
        (out / "user_item_features").mkdir(exist_ok=True)
        for side, n, names in (("item", items, 6), ("user", users, 4)):
            np.savetxt(out / f"user_item_features/{side}_features.ascii", rng.integers(0, 2, (n, names)), fmt="%d")
            (out / f"user_item_features/{side}_features_map.txt").write_text("\n".join(f"f:{j}" for j in range(names)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--users", type=int, default=5400)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--mnar-per-user", type=int, default=20)
    ap.add_argument("--test-per-user", type=int, default=10)
    ap.add_argument("--features", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write(args.out, args.users, args.items, args.mnar_per_user, args.test_per_user, features=args.features, seed=args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
