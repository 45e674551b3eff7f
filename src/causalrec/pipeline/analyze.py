"""Stage analyze: the causal analysis of params.analyze (graph -> identify -> estimate -> refute),
written to artifacts/analysis/ (report.html, report.json, graph.png, forest.png/csv). With no data
configured it analyses the simulated promotion funnel, whose true effects go to
artifacts/analysis_truth/ (never read by the analysis)."""
from __future__ import annotations

from causalrec.config import Params
from causalrec.pipeline.paths import StageError, require, stage_paths


def analyze(params: Params) -> dict:
    from causalrec.causal.analysis import analyze as run_analysis
    from causalrec.causal.graph import CausalGraph
    from causalrec.causal.report import write_report

    cfg, d = params.analyze, stage_paths(params)
    if not cfg.enabled:
        return {"enabled": False}
    graph = CausalGraph.load(require(cfg.graph, "analyze"))
    if (graph.treatment, graph.outcome) != (cfg.treatment, cfg.outcome):
        raise StageError(f"analyze: params name treatment {cfg.treatment!r} and outcome {cfg.outcome!r}, the graph "
                         f"{cfg.graph} has {graph.treatment!r} and {graph.outcome!r}")
    if cfg.data is None:
        from causalrec.data.funnel import FunnelConfig, draw_funnel, simulate_funnel

        world = FunnelConfig(seed=params.seed)
        simulate_funnel(world, d["analysis_truth"], d["analysis_truth"])  # truth (and its sample) kept apart
        rows = draw_funnel(world)
    else:
        import pandas as pd

        path = require(cfg.data, "analyze")
        rows = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if cfg.cluster is not None and cfg.cluster not in rows.columns:
        raise StageError(f"analyze: analyze.cluster {cfg.cluster!r} is not a column of the data")
    report = run_analysis(rows, graph, cluster=cfg.cluster, seed=params.seed)
    page = write_report(report, graph, d["analysis"])
    total = report["estimate"]["effects"][report["estimate"]["headline"]]["total"]
    return {"report": str(page), "total_effect": round(total["value"], 4),
            "total_ci95": [round(x, 4) for x in total["ci95"]],
            "refutations_passed": f"{report['refutations_passed']}/{len(report['refute'])}",
            "graph_consistent_with_data": report["model"]["graph_consistent_with_data"]}
