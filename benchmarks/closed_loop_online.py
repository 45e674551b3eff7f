"""Learning between retrains, measured in the closed loop (issue 39): online user updates for users who
arrive every round, and Thompson exploration over the uplift learner's bootstrap members against
epsilon-greedy.

    python benchmarks/closed_loop_online.py --trajectories offline,online,thompson,fixed,bandit
                                                                # the full run -> results/closed_loop_online.json
    python benchmarks/closed_loop_online.py --users 300 --items 150 --interactions 8000 --requests 300 \\
        --new-users 20 --rounds 2                               # a quick look

The world is the simulator's (closed_loop.py's environment) with a share of its users held out of the
logging policy's log: each round a fresh cohort of them arrives, never seen by any model, and each
new user asks for 5 slates in a row, reporting what they did with each before asking for the next (the
slate's shown items and its controls, as the product's clients do). Returning users visit as the world's
activity says. Between rounds the loop exports the feedback and retrains (closed_loop.retrain: ingest
of the base log and the served partitions, validate, version, embed, propensity, train, evaluate,
package with the OPE gate); the next round's cohort is new again.

Trajectories, each its own project (closed_loop.new_project), the same seed, world and cohorts:
  offline    serve.online off: a new user's 5 slates all come from the cold-start scores
  online     serve.online on (the product's default): each slate after the first from their vector
             re-estimated from the events of their earlier slates
  thompson   online on, serve.policy thompson (exploration over the uplift learner's bootstrap members)
  fixed      online on; today's promotion step: each retrain's candidate gated at once on the round's traffic
  bandit     online on, serve.bandit on: each retrain's candidate serves the next round beside the champion
             with the bandit's share and is gated on that round's traffic (run_traffic_trajectory)

Declared before the run (nothing here was tuned on its outcome): the product's default configuration
(closed_loop.LOOP_PARAMS_UPLIFT: the uplift learner on, rank_by uplift, CONTROLS controls per request),
params.yaml's serve.online settings (l2 1, weight_clip 10, max_events 50) and epsilon 0.1 for both
exploration policies. Values are the world's truth, read only to score:
  * a slate's value: the true incremental value E[Y(1) - Y(0)] per item of the greedy part of what the
    policy would show at that moment (its top k, the members' mean for thompson: the like-for-like
    figure closed_loop.py reports), over the oracle's (the user's true top-k incremental value); the
    outcome rate of the same slates over the best outcome rate beside it; and the value of the slate
    actually served (exploration included) for the exploration comparison.
  * new users: the mean ratio over a round's cohort, per slate 1..5; returning users: the mean ratio over
    their requests of the round.
  * the gate's power (thompson vs epsilon-greedy): on round 1's served traffic, the champion against a
    deliberately bad candidate (its scores reversed, closed_loop.reverse_scores), the gate's estimator and
    interval on the first n slates with every served slate and its exact logged propensity
    (promote.traffic: all); the smallest n of SLATE_STEPS whose interval lies wholly below zero.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import yaml

from _common import REPO, RESULTS, scratch_dir, write_result
from closed_loop import CONTROLS, LOOP_PARAMS_UPLIFT, LOOP_WORLDS, Truth, new_project, retrain, reverse_scores, serve_round

TRAJECTORIES = {"offline": {"policy": "epsilon_greedy", "online": False},
                "online": {"policy": "epsilon_greedy", "online": True},
                "thompson": {"policy": "thompson", "online": True},
                # champion and challengers (bandit_traffic): today's fixed promotion step against the bandit
                "fixed": {"policy": "epsilon_greedy", "online": True, "traffic": "fixed"},
                "bandit": {"policy": "epsilon_greedy", "online": True, "traffic": "bandit"}}
SLATES_PER_NEW_USER = 5
SLATE_STEPS = (25, 50, 100, 200, 400, 800, 1600, 3200)


def make_source(workdir: Path, args) -> tuple[Path, Path, list[list[int]]]:
    """The world's log without the held-out users (a parquet source), its truth, and the cohorts per round."""
    import pandas as pd

    from causalrec.config import Params
    from causalrec.data.simulate import simulate

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["simulate"].update(n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                           **LOOP_WORLDS[args.world])
    params = Params.model_validate(raw)
    src, truth = workdir / "world" / "data", workdir / "world" / "truth"
    simulate(params.simulation_config(), src, truth, progress=False)
    rng = np.random.default_rng([args.seed, 39])
    held = rng.choice(args.users, size=args.new_users * args.rounds, replace=False)
    cohorts = [held[r * args.new_users:(r + 1) * args.new_users].tolist() for r in range(args.rounds)]
    gone = {f"u{u:06d}" for u in held}
    out = workdir / "world" / "source"
    out.mkdir(parents=True)
    for table in ("interactions", "users"):
        frame = pd.read_parquet(src / f"{table}.parquet")
        frame[~frame["user_id"].isin(gone)].to_parquet(out / f"{table}.parquet", index=False)
    shutil.copy2(src / "items.parquet", out / "items.parquet")
    test = pd.read_parquet(truth / "test_pairs.parquet")
    test = test[~test["user_id"].isin(gone)]
    test.assign(outcome=test["y1"])[["user_id", "item_id", "outcome"]].to_parquet(out / "test_pairs.parquet", index=False)
    return out, truth / "world", cohorts


def greedy_slate(core, user: str, k: int) -> np.ndarray:
    """Catalogue positions of the greedy part of what `core` would show `user` now (online state included)."""
    uid, alias = core._resolve(user)
    with core._lock:
        online = core._online_users(uid, alias)
        rank = core._ranking(uid, online.get(core.config["rank_by"]))
    rank = rank.mean(0) if rank.ndim == 2 else rank
    return np.argsort(-rank, kind="stable")[:k]


def ratio(truth: Truth, u: int, items: np.ndarray) -> float:
    """A slate's true value per item for user u (the world's item indices) over the oracle's slate for u."""
    return float(truth.p1[u][items].mean() / np.sort(truth.p1[u])[::-1][:truth.k].mean())


def run_trajectory(name: str, workdir: Path, args, source: Path, world_dir: Path, cohorts: list) -> dict:
    if "traffic" in TRAJECTORIES[name]:
        return run_traffic_trajectory(name, workdir, args, source, world_dir, cohorts)
    return run_cohort_trajectory(name, workdir, args, source, world_dir, cohorts)


def setup(name: str, workdir: Path, args, source: Path, world_dir: Path):
    """The trajectory's project (product defaults + TRAJECTORIES[name]), its world, log and first model."""
    from causalrec.config import load_params
    from causalrec.data.online import OnlineWorld
    from causalrec.data.simulate import World
    from causalrec.serving.feedback import FeedbackLog
    from causalrec.serving.privacy import pseudonym_key

    setting = TRAJECTORIES[name]
    overrides = {s: dict(v) for s, v in LOOP_PARAMS_UPLIFT.items()}
    overrides["serve"].update(policy=setting["policy"])
    if setting.get("traffic") == "bandit":  # params.yaml's serve.bandit (floor, batch), switched on
        overrides["serve"]["bandit"] = {**yaml.safe_load((REPO / "params.yaml").read_text())["serve"]["bandit"], "enabled": True}
    overrides["ingest"].update(source="parquet", source_path=str(source), test_path=str(source / "test_pairs.parquet"))
    overrides["paths"] = {"input_dirs": [str(source)]}
    if args.epochs:
        overrides["train"]["epochs"] = args.epochs
    project = new_project(workdir / name, overrides, workdir / "cache")
    params = load_params(project / "params.yaml")
    log_path = project / "feedback" / "feedback.jsonl"
    world = OnlineWorld(World.load(world_dir), seed=args.seed)
    retrain(params)
    online = params.serve.online.model_dump() | {"enabled": setting["online"]}
    return params, world, log_path, FeedbackLog(log_path), pseudonym_key(log_path.parent), online


def export(params, log_path, key) -> dict:
    from causalrec.registry import Registry
    from causalrec.serving.feedback import export_feedback

    return export_feedback(log_path, params.paths.data_dir, params.paths.feedback_dir,
                           params.paths.artifacts_dir / "validation" / "feedback", key=key,
                           known_versions=set(Registry(params.paths.registry).state()["models"]))


def run_cohort_trajectory(name: str, workdir: Path, args, source: Path, world_dir: Path, cohorts: list) -> dict:
    from causalrec.evaluation.metrics import exposure_coverage
    from causalrec.pipeline.package import register_candidate
    from causalrec.pipeline.promote import compare, served_traffic
    from causalrec.pipeline.store import champion_bundle
    from causalrec.registry import Registry
    from causalrec.serving.core import RecommenderCore

    start = time.perf_counter()
    params, world, log_path, log, key, online = setup(name, workdir, args, source, world_dir)
    registry, k = Registry(params.paths.registry), args.k
    rng = np.random.default_rng([args.seed, 1])  # the same cohorts' request order and draws in every trajectory
    held = {u for c in cohorts for u in c}
    rounds = []
    for r in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        champion = registry.champion
        core = RecommenderCore(champion_bundle(params), seed=int(rng.integers(2**31)), pseudonym_key=key,
                               version=champion["model_tag"], feedback_log=log_path, serve={"online": online})
        truth, outcome = Truth(world, r, k, "uplift"), Truth(world, r, k, "outcome")
        order = core.positions(truth.items)  # world item j sits at catalogue position order[j]
        inverse = np.argsort(order)  # catalogue position -> world item
        row = {"round": r, "champion": champion["model_tag"], "new_users": [], "returning": []}
        # new users: a cohort, each asking for SLATES_PER_NEW_USER slates in a row, reporting each
        cohort_values = np.zeros((len(cohorts[r - 1]), SLATES_PER_NEW_USER, 3))
        for a, u in enumerate(cohorts[r - 1]):
            user = f"u{u:06d}"
            for j in range(SLATES_PER_NEW_USER):
                greedy = greedy_slate(core, user, k)
                slate = core.recommend(user, k, controls=CONTROLS)
                served = core.positions([it["item_id"] for it in slate["items"]])
                cohort_values[a, j] = (ratio(truth, u, inverse[greedy]), ratio(outcome, u, inverse[greedy]),
                                       ratio(truth, u, inverse[served]))
                _report(core, world, log, r, user, slate, f"n{r}-{a}-{j}")
        row["new_users"] = {"value_ratio_by_slate": cohort_values[:, :, 0].mean(0).tolist(),
                            "outcome_rate_ratio_by_slate": cohort_values[:, :, 1].mean(0).tolist(),
                            "served_value_ratio_by_slate": cohort_values[:, :, 2].mean(0).tolist(),
                            "cold_start_requests": SLATES_PER_NEW_USER * len(cohorts[r - 1])}
        # returning users: the world's activity over everyone not held out, each request's greedy value
        activity = world.activity.copy()
        activity[sorted(held)] = 0.0
        for c in cohorts[:r - 1]:
            activity[c] = world.activity[c]  # earlier cohorts are returning users now
        values = []  # each request's greedy value at the moment it is served (their online state included)
        returning = serve_round(core, world, log, r, args.requests, k, rng, 0.0, CONTROLS, activity,
                                on_request=lambda u: values.append(ratio(truth, u, inverse[greedy_slate(core, f"u{u:06d}", k)])))
        row["returning"] = {"value_ratio": float(np.mean(values)), "requests": args.requests,
                            "coverage": exposure_coverage(returning["shown"], world.n_items)}
        export(params, log_path, key)
        if r == 1:
            row["gate_power"] = gate_power(params, champion, compare, served_traffic, register_candidate)
        if r < args.rounds:
            decision = retrain(params)["package"]
            row.update(promoted=decision["promoted"], gate=decision["reason"])
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rounds.append(row)
        print(f"{name} round {r}: new users' slates {np.round(row['new_users']['value_ratio_by_slate'], 3).tolist()}, "
              f"returning {row['returning']['value_ratio']:.3f} ({row['seconds']} s)", flush=True)
    return {"rounds": rounds, "seconds": round(time.perf_counter() - start, 1)}


def run_traffic_trajectory(name: str, workdir: Path, args, source: Path, world_dir: Path, cohorts: list) -> dict:
    """Champion and challenger. fixed (today): each round's candidate is gated at once on the round's traffic
    (the champion's) and serves from the next round if promoted. bandit (serve.bandit on, the product's own
    path): each round's candidate becomes the challenger and serves the next round beside the champion
    (serving.mixture.with_challenger: Thompson shares on each policy's incremental value per shown item on
    its own traffic, read from the feedback log as the service reads it; serve.bandit's floor and batch);
    the next retrain's package stage gates it on that round's traffic (the mixture's) before the new
    candidate takes its place. A reversed candidate is offered after round --bad-candidate-round - 1's
    retrain: gated at once (fixed), or the challenger of round --bad-candidate-round (bandit: gated at the
    end of it). Served value: the true incremental value per shown item of every slate served."""
    from causalrec.pipeline.package import gate, register_candidate
    from causalrec.pipeline.store import model_path
    from causalrec.registry import Registry
    from causalrec.serving.core import RecommenderCore
    from causalrec.serving.mixture import with_challenger

    start = time.perf_counter()
    params, world, log_path, log, key, online = setup(name, workdir, args, source, world_dir)
    bandit = TRAJECTORIES[name]["traffic"] == "bandit"
    registry, k = Registry(params.paths.registry), args.k
    rng = np.random.default_rng([args.seed, 2])
    activity = world.activity.copy()
    activity[[u for c in cohorts for u in c]] = 0.0
    activity /= activity.sum()
    rounds, decisions = [], []
    for r in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        truth = Truth(world, r, k, "uplift")
        champion = registry.champion
        core = RecommenderCore(model_path(params, champion["model_tag"]), seed=int(rng.integers(2**31)), pseudonym_key=key,
                               version=champion["model_tag"], feedback_log=log_path, serve={"online": online})
        server = with_challenger(core, registry.path, lambda tag: model_path(params, tag), log_path,
                                 seed=int(rng.integers(2**31))) or core
        tags = [c.version for c in getattr(server, "cores", [core])]
        values, served_by = [], {t: 0 for t in tags}
        for j, u in enumerate(rng.choice(world.n_users, size=args.requests, p=activity)):
            user = f"u{u:06d}"
            slate = server.recommend(user, k, controls=CONTROLS)
            items = np.array([int(it["item_id"][1:]) for it in slate["items"]])
            values.append(float(truth.p1[u][items].mean()))
            served_by[slate["model_version"]] += 1
            _report(core, world, log, r, user, slate, f"r{r}-{j}")
        export(params, log_path, key)
        row = {"round": r, "champion": champion["model_tag"], "policies": tags, "served_by": served_by,
               "final_shares": None if server is core else dict(zip(tags, server.bandit.shares.tolist())),
               "served_value": float(np.mean(values)), "served_value_sum": float(np.sum(values)),
               "oracle_value": float(np.mean([np.sort(truth.p1[u])[::-1][:k].mean() for u in range(world.n_users)])),
               "decisions": []}
        if r < args.rounds:
            result = retrain(params)["package"]
            if "challenger_decision" in result:  # the waiting challenger, gated on this round's traffic
                d = result["challenger_decision"]
                row["decisions"].append({"tag": d["model_tag"], "label": registry.get(d["model_tag"])["model"],
                                         "promoted": d["promoted"], "reason": d["reason"]})
            if not bandit:
                row["decisions"].append({"tag": result["model_tag"], "label": result["candidate"]["model"],
                                         "promoted": result["promoted"], "reason": result["reason"]})
            if r + 1 == args.bad_candidate_round:  # a deliberately bad candidate (with the bandit: the challenger)
                chosen = result["candidate"]["model"]
                entry, bundle = register_candidate(params, chosen, edit=reverse_scores, label=f"{chosen} reversed")
                if not bandit:
                    d = gate(params, entry, bundle)
                    row["decisions"].append({"tag": entry["model_tag"], "label": entry["model"], "promoted": d["promote"],
                                             "reason": d["reason"]})
        elif bandit and len(tags) > 1:  # the last round's challenger: what the next retrain's gate would decide
            waiting = registry.get(tags[1])
            d = gate(params, waiting, model_path(params, tags[1]))
            row["decisions"].append({"tag": tags[1], "label": waiting["model"], "promoted": d["promote"], "reason": d["reason"]})
        decisions += [{**d, "round": r} for d in row["decisions"]]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rounds.append(row)
        print(f"{name} round {r}: served value {row['served_value']:.4f} (oracle {row['oracle_value']:.4f}), served by "
              f"{served_by}, decisions {[(d['label'], d['promoted']) for d in row['decisions']]} ({row['seconds']} s)",
              flush=True)
    return {"rounds": rounds, "decisions": decisions, "seconds": round(time.perf_counter() - start, 1)}


def _report(core, world, log, r: int, user: str, slate: dict, request_id: str) -> None:
    """The world's answer to one slate (shown items and controls), logged as the client would send it."""
    now = datetime.now(timezone.utc)
    items, control = slate["items"], slate.get("controls") or []
    y = world.respond(r, [user] * len(items), [it["item_id"] for it in items], [it["propensity"] for it in items],
                      slate["model_version"])
    events = [core.feedback_event(f"{request_id}-{j}", user, it["item_id"], float(o), it["propensity"], now,
                                  it["position"], slate["policy"], request_id, slate["slate_size"],
                                  slate["model_version"], slate["uniform"]) for j, (it, o) in enumerate(zip(items, y))]
    if control:
        y0 = world.respond(r, [user] * len(control), [c["item_id"] for c in control], [c["propensity"] for c in control],
                           slate["model_version"], exposed=False)
        events += [core.feedback_event(f"{request_id}-c{j}", user, c["item_id"], float(o), c["propensity"], now, 0,
                                       slate["policy"], request_id, slate["slate_size"], slate["model_version"],
                                       slate["uniform"], exposed=False, control_rate=slate["control_rate"])
                   for j, (c, o) in enumerate(zip(control, y0))]
    log.append_many(events)


def gate_power(params, champion: dict, compare, served_traffic, register_candidate) -> dict:
    """Slates of this round's traffic the gate needs to see the reversed champion as worse (interval below 0)."""
    from causalrec.pipeline.store import champion_bundle

    every = params.model_copy(update={"promote": params.promote.model_copy(update={"traffic": "all"})})
    rows = served_traffic(every, held_out=False)
    _, bad = register_candidate(params, champion["model"], edit=reverse_scores, label="reversed (gate power)")
    slates = np.sort(rows["request_id"].astype(str).unique())
    out = {"slates_available": len(slates), "detected_at_slates": None, "steps": []}
    for n in [s for s in SLATE_STEPS if s <= len(slates)]:
        part = rows[rows["request_id"].astype(str).isin(set(slates[:n]))].reset_index(drop=True)
        result = compare(every, bad, champion_bundle(params), part)
        hi = result["difference"]["ci"][1]
        out["steps"].append({"slates": n, "difference": result["difference"]["value"], "ci": result["difference"]["ci"]})
        if hi < 0:
            out["detected_at_slates"] = n
            break
    return out


def summarise(runs: dict) -> dict:
    def by_slate(run, key="value_ratio_by_slate"):
        return np.mean([r["new_users"][key] for r in run["rounds"]], 0).tolist()

    def returning(run):
        return float(np.mean([r["returning"]["value_ratio"] for r in run["rounds"]]))

    out = {}
    if {"online", "offline"} <= set(runs):
        on, off = runs["online"], runs["offline"]
        out["online_update"] = {"with": by_slate(on), "without": by_slate(off),
                                "returning_users_delta": returning(on) - returning(off),
                                "returning_users": {"with": returning(on), "without": returning(off)},
                                "outcome_rate_ratio": {"with": by_slate(on, "outcome_rate_ratio_by_slate"),
                                                       "without": by_slate(off, "outcome_rate_ratio_by_slate")},
                                "third_slate_goal_0.8_met": by_slate(on)[2] >= 0.8}
    if {"thompson", "online"} <= set(runs):
        ts, eg = runs["thompson"], runs["online"]

        def last(run, key):
            return run["rounds"][-1]["returning"][key]

        out["uncertainty_exploration"] = {
            "value_ratio_to_oracle": returning(ts), "served_value_ratio_new_users": by_slate(ts, "served_value_ratio_by_slate"),
            "coverage": last(ts, "coverage"), "slates_to_block_bad": ts["rounds"][0]["gate_power"]["detected_at_slates"],
            "vs_epsilon_greedy": {"value_ratio_to_oracle": returning(eg),
                                  "served_value_ratio_new_users": by_slate(eg, "served_value_ratio_by_slate"),
                                  "coverage": last(eg, "coverage"),
                                  "slates_to_block_bad": eg["rounds"][0]["gate_power"]["detected_at_slates"]}}
    if {"fixed", "bandit"} <= set(runs):
        fixed, bandit = runs["fixed"], runs["bandit"]

        def total(run):
            return sum(r["served_value_sum"] for r in run["rounds"])

        def bad_blocked(run):
            bad = [d for d in run["decisions"] if "reversed" in str(d["label"])]
            return bool(bad) and not any(d["promoted"] for d in bad)

        out["bandit_traffic"] = {
            "cumulative_value_ratio_vs_fixed": total(bandit) / total(fixed),
            "cumulative_value": {"bandit": total(bandit), "fixed": total(fixed)},
            "bad_candidate_blocked": bad_blocked(bandit), "bad_candidate_blocked_fixed": bad_blocked(fixed),
            "good_candidate_promoted": any(d["promoted"] for d in bandit["decisions"] if "reversed" not in str(d["label"])),
            "good_candidate_promoted_fixed": any(d["promoted"] for d in fixed["decisions"] if "reversed" not in str(d["label"])),
            "bad_candidate_share_of_its_round": next((r["served_by"][t] / sum(r["served_by"].values())
                                                      for r in bandit["rounds"] for t in r["served_by"]
                                                      if any(d["tag"] == t and "reversed" in str(d["label"])
                                                             for d in bandit["decisions"])), None),
            "served_value_by_round": {"bandit": [r["served_value"] for r in bandit["rounds"]],
                                      "fixed": [r["served_value"] for r in fixed["rounds"]]},
            "rollback": "unchanged: the monitor's champion check does not read the bandit (not exercised here)"}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000, help="returning users' requests per round")
    ap.add_argument("--new-users", type=int, default=100, help="new users arriving per round")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--interactions", type=int, default=100000)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", choices=list(LOOP_WORLDS), default="default",
                    help="the world's shape (closed_loop.LOOP_WORLDS: simulate overrides)")
    ap.add_argument("--bad-candidate-round", type=int, default=3, help="fixed/bandit: a reversed candidate is gated at "
                    "the end of the round before (fixed) or serves as the challenger in this round (bandit)")
    ap.add_argument("--trajectories", default="offline,online,thompson")
    ap.add_argument("--jobs", type=int, default=1, help="trajectories side by side (each its own process)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    ap.add_argument("--name", default="closed_loop_online", help="the result file's name (results/NAME.json)")
    args = ap.parse_args(argv)
    names = args.trajectories.split(",")
    if set(names) - set(TRAJECTORIES):
        ap.error(f"unknown trajectories {sorted(set(names) - set(TRAJECTORIES))}; choose from {list(TRAJECTORIES)}")
    workdir = Path(args.workdir) if args.workdir else scratch_dir("closed-loop-online-")
    for var, value in (("BENTOML_DO_NOT_TRACK", "True"), ("HF_HUB_OFFLINE", "1"), ("DVC_NO_ANALYTICS", "1"),
                       ("TQDM_DISABLE", "1")):
        os.environ.setdefault(var, value)
    if args.only:
        os.environ["BENTOML_HOME"] = str(workdir / f"bentoml-{args.only}")
        meta = json.loads((workdir / "world" / "cohorts.json").read_text())
        run = run_trajectory(args.only, workdir, args, Path(meta["source"]), Path(meta["world"]), meta["cohorts"])
        (workdir / f"{args.only}.json").write_text(json.dumps(run, default=float))
        return run
    source, world_dir, cohorts = make_source(workdir, args)
    (workdir / "world" / "cohorts.json").write_text(json.dumps({"source": str(source), "world": str(world_dir),
                                                                 "cohorts": cohorts}))
    from closed_loop import run_all

    runs = run_all(names, workdir, list(argv if argv is not None else sys.argv[1:]), args.jobs, script=__file__)
    figures = {"settings": {"loop_params": LOOP_PARAMS_UPLIFT, "controls_per_request": CONTROLS,
                            "trajectories": {n: TRAJECTORIES[n] for n in names}, "rounds": args.rounds,
                            "new_users_per_round": args.new_users, "slates_per_new_user": SLATES_PER_NEW_USER,
                            "returning_requests_per_round": args.requests, "k": args.k,
                            "world": {"users": args.users, "items": args.items, "interactions": args.interactions,
                                      "shape": args.world, **LOOP_WORLDS[args.world]},
                            "seed": args.seed},
               **summarise(runs), "per_round": {n: run["rounds"] for n, run in runs.items()},
               "seconds": {n: run["seconds"] for n, run in runs.items()}}
    write_result(args.name, figures, Path(args.out) if args.out else RESULTS)
    return figures


if __name__ == "__main__":
    main()
