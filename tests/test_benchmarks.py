"""Benchmark scripts run on tiny inputs and write well-formed results (numbers are not asserted:
benchmarks are not tests)."""
import json
import subprocess
import sys

import pytest

from conftest import REPO


def _run(args, out):
    proc = subprocess.run([sys.executable, *args, "--out", str(out)], cwd=REPO / "benchmarks", capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


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


def test_scale_benchmark_tiny(tmp_path):
    _run(["scale.py", "--sizes", "3000", "--methods", "ips", "dr_jl"], tmp_path)
    runs = json.loads((tmp_path / "scale.json").read_text())["runs"]
    assert [(r["method"], r["interactions"]) for r in runs] == [("ips", 3000), ("dr_jl", 3000)]
    assert all(r["rows_trained"] == r["exposed_rows"] < r["interactions"] for r in runs if r["method"] == "ips")
    assert all(r["rows_trained"] == r["interactions"] for r in runs if r["method"] == "dr_jl")


@pytest.mark.slow
def test_simulator_benchmark_small(tmp_path):
    _run(["simulator.py", "--interactions", "5000", "--sections", "worlds", "--worlds", "default",
          "negative_uplift", "--learners", "t_learner", "shared", "--name", "sim_smoke"], tmp_path)
    result = json.loads((tmp_path / "sim_smoke.json").read_text())
    worlds, summary = result["worlds"], result["worlds_summary"]
    assert set(worlds) == {"default", "negative_uplift"}
    for rows in worlds.values():
        assert {"t_learner", "shared", "logged_propensity", "popularity"} <= set(rows)
    assert {"shared_outcome_only", "shared_plain"} <= set(worlds["default"])  # ablations in the default world only
    ratios = {w: rows["shared"]["cp@10_ratio_to_oracle"] for w, rows in worlds.items()}
    assert summary["default_learner"] == "shared"
    assert summary["default_learner_worst_ratio_to_oracle"] == min(ratios.values())
    assert abs(summary["default_learner_mean_ratio_to_oracle"] - sum(ratios.values()) / 2) < 1e-12
    beats = all(rows["shared"]["cp@10_ratio_to_oracle"] > rows[t]["cp@10_ratio_to_oracle"]
                for rows in worlds.values() for t in ("logged_propensity", "popularity"))
    assert summary["default_beats_trivial_in_every_world"] == beats
