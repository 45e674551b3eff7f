"""DoWhy and EconML defaults beside causalrec's analysis, on the same funnel replications.

    make dowhy-venv                                   # .venv-dowhy: DoWhy 0.14 + EconML, scipy 1.15.3
    .venv-dowhy/bin/python benchmarks/causal_effects_dowhy.py [--replications 100] [--shapes ... --shape-replications 20]
    .venv-dowhy/bin/python benchmarks/causal_effects_dowhy.py --replications 0 --shapes ... --name causal_effects_dowhy_shapes

DoWhy 0.14 needs scipy 1.15.3, which the project's lock (scipy 1.17.1) does not allow, so this
reference runs in its own environment (`make dowhy-venv`, never imported by the package). It draws
the same samples as causal_effects.py (seed = replication, same world) and runs on each:
* causalrec: `causal.analysis.analyze` (the headline: doubly robust, item-clustered intervals);
* DoWhy defaults: `CausalModel` on the same graph, `identify_effect`, then `backdoor.linear_regression`
  and `backdoor.propensity_score_weighting` with `confidence_intervals=True` (total effect);
  `mediation.two_stage_regression` on the `nonparametric-nde` / `nonparametric-nie` estimands
  (natural direct / indirect); the `placebo_treatment_refuter` (permute, 100 simulations);
* EconML: `LinearDML(discrete_treatment=True)`, X = segment, W = popularity, as shipped, with a
  logistic treatment model, and with gradient-boosted nuisances (cross-fitted, as EconML does): the
  effect in each segment and the average (`effect_interval`, `ate_interval`).
Writes results/causal_effects_dowhy.json: bias, RMSE, coverage per method and effect, and the
placebo refuters' false alarm rates (the true effect is non-zero).
"""
from __future__ import annotations

import argparse
import logging
import warnings

import numpy as np
from tqdm.auto import tqdm

from _common import REPO, write_result
from causalrec.causal.analysis import HEADLINE, analyze
from causalrec.causal.graph import CausalGraph
from causalrec.data.funnel import SHAPES, FunnelConfig, draw_funnel, true_effects


def _row(value, lo, hi, truth):
    return (float(value) - truth, float(lo) - truth, float(hi) - truth)


def summarise(rows) -> dict:
    a = np.array(rows, float)
    bounded = np.isfinite(a[:, 1]) & np.isfinite(a[:, 2])  # point estimates only: no coverage
    return {"bias": float(a[:, 0].mean()), "rmse": float(np.sqrt((a[:, 0] ** 2).mean())),
            "coverage": float(np.mean((a[bounded, 1] <= 0) & (0 <= a[bounded, 2]))) if bounded.any() else None,
            "n": len(a)}


def dowhy_estimates(data, graph: CausalGraph, rep: int, placebo_simulations: int, mediation_intervals: bool = True) -> dict:
    """mediation_intervals: DoWhy's bootstrap intervals of the natural direct / indirect effects (about
    75 s a sample of 8,000 rows on a 2-core machine); without them, its point estimates."""
    from dowhy import CausalModel

    model = CausalModel(data=data.drop(columns="item_id"), treatment="promoted", outcome="purchased", graph=graph.dag)
    total = model.identify_effect(proceed_when_unidentifiable=True)
    out = {}
    for method in ("backdoor.linear_regression", "backdoor.propensity_score_weighting"):
        est = model.estimate_effect(total, method_name=method, confidence_intervals=True)
        lo, hi = np.ravel(est.get_confidence_intervals())[:2]
        out[f"dowhy {method.split('.')[1]}"] = {"total": (est.value, lo, hi)}
        if method == "backdoor.linear_regression" and placebo_simulations:
            placebo = model.refute_estimate(total, est, method_name="placebo_treatment_refuter", placebo_type="permute",
                                            num_simulations=placebo_simulations, random_seed=rep)
            # DoWhy's verdict: the placebo effects are significantly away from 0 -> the refuter fails
            out["dowhy_placebo_failed"] = bool(placebo.refutation_result["is_statistically_significant"])
    for kind, name in (("nonparametric-nde", "direct"), ("nonparametric-nie", "indirect")):
        estimand = model.identify_effect(estimand_type=kind, proceed_when_unidentifiable=True)
        est = model.estimate_effect(estimand, method_name="mediation.two_stage_regression",
                                    confidence_intervals=mediation_intervals)
        lo, hi = np.ravel(est.get_confidence_intervals())[:2] if mediation_intervals else (np.nan, np.nan)
        out["dowhy linear_regression"][name] = (est.value, lo, hi)
    return out


def econml_estimates(data, rep: int) -> dict:
    """LinearDML as shipped (its default treatment model is a random forest, which nearly memorises an
    item-level treatment from the item's popularity), with a logistic treatment model (causalrec's
    linear nuisance family), and with gradient-boosted nuisances of the settings causalrec's
    flexible ones use (causal.effects._boosting): the baseline gets the same care."""
    from econml.dml import LinearDML
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression

    trees = {"max_iter": 150, "learning_rate": 0.05, "max_leaf_nodes": 8, "min_samples_leaf": 40,
             "l2_regularization": 1.0, "early_stopping": False, "random_state": 0}

    y, t = data["purchased"].to_numpy(float), data["promoted"].to_numpy(int)
    x, w = data[["segment"]].to_numpy(float), data[["popularity"]].to_numpy(float)
    levels, out = np.array([[0.0], [1.0]]), {}
    for name, kw in (("econml LinearDML (defaults)", {}), ("econml LinearDML (logistic T model)",
                                                           {"model_t": LogisticRegression(max_iter=1000)}),
                     ("econml LinearDML (boosted nuisances)", {"model_t": HistGradientBoostingClassifier(**trees),
                                                               "model_y": HistGradientBoostingRegressor(**trees)})):
        est = LinearDML(discrete_treatment=True, random_state=rep, **kw).fit(y, t, X=x, W=w)
        effect, (lo, hi) = est.effect(levels), est.effect_interval(levels, alpha=0.05)
        ate, (alo, ahi) = est.ate(x), est.ate_interval(x, alpha=0.05)
        out[name] = {"total": (ate, alo, ahi), "segment=0": (effect[0], lo[0], hi[0]), "segment=1": (effect[1], lo[1], hi[1])}
    return out


def side_by_side(shape: str, args, graph: CausalGraph) -> dict:
    """Total / direct / indirect effects of every method in one funnel shape (the samples of
    causal_effects.py's shape table: seed 10,000 + replication); the refuters are compared at home."""
    world = FunnelConfig(n_items=args.items, n_impressions=args.impressions, shape=shape)
    truth = true_effects(world)
    per: dict[str, dict[str, list]] = {}
    for rep in tqdm(range(args.shape_replications), desc=shape):
        data = draw_funnel(FunnelConfig(**{**world.__dict__, "seed": 10_000 + rep}))
        ours = analyze(data, graph, cluster="item_id", seed=rep, placebo_simulations=19)
        found = {f"causalrec {HEADLINE}": {k: (v["value"], *v["ci95"]) for k, v in ours["estimate"]["effects"][HEADLINE].items()},
                 **dowhy_estimates(data, graph, rep, placebo_simulations=0, mediation_intervals=args.shape_mediation_intervals),
                 **econml_estimates(data, rep)}
        found.pop("dowhy_placebo_failed", None)
        for method, effects in found.items():
            for key, (value, lo, hi) in effects.items():
                if key in ("total", "direct", "indirect"):
                    per.setdefault(method, {}).setdefault(key, []).append(_row(value, lo, hi, truth[key]))
    return {"truth": {k: truth[k] for k in ("total", "direct", "indirect")},
            "methods": {m: {k: summarise(v) for k, v in eff.items()} for m, eff in per.items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replications", type=int, default=100)
    ap.add_argument("--impressions", type=int, default=8000)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--placebo-simulations", type=int, default=100, help="DoWhy's default for its placebo refuter")
    ap.add_argument("--shapes", nargs="*", default=[], choices=SHAPES,
                    help="also these funnel shapes (causal_effects.py's), without the placebo refuters")
    ap.add_argument("--shape-replications", type=int, default=20)
    ap.add_argument("--shape-mediation-intervals", action="store_true",
                    help="DoWhy's bootstrap intervals of direct / indirect effects on the shapes too (~75 s a sample)")
    ap.add_argument("--name", default="causal_effects_dowhy", help="results/<name>.json")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import dowhy
    import econml

    logging.getLogger("dowhy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    graph = CausalGraph.load(REPO / "graphs" / "funnel.yaml")
    world = FunnelConfig(n_items=args.items, n_impressions=args.impressions)
    truth = true_effects(world)
    per: dict[str, dict[str, list]] = {}
    alarms = {"causalrec placebo": [], "causalrec randomization test": [], "dowhy placebo": []}
    for rep in tqdm(range(args.replications), desc="replications"):
        data = draw_funnel(FunnelConfig(**{**world.__dict__, "seed": rep}))
        ours = analyze(data, graph, cluster="item_id", seed=rep)
        found = {f"causalrec {HEADLINE}": {k: (v["value"], *v["ci95"]) for k, v in ours["estimate"]["effects"][HEADLINE].items()}}
        refuted = {r["refuter"]: r["passed"] for r in ours["refute"]}
        alarms["causalrec placebo"].append(not refuted["placebo treatment"])
        alarms["causalrec randomization test"].append(not refuted["randomization test"])
        theirs = dowhy_estimates(data, graph, rep, args.placebo_simulations)
        alarms["dowhy placebo"].append(theirs.pop("dowhy_placebo_failed"))
        found.update(theirs)
        found.update(econml_estimates(data, rep))
        for method, effects in found.items():
            for key, (value, lo, hi) in effects.items():
                per.setdefault(method, {}).setdefault(key, []).append(_row(value, lo, hi, truth[key]))
    figures = {"replications": args.replications, "world": world.__dict__, "truth": truth,
               "versions": {"dowhy": dowhy.__version__, "econml": econml.__version__},
               "methods": {m: {k: summarise(v) for k, v in eff.items()} for m, eff in per.items()},
               "shape_replications": args.shape_replications,
               "shapes": {shape: side_by_side(shape, args, graph) for shape in args.shapes},
               "placebo_false_alarm_rate": {k: float(np.mean(v)) for k, v in alarms.items() if v},
               "note": "same samples as causal_effects.py (seed = replication); DoWhy/EconML with their defaults, "
                       "which do not cluster by item"}
    write_result(args.name, figures, args.out)
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2)[:4000])
