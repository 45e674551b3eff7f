"""Stage embed: item/user texts through the (optionally fine-tuned) encoder; and the two-tower
features that later stages read from its output."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, ITEMS, USERS, read_table
from causalrec.io import atomic_dir, atomic_write_json
from causalrec.pipeline.paths import StageError, stage_paths

def finetune_encoder(params: Params, items: pd.DataFrame) -> dict:
    """Contrastive fine-tuning on pairs mined from the log; the checkpoint is keyed by data version
    and settings (in the cache directory), so an unchanged rerun reuses it."""
    import hashlib

    from causalrec.text.finetune import FinetuneConfig, finetune, mine_pairs

    d, cfg = stage_paths(params), params.embed
    inter = read_table(d["data"], INTERACTIONS, columns=["user_id", "item_id", "exposed", "outcome"])
    users = read_table(d["data"], USERS)
    user_text = dict(zip(users["user_id"], users["profile_text"])) if "profile_text" in users else None
    pairs = mine_pairs(inter[inter["exposed"] == 1], dict(zip(items["item_id"], item_texts(items))), user_text, seed=params.seed)
    if len(pairs) > cfg.finetune_max_pairs:
        pairs = pairs.sample(cfg.finetune_max_pairs, random_state=params.seed).reset_index(drop=True)
    key = hashlib.sha256(pd.util.hash_pandas_object(pairs, index=False).values.tobytes()
                         + repr((str(cfg.model_path), cfg.finetune_epochs, cfg.finetune_batch_size, cfg.finetune_lr,
                                 cfg.max_length)).encode()).hexdigest()[:16]
    out = d["cache"] / "finetune" / key
    if (out / "finetune.json").exists() and (out / "best").exists():
        result = json.loads((out / "finetune.json").read_text())
    else:
        result = finetune(pairs, out, cfg.model_path, FinetuneConfig(
            epochs=cfg.finetune_epochs, batch_size=cfg.finetune_batch_size, lr=cfg.finetune_lr,
            max_length=min(cfg.max_length, 128), seed=params.seed))
    return {**result, "pairs": len(pairs), "best_dir": str(out / "best")}


def item_texts(items: pd.DataFrame) -> list[str]:
    return (items["title"].astype(str) + ". " + items["description"].astype(str)).tolist()


def embed(params: Params) -> dict:
    """Embed item texts (and user profiles when present) with the encoder; cached by text hash."""
    from causalrec.text import TextEncoder

    d = stage_paths(params)
    cfg = params.embed
    items = read_table(d["data"], ITEMS)
    model_path, finetuned = cfg.model_path, None
    if cfg.finetune:
        finetuned = finetune_encoder(params, items)
        model_path = finetuned["best_dir"]
    encoder = TextEncoder(model_path=model_path, batch_size=cfg.batch_size, max_length=cfg.max_length,
                          device=cfg.device, quantize_int8=cfg.quantize_int8, cache_dir=d["cache"] / "embeddings").load()
    item_vectors = encoder.embed(item_texts(items))
    n_embedded = encoder.last_embedded
    users = read_table(d["data"], USERS)
    with atomic_dir(d["embeddings"]) as tmp:
        np.save(tmp / "items.npy", item_vectors)
        items[["item_id"]].to_parquet(tmp / "items_index.parquet", index=False)
        if "profile_text" in users.columns:
            user_vectors = encoder.embed(users["profile_text"].fillna("").astype(str).tolist())
            n_embedded += encoder.last_embedded
            np.save(tmp / "users.npy", user_vectors)
            users[["user_id"]].to_parquet(tmp / "users_index.parquet", index=False)
        manifest = {"fingerprint": encoder.fingerprint, "model_path": str(encoder.path), "dim": int(item_vectors.shape[1]),
                    "items": len(items), "users": len(users), "newly_embedded": n_embedded,
                    "device": str(encoder.torch_device),
                    "finetuned_checkpoint": finetuned["best_dir"] if finetuned else None,
                    "finetune": {k: finetuned[k] for k in ("best_val_recall", "steps", "pairs")} if finetuned else None}
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest

def text_features(params: Params) -> dict[str, pd.DataFrame]:
    """Two-tower inputs per side (train.features): text embeddings of item texts and user profiles,
    and the numeric attr_* columns of the items/users tables, side by side."""
    from causalrec.data.schema import attributes

    d = stage_paths(params)
    out = {}
    for side, key, spec in (("items", "item_features", ITEMS), ("users", "user_features", USERS)):
        parts = []
        path = d["embeddings"] / f"{side}.npy"
        if "text" in params.train.features and path.exists():
            index = pd.read_parquet(d["embeddings"] / f"{side}_index.parquet").iloc[:, 0].astype(str)
            parts.append(pd.DataFrame(np.load(path), index=index).add_prefix("text_"))
        if "attributes" in params.train.features:
            attrs = attributes(read_table(d["data"], spec), spec)
            if attrs is not None:
                parts.append(attrs)
        if parts:
            out[key] = pd.concat(parts, axis=1).fillna(0.0).astype(np.float32)
    if "item_features" not in out:
        raise StageError(f"train: two-tower models need item features ({params.train.features}): run the embed stage "
                         f"({d['embeddings']}) or give items attr_* columns")
    return out

