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


def test_too_few_pairs():
    with pytest.raises(ValueError, match="at least 4 pairs"):
        finetune(pd.DataFrame({"anchor": ["a"], "positive": ["b"]}), "/tmp/x")


def test_flops_formula_bert_base():
    from transformers import BertConfig

    cfg = BertConfig()  # BERT-base: 12 layers, d=768, ff=3072 -> 85M non-embedding params
    assert train_flops_per_token(cfg, 128) == pytest.approx(6 * 12 * (4 * 768**2 + 2 * 768 * 3072) + 12 * 12 * 768 * 128)
