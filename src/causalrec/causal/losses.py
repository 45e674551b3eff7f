"""The ways to weigh the evidence, as one table: `LOSSES[method](batch) -> scalar loss`.

Estimand: r(u,i) = P(Y(1)=1 | u,i) over a target population D of (user, item) pairs. Outcomes are
observed on O ⊂ D with propensity p(u,i). With e = BCE(f(u,i), y) on observed rows and
ê = BCE(f(u,i), g(u,i)) the error imputed by a model g:

  naive     mean_O e                                   biased towards what the policy exposed
  ips       (1/|D|) sum_O e/p                          unbiased, high variance
  snips     sum_O e/p / sum_O 1/p                      self-normalised IPS
  dr        mean_D ê + (|O|/|D|) mean_O (e - ê)/p      doubly robust; g fixed (a naive fit, frozen)
  dr_jl     as dr, g trained on sum_O (e - ê)² / p     joint learning (Wang et al. 2019)
  mrdr_jl   as dr, g trained on sum_O (1-p)/p² (e - ê)²  more robust DR (Guo et al. 2021)
  sdr       mean_D ê + sum_O (e - ê)/p / sum_O 1/p    DR with a self-normalised correction: its
            scale no longer depends on rare tiny propensities (stabilised DR)

Bounded below by construction. With BCE, e - ê = -(y - g) logit f exactly: linear in the logit, so
on an observed pair whose imputation disagrees with its label the DR objective falls without end as
the logit runs to +-inf (a pair's two terms together are a cross-entropy against the pseudo-label
g + (y - g) / p, outside [0, 1] there). A fit on a sparse MNAR log with naive-Bayes propensities drove
its training loss to -inf while its validation loss climbed (Coat happened not to show it). The
correction therefore reads the logit clipped to +-DR_LOGIT_BOUND (`dr_correction`): inside, the
objective and its gradient are the textbook DR ones, unchanged; beyond, the correction pushes no
further and the population term BCE(f, g) >= 0 holds the score. The objective is then >= -bound *
max|y - g| / p. (Two alternatives measured and dropped: clipping the pseudo-label to [0, 1] removes
most of the correction, leaving DR's mean at 0.74 on a toy log whose truth is 0.45; a squared error
of the probability is bounded but its saturating gradient biases shared parameters, 0.07 there.)

Every trainer (in memory, streaming, uplift arms) builds a `Batch` and calls the table, so a new
estimator is one function and one entry here. Losses reduce over the last axis: rows of e with a
leading axis (candidates trained in one pass, causalrec.causal.training.Stacked) give one loss each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Batch:
    e: torch.Tensor                        # per-row loss of f on the batch's observed rows
    p: torch.Tensor                        # their propensities
    correction: torch.Tensor | None = None  # e - ê on the same observed rows, bounded (`dr_correction`; DR family)
    e_hat_pop: torch.Tensor | None = None  # imputed error on a sample of the population D (DR family)
    obs_share: float = 1.0                 # |O| / |D|: scale of the DR correction's mean


def naive(b: Batch) -> torch.Tensor:
    return b.e.mean(-1)


def ips(b: Batch) -> torch.Tensor:
    return (b.e / b.p).mean(-1)


def snips(b: Batch) -> torch.Tensor:
    return (b.e / b.p).sum(-1) / (1 / b.p).sum(-1)


DR_LOGIT_BOUND = 7.0  # |logit| the DR correction reads at most: probabilities 0.0009 .. 0.9991


def dr_correction(logits: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """e - ê = BCE(f, y) - BCE(f, g) = -(y - g) logit f on observed rows, the logit clipped to
    +-DR_LOGIT_BOUND (the module's note)."""
    return -(y - g) * logits.clamp(-DR_LOGIT_BOUND, DR_LOGIT_BOUND)


def doubly_robust(b: Batch) -> torch.Tensor:
    correction = b.correction / b.p
    return b.e_hat_pop.mean(-1) + b.obs_share * (correction.mean(-1) if correction.shape[-1] else 0.0)


def stabilised_dr(b: Batch) -> torch.Tensor:
    correction = b.correction / b.p
    return b.e_hat_pop.mean(-1) + correction.sum(-1) / (1 / b.p).sum(-1).clamp_min(1e-6)


LOSSES: dict[str, Callable[[Batch], torch.Tensor]] = {
    "naive": naive, "ips": ips, "snips": snips,
    "dr": doubly_robust, "dr_jl": doubly_robust, "mrdr_jl": doubly_robust, "sdr": stabilised_dr,
}
METHODS = tuple(LOSSES)
DR_METHODS = ("dr", "dr_jl", "mrdr_jl", "sdr")

# Joint learning: the weight of each observed row in the imputation model's squared-error loss.
# "dr" is absent: its imputation model is fit once and frozen.
IMPUTER_WEIGHTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "dr_jl": lambda p: 1 / p, "sdr": lambda p: 1 / p, "mrdr_jl": lambda p: (1 - p) / p ** 2,
}


def imputer_loss(method: str, e: torch.Tensor, e_hat: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The imputation model's loss on observed rows: predict f's error e (detached) from ê."""
    return (IMPUTER_WEIGHTS[method](p) * (e.detach() - e_hat) ** 2).mean(-1)
