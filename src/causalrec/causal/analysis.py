"""The four steps an analyst expects (DoWhy's order): model -> identify -> estimate -> refute.

`analyze(data, graph)` reads the roles from the graph (treatment, outcome, the mediator if one,
effect modifiers as segments), checks the graph's testable implications on the data, identifies the
effect, estimates total / direct / indirect / per-segment effects with two estimators and 95%
intervals, and refutes the headline estimate. Each step is a section of the returned report.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from causalrec.causal.effects import JACKKNIFE_OVERLAP_SHARE, DoublyRobust, regression
from causalrec.causal.graph import CausalGraph, GraphError
from causalrec.causal.refute import refute

HEADLINE = "doubly_robust"  # declared before any data is seen; `regression` is the linear reference


def share_mediated(split: dict) -> float | None:
    """Share of the total effect that goes through the mediator (None when the total is exactly 0).
    A point estimate: it is unstable when the total's interval covers 0."""
    total = split["total"]["value"]
    return split["indirect"]["value"] / total if total else None


def analyze(data: pd.DataFrame, graph: CausalGraph, cluster: str | None = None, seed: int = 0,
            placebo_simulations: int = 99, nuisance: str = "auto", refute_estimate: bool = True) -> dict:
    """nuisance: the headline's nuisance models (causal.effects.NUISANCES; "auto": per model, logistic
    or boosted trees by out-of-fold log loss). refute_estimate: run the refuters (False: the estimates,
    checks and warnings alone, `refute` empty: for a study that reads only those). The refuters re-estimate the total effect 100+ times on
    altered data: they use the logistic nuisances without cross-fitting (what they test, a placebo
    centring on 0, a random cause moving nothing, is not the nuisances' form, which the specification
    check tests)."""
    t, y = graph.treatment, graph.outcome
    mediators = [m for m in graph.with_role("mediator") if m in graph.observed]
    if len(mediators) > 1:
        raise GraphError(f"{graph.name}: mediation needs one mediator, the graph has {mediators}")
    mediator = mediators[0] if mediators else None
    modifiers = graph.with_role("effect_modifier")
    for col in [t, *([mediator] if mediator else [])]:
        values = set(pd.unique(data[col].dropna()))
        if not values <= {0, 1}:
            raise GraphError(f"{graph.name}: {col} must be binary 0/1 for these estimators, found {sorted(values)[:5]}")
    checks = graph.check(data)
    ident = graph.identify()
    if ident.strategy != "backdoor":
        raise GraphError(f"{graph.name}: identified by {ident.strategy}; only backdoor estimation is built")
    z = [c for c in ident.adjustment if c not in modifiers]

    def fit(df, adjustment, with_mediator=True, **options):
        return DoublyRobust(t, y, adjustment, mediator if with_mediator else None, modifiers, cluster, **options).fit(df)

    dr = fit(data, z, nuisance=nuisance, seed=seed)
    specification = dr.specification_check()
    effects = {HEADLINE: {"total": dr.total().to_dict()}}
    if mediator:
        effects[HEADLINE].update(direct=dr.direct().to_dict(), indirect=dr.indirect().to_dict())
    by_segment = {}  # the mediation split within each segment: what /explain quotes for a user's segment
    for m in modifiers:
        for level in sorted(pd.unique(data[m])):
            mask = data[m].to_numpy() == level
            effects[HEADLINE][f"{m}={level}"] = dr.total(mask).to_dict()
            if mediator:
                split = {"total": dr.total(mask).to_dict(), "direct": dr.direct(mask).to_dict(),
                         "indirect": dr.indirect(mask).to_dict()}
                by_segment[f"{m}={level}"] = {**split, "share_mediated": share_mediated(split)}
    effects["regression"] = {k: v.to_dict() for k, v in regression(data, t, y, [*z, *modifiers], mediator, cluster).items()}
    refutations = refute(data, lambda df, adj: fit(df, adj, with_mediator=False, nuisance="logistic", folds=1).total(),
                         t, y, z + modifiers, cluster=cluster, seed=seed,
                         placebo_simulations=placebo_simulations) if refute_estimate else []
    warnings = _warnings(checks, specification, dr)
    return {"model": {"graph": graph.name, "nodes": graph.nodes, "edges": [list(e) for e in graph.dag.edges],
                      "implied_independences": checks,
                      "graph_consistent_with_data": bool(all(c["holds"] for c in checks))},
            "identify": {"strategy": ident.strategy, "adjustment_set": list(ident.adjustment), "treatment": t,
                         "outcome": y, "mediator": mediator, "segments": modifiers},
            "estimate": {"headline": HEADLINE, "effects": effects, "mediation_by_segment": by_segment, "n_rows": len(data),
                         "clusters": int(data[cluster].nunique()) if cluster else None,
                         "nuisance": nuisance, "nuisance_models": dr.nuisance_models, "variance": dr.variance,
                         "out_of_fold_log_loss": {k: nu.oof_log_loss for k, nu in dr.nuisances_.items()},
                         "specification_check": specification},
            "refute": refutations, "refutations_passed": int(np.sum([r["passed"] for r in refutations])),
            "warnings": warnings}


def _warnings(checks: list[dict], specification: dict, dr: DoublyRobust) -> list[str]:
    """What the reader must know before trusting the numbers: the graph's testable implications that the
    data rejects (a missing edge, e.g. an omitted confounder: the refuters cannot see that, they re-use
    the graph's adjustment set), linear nuisance models that held-out rows reject, poor overlap. (How
    strong a hidden confounder would have to be is the robustness value in the refutation table.)"""
    out = []
    failed = [c for c in checks if not c["holds"]]
    if failed:
        out.append(f"the data rejects {len(failed)} of the graph's implied independences (e.g. {failed[0]['independence']}): "
                   "an edge the graph leaves out, such as a confounder, would bias every estimate here")
    if specification.get("ran") and not specification["passed"]:
        out.append(f"logit-linear nuisance models are misspecified for {', '.join(specification['flagged'])} (flexible "
                   "models predict held-out rows better): estimates relying on the linear form (the linear SEM, "
                   f"nuisance=logistic) are biased; the headline used {dr.nuisance_models}")
    if dr.overlap_share_at_clip > JACKKNIFE_OVERLAP_SHARE:
        out.append(f"poor overlap: {dr.overlap_share_at_clip:.0%} of rows have a propensity at the clip ({dr.clip}); "
                   "the effect there rests on the outcome models' extrapolation (intervals: "
                   f"{dr.variance.split(':')[0]})")
    return out
