"""Why the closed loop recovers slowly from drift (issue 12): a diagnosis on a finished closed-loop run.

    python benchmarks/closed_loop.py --workdir W            # first: the loop, its drift trajectory kept in W/drift
    python benchmarks/drift_recovery.py --workdir W

The closed loop's goal is a champion at >= 0.9 of the new oracle two rounds after the interests
move. This script asks what the loop's retrains after the drift could have reached with the same
served traffic, changing one thing at a time; it changes none of the loop's settings and chooses
nothing (every variant is reported, with the validation AUC the train stage would have chosen by):

  * window: the loop's `ingest.window` vs only the partitions served since the drift round;
  * learner: each of the loop's models, and the two-tower without the users' profile text
    (profiles were written from the interests before the drift: after it they mislead);
  * exploration: the retrain one round after the drift with extra uniformly drawn slates of that
    round (answered by the world, after the draws the loop already used), i.e. a larger epsilon.

Each retrain is rebuilt from the drift project's partitions as the loop's ingest built it (the
latest partition's uniform slates held out for the gate), trained with the loop's params and
scored like the loop: the greedy slate's true value over the oracle's at the round it would serve.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _common import write_result
from closed_loop import Truth

EXTRA_SLATES = (0, 2000, 6000, 18000, 60000)  # at 20k requests a round: epsilon 0.1 -> 0.2, 0.4, 1.0; then 3 rounds of it


def rebuild(src: Path, dst: Path, round: int, window: int):
    """The drift project as its retrain after `round` saw it, with ingest.window = `window`."""
    from causalrec.config import load_params
    from causalrec.pipeline import STAGES

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml", "registry.json"):
        shutil.copy2(src / name, dst / name)
    for name in ("src", "graphs", "artifacts"):
        shutil.copytree(src / name, dst / name, symlinks=True)
    params = yaml.safe_load((src / "params.yaml").read_text())
    (dst / params["paths"]["feedback_dir"]).mkdir()
    for part in sorted((src / params["paths"]["feedback_dir"]).glob("part-*"))[:round]:
        shutil.copytree(part, dst / params["paths"]["feedback_dir"] / part.name)
    params["ingest"]["window"] = window
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    params = load_params(dst / "params.yaml")
    for stage in ("ingest", "embed", "propensity"):
        STAGES[stage](params)
    return params


def fit_and_score(params, name: str, truth: Truth, profile_text: bool, extra: pd.DataFrame | None = None) -> dict:
    """The train stage's fit of `name` (optionally with extra uniform rows), scored by the truth."""
    from causalrec.pipeline.embed import text_features
    from causalrec.pipeline.rows import training_rows
    from causalrec.pipeline.train import _validation_auc, fit_model

    rows = training_rows(params)
    if extra is not None and len(extra):  # half of the extra uniform rows validate, as the train stage splits them
        half = np.random.default_rng(params.seed).random(len(extra)) < 0.5
        rows = rows._replace(fit=pd.concat([rows.fit, extra[~half]], ignore_index=True),
                             val=pd.concat([rows.val, extra[half]], ignore_index=True))
    features = text_features(params) if name.startswith("tt_") else None
    if features is not None and not profile_text:
        features.pop("user_features", None)
    t0 = time.perf_counter()
    model = fit_model(params, name, rows, features=features)
    users = np.repeat(np.array(truth.users), len(truth.items))
    score = model.predict(users, np.tile(truth.items, len(truth.users))).reshape(len(truth.users), len(truth.items))
    return {"value_ratio": truth.value(truth.top(score)) / truth.value(truth.top(truth.p1)),
            "validation_auc": _validation_auc(model, rows), "fit_rows": len(rows.fit), "seconds": round(time.perf_counter() - t0, 1)}


def extra_uniform(world, params, round: int, n: int, k: int, seed: int) -> pd.DataFrame:
    """n more uniformly drawn slates at `round`, answered after the draws the loop used that round."""
    from causalrec.data.feedback import read_partitions
    from causalrec.data.schema import INTERACTIONS

    served = read_partitions(params.paths.feedback_dir, INTERACTIONS, last=1)  # the rebuilt project ends at `round`
    world.respond(round, served["user_id"].to_numpy(), served["item_id"].to_numpy(),
                  served["propensity"].to_numpy(), "replay")  # consume the loop's draws of this round
    rng = np.random.default_rng(seed)
    users = np.repeat(rng.choice(world.n_users, size=n, p=world.activity), k)
    items = np.concatenate([rng.choice(world.n_items, k, replace=False) for _ in range(n)]) if n else np.zeros(0, int)
    uid, iid = np.array([f"u{u:06d}" for u in users]), np.array([f"i{i:06d}" for i in items])
    p = np.full(len(uid), k / world.n_items)
    return pd.DataFrame({"user_id": uid, "item_id": iid, "outcome": world.respond(round, uid, iid, p, "explore").astype(float),
                         "propensity": p})


def main(argv=None) -> dict:
    from causalrec.config import load_params
    from causalrec.data.online import OnlineWorld
    from causalrec.data.simulate import World

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="a closed_loop.py --workdir with its drift trajectory")
    ap.add_argument("--drift-round", type=int, default=6, help="as given to closed_loop.py")
    ap.add_argument("--seed", type=int, default=0, help="the world's seed, as given to closed_loop.py")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--extra-slates", default=",".join(map(str, EXTRA_SLATES)))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    src = Path(args.workdir) / "drift"
    if not (src / "params.yaml").exists():
        ap.error(f"{src} is not a closed-loop drift project (run closed_loop.py --workdir {args.workdir} first)")
    loop = load_params(src / "params.yaml")
    d, base = args.drift_round, World.load(loop.paths.artifacts_dir / "ground_truth" / "world")

    def online():  # a fresh environment: its per-round draw counters start at zero
        return OnlineWorld(base, seed=args.seed, drift_from_round=d)

    # the loop's models as it trained them, and the two-tower without the users' profile text
    variants = [(name, name.startswith("tt_")) for name in loop.train.models] + [("tt_naive", False)]
    retrains, scratch = [], Path(args.workdir) / "drift-recovery"
    truths = {r: Truth(online(), r + 1, args.k) for r in (d, d + 1)}  # each retrain serves the round after it
    for r, truth in truths.items():  # the retrain at the end of the drift round, and the next one
        for w in dict.fromkeys([loop.ingest.window, r - d + 1]):  # the loop's window; the partitions since the drift
            params = rebuild(src, scratch / f"r{r}-w{w}", r, w)
            for name, profile_text in variants:
                row = {"round": r, "window": w, "post_drift_only": w is not None and w <= r - d + 1, "model": name,
                       "profile_text": profile_text, **fit_and_score(params, name, truth, profile_text)}
                print(row, flush=True)
                retrains.append(row)
    # more exploration in the round after the drift, with the loop's window and its usual model
    exploration, r = [], d + 1
    params = load_params(scratch / f"r{r}-w{loop.ingest.window}" / "params.yaml")
    for n in map(int, args.extra_slates.split(",")):
        extra = extra_uniform(online(), params, r, n, args.k, seed=n)
        row = {"round": r, "window": loop.ingest.window, "model": "tt_naive", "profile_text": True,
               "extra_uniform_slates": n, **fit_and_score(params, "tt_naive", truths[r], True, extra)}
        print(row, flush=True)
        exploration.append(row)
    best = max(retrains + exploration, key=lambda x: x["value_ratio"])
    figures = {"settings": {"closed_loop_workdir": str(Path(args.workdir)), "drift_round": d, "loop_window": loop.ingest.window,
                            "models": list(loop.train.models), "train_seed": loop.seed, "world_seed": args.seed},
               "retrains": retrains, "exploration": exploration,
               "highest_value_ratio": {k: best[k] for k in best if k != "seconds"}, "goal": 0.9}
    write_result("drift_recovery", figures, args.out)
    return figures


if __name__ == "__main__":
    main()
