import numpy as np
import pandas as pd
import pytest

from causalrec.text import TextEncoder
from causalrec.text.finetune import FinetuneConfig, finetune, mine_pairs, train_flops_per_token


def _pairs():
    inter = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b", "c", "c", "c"],
                          "item_id": ["x", "y", "z", "x", "w", "y", "z", "w"],
                          "outcome": [1, 1, 1, 1, 0, 1, 1, 1]})
    text = {"x": "red wool coat", "y": "blue denim jacket", "z": "green rain shell", "w": "black leather jacket"}
    return mine_pairs(inter, text, {"a": "likes coats", "c": "outdoor person"}, seed=0)


def test_mine_pairs_uses_only_positives():
    pairs = _pairs()
    assert len(pairs) > 0 and (pairs["anchor"] != pairs["positive"]).all()
    # b's only positive is x, and w was a negative for b: no pair may come from b alone
    assert not ((pairs["anchor"] == "black leather jacket") & (pairs["positive"] == "red wool coat")).any()


def test_finetune_saves_loadable_best_and_resumes(tiny_encoder, tmp_path):
    pairs = pd.concat([_pairs()] * 8, ignore_index=True)
    cfg = FinetuneConfig(epochs=2, batch_size=8, grad_accum=2, patience=5, progress=False, lr=1e-3)
    res = finetune(pairs, tmp_path / "ft", tiny_encoder, cfg, device="cpu")
    assert res["steps"] >= 1 and len(res["history"]) == 2 and res["tokens_per_s"] > 0
    enc = TextEncoder(tmp_path / "ft" / "best", progress=False).load()
    assert enc.embed(["red wool coat"]).shape == (1, 32)
    assert enc.fingerprint != TextEncoder(tiny_encoder, progress=False).load().fingerprint
    # a third epoch resumes from the saved state instead of starting over
    again = finetune(pairs, tmp_path / "ft", tiny_encoder, FinetuneConfig(**{**cfg.__dict__, "epochs": 3}), device="cpu")
    assert again["resumed"] and len(again["history"]) == 3


@pytest.mark.slow
def test_two_processes_follow_the_single_process_loss_curve(tiny_encoder, tmp_path):
    """torchrun with 2 gloo processes: the gathered in-batch negatives and DDP's averaged gradients
    give the loss curve of one process on the whole batch (a rank-local loss would not)."""
    import json
    import os
    import subprocess
    import sys

    pairs = pd.concat([_pairs()] * 8, ignore_index=True)
    pairs.to_parquet(tmp_path / "pairs.parquet")
    cfg = FinetuneConfig(epochs=1, batch_size=8, lr=1e-3, max_steps=4, dropout=False, progress=False)
    single = finetune(pairs, tmp_path / "one", tiny_encoder, cfg, device="cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "causalrec.text.finetune", "--pairs", str(tmp_path / "pairs.parquet"),
                           "--out", str(tmp_path / "two"), "--model", str(tiny_encoder), "--epochs", "1",
                           "--batch-size", "8", "--lr", "1e-3", "--max-steps", "4", "--no-dropout", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "finetune.json").read_text())
    assert two["world_size"] == 2 and len(two["step_losses"]) == len(single["step_losses"]) == 4
    assert np.allclose(two["step_losses"], single["step_losses"], rtol=1e-4, atol=1e-5)
    assert single["step_losses"][0] != pytest.approx(single["step_losses"][-1])  # it trained


def test_too_few_pairs():
    with pytest.raises(ValueError, match="at least 4 pairs"):
        finetune(pd.DataFrame({"anchor": ["a"], "positive": ["b"]}), "/tmp/x")


def test_flops_formula_bert_base():
    from transformers import BertConfig

    cfg = BertConfig()  # BERT-base: 12 layers, d=768, ff=3072 -> 85M non-embedding params
    assert train_flops_per_token(cfg, 128) == pytest.approx(6 * 12 * (4 * 768**2 + 2 * 768 * 3072) + 12 * 12 * 768 * 128)
