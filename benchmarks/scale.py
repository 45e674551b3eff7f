"""Streaming training at scale: seconds per epoch and peak memory at 0.1M / 1M / 10M interactions.

    python benchmarks/scale.py [--sizes 100000 1000000 10000000]

Each size runs in its own process (so peak RSS is that size's alone): simulate the log in chunks
to parquet, then one epoch of MF streamed from it (causalrec.causal.streaming) per method: IPS
(exposed rows only) and DR-JL (every logged row is the population; an imputation model too).
Users and items grow with the log (2k/1k at 0.1M, 20k/5k at 1M, 100k/20k at 10M).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import scratch_dir, write_result

SHAPES = {100_000: (2000, 1000), 1_000_000: (20_000, 5000), 10_000_000: (100_000, 20_000)}


def one(size: int, epochs: int, method: str) -> dict:
    from causalrec.causal.debias import DebiasedRecommender
    from causalrec.causal.streaming import fit_streaming
    from causalrec.data.simulate import SimulationConfig, simulate

    n_users, n_items = SHAPES.get(size, (max(2, size // 50), max(2, size // 100)))
    root = scratch_dir("scale-")  # one process per size: removed before the next
    t = time.perf_counter()
    simulate(SimulationConfig(n_users=n_users, n_items=n_items, n_interactions=size, n_test_pairs_per_user=1,
                              chunk_rows=500_000), root / "data", root / "truth", progress=False)
    sim_seconds = time.perf_counter() - t
    model = DebiasedRecommender(method, dim=32, epochs=epochs, lr=0.005, batch_size=4096)
    res = fit_streaming(model, root / "data" / "interactions.parquet", [f"u{u:06d}" for u in range(n_users)],
                        [f"i{i:06d}" for i in range(n_items)], chunk_rows=500_000)
    return {"method": method, "interactions": size, "users": n_users, "items": n_items, "simulate_seconds": sim_seconds,
            "seconds_per_epoch": min(e["seconds"] for e in res["epochs"]), "exposed_rows": res["epochs"][0]["exposed_rows"],
            "rows_trained": res["epochs"][0]["rows"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["ips", "dr_jl"])
    ap.add_argument("--method", default="ips", help=argparse.SUPPRESS)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.epochs, args.method)))
        return
    rows = []
    for method in args.methods:
        for size in args.sizes:
            proc = subprocess.run([sys.executable, __file__, "--one", str(size), "--epochs", str(args.epochs), "--method",
                                   method], capture_output=True, text=True, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    for r in rows:
        base = next(b for b in rows if b["method"] == r["method"])
        r["seconds_per_million_exposed"] = r["seconds_per_epoch"] / r["exposed_rows"] * 1e6
        r["time_ratio_vs_smallest"] = r["seconds_per_epoch"] / base["seconds_per_epoch"]
        r["size_ratio_vs_smallest"] = r["interactions"] / base["interactions"]
    write_result("scale", {"model": "MF, dim 32, batch 4096, streamed in 500k-row chunks", "methods": args.methods,
                           "memory_budget_gb": 8, "runs": rows}, args.out)


if __name__ == "__main__":
    main()
