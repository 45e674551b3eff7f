"""Write an analysis (causal.analysis.analyze) as files a person looks at, into one directory at once:
report.json, graph.png, forest.png (segment and total effects with 95% intervals), forest.csv
(for `dvc plots`) and report.html (graph, effects, mediation split, refutations, independences).
`read_rows` + `analyze_to` are what the CLI and the pipeline stage both call."""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from causalrec.causal.analysis import share_mediated
from causalrec.causal.graph import CausalGraph, GraphError
from causalrec.io import atomic_dir


def read_rows(path: str | Path) -> pd.DataFrame:
    """The analysis table: parquet by suffix, else CSV; a missing or damaged file is named."""
    from causalrec.data.schema import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # a damaged file: name it, not the reader's internals
        raise DataError(f"{path}: cannot be read as {'parquet' if path.suffix == '.parquet' else 'CSV'} ({exc})") from None


def analyze_to(rows: pd.DataFrame, graph: CausalGraph, out_dir: str | Path, cluster: str | None = None,
               seed: int = 0, **options) -> tuple[dict, Path]:
    """Run the four steps on `rows` and write the report directory; returns (report, report.html).
    options: causal.analysis.analyze's (e.g. placebo_simulations)."""
    from causalrec.causal.analysis import analyze

    if cluster is not None and cluster not in rows.columns:
        raise GraphError(f"no column {cluster!r} to cluster on in the data")
    report = analyze(rows, graph, cluster=cluster, seed=seed, **options)
    return report, write_report(report, graph, out_dir)


def _forest(effects: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(effects)
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 1.2))
    for i, name in enumerate(names):
        lo, hi = effects[name]["ci95"]
        ax.plot([lo, hi], [i, i], color="#29335c", lw=2)
        ax.plot(effects[name]["value"], i, "o", color="#e4572e")
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("effect on the outcome (95% interval)")
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)


def _table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0)


def _with_ci(e: dict) -> str:
    return f"{e['value']:+.4f} [{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}]"


def write_report(report: dict, graph: CausalGraph, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    headline = report["estimate"]["effects"][report["estimate"]["headline"]]
    with atomic_dir(out_dir) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str))
        graph.draw(tmp / "graph.png")
        _forest(headline, tmp / "forest.png")
        pd.DataFrame([{"effect": k, "value": v["value"], "low": v["ci95"][0], "high": v["ci95"][1]}
                      for k, v in headline.items()]).to_csv(tmp / "forest.csv", index=False)
        effect_rows = [{"estimator": est, "effect": k, "value": v["value"], "se": v["se"], "ci95 low": v["ci95"][0],
                        "ci95 high": v["ci95"][1]} for est, eff in report["estimate"]["effects"].items() for k, v in eff.items()]
        split = ""
        if "indirect" in headline:
            share = share_mediated(headline)
            split = (f"<p>Of the total effect {headline['total']['value']:.4f}, {headline['direct']['value']:.4f} is direct "
                     f"and {headline['indirect']['value']:.4f} goes through <b>{html.escape(report['identify']['mediator'])}"
                     f"</b> ({'n/a' if share is None else f'{share:.0%}'} mediated).</p>")
        by_segment = report["estimate"].get("mediation_by_segment") or {}
        if by_segment:
            split += "<p>The split within each segment:</p>" + _table(
                [{"segment": seg, **{f"{k} (95% CI)": _with_ci(row[k]) for k in ("total", "direct", "indirect")},
                  "share mediated": row["share_mediated"]}
                 for seg, row in by_segment.items()])
        ident = report["identify"]
        est = report["estimate"]
        spec = est.get("specification_check") or {}
        nuisances = (f"<p>Nuisance models ({html.escape(str(est.get('nuisance')))}, cross-fitted): "
                     + ", ".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in (est.get("nuisance_models") or {}).items())
                     + ". Specification check of the logit-linear form (held-out log loss, linear vs boosted): "
                     + ("not run" if not spec.get("ran") else "passed" if spec["passed"] else
                        f"<b>failed for {html.escape(', '.join(spec['flagged']))}</b>") + ". Standard errors: "
                     + html.escape(str(est.get("variance", "influence function"))) + ".</p>")
        warnings = report.get("warnings") or []
        warn = ("<div style='border:2px solid #e4572e;padding:0 1em'><h2>Warnings</h2><ul>"
                + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul></div>") if warnings else ""
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>causal analysis: {html.escape(report['model']['graph'])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}} table{{border-collapse:collapse}} td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>Causal analysis: {html.escape(report['model']['graph'])}</h1>{warn}
<h2>1. Model</h2><img src="graph.png" width="640"><p>Testable implications of the graph on the data
({'all hold' if report['model']['graph_consistent_with_data'] else '<b>some fail: the graph contradicts the data</b>'}):</p>
{_table(report['model']['implied_independences']) if report['model']['implied_independences'] else '<p>none</p>'}
<h2>2. Identify</h2><p>Effect of <b>{html.escape(ident['treatment'])}</b> on <b>{html.escape(ident['outcome'])}</b>:
{ident['strategy']} adjustment for {html.escape(', '.join(ident['adjustment_set']) or 'nothing')}.</p>
<h2>3. Estimate</h2><p>Headline estimator: {report['estimate']['headline']} ({report['estimate']['n_rows']} rows).</p>{nuisances}
{split}<img src="forest.png" width="560">{_table(effect_rows)}
<h2>4. Refute</h2>{_table(report['refute'])}
</body></html>"""
        (tmp / "report.html").write_text(page)
    return out_dir / "report.html"
