"""Train a DebiasedRecommender from a parquet log too large to hold as Python objects.

Rows stream in record batches (pyarrow), ids are encoded against the known catalogue with a
vectorised categorical lookup, and each chunk is shuffled and trained in mini-batches: memory
is one chunk plus the model, whatever the log's length. Supports the weighting methods that
need no population sample (naive, ips, snips); the doubly robust family needs the in-memory fit.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from causalrec.causal.debias import DebiasedRecommender
from causalrec.models.factor import FactorModel
from causalrec.models.ids import IdIndex

STREAMING_METHODS = ("naive", "ips", "snips")


def _codes(values, categories: pd.Index) -> np.ndarray:
    return pd.Categorical(values, categories=categories).codes.astype(np.int64)


def fit_streaming(model: DebiasedRecommender, interactions: str | Path, user_ids, item_ids, chunk_rows: int = 1_000_000,
                  clip: float = 0.01, progress: bool = False) -> dict:
    """Fit `model` on the exposed rows of `interactions` (parquet) streamed in chunks.

    Returns per-epoch seconds and rows; the model is ready to `predict` afterwards.
    """
    from tqdm.auto import tqdm

    if model.method not in STREAMING_METHODS:
        raise ValueError(f"streaming fit supports {STREAMING_METHODS}, not '{model.method}'")
    torch.manual_seed(model.seed)
    rng = np.random.default_rng(model.seed)
    model.users_, model.items_ = IdIndex(user_ids), IdIndex(item_ids)
    u_cat, i_cat = pd.Index(model.users_.ids), pd.Index(model.items_.ids)
    # Sparse embedding gradients: a step costs O(batch), not O(catalogue), so epochs scale with rows.
    model.net_ = FactorModel(len(u_cat), len(i_cat), model.dim, sparse=True)
    model.trained_users_ = np.zeros(len(u_cat), bool)
    model.trained_items_ = np.zeros(len(i_cat), bool)
    net = model.net_
    sparse_params = [net.user.weight, net.item.weight, net.user_bias.weight, net.item_bias.weight]
    opt_sparse = torch.optim.SparseAdam(sparse_params, lr=model.lr)
    opt_dense = torch.optim.Adam([net.global_bias], lr=model.lr)
    source = pq.ParquetFile(interactions)
    columns = ["user_id", "item_id", "exposed", "outcome", "propensity"]
    model.history, epochs = [], []
    for epoch in range(model.epochs):
        start, rows, total = time.perf_counter(), 0, 0.0
        model.net_.train()
        batches = source.iter_batches(batch_size=chunk_rows, columns=columns)
        for batch in tqdm(batches, desc=f"epoch {epoch + 1}", unit="chunk", disable=not progress):
            batch = batch.filter(pc.equal(batch["exposed"], 1))
            if batch.num_rows == 0:
                continue
            u = _codes(batch["user_id"].to_numpy(zero_copy_only=False), u_cat)
            i = _codes(batch["item_id"].to_numpy(zero_copy_only=False), i_cat)
            if (u < 0).any() or (i < 0).any():
                raise ValueError("interactions reference user/item ids outside the given catalogue")
            model.trained_users_[u] = True
            model.trained_items_[i] = True
            y = torch.as_tensor(batch["outcome"].to_numpy().astype(np.float32))
            p = np.clip(batch["propensity"].to_numpy().astype(np.float32), clip, 1)
            w = torch.as_tensor(1.0 / p) if model.method != "naive" else torch.ones(len(y))
            u, i = torch.as_tensor(u), torch.as_tensor(i)
            perm = torch.as_tensor(rng.permutation(len(y)))
            for s in range(0, len(perm), model.batch_size):
                b = perm[s:s + model.batch_size]
                e = model._loss(net(u[b], i[b]), y[b]) * w[b]
                loss = e.sum() / (w[b].sum() if model.method == "snips" else len(b))
                # L2 on the rows this batch touches (SparseAdam has no weight decay).
                penalty = model.weight_decay * (net.user(u[b]).pow(2).sum(-1) + net.item(i[b]).pow(2).sum(-1)
                                                + net.user_bias(u[b]).pow(2).squeeze(-1)
                                                + net.item_bias(i[b]).pow(2).squeeze(-1)).mean()
                opt_sparse.zero_grad()
                opt_dense.zero_grad()
                (loss + penalty).backward()
                opt_sparse.step()
                opt_dense.step()
                total += loss.item() * len(b)
            rows += len(y)
        seconds = time.perf_counter() - start
        model.history.append({"epoch": epoch + 1, "train_loss": total / max(rows, 1)})
        epochs.append({"epoch": epoch + 1, "seconds": seconds, "exposed_rows": rows})
    model.net_.eval()
    return {"epochs": epochs}
