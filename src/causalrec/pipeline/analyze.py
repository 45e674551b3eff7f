"""Stage analyze: the causal analysis of params.analyze (graph -> identify -> estimate -> refute),
written to artifacts/analysis/ (report.html, report.json, graph.png, forest.png/csv). With no data
configured it analyses the simulated promotion funnel, whose true effects go to
artifacts/analysis_truth/ (never read by the analysis)."""
from __future__ import annotations

from causalrec.config import Params
from causalrec.pipeline.paths import StageError, require, stage_paths


def analyze(params: Params) -> dict:
    from causalrec.causal.graph import CausalGraph
    from causalrec.causal.report import analyze_to, read_rows

    cfg, d = params.analyze, stage_paths(params)
    if not cfg.enabled:
        return {"enabled": False}
    graph = CausalGraph.load(require(cfg.graph, "analyze"))
    if (graph.treatment, graph.outcome) != (cfg.treatment, cfg.outcome):
        raise StageError(f"analyze: params name treatment {cfg.treatment!r} and outcome {cfg.outcome!r}, the graph "
                         f"{cfg.graph} has {graph.treatment!r} and {graph.outcome!r}")
    if cfg.data is None:
        from causalrec.data.funnel import FunnelConfig, simulate_funnel

        # the sample and its truth are written apart from data/; the analysis reads the sample only
        simulate_funnel(FunnelConfig(seed=params.seed), d["analysis_truth"], d["analysis_truth"])
        rows = read_rows(d["analysis_truth"] / "funnel.parquet")
    else:
        rows = read_rows(require(cfg.data, "analyze"))
    report, page = analyze_to(rows, graph, d["analysis"], cfg.cluster, params.seed,
                              placebo_simulations=cfg.placebo_simulations, nuisance=cfg.nuisance)
    total = report["estimate"]["effects"][report["estimate"]["headline"]]["total"]
    return {"report": str(page), "total_effect": round(total["value"], 4),
            "total_ci95": [round(x, 4) for x in total["ci95"]],
            "refutations_passed": f"{report['refutations_passed']}/{len(report['refute'])}",
            "graph_consistent_with_data": report["model"]["graph_consistent_with_data"],
            "nuisance_models": report["estimate"]["nuisance_models"], "variance": report["estimate"]["variance"],
            "warnings": report["warnings"]}
