"""Causal analysis against known truth: the promotion funnel (causalrec.data.funnel), replicated.

    python benchmarks/causal_effects.py [--replications 200] [--impressions 8000] [--items 400]
        [--shapes home nonlinear_confounding ...] [--shape-replications 200] [--jobs 2] [--nuisance auto]

Each replication draws a fresh sample (seed = replication) from the same world and runs the whole
analysis (causalrec.causal.analysis.analyze on graphs/funnel.yaml, clustered by item): total, natural
direct, natural indirect and per-segment effects (each segment's total and its direct / indirect
split, what /explain quotes) with 95% intervals, from the headline estimator
(declared in causal/analysis.py before any data: doubly robust) and the linear SEM as a reference;
then the refuters. Also the deliberately wrong graph (popularity -> promoted left out: popularity is
no longer a confounder) is checked against each sample. Writes results/causal_effects.json with
bias, RMSE, coverage and bias/SE per effect, the false alarm rates of the placebo refuter (its
placebo effects do not centre on 0) and of the randomization test (the real, non-zero effect looks
like a placebo's), the rate at which a single placebo's interval misses 0 (the standard error's
calibration), and the wrong graph's detection rate.
"""
from __future__ import annotations

import argparse

import numpy as np
from tqdm.auto import tqdm

from _common import REPO, write_result
from causalrec.causal.analysis import HEADLINE, analyze
from causalrec.causal.graph import CausalGraph
from causalrec.data.funnel import SHAPES, FunnelConfig, draw_funnel, true_effects

# Declared before any run: the shapes whose logit-linear nuisance models are wrong by construction (a
# threshold / curve / interaction of popularity; T x popularity; M x segment), where the specification
# check should flag them; in the others (home, poor_overlap) a flag is a false alarm.
MISSPECIFIED_SHAPES = ("nonlinear_confounding", "continuous_heterogeneity", "segment_mediator")


def summarise(rows: list[tuple[float, float, float, float]]) -> dict:
    """rows of (estimate, se, ci_low, ci_high) - truth already subtracted from estimate and interval."""
    a = np.array(rows, float)
    err, se = a[:, 0], a[:, 1]
    return {"bias": float(err.mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "coverage": float(np.mean((a[:, 2] <= 0) & (0 <= a[:, 3]))), "mean_se": float(se.mean()),
            "sd_of_estimates": float(err.std(ddof=1)), "bias_over_se": float(err.mean() / se.mean()),
            "bias_mc_error": float(err.std(ddof=1) / np.sqrt(len(err)))}


def _mean(values):
    return float(np.mean(values)) if values else None


def _shape_replication(shape: str, rep: int, items: int, impressions: int, nuisance: str) -> dict:
    """One sample of a shape (seed 10,000 + rep) and what the shape table reads from its analysis."""
    graph = CausalGraph.load(REPO / "graphs" / "funnel.yaml")
    wrong = graph.without_edge("popularity", "promoted")
    world = FunnelConfig(n_items=items, n_impressions=impressions, shape=shape)
    truth = true_effects(world)
    data = draw_funnel(FunnelConfig(**{**world.__dict__, "seed": 10_000 + rep}))
    report = analyze(data, graph, cluster="item_id", seed=rep, nuisance=nuisance, refute_estimate=False)
    rows, linear = {}, {}
    for key in ("total", "direct", "indirect"):
        e = report["estimate"]["effects"][HEADLINE][key]
        rows[key] = (e["value"] - truth[key], e["se"], e["ci95"][0] - truth[key], e["ci95"][1] - truth[key])
        r = report["estimate"]["effects"]["regression"][key]
        linear[key] = (r["value"] - truth[key], r["se"], r["ci95"][0] - truth[key], r["ci95"][1] - truth[key])
    spec = report["estimate"]["specification_check"]
    return {"rows": rows, "linear": linear, "flag": bool(spec.get("ran") and not spec["passed"]),
            "warned": bool(report["warnings"]), "models": report["estimate"]["nuisance_models"],
            "jackknife": report["estimate"]["variance"].startswith("grouped jackknife"),
            "omitted": not all(c["holds"] for c in wrong.check(data))}


def run_shape(shape: str, args) -> dict:
    """Coverage and bias of the headline's total / direct / indirect effects in one funnel shape, how often
    its specification check flags the logit-linear nuisances, how often the report warns, how often the
    jackknife SEs were used (poor overlap), and how often the graph without the confounder's edge to the
    treatment is rejected by the data. Replications in `args.jobs` worker processes (each one thread);
    the refuters are not run here (the home funnel's table measures them)."""
    from joblib import Parallel, delayed

    truth = true_effects(FunnelConfig(n_items=args.items, n_impressions=args.impressions, shape=shape))
    reps = Parallel(n_jobs=args.jobs)(delayed(_shape_replication)(shape, rep, args.items, args.impressions, args.nuisance)
                                      for rep in tqdm(range(args.shape_replications), desc=shape))
    chosen = {name: float(np.mean([r["models"][name] == "boosting" for r in reps])) for name in reps[0]["models"]}
    return {**{k: summarise([r["rows"][k] for r in reps]) for k in ("total", "direct", "indirect")},
            "truth": {k: truth[k] for k in ("total", "direct", "indirect")},
            "linear_sem": {k: summarise([r["linear"][k] for r in reps]) for k in ("total", "direct", "indirect")},
            "specification_flag_rate": float(np.mean([r["flag"] for r in reps])),
            "report_warning_rate": float(np.mean([r["warned"] for r in reps])),
            "jackknife_share": float(np.mean([r["jackknife"] for r in reps])),
            "boosting_chosen_share": chosen,
            "omitted_confounder_detection_rate": float(np.mean([r["omitted"] for r in reps]))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replications", type=int, default=200)
    ap.add_argument("--impressions", type=int, default=8000)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--placebo-simulations", type=int, default=None,
                    help="permuted treatments per placebo refutation (default: the library's, as the pipeline runs it)")
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=SHAPES,
                    help="funnel shapes for the coverage / misspecification table (none: skip it)")
    ap.add_argument("--shape-replications", type=int, default=200,
                    help="200: a coverage's Monte Carlo error is then +-0.015, small against the goal's [0.90, 0.98]")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes for the replications (each one analysis)")
    ap.add_argument("--nuisance", default="auto", help="the headline's nuisance models (causal.effects.NUISANCES)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    graph = CausalGraph.load(REPO / "graphs" / "funnel.yaml")
    wrong = graph.without_edge("popularity", "promoted")
    world = FunnelConfig(n_items=args.items, n_impressions=args.impressions)
    truth = true_effects(world)
    per = {est: {k: [] for k in truth} for est in (HEADLINE, "regression")}
    placebo_alarms, randomization_alarms, placebo_interval_misses, wrong_detected, right_rejected, passed = [], [], [], [], [], {}
    options = {} if args.placebo_simulations is None else {"placebo_simulations": args.placebo_simulations}
    from joblib import Parallel, delayed

    samples = [draw_funnel(FunnelConfig(**{**world.__dict__, "seed": rep})) for rep in range(args.replications)]
    reports = Parallel(n_jobs=args.jobs)(delayed(analyze)(data, graph, cluster="item_id", seed=rep, nuisance=args.nuisance,
                                                          **options)
                                         for rep, data in enumerate(tqdm(samples, desc="replications")))
    for data, report in zip(samples, reports):
        effects_found = {**report["estimate"]["effects"], HEADLINE: {
            **report["estimate"]["effects"][HEADLINE],  # + each segment's direct / indirect split
            **{f"{seg} {k}": split[k] for seg, split in report["estimate"]["mediation_by_segment"].items()
               for k in ("direct", "indirect")}}}
        for est, effects in effects_found.items():
            for key, e in effects.items():
                t = truth[key]
                per[est][key].append((e["value"] - t, e["se"], e["ci95"][0] - t, e["ci95"][1] - t))
        for r in report["refute"]:
            passed.setdefault(r["refuter"], []).append(r["passed"])
        rows = {r["refuter"]: r for r in report["refute"]}
        placebo_alarms.append(not rows["placebo treatment"]["passed"])
        randomization_alarms.append(not rows["randomization test"]["passed"])
        placebo_interval_misses.append(not rows["placebo treatment"]["first_placebo_interval_covers_0"])
        right_rejected.append(not report["model"]["graph_consistent_with_data"])
        wrong_detected.append(not all(c["holds"] for c in wrong.check(data)))
    shapes = {shape: run_shape(shape, args) for shape in args.shapes}
    coverages = [v["coverage"] for sh in shapes.values() for k, v in sh.items() if k in ("total", "direct", "indirect")]
    flagged = {sh: v["specification_flag_rate"] for sh, v in shapes.items()}
    figures = {
        "replications": args.replications, "world": world.__dict__, "truth": truth, "headline": HEADLINE,
        "nuisance": args.nuisance, "shape_replications": args.shape_replications,
        "shapes": shapes,
        "summary": {"worst_coverage": min(coverages) if coverages else None, "best_coverage": max(coverages) if coverages else None},
        "misspecification": {
            "misspecified_shapes": list(MISSPECIFIED_SHAPES),
            "detection_rate": _mean([flagged[sh] for sh in flagged if sh in MISSPECIFIED_SHAPES]),
            "false_alarm_rate": _mean([flagged[sh] for sh in flagged if sh not in MISSPECIFIED_SHAPES]),
            "omitted_confounder_detection_rate": _mean([v["omitted_confounder_detection_rate"] for v in shapes.values()])},
        "effects": {k: summarise(v) for k, v in per[HEADLINE].items() if v},  # none with --replications 0
        "reference_linear_sem": {k: summarise(v) for k, v in per["regression"].items() if v},
        "refuters": {} if not placebo_alarms else {"placebo_false_alarm_rate": float(np.mean(placebo_alarms)),
                     "placebo_false_alarm_mc_error": float(np.sqrt(np.mean(placebo_alarms) * (1 - np.mean(placebo_alarms))
                                                                   / len(placebo_alarms))),
                     "randomization_test_false_alarm_rate": float(np.mean(randomization_alarms)),
                     # a single placebo's 95% interval missing 0: the size of a nominal 5% test (SE calibration)
                     "placebo_interval_miss_rate": float(np.mean(placebo_interval_misses)),
                     "wrong_graph_detection_rate": float(np.mean(wrong_detected)),
                     "correct_graph_rejection_rate": float(np.mean(right_rejected)),
                     "pass_rate": {k: float(np.mean(v)) for k, v in passed.items()}},
        "goals": {"coverage": [0.90, 0.98], "abs_bias_over_se": 0.1, "placebo_false_alarm_rate": 0.05,
                  "wrong_graph_detection_rate": 0.9},
        "dowhy_econml": "results/causal_effects_dowhy.json (benchmarks/causal_effects_dowhy.py in .venv-dowhy: DoWhy 0.14 "
                        "needs scipy 1.15.3, the project pins scipy 1.17.1)",
    }
    write_result("causal_effects", figures, args.out)
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2)[:4000])
