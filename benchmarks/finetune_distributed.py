"""Exercise distributed fine-tuning: pairs mined from the simulator, then
`torchrun --nproc_per_node=N -m causalrec.text.finetune` (one process per GPU).

    python benchmarks/finetune_distributed.py --nproc 1 --model .encoder-export/minilm
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from _common import REPO, write_result
from causalrec.data.simulate import SimulationConfig, simulate
from causalrec.text.finetune import mine_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ftdist-"))
    simulate(SimulationConfig(), root / "data", root / "truth", progress=False)
    inter = pd.read_parquet(root / "data" / "interactions.parquet")
    items = pd.read_parquet(root / "data" / "items.parquet")
    users = pd.read_parquet(root / "data" / "users.parquet")
    pairs = mine_pairs(inter[inter["exposed"] == 1], dict(zip(items["item_id"], items["title"] + ". " + items["description"])),
                       dict(zip(users["user_id"], users["profile_text"])))
    pairs.to_parquet(root / "pairs.parquet", index=False)
    cmd = ["torchrun", f"--nproc_per_node={args.nproc}", "-m", "causalrec.text.finetune", "--pairs", str(root / "pairs.parquet"),
           "--out", str(root / "ft"), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    if args.model:
        cmd += ["--model", str(args.model)]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    result = json.loads((root / "ft" / "finetune.json").read_text())
    write_result("finetune_distributed", {"command_launched": " ".join(cmd), "nproc": args.nproc, "pairs": len(pairs),
                                          "wall_seconds": seconds, "world_size": result["world_size"],
                                          "tokens_per_s": result["tokens_per_s"], "history": result["history"],
                                          "best_val_recall": result["best_val_recall"]}, args.out)


if __name__ == "__main__":
    main()
