"""Benchmark scripts run on tiny inputs and write well-formed results (numbers are not asserted:
benchmarks are not tests)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def _run(args, out, env=None):
    proc = subprocess.run([sys.executable, *args, "--out", str(out)], cwd=REPO / "benchmarks", capture_output=True,
                          text=True, timeout=600, env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow  # a benchmark script in its own process, like every test here
def test_encoder_benchmark_tiny(tmp_path):
    _run(["encoder_gpu.py", "--device", "cpu", "--tiny", "--n-texts", "40", "--finetune-steps", "1",
          "--variants", "bert-base:eager", "--name", "smoke"], tmp_path)
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert {"command", "machine", "date", "device"} <= set(result)
    assert result["embed"]["speedup_vs_sentence_transformers"] > 0 and result["embed"]["int8"]["texts_per_s"] > 0
    assert result["finetune"]["runs"][0]["tokens_per_s"] > 0


@pytest.mark.slow
def test_ope_benchmark(tmp_path):
    _run(["ope_obd.py", "--n-bootstrap", "50"], tmp_path)
    result = json.loads((tmp_path / "ope_obd.json").read_text())
    assert all(row["agrees_with_obp"] for row in result["estimators"].values())
    declared = result["declared"]
    assert "best" not in result and declared["estimator"] == "snipw"
    assert declared["relative_error"] == result["estimators"]["snipw"]["relative_error"]


@pytest.mark.slow
def test_scale_benchmark_tiny(tmp_path):
    _run(["scale.py", "--sizes", "3000", "--methods", "ips", "dr_jl"], tmp_path)
    runs = json.loads((tmp_path / "scale.json").read_text())["runs"]
    assert [(r["method"], r["interactions"]) for r in runs] == [("ips", 3000), ("dr_jl", 3000)]
    assert all(r["rows_trained"] == r["exposed_rows"] < r["interactions"] for r in runs if r["method"] == "ips")
    assert all(r["rows_trained"] == r["interactions"] for r in runs if r["method"] == "dr_jl")


@pytest.mark.slow
def test_simulator_benchmark_small(tmp_path):
    # one world, one process: the other xdist worker has the other core (the summary's arithmetic over worlds is
    # the same with one; the benchmark's worlds are its own run's business)
    _run(["simulator.py", "--interactions", "5000", "--sections", "worlds", "--worlds", "default",
          "--learners", "t_learner", "shared", "auto", "--jobs", "1", "--name", "sim_smoke"], tmp_path)
    result = json.loads((tmp_path / "sim_smoke.json").read_text())
    worlds, summary = result["worlds"], result["worlds_summary"]
    assert set(worlds) == {"default"}
    for rows in worlds.values():
        assert {"t_learner", "shared", "auto", "logged_propensity", "popularity"} <= set(rows)
        weights = {k: v for k, v in rows["auto"].items() if k.startswith("weight_") and not k.endswith("_std")}
        assert abs(sum(weights.values()) - 1.0) < 1e-9 and len(weights) == 6  # auto's stack: convex weights
    assert {"shared_outcome_only", "shared_plain"} <= set(worlds["default"])  # ablations in the default world only
    ratios = {w: rows["auto"]["cp@10_ratio_to_oracle"] for w, rows in worlds.items()}
    assert summary["default_learner"] == "auto"  # params.yaml's
    assert summary["default_learner_worst_ratio_to_oracle"] == min(ratios.values())
    assert abs(summary["default_learner_mean_ratio_to_oracle"] - sum(ratios.values()) / len(ratios)) < 1e-12
    beats = all(rows["auto"]["cp@10_ratio_to_oracle"] > rows[t]["cp@10_ratio_to_oracle"]
                for rows in worlds.values() for t in ("logged_propensity", "popularity"))
    assert summary["default_beats_trivial_in_every_world"] == beats
    gap = {w: max(rows[n]["cp@10_ratio_to_oracle"] for n in ("t_learner", "shared")) - ratios[w] for w, rows in worlds.items()}
    assert summary["gap_to_best_single_learner"] == pytest.approx(gap)
    assert summary["within_best_in_every_world"] == all(g <= 0.03 for g in gap.values())


@pytest.mark.slow
def test_closed_loop_benchmark_tiny(tmp_path, tiny_encoder):
    """Two rounds of the living loop on a small world: a reversed candidate offered in round 1 is
    blocked, a reversed model forced into production after round 1 is rolled back by round 2's
    monitor, every acknowledged event is stored exactly once although some were sent twice."""
    # half the slates explored, so that 800 requests a round give the gate and the monitor's check
    # (promote.min_slates 50, rollback_min_events 500) evidence enough: with 400 (212 explored slates)
    # the check's one-sided 99% lower bound of the champion's drop ranged -0.001 to +0.067 over ten runs
    # (one kept the bad champion), with 800 (409 slates) +0.036 to +0.063 over seven, while the request
    # ids were uuid4 and each run retrained on other rows; with the ids following the seed every run is
    # the same one (+0.071). Learned models only: in a world this small the retrain sometimes chose
    # popularity, whose reversal hurts too little to prove the drop (then the gate replaced it first
    # and nothing was rolled back)
    env = {"CAUSALREC__SERVE__EPSILON": "0.5", "CAUSALREC__TRAIN__MODELS": "[tt_naive, tt_ips, ti_naive]"}
    _run(["closed_loop.py", "--rounds", "2", "--requests", "800", "--http-requests", "0", "--users", "120",
          "--items", "80", "--interactions", "6000", "--epochs", "3", "--encoder", str(tiny_encoder),
          "--trajectories", "epsilon_greedy", "--bad-candidate-round", "1", "--bad-champion-round", "1",
          "--workdir", str(tmp_path / "work")], tmp_path, env)
    result = json.loads((tmp_path / "closed_loop.json").read_text())
    fb = result["feedback"]
    assert fb["sent"] > fb["acknowledged"] == fb["stored"] == 2 * 800 * 10 and fb["lost"] == fb["duplicated"] == 0
    assert result["bad_candidate"]["blocked"] and "snipw on" in result["bad_candidate"]["reason"]
    assert result["bad_champion"]["rolled_back_within_rounds"] == 1
    events = result["registry_events"]["epsilon_greedy"]
    assert [(e["action"], e["by"]) for e in events if e["action"] == "rollback"] == [("rollback", "monitor")]
    rounds = result["per_round"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["model"].endswith("reversed")
    assert not rounds[1]["model"].startswith("popularity")  # the env override reached the loop's params
    # a stationary world: the reversed champion changed what was served, not the world (round 2's
    # monitor compares the clicks on its uniformly drawn slates with round 1's)
    assert rounds[1]["drift_detected"] is False and 2 not in result["side_by_side"]["epsilon_greedy"]["drift_alarm_rounds"]
    assert rounds[1]["value_greedy"] < rounds[0]["value_greedy"] < rounds[0]["oracle"]  # the truth sees the bad champion
    assert all(0 < r["coverage"] <= 1 and 0 <= r["gini"] < 1 for r in rounds)
    assert all(c["covered"] == (c["ci"][0] <= c["true_value"] <= c["ci"][1]) for c in result["gate_checks"])
    # the last retrain chose its model on round 1's uniformly drawn slates (round 2's are the gate's)
    train = json.loads((tmp_path / "work" / "epsilon_greedy" / "artifacts" / "models" / "train.json").read_text())
    assert train["chosen"]["validation"].startswith("uniform sample")
    assert (tmp_path / "closed_loop.png").stat().st_size > 0
    assert (tmp_path / "closed_loop_rounds.csv").read_text().startswith("round,epsilon_greedy,logging_policy")


@pytest.mark.slow
def test_serving_benchmark_builds_its_store(tmp_path):
    """The part of serving_load.py no other test runs (simulate, train MF + a T-learner, save both
    models into a BentoML store), on a tiny world: it had gone stale twice unnoticed (the bundle's
    analysis report, a transposed column in persistence). The servers and the load run in the
    integration tests' own probes."""
    from serving_load import build_store

    build_store(tmp_path / "bentoml", 300, n_interactions=4000)
    stored = {p.name for p in (tmp_path / "bentoml" / "models").iterdir()}
    assert stored == {"causalrec-recommender", "causalrec-encoder"}, stored
