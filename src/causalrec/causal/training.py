"""One training loop for every learner (in memory, streaming, uplift), and `auto` as a search.

`train_loop` runs epochs of mini-batch steps, watches a validation loss, keeps the best state and
stops after `patience` epochs without improvement. The learner supplies what differs: how a
step turns a batch into a loss (usually through `causalrec.causal.losses.LOSSES`) and where the
batches come from (a permutation of rows in memory, record batches from parquet).

`ValidationSearch` is the `auto` of exposure weights and weight decay: like scikit-learn's
GridSearchCV with one validation split, it keeps the candidate value with the lowest validation
loss. A learner with a `fit_path(param, values, ...)` trains all candidates in one pass (like
LassoCV's regularisation path): their weights stacked on a new first axis (`Stacked`), every step
one forward and one backward for all of them on the same batch, each candidate with its own early
stopping. Each candidate sees exactly what a fit of its own would (the same initial weights, batches
and samples; Adam is elementwise, so one optimiser over stacked weights is one per candidate, its
weight decay applied per copy): the pass shares the work, not the results.
Warm starts (each candidate from the previous one's optimum) were tried and dropped: from the
outcome-only optimum, early stopping fires before an exposure head can move the factors (warm, the
search chose no head on the informative log of tests/test_uplift.py, where cold fits rightly
choose one).
"""
from __future__ import annotations

import copy
import ctypes
import functools
import sys
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


def adam(params, lr: float, weight_decay: float | torch.Tensor) -> torch.optim.Optimizer:
    """The optimiser of every learner (one place for its settings). fused: one kernel per parameter for the
    whole update (the same arithmetic up to float rounding; PyTorch's default on CPU is a loop of separate
    operations): the optimiser's share of a small step falls from about 40% to 10% on 2 cores.
    `weight_decay` is one value, or one per copy of `Stacked` parameters (a tensor (k,)): see copy_decay."""
    if not torch.is_tensor(weight_decay):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    return _PerCopyDecayAdam(params, lr, weight_decay)


class _PerCopyDecayAdam(torch.optim.Adam):
    """Adam whose (coupled, L2) weight decay differs per copy of stacked parameters: the gradient gets
    decay[j] x parameter on copy j before the step, which is what Adam's own weight_decay adds."""

    def __init__(self, params, lr: float, decay: torch.Tensor):
        super().__init__(params, lr=lr, fused=True)
        self.decay = decay

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(p * self.decay.view(-1, *(1,) * (p.dim() - 1)))
        return super().step(closure)


def copy_decay(candidates: list) -> float | torch.Tensor:
    """The weight decay of candidates trained side by side: one value when they share it (Adam's own),
    else one per copy (a weight-decay path)."""
    decays = [float(c.weight_decay) for c in candidates]
    return decays[0] if len(set(decays)) == 1 else torch.tensor(decays)


def minibatches(batch_size: int, rng: np.random.Generator, *columns: torch.Tensor) -> Callable[[], Iterable[tuple]]:
    """Mini-batches of rows, in a fresh random order each epoch: tuples of `columns`' rows (tensors with one
    entry per row). Each column is permuted once per epoch and the batches are slices of it: the same
    batches as gathering every column per step, without a gather per column and step (on 2 cores the
    per-step gathers, parallel advanced indexing, were a third of a small DR step)."""
    def epoch():
        perm = torch.as_tensor(rng.permutation(len(columns[0])))
        shuffled = [c.index_select(0, perm) for c in columns]
        return (tuple(c[s:s + batch_size] for c in shuffled) for s in range(0, len(perm), batch_size))
    return epoch


class Stacked(torch.nn.Module):
    """`k` copies of `module` trained side by side: every parameter gets a new first axis of length k
    (all copies start from `module`'s weights), buffers (e.g. feature matrices) stay shared. The
    module's math must broadcast over that axis (causalrec.models.factor.FactorModel's does): then
    `stacked.<method>(*args)` runs the module's method once for every copy and returns (k, ...), with
    no per-copy call. `unstack(j)` is copy j as a plain module."""

    def __init__(self, module: torch.nn.Module, k: int):
        super().__init__()
        self.k, self._template = k, [module]  # in a list: not a submodule (its weights stay out of parameters())
        self.module = copy.deepcopy(module)
        if k > 1:  # one copy keeps the module's own shapes (its plain kernels are the fastest); its results get the axis
            for name, p in list(self.module.named_parameters()):
                owner, attr = self.module.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
                setattr(owner, attr, torch.nn.Parameter(p.detach().expand(k, *p.shape).clone()))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            attr = getattr(self.module, name)
            if self.k > 1 or isinstance(attr, torch.Tensor) or not callable(attr):
                return attr
            return lambda *args: _with_copy_axis(attr(*args))

    def forward(self, *args):
        return self.module(*args) if self.k > 1 else _with_copy_axis(self.module(*args))

    def unstack(self, j: int) -> torch.nn.Module:
        out = copy.deepcopy(self._template[0])
        with torch.no_grad():
            for (_, p), (_, w) in zip(out.named_parameters(), self.module.named_parameters()):
                p.copy_(w[j] if self.k > 1 else w)
        return out.eval()


def _with_copy_axis(out):
    return tuple(o.unsqueeze(0) for o in out) if isinstance(out, tuple) else out.unsqueeze(0)


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 64 MiB in the heap for reuse (mallopt), once per process.
    Every step's backward allocates a gradient table per embedding table (1 MB for 15k users x 16) and
    frees it at the next; by default glibc hands such blocks back to the OS and the next step faults
    the pages in again, which two threads do slower than one. Keeping them: a small DR step 1.5x faster
    on 2 cores (benchmarks/train_speed.py), and a training process that holds on to up to 256 MiB
    it freed. The same effect as PyTorch's tuning guide's advice (jemalloc/tcmalloc) without a preload.
    False where the C library is not glibc (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 64 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))


def train_loop(step: Callable[[object], tuple[object, int]], batches: Callable[[], Iterable], epochs: int,
               modules: dict[str, torch.nn.Module], validate: Callable[[], object] | None = None,
               patience: int = 4, progress: bool = False, desc: str = "train", copies: int = 1) -> list[list[dict]]:
    """Run up to `epochs` passes; `step(batch)` optimises and returns (mean loss, rows). With `validate`,
    the state of `modules` at the best validation loss among the trained epochs is restored at the end
    (never the untrained starting point: a model that validates worse than its random start after
    `patience` epochs is still the trained one, and its history says so), and training stops after
    `patience` epochs without improvement. With `copies` > 1 (modules `Stacked` that many
    times), `step` and `validate` return one loss per copy and each copy keeps its own best state and
    stops on its own (the pass ends when all have). Returns one history per copy: one row per epoch
    with train_loss, rows, seconds (and val_loss)."""
    from tqdm.auto import tqdm

    keep_freed_memory()

    def evaluate() -> np.ndarray:
        for m in modules.values():
            m.eval()
        with torch.no_grad():
            return np.broadcast_to(np.asarray(validate(), np.float64), copies).copy()

    def keep(state: dict | None, rows: np.ndarray) -> dict:
        """The weights of `modules` now, for the copies `rows` (all of them: a fresh copy); buffers
        are not trained, so they need no copy."""
        now = {k: {n: v.detach() for n, v in m.named_parameters()} for k, m in modules.items()}
        if state is None or rows.all():
            return {k: {n: v.clone() for n, v in s.items()} for k, s in now.items()}
        for k, s in now.items():
            for n, v in s.items():
                state[k][n][rows] = v[rows]
        return state

    histories, active, bad = [[] for _ in range(copies)], np.ones(copies, bool), np.zeros(copies, int)
    best, best_state = np.full(copies, np.inf), None
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress):
        for m in modules.values():
            m.train()
        start, total, rows = time.perf_counter(), 0.0, 0
        for batch in batches():
            loss, n = step(batch)
            total, rows = total + np.asarray(loss, np.float64) * n, rows + n
        train_loss, seconds = np.broadcast_to(total / max(rows, 1), copies), time.perf_counter() - start
        for j in np.flatnonzero(active):
            histories[j].append({"epoch": epoch + 1, "train_loss": float(train_loss[j]), "rows": rows, "seconds": seconds})
        if validate is None:
            continue
        val = evaluate()
        for j in np.flatnonzero(active):
            histories[j][-1]["val_loss"] = float(val[j])
        better = active & (val < best - 1e-5)
        for j in np.flatnonzero(better):  # the state kept so far is this epoch's (what a refit repeats: best_epoch)
            histories[j][-1]["kept"] = True
        if better.any():
            best, best_state = np.where(better, val, best), keep(best_state, better)
        bad = np.where(better, 0, bad + active)
        active &= bad < patience
        if not active.any():
            break
    if best_state is not None:
        with torch.no_grad():
            for k, m in modules.items():
                for n, v in m.named_parameters():
                    v.copy_(best_state[k][n])
    for m in modules.values():
        m.eval()
    return histories


def best_val_loss(history: list[dict]) -> float:
    return min((row["val_loss"] for row in history if "val_loss" in row), default=np.inf)


def best_epoch(history: list[dict]) -> int:
    """The epochs behind the state early stopping kept (0: no validation, or no epoch ran)."""
    return max((row["epoch"] for row in history if row.get("kept")), default=0)


class OnePassPath:
    """`fit_path` for a learner whose `_fit_candidates(candidates, *fit_args)` fits copies of itself
    that differ in `exposure_weight` or `weight_decay` only, in one pass, in place (the relevance and
    shared uplift learners): copy j is what `replace(self, <param>=values[j]).fit(...)` gives, up to
    floating-point summation order."""

    PATH_PARAMS = ("exposure_weight", "weight_decay")

    def fit_path(self, param: str, values: tuple, *args, **kwargs) -> list:
        if param not in self.PATH_PARAMS:
            raise ValueError(f"fit_path varies one of {self.PATH_PARAMS}, not {param!r}")
        candidates = [replace(self, **{param: v}) for v in values]
        self._fit_candidates(candidates, *args, **kwargs)
        return candidates


@dataclass
class ValidationSearch:
    """Fit `estimator` once per value of `param` in `candidates` (in one pass where the estimator
    has `fit_path`) and keep the fit with the lowest validation criterion: `best_estimator_` (with the
    chosen value in `<param>_` and the search in `search_`), `results_` = {value: criterion}.
    criterion: the fitted model's `criterion` attribute (lower is better; e.g. an uplift learner's
    validation tau-risk), or None: its best validation loss (early stopping's)."""

    estimator: object
    param: str
    candidates: tuple
    criterion: str | None = None
    results_: dict = field(default_factory=dict, init=False)

    def fit(self, *args, **kwargs) -> "ValidationSearch":
        if hasattr(self.estimator, "fit_path"):
            models = self.estimator.fit_path(self.param, self.candidates, *args, **kwargs)
        else:
            models = [replace(self.estimator, **{self.param: v}).fit(*args, **kwargs) for v in self.candidates]
        score = (lambda m: best_val_loss(m.history)) if self.criterion is None else (lambda m: getattr(m, self.criterion))
        self.results_ = {value: score(model) for value, model in zip(self.candidates, models)}
        value = min(self.candidates, key=self.results_.get)  # the first of equals (in candidates' order)
        self.best_estimator_ = models[self.candidates.index(value)]
        self.best_estimator_.search_ = {"param": self.param, "chosen": value,
                                        self.criterion or "validation_loss": {str(k): v for k, v in self.results_.items()}}
        setattr(self.best_estimator_, f"{self.param}_", value)
        return self
