"""Closed-loop benchmark (issue 12): the living loop, round after round, against the simulated world
as the environment, every scenario in one run.

    python benchmarks/closed_loop.py                       # the full run (default world, 8 rounds, 20k requests)
    python benchmarks/closed_loop.py --rounds 3 --requests 600 --users 150 --items 100 --interactions 6000

Each trajectory is its own project (git + DVC with a local remote, registry, BentoML store), and
each round r of it runs what an operator's loop runs:

  serve     N requests (users drawn by the world's activity) through the champion's serving core
            (round 1 also through the real HTTP service: `bentoml serve` of causalrec.service pinned
            to the champion's tags, /recommend then /feedback)
  feedback  the OnlineWorld answers every served item with a draw of its true Y(1) at round r; a
            slate's outcomes are acknowledged once FeedbackLog.append_many has fsynced them, and a
            share of slates is sent twice (client retries)
  export    the new events become the next partition (the feedback suite first)
  monitor   Evidently on the live traffic vs the training data; the champion vs the previous one
            on that traffic (rollback)
  retrain   ingest (the last `ingest.window` logs), validate, version (dvc add + push), embed,
            propensity, train, evaluate, package (register + the OPE gate)

Truth (the world's, never seen by the loop) is read only to score: each round's champion policy
value = the expected outcome per shown item of its serving policy over the users who visit,
beside the oracle (the true top k), the logging policy that wrote the base log, and two trivial
references (rank by the logging policy's propensity, by popularity).

With `--target uplift` (the product's default configuration: the uplift learner on, `rank_by: uplift`;
LOOP_PARAMS_UPLIFT) every request also asks for CONTROLS unshown items, the world answers them with
their organic outcome Y(0) and they come back as unexposed feedback; the uplift learner retrains from
them; the gate compares incremental values (shown items minus controls, IPW); and every value is the
incremental one, E[Y(1) - Y(0)] per shown item, against the oracle that shows the true top-k uplift
(the outcome rate of the same slates beside it). `--worlds` runs a stationary loop in each of
LOOP_WORLDS named (and a drift loop in each of --drift-worlds) -> closed_loop_worlds.json.

The serving core here does not follow the feedback log (no serve.online updates between retrains, no
serve.bandit challenger): these trajectories isolate what the retrain loop learns; what the online
updates and the bandit add is measured by benchmarks/closed_loop_online.py.

Declared before the run (nothing below is tuned on its outcome):
  * headline value: the champion's greedy slate (the 1 - epsilon part of what it serves) over the
    oracle's greedy slate, like for like; the served policy's value (with its exploration) is
    reported beside the oracle's served with the same exploration (the round's: `epsilon_served`,
    params.yaml's serve.epsilon or, for the first model trained after a drift mark alone, its
    serve.epsilon_after_drift).
  * the loop's settings: LOOP_PARAMS below; the gate's estimator and margin are params.yaml's.
  * scenarios: TRAJECTORIES below; the bad model is the round's chosen model with its scores reversed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from _common import REPO, RESULTS, scratch_dir, write_result

# The loop's settings on top of params.yaml (declared; see the module docstring).
LOOP_PARAMS = {
    # the online world answers with Y(1) of what was shown: the loop's value is the outcome rate, and
    # served logs have no unexposed controls for an uplift model, so the loop ranks by relevance
    "serve": {"rank_by": "relevance"},
    "uplift": {"enabled": False},
    "analyze": {"enabled": False},          # the causal analysis is not part of the loop
    "package": {"build_bento": False},      # round 1's HTTP service runs the source tree pinned to the tags
    # a two-tower on the item side too (ti: profiles written before interests move go stale); weight decay
    # chosen by validation loss; the chosen model refitted on its validation rows (the uniform sample) too.
    # Set before this run from a diagnosis of an earlier run's retrains (benchmarks/drift_recovery.py), not
    # tuned on this run's outcome
    "train": {"models": ["popularity", "tt_naive", "tt_ips", "ti_naive"], "exposure_weight": 0.0, "weight_decay": "auto",
              "refit": True},
    "ingest": {"window": 2},                # the base log, then the last two rounds' served traffic
}
# --target uplift: the product's default configuration (params.yaml's uplift learner, rank_by: uplift), and
# every request asks for CONTROLS unshown items whose outcomes the world answers without a recommendation
# (Y(0)), sent back as unexposed feedback: the served log the uplift learner retrains from. Only what the
# benchmark must change on top of params.yaml (declared before the run, not tuned on its outcome).
LOOP_PARAMS_UPLIFT = {
    "serve": {"rank_by": "uplift"},
    "uplift": {"enabled": True},
    "analyze": {"enabled": False},
    "package": {"build_bento": False},
    "ingest": {"window": 2},
    # the slates are ranked by the uplift learner; the relevance models only give the secondary score and
    # the registry's offline metric: two of params.yaml's five, to keep a round within minutes
    "train": {"models": ["popularity", "tt_naive"]},
}
CONTROLS = 10  # unshown items per request whose organic outcome is reported (as many as the slate shows)
# The worlds the uplift loop runs in (simulate overrides, the shapes of benchmarks/simulator.py's family)
LOOP_WORLDS = {"default": {}, "many_topics": {"n_topics": 24}, "noisy_policy": {"policy_view": "noisy"},
               "interaction_uplift": {"uplift_shape": "interaction"}, "negative_uplift": {"uplift_shape": "negative"},
               "confounded": {"confounding": 1.0}}
# name -> (serve overrides, which scenario rounds apply, gate traffic); the rounds are --bad-candidate-round,
# --bad-champion-round and --drift-round
TRAJECTORIES = {
    "epsilon_greedy": ({}, ("bad_candidate", "bad_champion"), "uniform"),
    "drift": ({}, ("drift",), "uniform"),
    # no exploration, so no unbiased evidence: the gate keeps the champion; this loop promotes every
    # candidate instead (what a loop without a gate does), to show where greedy feedback leads
    "greedy": ({"policy": "greedy"}, ("ungated",), "uniform"),
    "mmr": ({"diversity": 0.3}, (), "uniform"),
    # the drift loop without the exploration boost after the alarm (serve.epsilon_after_drift): what it buys
    "drift_without_boost": ({"epsilon_after_drift": 0.0}, ("drift",), "uniform"),
    "stationary": ({}, (), "uniform"),  # nothing happens: the loop's value and its false drift alarms
}
RESEND_SHARE = 0.02  # slates whose feedback is sent twice (a client retry after a lost answer)
API_KEY = "closed-loop-benchmark"


# ------------------------------------------------------------------------------------------ project
def new_project(root: Path, overrides: dict, cache: Path) -> Path:
    """A fresh clone-like project: the code, dvc.yaml, params.yaml with `overrides`, git + DVC + a local remote."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, root / name)
    for name in ("bentos", "src", "graphs"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    params["paths"]["cache_dir"] = str(cache)
    params["paths"]["allow_outside_project"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=closed-loop", "-c", "user.email=closed-loop@causalrec.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "-q", "local", str(root / ".dvcstore")], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "a fresh clone"], cwd=root, check=True)
    return root


def retrain(params) -> dict:
    """The retrain flow's stages in dvc.yaml's order, versioning the data once it is validated."""
    from causalrec import pipeline
    from causalrec.pipeline.dag import stage_order

    out, seconds = {}, {}
    for name in stage_order(params.root / "dvc.yaml"):
        if name == "monitor":
            continue  # run on live traffic before the retrain (see the round)
        t0 = time.perf_counter()
        out[name] = pipeline.STAGES[name](params)
        if name == "validate":
            out["version"] = pipeline.version_data(params)
        seconds[name] = round(time.perf_counter() - t0, 1)
    out["seconds"] = seconds
    return out


# --------------------------------------------------------------------------------------- truth
class Truth:
    """Policy values from the world's truth at a round (benchmark only): the expected outcome per shown
    item (kind "outcome"), or the incremental value E[Y(1) - Y(0)] per shown item (kind "uplift")."""

    def __init__(self, world, round: int, k: int, kind: str = "outcome"):
        self.k, self.weights = k, world.activity
        self.p1 = world.outcome_matrix(round, kind)
        self.users = [f"u{u:06d}" for u in range(world.n_users)]
        self.items = np.array([f"i{i:06d}" for i in range(world.n_items)])

    def value(self, inclusion: np.ndarray) -> float:
        """(users, items) inclusion probabilities of a policy -> expected outcome per shown item."""
        return float(self.weights @ (inclusion * self.p1).sum(1) / self.k)

    def top(self, score: np.ndarray) -> np.ndarray:
        """(users, items) the greedy slate of a score (per user rows, or one row for everyone)."""
        score = np.broadcast_to(score, self.p1.shape)
        out = np.zeros(self.p1.shape)
        np.put_along_axis(out, np.argpartition(-score, self.k - 1, axis=1)[:, :self.k], 1.0, axis=1)
        return out

    def policy(self, core, greedy: bool) -> np.ndarray:
        """(users, items) a serving core's inclusion probabilities (its greedy part when `greedy`)."""
        pos = core.positions(self.items)
        if greedy:
            score = np.stack([core._rankers()[0].scores(u) for u in self.users])[:, pos]
            return self.top(score)
        return np.stack([core.inclusion(u, self.k) for u in self.users])[:, pos]

    def references(self, world, epsilon: float, popularity: np.ndarray) -> dict:
        logging = world.logging_matrix()
        oracle = self.value(self.top(self.p1))
        random = self.value(np.full(self.p1.shape, self.k / self.p1.shape[1]))
        return {"oracle": oracle, "oracle_served": (1 - epsilon) * oracle + epsilon * random,
                "logging_policy": float(self.weights @ ((logging * self.p1).sum(1) / logging.sum(1))),
                "rank_by_logged_propensity": self.value(self.top(logging)),
                "rank_by_popularity": self.value(self.top(popularity[None, :])), "random": random}


# -------------------------------------------------------------------------------------- serving
def serve_round(core, world, log, round: int, n: int, k: int, rng, resend: float, controls: int = 0,
                activity: np.ndarray | None = None, on_request=None) -> dict:
    """n requests through the serving core, outcomes from the world, acknowledged feedback (with
    `controls`: also the organic outcomes of that many unshown items per request, as unexposed events).
    activity: who visits, how often (default the world's); on_request(u): called before each request."""
    activity = world.activity if activity is None else activity
    users = rng.choice(world.n_users, size=n, p=activity / activity.sum())
    acknowledged, sent, shown = set(), 0, []
    for n_request, u in enumerate(users):
        user = f"u{u:06d}"
        if on_request is not None:
            on_request(u)
        slate = core.recommend(user, k, controls=controls)
        # The core's request ids are uuid4 (a restarted server must never repeat one); here they follow the
        # seed, so that the gate's evaluation set (the slates with the lowest hashes of their request ids)
        # and with it every retrain are the same in every run of a seed (round 1's requests through the HTTP
        # service, --http-requests, keep the server's own ids: with them the held-out set still varies).
        slate["request_id"] = f"r{round:03d}-{n_request:07d}"
        items = [it["item_id"] for it in slate["items"]]
        outcome = world.respond(round, [user] * len(items), items, [it["propensity"] for it in slate["items"]],
                                slate["model_version"])
        now = datetime.now(timezone.utc)
        events = [core.feedback_event(f"{slate['request_id']}-{j}", user, it["item_id"], float(y), it["propensity"], now,
                                      it["position"], slate["policy"], slate["request_id"], slate["slate_size"],
                                      slate["model_version"], slate["uniform"])
                  for j, (it, y) in enumerate(zip(slate["items"], outcome))]
        if slate.get("controls"):  # what the user did with items no one recommended to them
            control = slate["controls"]
            organic = world.respond(round, [user] * len(control), [c["item_id"] for c in control],
                                    [c["propensity"] for c in control], slate["model_version"], exposed=False)
            events += [core.feedback_event(f"{slate['request_id']}-c{j}", user, c["item_id"], float(y), c["propensity"],
                                           now, 0, slate["policy"], slate["request_id"], slate["slate_size"],
                                           slate["model_version"], slate["uniform"], exposed=False,
                                           control_rate=slate["control_rate"])
                       for j, (c, y) in enumerate(zip(control, organic))]
        for _ in range(2 if rng.random() < resend else 1):
            log.append_many(events)  # returns once fsynced: the events are acknowledged
            sent += len(events)
        acknowledged |= {e["event_id"] for e in events}
        shown += [core._pos[i] for i in items]
    return {"acknowledged": acknowledged, "sent": sent, "shown": np.array(shown), "users": users}


def serve_http(project: Path, champion: dict, world, round: int, n: int, k: int, rng, feedback_log: Path) -> dict:
    """n requests through the real HTTP service (causalrec.service, pinned to the champion's tags)."""
    import requests

    from causalrec.serving.launch import BentoServer

    env = {"CAUSALREC_API_KEY": API_KEY, "CAUSALREC_FEEDBACK_LOG": str(feedback_log),
           "CAUSALREC_CATALOGUE": str(feedback_log.parent / "catalogue.sqlite")}
    acknowledged, sent = set(), 0
    with BentoServer("causalrec.service:Recommender", project, project / "serve.log", env, ready_timeout=180,
                     args={"recommender": champion["model_tag"], "encoder": champion["encoder_tag"]}) as server:
        http = requests.Session()
        for u in rng.choice(world.n_users, size=n, p=world.activity):
            user = f"u{u:06d}"
            slate = http.post(f"{server.url}/recommend", json={"user_id": user, "k": k}, timeout=30).json()
            items = slate["items"]
            outcome = world.respond(round, [user] * len(items), [it["item_id"] for it in items],
                                    [it["propensity"] for it in items], slate["model_version"])
            for j, (it, y) in enumerate(zip(items, outcome)):
                event = {"event_id": f"{slate['request_id']}-{j}", "user_id": user, "item_id": it["item_id"],
                         "outcome": float(y), "propensity": it["propensity"], "position": it["position"],
                         "timestamp": datetime.now(timezone.utc).isoformat(), "policy": slate["policy"],
                         "request_id": slate["request_id"], "slate_size": slate["slate_size"],
                         "model_version": slate["model_version"], "uniform": slate["uniform"]}
                answer = http.post(f"{server.url}/feedback", json=event, headers={"x-api-key": API_KEY},
                                   timeout=30)
                sent += 1
                if answer.status_code == 200:
                    acknowledged.add(event["event_id"])
    return {"acknowledged": acknowledged, "sent": sent}


def reverse_scores(bundle: Path) -> None:
    """Make a bundle's policy deliberately bad, in place: its relevance model's item side negated
    (it shows the items the model likes least), ranking by relevance."""
    import torch

    from causalrec.persistence import load_model, save_model

    model = load_model(bundle / "model.pt")
    if not hasattr(model, "net_"):  # popularity: the least clicked items first
        model.scores_ = model.scores_.max() + model.scores_.min() - model.scores_
    else:
        with torch.no_grad():
            model.net_.item.weight.neg_()
            model.net_.item_bias.weight.neg_()
            if model.net_.item_tower is not None:
                model.net_.item_tower.weight.neg_()
    save_model(model, bundle / "model.pt")
    (bundle / "uplift.pt").unlink(missing_ok=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["serve"]["rank_by"] = "relevance"
    (bundle / "manifest.json").write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------------- trajectory
def run_trajectory(name: str, workdir: Path, args, progress) -> dict:
    from causalrec.config import load_params
    from causalrec.data.feedback import read_partitions
    from causalrec.data.online import OnlineWorld
    from causalrec.data.schema import INTERACTIONS, read_table
    from causalrec.data.simulate import World
    from causalrec.evaluation.metrics import exposure_coverage, exposure_gini
    from causalrec.pipeline import STAGES
    from causalrec.pipeline.package import gate, promote_model, register_candidate
    from causalrec.pipeline.store import champion_bundle, model_path
    from causalrec.registry import Registry
    from causalrec.serving.core import RecommenderCore
    from causalrec.serving.feedback import FeedbackLog, export_feedback
    from causalrec.serving.privacy import pseudonym_key

    world_name, _, name = name.rpartition(":")  # "<world>:<trajectory>" with --worlds
    serve, scenarios, traffic = TRAJECTORIES[name]
    drift_round = args.drift_round if "drift" in scenarios else None
    bad_candidate_round = args.bad_candidate_round if "bad_candidate" in scenarios else None
    bad_champion_round = args.bad_champion_round if "bad_champion" in scenarios else None
    uplift = args.target == "uplift"
    overrides = {s: dict(v) for s, v in (LOOP_PARAMS_UPLIFT if uplift else LOOP_PARAMS).items()}
    overrides["serve"].update(serve)
    overrides["promote"] = {"traffic": traffic}
    overrides["simulate"] = {"n_users": args.users, "n_items": args.items, "n_interactions": args.interactions,
                             **LOOP_WORLDS[world_name or "default"]}
    if args.epochs:
        overrides["train"]["epochs"] = args.epochs
    if args.encoder:
        overrides["embed"] = {"model_path": args.encoder}
    project = new_project(workdir / (f"{world_name}-{name}" if world_name else name), overrides, workdir / "cache")
    params = load_params(project / "params.yaml")
    registry, k = Registry(params.paths.registry), args.k
    log_path = project / "feedback" / "feedback.jsonl"
    log, key = FeedbackLog(log_path), pseudonym_key(log_path.parent)
    rng = np.random.default_rng([args.seed, list(TRAJECTORIES).index(name)])

    start = time.perf_counter()
    first = retrain(params)  # round 0: the first model, trained on the logging policy's log alone
    world = OnlineWorld(World.load(params.paths.artifacts_dir / "ground_truth" / "world"), seed=args.seed,
                        drift_from_round=drift_round)
    acknowledged, sent, rounds, gate_checks = set(), 0, [], []
    # the popularity reference: items ranked by their clicks in the base log
    base = read_table(params.paths.data_dir, INTERACTIONS, columns=["item_id", "outcome"])
    clicks = base[base["outcome"] > 0]["item_id"].value_counts()
    popularity = clicks.reindex([f"i{i:06d}" for i in range(world.n_items)]).fillna(0).to_numpy(float)
    for r in range(1, args.rounds + 1):
        t0, row = time.perf_counter(), {"round": r}
        champion = registry.champion
        core = RecommenderCore(champion_bundle(params), seed=int(rng.integers(2**31)), pseudonym_key=key,
                               version=champion["model_tag"])
        truth = Truth(world, r, k, args.target)
        # the champion's exploration this round (serve.epsilon, or its boost after a drift mark)
        epsilon = core.policy.epsilon if core.policy.kind == "epsilon_greedy" else 0.0
        greedy = truth.policy(core, greedy=True)
        row.update(champion=champion["model_tag"], model=champion["model"], epsilon_served=epsilon,
                   value=truth.value(truth.policy(core, greedy=False)),
                   value_greedy=truth.value(greedy), **truth.references(world, epsilon, popularity))
        if uplift:  # beside the incremental value: the outcome rate of the same slates, against the best outcome rate
            outcome = Truth(world, r, k, "outcome")
            row.update(outcome_rate_greedy=outcome.value(greedy), outcome_rate_oracle=outcome.value(outcome.top(outcome.p1)))
        clock = {"truth": time.perf_counter() - t0}
        t1 = time.perf_counter()
        served = serve_round(core, world, log, r, args.requests, k, rng, RESEND_SHARE, CONTROLS if uplift else 0)
        clock["serve"] = time.perf_counter() - t1
        if r == 1 and args.http_requests:
            t1 = time.perf_counter()
            http = serve_http(project, champion, world, r, args.http_requests, k, rng, log_path)
            clock["http"] = time.perf_counter() - t1
            served["acknowledged"] |= http["acknowledged"]
            served["sent"] += http["sent"]
            row["http_requests"], row["http_events_acknowledged"] = args.http_requests, len(http["acknowledged"])
        acknowledged |= served["acknowledged"]
        sent += served["sent"]
        row.update(requests=args.requests, coverage=exposure_coverage(served["shown"], world.n_items),
                   gini=exposure_gini(served["shown"], world.n_items), events_acknowledged=len(served["acknowledged"]))

        t1 = time.perf_counter()
        export = export_feedback(log_path, params.paths.data_dir, params.paths.feedback_dir,
                                 params.paths.artifacts_dir / "validation" / "feedback", key=key,
                                 known_versions=set(registry.state()["models"]),
                                 max_quarantine_share=params.feedback.max_quarantine_share,
                                 retention_days=params.privacy.retention_days)
        row["partition"], row["quarantined"] = Path(export["partition"]).name, export["quarantined"]
        clock["export"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        monitor = STAGES["monitor"](params)
        clock["monitor"] = time.perf_counter() - t1
        row.update(drift_detected=monitor["drift_detected"], drift_mark=monitor["drift_mark"],
                   drift_failed_tests=monitor["failed_tests"],
                   compared=monitor["compared"], champion_check=monitor["champion_check"]["reason"],
                   rolled_back=monitor["champion_check"]["rolled_back"])

        result = retrain(params)
        clock.update(result["seconds"])
        decision = result["package"]
        row["trained_since"] = result["ingest"]["feedback"].get("since_partition")  # after a drift mark
        row.update(candidate=decision.get("model_tag"), candidate_model=decision["candidate"]["model"],
                   promoted=decision["promoted"], gate=decision["reason"])
        if "ungated" in scenarios and not decision["promoted"]:
            promote_model(params, decision["model_tag"], "ungated loop (closed-loop benchmark): every candidate serves",
                          by="benchmark")
            row["promoted"] = True
        checks = [(decision.get("model_tag"), decision.get("ope"))]
        chosen = decision["candidate"]["model"]
        if r == bad_candidate_round:  # a deliberately bad candidate: blocked?
            entry, bundle = register_candidate(params, chosen, edit=reverse_scores, label=f"{chosen} reversed")
            bad = gate(params, entry, bundle)
            row["bad_candidate"] = {"blocked": not bad["promote"], "reason": bad["reason"]}
            checks.append((entry["model_tag"], bad["ope"]))
        if r == bad_champion_round:  # a bad model forced into production, bypassing the gate
            entry, _ = register_candidate(params, chosen, edit=reverse_scores, label=f"{chosen} reversed")
            promote_model(params, entry["model_tag"], "forced by the closed-loop benchmark (bad_champion)", by="benchmark")
            row["bad_champion"] = entry["model_tag"]
        for tag, ope in checks:  # the gate's interval against the candidate's true value on that traffic
            if ope is not None:
                candidate = RecommenderCore(model_path(params, tag), seed=0, exploration_boost=False)  # as the gate
                true = truth.value(truth.policy(candidate, greedy=False))
                lo, hi = ope["candidate"]["ci"]
                gate_checks.append({"round": r, "candidate": tag, "estimate": ope["candidate"]["value"], "ci": [lo, hi],
                                    "true_value": true, "covered": bool(lo <= true <= hi)})
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["step_seconds"] = {k: round(v, 1) for k, v in clock.items()}
        rounds.append(row)
        progress(f"{name} round {r}: value {row['value_greedy'] / row['oracle']:.3f} of the oracle, promoted "
                 f"{row['promoted']}, drift {row['drift_detected']}, rolled back {row['rolled_back']} ({row['seconds']} s)")

    stored = read_partitions(params.paths.feedback_dir)
    ids = stored["event_id"].astype(str)
    return {"rounds": rounds, "gate_checks": gate_checks, "first_model": first["package"]["candidate"],
            "feedback": {"sent": sent, "acknowledged": len(acknowledged), "stored": int(ids.nunique()),
                         "lost": len(acknowledged - set(ids)), "duplicated": int(len(ids) - ids.nunique())},
            "registry_events": [{k: e.get(k) for k in ("action", "tag", "by", "reason")} for e in registry.state()["events"]],
            "seconds": round(time.perf_counter() - start, 1)}


# -------------------------------------------------------------------------------------- summary
def drift_summary(run: dict, start: int) -> dict:
    """Detection and recovery of a loop whose interests move at round `start`."""
    seen = next((r for r in run["rounds"] if r["round"] >= start and r["drift_detected"]), None)
    by_round = {r["round"]: r for r in run["rounds"]}
    later = [by_round[q] for q in (start + 1, start + 2) if q in by_round]
    return {"from_round": start, "detected_at_round": seen and seen["round"],
            "detected_within_rounds": None if seen is None else seen["round"] - start,
            "false_alarms_before": [r["round"] for r in run["rounds"] if 1 < r["round"] < start and r["drift_detected"]],
            "ratio_at_drift_round": by_round[start]["value_greedy"] / by_round[start]["oracle"] if start in by_round else None,
            "ratio_one_round_after": later[0]["value_greedy"] / later[0]["oracle"] if later else None,
            # the round after the alarm serves with its boosted exploration: what it costs (outcomes per shown item)
            "served_value_one_round_after": later[0]["value"] if later else None,
            "epsilon_one_round_after": later[0]["epsilon_served"] if later else None,
            "marked_at_round": next((r["round"] for r in run["rounds"] if r.get("drift_mark")), None),
            "recovered_ratio": later[-1]["value_greedy"] / later[-1]["oracle"] if later else None}


def summarise(runs: dict, args) -> dict:
    """The issue's result keys, each from the trajectory that runs its scenario."""
    main, drift = runs.get("epsilon_greedy"), runs.get("drift")
    out: dict = {"rounds": args.rounds}
    if main:
        first, last = main["rounds"][0], main["rounds"][-1]
        out["stationary"] = {
            "final_value_ratio_to_oracle": last["value_greedy"] / last["oracle"],
            "final_served_value_ratio_to_oracle_served": last["value"] / last["oracle_served"],
            "first_round_value_ratio_to_oracle": first["value_greedy"] / first["oracle"],
            "logging_policy_ratio_to_oracle": first["logging_policy"] / first["oracle"],
            "rank_by_logged_propensity_ratio_to_oracle": first["rank_by_logged_propensity"] / first["oracle"],
            "rank_by_popularity_ratio_to_oracle": first["rank_by_popularity"] / first["oracle"]}
        bad = next(r for r in main["rounds"] if "bad_candidate" in r)
        out["bad_candidate"] = {"round": bad["round"], **bad["bad_candidate"]}
        forced = next(r for r in main["rounds"] if "bad_champion" in r)
        back = next((r for r in main["rounds"] if r["round"] > forced["round"] and r["rolled_back"]), None)
        out["bad_champion"] = {"round": forced["round"], "model_tag": forced["bad_champion"],
                               "rolled_back_at_round": back and back["round"],
                               "rolled_back_within_rounds": None if back is None else back["round"] - forced["round"],
                               "reason": back and back["champion_check"]}
    if drift:
        out["drift"] = drift_summary(drift, args.drift_round)
    if "drift_without_boost" in runs:
        out.setdefault("drift", {})["without_boost"] = drift_summary(runs["drift_without_boost"], args.drift_round)
    checks = [c for run in runs.values() for c in run["gate_checks"]]
    out["ope"] = {"estimator": "snipw (params.yaml promote.estimator)", "decisions": len(checks),
                  "ci_coverage": float(np.mean([c["covered"] for c in checks])) if checks else None}
    fb = {k: sum(run["feedback"][k] for run in runs.values()) for k in ("sent", "acknowledged", "stored", "lost", "duplicated")}
    out["feedback"] = fb
    out["per_round"] = [{"trajectory": name, **{k: v for k, v in r.items() if k not in ("gate", "champion_check", "compared")}}
                        for name, run in runs.items() for r in run["rounds"]]
    out["side_by_side"] = {name: {"final_coverage": run["rounds"][-1]["coverage"], "final_gini": run["rounds"][-1]["gini"],
                                  "final_value_ratio_to_oracle": run["rounds"][-1]["value_greedy"] / run["rounds"][-1]["oracle"],
                                  "final_served_value": run["rounds"][-1]["value"],
                                  # outside the drift loop's drifted rounds every alarm is a false one
                                  "drift_alarm_rounds": [r["round"] for r in run["rounds"] if r["drift_detected"]]}
                           for name, run in runs.items()}
    return out


def summarise_worlds(runs: dict, args) -> dict:
    """closed_loop_worlds.json: per world, the stationary loop's last round against the oracle (the value the
    loop targets, and the outcome rate beside it), the logged-propensity reference, its false drift alarms,
    and (drift worlds) the value two rounds after the interests moved."""
    worlds = {}
    for name, run in runs.items():
        world, _, kind = name.rpartition(":")
        w, rounds = worlds.setdefault(world, {}), run["rounds"]
        if kind == "stationary":
            last, first = rounds[-1], rounds[0]
            w.update(final_value_ratio_to_oracle=last["value_greedy"] / last["oracle"],
                     first_round_value_ratio_to_oracle=first["value_greedy"] / first["oracle"],
                     logged_propensity_ratio_to_oracle=first["rank_by_logged_propensity"] / first["oracle"],
                     popularity_ratio_to_oracle=first["rank_by_popularity"] / first["oracle"],
                     # every alarm after the first round is a false one in a world that never moves
                     false_drift_alarms=sum(bool(r["drift_detected"]) for r in rounds[1:]),
                     value_ratio_by_round=[r["value_greedy"] / r["oracle"] for r in rounds],
                     promoted_rounds=[r["round"] for r in rounds if r["promoted"]])
            if "outcome_rate_greedy" in last:
                w["final_outcome_rate_ratio_to_oracle"] = last["outcome_rate_greedy"] / last["outcome_rate_oracle"]
        else:
            d = drift_summary(run, args.drift_round)
            w.update(drift_recovered_ratio=d["recovered_ratio"], drift_detected_within_rounds=d["detected_within_rounds"],
                     drift_false_alarms_before=d["false_alarms_before"])
    stationary = {w: v for w, v in worlds.items() if "final_value_ratio_to_oracle" in v}
    return {"worlds": worlds, "worlds_summary": {
        "worst_final_value_ratio_to_oracle": min((v["final_value_ratio_to_oracle"] for v in stationary.values()), default=None),
        "above_logged_propensity_in_every_world": all(v["final_value_ratio_to_oracle"] > v["logged_propensity_ratio_to_oracle"]
                                                      for v in stationary.values()),
        "false_drift_alarms": sum(v["false_drift_alarms"] for v in stationary.values())}}


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), sharey=True, squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items()):
        rs = run["rounds"]
        x = [r["round"] for r in rs]
        ax.plot(x, [r["oracle"] for r in rs], "k--", label="oracle (true top k)")
        ax.plot(x, [r["value_greedy"] for r in rs], "o-", label="champion (greedy part)")
        ax.plot(x, [r["value"] for r in rs], ".-", alpha=0.6, label="champion as served")
        ax.plot(x, [r["logging_policy"] for r in rs], ":", label="logging policy")
        for r in rs:
            if r["promoted"]:
                ax.annotate("P", (r["round"] + 0.5, r["oracle"] * 1.01), ha="center", fontsize=8, color="green")
            if r["rolled_back"]:
                ax.annotate("R", (r["round"], r["value_greedy"]), xytext=(0, -12), textcoords="offset points", color="red")
            if r["drift_detected"]:
                ax.axvline(r["round"], color="orange", alpha=0.3)
            if "bad_champion" in r:
                ax.annotate("bad", (r["round"] + 0.5, r["oracle"] * 0.9), ha="center", fontsize=8, color="red")
        ax.set_title(name)
        ax.set_xlabel("round")
    axes[0][0].set_ylabel("expected outcome per shown item")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("closed loop: P promoted after the round, R rolled back, orange: drift detected", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_all(names: list[str], workdir: Path, argv: list[str], jobs: int, resume: bool = False,
            script: str = __file__) -> dict:
    """Each trajectory in its own process (`script --only NAME`: memory returns between them; `jobs` at a
    time). With `resume`, a trajectory whose run file is already in `workdir` (it finished in an earlier run
    of the same command) is read, not run again."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = {n for n in names if resume and (workdir / f"{n.replace(':', '-')}.json").exists()}
    pending, running, failed = [n for n in names if n not in done], {}, []
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            cmd = [sys.executable, script, *argv, "--workdir", str(workdir), "--only", name]
            # the cores shared out: two torch processes each spinning two OpenMP threads on two cores
            # run a hundred times slower than one (a thread budget the caller set wins: e.g. the test
            # suite's one thread per xdist worker)
            threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // min(jobs, len(names))))
            running[name] = subprocess.Popen(cmd, cwd=Path(__file__).parent,
                                             env={**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        time.sleep(0.2)  # a finished trajectory frees its slot (and the run ends) within 0.2 s
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                if proc.returncode != 0:
                    failed.append(f"{name} (exit {proc.returncode})")
    if failed:
        raise SystemExit(f"closed loop: trajectories failed: {', '.join(failed)}")
    return {name: json.loads((workdir / f"{name.replace(':', '-')}.json").read_text()) for name in names}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20000, help="requests per round through the serving core")
    ap.add_argument("--http-requests", type=int, default=300, help="round 1: extra requests through the HTTP service")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--interactions", type=int, default=100000)
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml's)")
    ap.add_argument("--encoder", default=None, help="embed.model_path (default: the packaged MiniLM)")
    ap.add_argument("--trajectories", default=",".join(TRAJECTORIES))
    ap.add_argument("--bad-candidate-round", type=int, default=3, help="a reversed candidate is offered to the gate")
    ap.add_argument("--bad-champion-round", type=int, default=5, help="a reversed model is forced into production")
    ap.add_argument("--drift-round", type=int, default=6, help="the drift trajectory's interests move from this round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None,
                    help="where the projects go and stay (default: a temporary directory, removed at exit)")
    ap.add_argument("--jobs", type=int, default=2, help="trajectories run side by side, each in its own process")
    ap.add_argument("--target", choices=["outcome", "uplift"], default="outcome",
                    help="outcome: rank by relevance, value = outcome rate (LOOP_PARAMS); uplift: the product's default "
                         "(rank_by: uplift, the uplift learner retrained from served controls), value = E[Y(1) - Y(0)]")
    ap.add_argument("--worlds", default=None,
                    help="comma-separated LOOP_WORLDS: a stationary loop in each (and a drift loop in each of "
                         "--drift-worlds) -> closed_loop_worlds.json")
    ap.add_argument("--drift-worlds", default="", help="the worlds of --worlds that also run the drift loop")
    ap.add_argument("--resume", action="store_true",
                    help="read the trajectories that finished in --workdir (an earlier run of the same command) instead of running them")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.worlds:
        worlds, drift_worlds = args.worlds.split(","), [w for w in args.drift_worlds.split(",") if w]
        unknown = set(worlds + drift_worlds) - set(LOOP_WORLDS)
        if unknown or not set(drift_worlds) <= set(worlds):
            ap.error(f"unknown worlds {sorted(unknown)} (choose from {list(LOOP_WORLDS)}), or a drift world not in --worlds")
        if drift_worlds and args.rounds < args.drift_round + 2:
            ap.error("--rounds must reach two rounds after --drift-round (the recovery is read there)")
        names = [f"{w}:stationary" for w in worlds] + [f"{w}:drift" for w in drift_worlds]
    else:
        names = args.trajectories.split(",")
    unknown = {n.rpartition(":")[2] for n in names} - set(TRAJECTORIES)
    if unknown:
        ap.error(f"unknown trajectories {sorted(unknown)}; choose from {list(TRAJECTORIES)}")
    if ({"drift", "drift_without_boost"} & set(names) and args.rounds < args.drift_round
            or "epsilon_greedy" in names and args.rounds <= max(args.bad_candidate_round, args.bad_champion_round)):
        ap.error("--rounds must reach the scenarios' rounds (and one round after the bad champion's)")
    workdir = Path(args.workdir) if args.workdir else scratch_dir("closed-loop-")
    if args.only:  # one trajectory in this process (its own BentoML store), its run written to a file
        os.environ["BENTOML_HOME"] = str(workdir / f"bentoml-{args.only.replace(':', '-')}")
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("DVC_NO_ANALYTICS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")  # one progress line per round instead of every stage's bars
        run = run_trajectory(args.only, workdir, args, lambda m: print(m, flush=True))
        (workdir / f"{args.only.replace(':', '-')}.json").write_text(json.dumps(run, default=float))
        return run
    child_argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
    runs = run_all(names, workdir, child_argv, args.jobs, args.resume)
    out_dir = Path(args.out) if args.out else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.worlds:
        figures = {"settings": {"target": args.target, "loop_params": LOOP_PARAMS_UPLIFT if args.target == "uplift" else LOOP_PARAMS,
                                "controls_per_request": CONTROLS if args.target == "uplift" else 0,
                                "worlds": {w: LOOP_WORLDS[w] for w in worlds}, "drift_worlds": drift_worlds,
                                "rounds": args.rounds, "drift_round": args.drift_round, "requests": args.requests,
                                "http_requests": args.http_requests, "k": args.k,
                                "world": {"users": args.users, "items": args.items, "interactions": args.interactions},
                                "seed": args.seed},
                   **summarise_worlds(runs, args), "seconds": {name: run["seconds"] for name, run in runs.items()}}
        write_result("closed_loop_worlds", figures, out_dir)
        return figures
    summary = summarise(runs, args)
    plot(runs, out_dir / "closed_loop.png")
    import pandas as pd

    # the DVC plot (dvc.yaml): one column per loop, the champion's greedy value over the oracle's
    rows = pd.DataFrame(summary["per_round"]).assign(ratio=lambda f: f["value_greedy"] / f["oracle"],
                                                     logging=lambda f: f["logging_policy"] / f["oracle"])
    table = rows.pivot(index="round", columns="trajectory", values="ratio")
    table["logging_policy"] = rows.groupby("round")["logging"].first()
    table.reset_index().to_csv(out_dir / "closed_loop_rounds.csv", index=False, float_format="%.4f")
    figures = {"settings": {"loop_params": LOOP_PARAMS, "trajectories": {k: TRAJECTORIES[k] for k in names},
                            "bad_candidate_round": args.bad_candidate_round, "bad_champion_round": args.bad_champion_round,
                            "drift_round": args.drift_round,
                            "requests": args.requests, "http_requests": args.http_requests, "k": args.k,
                            "world": {"users": args.users, "items": args.items, "interactions": args.interactions},
                            "resend_share": RESEND_SHARE, "seed": args.seed},
               **summary, "gate_checks": [c for run in runs.values() for c in run["gate_checks"]],
               "registry_events": {name: run["registry_events"] for name, run in runs.items()},
               "seconds": {name: run["seconds"] for name, run in runs.items()},
               "plot": str((out_dir / "closed_loop.png").relative_to(out_dir.parent) if out_dir == RESULTS else out_dir / "closed_loop.png")}
    write_result("closed_loop", figures, out_dir)
    return figures


if __name__ == "__main__":
    main()
