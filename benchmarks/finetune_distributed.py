"""Distributed fine-tuning, side by side: pairs mined from the simulator, then
`torchrun --nproc_per_node=N -m causalrec.text.finetune` for each N given (one process per GPU, or
gloo processes on CPU), same seed, same global batch, dropout off: the loss curves must agree
(the embeddings are all-gathered, so N processes compute one process's loss on the whole batch).

    python benchmarks/finetune_distributed.py --nproc 1 2 --max-steps 20            # CPU (gloo)
    python benchmarks/finetune_distributed.py --nproc 1 2 4 --model .encoder-export/minilm   # GPUs (NCCL)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from _common import REPO, scratch_dir, write_result
from causalrec.data.simulate import SimulationConfig, simulate
from causalrec.text.finetune import mine_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = scratch_dir("ftdist-")
    simulate(SimulationConfig(), root / "data", root / "truth", progress=False)
    inter = pd.read_parquet(root / "data" / "interactions.parquet")
    items = pd.read_parquet(root / "data" / "items.parquet")
    users = pd.read_parquet(root / "data" / "users.parquet")
    pairs = mine_pairs(inter[inter["exposed"] == 1], dict(zip(items["item_id"], items["title"] + ". " + items["description"])),
                       dict(zip(users["user_id"], users["profile_text"])))
    pairs.to_parquet(root / "pairs.parquet", index=False)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    runs = {}
    for n in args.nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "causalrec.text.finetune", "--pairs", str(root / "pairs.parquet"), "--out", str(root / f"ft{n}"),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--no-dropout"]
        cmd += ["--model", str(args.model)] if args.model else []
        cmd += ["--max-steps", str(args.max_steps)] if args.max_steps else []
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
        result = json.loads((root / f"ft{n}" / "finetune.json").read_text())
        runs[n] = {"command_launched": " ".join(cmd), "wall_seconds": seconds, "world_size": result["world_size"],
                   "tokens_per_s": result["tokens_per_s"], "step_losses": result["step_losses"],
                   "best_val_recall": result["best_val_recall"]}
        print(n, {k: v for k, v in runs[n].items() if k != "step_losses"}, flush=True)
    base = runs[args.nproc[0]]["step_losses"]
    write_result("finetune_distributed", {
        "pairs": len(pairs), "batch_size": args.batch_size, "runs": {str(n): r for n, r in runs.items()},
        "max_abs_loss_difference_vs_first": {str(n): float(max(abs(a - b) for a, b in zip(base, r["step_losses"])))
                                             for n, r in runs.items()},
        "tokens_per_s_ratio_vs_first": {str(n): r["tokens_per_s"] / runs[args.nproc[0]]["tokens_per_s"]
                                        for n, r in runs.items()}}, args.out)


if __name__ == "__main__":
    main()
