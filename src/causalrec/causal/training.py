"""One training loop for every learner (in memory, streaming, uplift), and `auto` as a search.

`train_loop` runs epochs of mini-batch steps, watches a validation loss, keeps the best state and
stops after `patience` epochs without improvement. The learner supplies what differs: how a
step turns a batch into a loss (usually through `causalrec.causal.losses.LOSSES`) and where the
batches come from (a permutation of rows in memory, record batches from parquet).

`ValidationSearch` is the `auto` of exposure weights: like scikit-learn's GridSearchCV with one
validation split, it fits a copy of the estimator per candidate value and keeps the one with the
lowest validation loss. With `warm_start`, candidates after the first start from the previous
fit's weights, so they share the work and each stops after a few epochs; a later candidate has then
had more epochs, so it must beat the incumbent by a relative `min_improvement`, not by noise. The
exposure-weight search fits cold: from the outcome-only optimum, early stopping fires before an
exposure head can move the factors (warm, it chose no head on the informative log of
tests/test_uplift.py, where the cold fits rightly choose one).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Iterable

import numpy as np
import torch


@dataclass(kw_only=True)
class FitSettings:
    """The settings every learner trains with (relevance, uplift, streaming): one place for their
    defaults; each learner adds its own fields (keyword-only here, so a learner's own first field
    stays positional, e.g. DebiasedRecommender("ips", dim=8))."""

    dim: int = 32
    epochs: int = 30
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 4096
    patience: int = 4
    seed: int = 0

    def fit_settings(self, **override) -> dict:
        """These settings as keyword arguments (for the models a learner fits inside itself)."""
        return {**{f.name: getattr(self, f.name) for f in fields(FitSettings)}, **override}


def adam(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimiser of every learner (one place for its settings). foreach: one kernel per operation over
    all parameters (the same arithmetic; PyTorch uses it by default on GPU only): half the step's time on CPU."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def minibatches(n_rows: int, batch_size: int, rng: np.random.Generator) -> Callable[[], Iterable[torch.Tensor]]:
    """Batches of row indices: a fresh permutation each epoch."""
    def epoch():
        perm = torch.as_tensor(rng.permutation(n_rows))
        return (perm[s:s + batch_size] for s in range(0, n_rows, batch_size))
    return epoch


def train_loop(step: Callable[[object], tuple[float, int]], batches: Callable[[], Iterable], epochs: int,
               modules: dict[str, torch.nn.Module], validate: Callable[[], float] | None = None,
               patience: int = 4, progress: bool = False, desc: str = "train") -> list[dict]:
    """Run up to `epochs` passes; `step(batch)` optimises and returns (mean loss, rows). With `validate`,
    the state of `modules` at the best validation loss is restored at the end. Returns the history:
    one row per epoch with train_loss, rows, seconds (and val_loss)."""
    from tqdm.auto import tqdm

    def evaluate() -> float:
        for m in modules.values():
            m.eval()
        with torch.no_grad():
            return float(validate())

    def snapshot() -> dict:
        return {k: {n: v.clone() for n, v in m.state_dict().items()} for k, m in modules.items()}

    history, best, best_state, bad = [], np.inf, None, 0
    if validate is not None:  # the starting point counts: a warm start may already be the best state
        best, best_state = evaluate(), snapshot()
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress):
        for m in modules.values():
            m.train()
        start, total, rows = time.perf_counter(), 0.0, 0
        for batch in batches():
            loss, n = step(batch)
            total, rows = total + loss * n, rows + n
        row = {"epoch": epoch + 1, "train_loss": total / max(rows, 1), "rows": rows,
               "seconds": time.perf_counter() - start}
        history.append(row)
        if validate is None:
            continue
        row["val_loss"] = evaluate()
        if row["val_loss"] < best - 1e-5:
            best, bad, best_state = row["val_loss"], 0, snapshot()
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is not None:
        for k, m in modules.items():
            m.load_state_dict(best_state[k])
    for m in modules.values():
        m.eval()
    return history


def best_val_loss(history: list[dict]) -> float:
    return min((row["val_loss"] for row in history if "val_loss" in row), default=np.inf)


@dataclass
class ValidationSearch:
    """Fit `estimator` once per value of `param` in `candidates` (optionally warm-started from the
    previous fit) and keep the fit with the lowest validation loss: `best_estimator_` (with the chosen value in
    `<param>_` and the search in `search_`), `results_` = {value: validation loss}."""

    estimator: object
    param: str
    candidates: tuple
    warm_start: bool = False
    min_improvement: float = 1e-3
    results_: dict = field(default_factory=dict, init=False)

    def fit(self, *args, **kwargs) -> "ValidationSearch":
        best, warm = None, None
        for value in self.candidates:
            model = replace(self.estimator, **{self.param: value}).fit(*args, warm_start=warm, **kwargs)
            self.results_[value] = best_val_loss(model.history)
            margin = self.min_improvement if self.warm_start else 0.0
            if best is None or self.results_[value] < self.results_[best[0]] * (1 - margin):
                best = (value, model)
            warm = model if self.warm_start else None
        value, self.best_estimator_ = best
        self.best_estimator_.search_ = {"param": self.param, "chosen": value,
                                        "validation_loss": {str(k): v for k, v in self.results_.items()}}
        setattr(self.best_estimator_, f"{self.param}_", value)
        return self
