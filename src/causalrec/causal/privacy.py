"""User-level differential privacy for the factor learners: DP-SGD with per-user clipping, accounted.

What is protected, and from whom. The unit is a **user**: all of a person's rows together (what a
person cares about; a row-level guarantee lets a heavy user's history leak through their many rows).
The model's **shared** parameters (every item's id vector and bias, the global bias, the feature
towers, an exposure head's shared part) are (epsilon, delta)-differentially private with respect to
adding or removing one user's every row. A user's **own** vector and bias are fitted on that user's
rows alone and serve only that user: the recommendations are then *jointly* differentially private
(the billboard model: Hsu et al. 2014; Jain, Thakkar & Thakurta 2018, "Differentially private matrix
completion revisited"): what the recommendations of any set of other users reveal about a person is
bounded by epsilon. The user vectors themselves are personal data: never published, erased with the
person. Item texts are public (their tower is shared); user profile texts go through the user tower,
which is shared and trained on the private path. Inputs computed from everyone's rows (estimated
propensities, the uplift learner's exposure features) are refused under privacy: one person would move
every user's inputs, which per-user clipping does not bound.

The mechanism (Abadi et al. 2016; user-level: McMahan et al. 2018), one step:
  1. Poisson sampling: each user joins the step with probability q = users_per_step / n_users (the
     sampling the accountant assumes; the batch size varies);
  2. each sampled user's rows: up to rows_per_user drawn at random (a bound on compute only: the clip
     bounds the user's whole contribution whatever their number of rows);
  3. the gradient of the user's loss (a mean over their rows, so every user weighs the same) with
     respect to the shared parameters, per user (torch.func.vmap over users, on the step's touched
     item rows only: memory users x touched items x dim, not x catalogue);
  4. each user's gradient clipped to norm max_grad_norm (C), summed, Gaussian noise N(0, sigma^2 C^2)
     added to **every** coordinate of every shared parameter (the whole item table, touched or not:
     which rows a step touched is private too), divided by the expected number of users q n;
  5. Adam on that (post-processing: spends nothing).
Between passes the user vectors are refitted locally, the shared parameters frozen (each user's from
their own rows; their contribution to later shared gradients is still one clipped term: Jain et al.
2021, "Differentially private model personalization").

The noise multiplier sigma is calibrated before training for the target epsilon at delta over every
mechanism the fit will run (Opacus's RDP accountant; a learner made of several fits calibrates one
sigma over all of them: `calibrate`). A private fit has no early stopping and no validation choice:
both read private rows and would spend budget no accountant counts. The number of passes is fixed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class UserLevelDP:
    """The privacy settings of a fit (train.privacy in params.yaml)."""

    epsilon: float                 # the target: the whole fit (every mechanism it runs) spends at most this
    delta: float                   # below 1 / n_users (a mechanism that leaks one whole user with prob. delta is no guarantee)
    max_grad_norm: float = 1.0     # C: each user's gradient clipped to this norm
    users_per_step: int = 256      # expected users per step (Poisson sampling rate = this / n_users)
    rows_per_user: int = 64        # rows of a sampled user per step (compute bound; see the module's note)
    noise_multiplier: float | None = None  # sigma; None: calibrated to epsilon over the fit's own mechanisms
    # A user's own vector is fitted locally (no noise) between passes: `local_passes` Adam steps per pass, a
    # Gaussian prior of weight `user_l2` on it (a user's loss is a mean over their rows: without it, a
    # vector fitted to a handful of rows against item vectors the noise keeps near random is noise itself:
    # 0.36 vs 0.39 NDCG@10 with no noise at all, simulator at 2,000 users, chosen there before any benchmark)
    local_passes: int = 2
    user_l2: float = 0.1

    def __post_init__(self):
        if not (np.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"privacy.epsilon must be a finite number > 0, got {self.epsilon!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"privacy.delta must lie in (0, 1), got {self.delta!r}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"privacy.max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if self.local_passes < 0 or self.user_l2 < 0:
            raise ValueError("privacy.local_passes and privacy.user_l2 must be >= 0")
        if self.users_per_step < 1 or self.rows_per_user < 1:
            raise ValueError("privacy.users_per_step and privacy.rows_per_user must be >= 1")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ValueError(f"privacy.noise_multiplier must be > 0, got {self.noise_multiplier!r}")

    def mechanisms(self, n_users: int, epochs: int) -> list[tuple[float, int]]:
        """[(sample rate, steps)] of one private fit over n_users for `epochs` expected passes."""
        q = min(1.0, self.users_per_step / max(n_users, 1))
        return [(q, epochs * int(np.ceil(1 / q)))]


def spent_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """The epsilon at `delta` of the composition of mechanisms [(noise multiplier, sample rate, steps)]."""
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    # Opacus's default orders stop at 63: small epsilons with few steps need higher ones (a tighter bound)
    alphas = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 100, 150, 200, 300, 500, 1000]
    return float(accountant.get_epsilon(delta, alphas=alphas))


def calibrate(epsilon: float, delta: float, mechanisms: list[tuple[float, int]], tol: float = 0.005) -> float:
    """The smallest noise multiplier (to `tol` relative) with which every mechanism [(sample rate, steps)],
    composed, spends at most `epsilon` at `delta` (bisection on the accountant's epsilon)."""
    if not mechanisms:
        raise ValueError("nothing to calibrate: no private mechanism")
    eps = lambda s: spent_epsilon([(s, q, n) for q, n in mechanisms], delta)  # noqa: E731
    lo, hi = 0.1, 1.0
    while eps(hi) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ValueError(f"epsilon {epsilon} at delta {delta} needs a noise multiplier above 1e4: too small a budget")
    while eps(lo) <= epsilon and lo > 1e-3:
        hi, lo = lo, lo / 2
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if eps(mid) <= epsilon else (mid, hi)
    return hi


class UserRows:
    """Each user's rows (CSR over row indices) and the draws of a private step."""

    def __init__(self, user_of_row: np.ndarray, n_users: int):
        order = np.argsort(user_of_row, kind="stable")
        self.rows = order
        self.count = np.bincount(user_of_row, minlength=n_users)
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        self.users = np.flatnonzero(self.count)          # users with at least one row: the population

    def sample(self, users: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(rows (len(users), k), mask): every row of a user with at most k rows, else k drawn with replacement."""
        c, s = self.count[users][:, None], self.start[users][:, None]
        j = np.arange(k)[None, :]
        offset = np.where(c <= k, np.minimum(j, np.maximum(c - 1, 0)), (rng.random((len(users), k)) * c).astype(np.int64))
        return self.rows[np.minimum(s + offset, max(len(self.rows) - 1, 0))], (j < c)


def private_step(loss: Callable, shared: dict[str, torch.Tensor], private: dict[str, torch.Tensor],
                 batch: dict[str, torch.Tensor], item_tables: tuple[str, ...], item_fields: tuple[str, ...],
                 dp: UserLevelDP, sigma: float, expected_users: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The noisy mean gradient of the shared parameters over one Poisson-sampled batch of users.

    loss(shared, private_u, batch_u) -> the user's scalar loss: `private_u` and `batch_u` are one user's
    entries (vmap over the leading axis of `private` and `batch`). `item_tables` name the shared
    tensors indexed by item (their rows are gathered to the items the batch touches, ids in
    `item_fields` remapped to local positions). Returns a gradient for every tensor in `shared`, full
    shape, with noise on every coordinate."""
    from torch.func import grad, vmap

    grads = {k: torch.zeros_like(v) for k, v in shared.items()}
    if len(next(iter(batch.values()))):
        touched, local = torch.unique(torch.cat([batch[f].reshape(-1) for f in item_fields]), return_inverse=True)
        sizes = [batch[f].numel() for f in item_fields]
        local_batch = dict(batch)
        for f, part in zip(item_fields, torch.split(local, sizes)):
            local_batch[f] = part.reshape(batch[f].shape)
        local_shared = {k: (v.index_select(0, touched) if k in item_tables else v).detach() for k, v in shared.items()}
        per_user = vmap(grad(loss), in_dims=(None, 0, 0))(local_shared, private, local_batch)
        norms = torch.sqrt(sum(g.reshape(len(g), -1).pow(2).sum(1) for g in per_user.values()))
        scale = (dp.max_grad_norm / (norms + 1e-12)).clamp(max=1.0)
        for k, g in per_user.items():
            total = (g * scale.view(-1, *(1,) * (g.dim() - 1))).sum(0)
            if k in item_tables:
                grads[k].index_add_(0, touched, total)
            else:
                grads[k] += total
    for k, g in grads.items():
        g.add_(torch.randn(g.shape, generator=generator) * (sigma * dp.max_grad_norm))
        g.div_(expected_users)
    return grads


def record(dp: UserLevelDP, sigma: float, mechanisms: list[tuple[float, int]]) -> dict:
    """What a private fit spent, for its manifest: the mechanisms, sigma and the accountant's epsilon."""
    history = [(sigma, q, n) for q, n in mechanisms]
    return {"unit": "user", "accountant": ACCOUNTANT, "delta": dp.delta, "target_epsilon": dp.epsilon,
            "noise_multiplier": sigma, "max_grad_norm": dp.max_grad_norm, "mechanisms": [list(m) for m in history],
            "epsilon": spent_epsilon(history, dp.delta), "settings": asdict(dp)}


def composed(records: list[dict], delta: float | None = None, target: float | None = None) -> dict | None:
    """The privacy of a model made of several private fits on the same users: their mechanisms composed,
    epsilon at `delta` (default: the parts' own, for parts calibrated together) (None when no part is
    private; a part trained without privacy makes the whole epsilon infinite)."""
    if not any(records):
        return None
    if not all(records):
        return {"unit": "user", "epsilon": float("inf"), "delta": max(r["delta"] for r in records if r)}
    delta = records[0]["delta"] if delta is None else delta
    history = [tuple(m) for r in records for m in r["mechanisms"]]
    return {"unit": "user", "accountant": ACCOUNTANT, "delta": delta, "epsilon": spent_epsilon(history, delta),
            "target_epsilon": records[0]["target_epsilon"] if target is None else target, "parts": len(records), "mechanisms": [list(m) for m in history]}
