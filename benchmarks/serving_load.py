"""Load test of the real Recommender server over a 100,000-item catalogue, against a naive
baseline (one request = one full Python loop over the catalogue), in the same run.

    python benchmarks/serving_load.py [--items 100000] [--seconds 20] [--users 16]

Builds a bundle (MF relevance + T-learner uplift on simulated data with `--items` items) in a
temporary BentoML store, serves `causalrec.service:Recommender` and `benchmarks/naive_service.py`
on 127.0.0.1 one after the other, and drives each with locust (headless, as a command, bounded
in time). Writes results/serving.json: rps, p50_ms, p99_ms, errors for both.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import requests
from _common import REPO, scratch_dir, write_result

from causalrec.serving.launch import BentoServer

BENCH = Path(__file__).resolve().parent


def build_store(home: Path, n_items: int, n_interactions: int = 300_000) -> None:
    """Simulate, train and save the recommender + encoder models into BENTOML_HOME=home."""
    import yaml

    root = home.parent / "project"
    (root).mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"].update({"n_users": 2000, "n_items": n_items, "n_interactions": n_interactions})
    params["train"].update({"models": ["mf_naive"], "epochs": 5, "exposure_weight": 0.0})
    params["uplift"].update({"learner": "t_learner", "n_bootstrap": 1})
    params["analyze"]["enabled"] = False  # the bundle's causal summary (/explain's mediation) is not what is timed
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    code = f"""
import os, sys, json
from pathlib import Path
sys.path.insert(0, {str(REPO / 'src')!r})
os.environ['BENTOML_HOME'] = {str(home)!r}
from causalrec import pipeline
from causalrec.config import load_params
import pandas as pd, numpy as np
params = load_params({str(root / 'params.yaml')!r})
pipeline.ingest(params)
pipeline.propensity(params)
d = pipeline.stage_paths(params)
# no text model for 100k items on 2 cores: train ids-only models and evaluate quickly
from causalrec.causal.uplift import UpliftLearner
inter = pd.read_parquet(d['data'] / 'interactions.parquet')
p = pd.read_parquet(d['propensity'] / 'propensities.parquet')['propensity'].to_numpy()
ex = inter[inter.exposed == 1]
d['models'].mkdir(parents=True, exist_ok=True)
from causalrec.persistence import save_model
m = pipeline.make_model('mf_naive', params).fit(ex.user_id.values, ex.item_id.values, ex.outcome.values, p[inter.exposed.values == 1])
save_model(m, d['models'] / 'mf_naive.pt')
u = UpliftLearner('t_learner', epochs=5, dim=16).fit(inter.user_id, inter.item_id, inter.treatment, inter.outcome, p)
save_model(u, d['models'] / 'uplift.pt')
d['metrics'].write_text(json.dumps({{'models': {{'mf_naive': {{'auc': 0.5}}}}, 'primary_metric': 'auc', 'chosen': {{'model': 'mf_naive'}}}}))
import bentoml
with bentoml.models.create('causalrec-recommender') as bm:
    pipeline.write_bundle(params, 'mf_naive', Path(bm.path))
with bentoml.models.create('causalrec-encoder') as em:
    pipeline.write_encoder_bundle(params, Path(em.path))
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# the temporary store holds one model of each: the service from the package is pinned to them
PINS = {"recommender": "causalrec-recommender:latest", "encoder": "causalrec-encoder:latest"}


def serve(target: str, home: Path, cwd: Path, log: Path, pins: dict[str, str] | None) -> BentoServer:
    env = {"BENTOML_HOME": str(home), "CAUSALREC_FEEDBACK_LOG": str(log.parent / "fb.jsonl"), "BENTOML_DO_NOT_TRACK": "True"}
    return BentoServer(target, cwd, log, env, args=pins).start()


def load(url: str, users: int, seconds: int, out: Path) -> dict:
    prefix = out / "locust"
    subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(BENCH / "locustfile.py"), "--headless",
                    "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix),
                    "--only-summary", "--stop-timeout", "5"], check=False, capture_output=True, text=True, timeout=seconds + 60)
    with open(f"{prefix}_stats.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["Name"] == "/recommend")
    n = int(row["Request Count"])
    return {"requests": n, "rps": float(row["Requests/s"]), "p50_ms": float(row["50%"]), "p99_ms": float(row["99%"]),
            "errors": int(row["Failure Count"]), "users": users, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--baseline-seconds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = scratch_dir("serving-load-")
    home = work / "bentoml"
    build_store(home, args.items)
    results = {}
    # Both services get the same load (users and spawn rate); only the serving code differs.
    for name, target, pins, cwd, users, seconds in (
            ("causalrec", "causalrec.service:Recommender", PINS, REPO, args.users, args.seconds),
            ("naive_baseline", "naive_service:NaiveRecommender", None, BENCH, args.users, args.baseline_seconds)):
        server = serve(target, home, cwd, work / f"{name}.log", pins)
        url = server.url
        try:
            r = requests.post(f"{url}/recommend", json={"user_id": "u000001", "k": 10}, timeout=60)
            r.raise_for_status()
            (work / name).mkdir()
            results[name] = load(url, users, seconds, work / name)
        finally:
            server.stop()
        print(name, results[name], flush=True)
    ours, naive = results["causalrec"], results["naive_baseline"]
    write_result("serving", {"catalogue_items": args.items, **ours, "naive_baseline": naive,
                             "speedup_rps_vs_naive": ours["rps"] / max(naive["rps"], 1e-9),
                             "target": {"rps": 300, "p99_ms": 25, "errors": 0},
                             "note": "server and load generator share the same 2 cores"}, args.out)


if __name__ == "__main__":
    main()
