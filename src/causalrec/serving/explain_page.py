"""An explanation (RecommenderCore.explain) as a page a person reads: what the model scores, which
parts of the score drove it, the text neighbours in the user's history, the uplift with its
interval, and the causal analysis' split of the effect for the user's segment, beside its graph.

`write_explanation(explanation, out_dir, graph_png)` writes explanation.html, explanation.json,
drivers.png and graph.png into `out_dir` at once (replaced whole).
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pandas as pd

from causalrec.io import atomic_dir


def _drivers_chart(parts: dict[str, float], scale: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(parts)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(names, [parts[n] for n in names], color=["#e4572e" if parts[n] < 0 else "#29335c" for n in names])
    ax.axvline(0, color="grey", lw=1)
    ax.invert_yaxis()
    ax.set_xlabel(f"contribution to the score ({scale} scale; the parts sum to it)")
    fig.savefig(path, bbox_inches="tight", dpi=110)
    plt.close(fig)


def _esc(value) -> str:
    return html.escape(str(value))


def _ci(e: dict | None) -> str:
    return "n/a" if e is None else f"{e['value']:+.4f} [{e['ci95'][0]:+.4f}, {e['ci95'][1]:+.4f}]"


def write_explanation(explanation: dict, out_dir: str | Path, graph_png: Path | None = None) -> Path:
    out_dir, e = Path(out_dir), explanation
    with atomic_dir(out_dir) as tmp:
        (tmp / "explanation.json").write_text(json.dumps(e, indent=2))
        sections = [f"<h1>Why {_esc(e['title'])} for {_esc(e['user_id'])}</h1>",
                    "<ul>" + "".join(f"<li>{_esc(r)}</li>" for r in e["reasons"]) + "</ul>",
                    f"<p>Relevance (P(outcome | shown)): <b>{e['score']:.4f}</b>"
                    + ("" if e["uplift"] is None else f"; uplift of recommending: <b>{e['uplift']:+.4f}</b>")
                    + ("" if e.get("uplift_interval") is None else
                       f", 5&ndash;95% range over {e['uplift_members']} bootstrap models "
                       f"[{e['uplift_interval'][0]:+.4f}, {e['uplift_interval'][1]:+.4f}]") + "</p>"]
        if e.get("score_drivers"):
            d = e["score_drivers"]
            _drivers_chart(d["parts"], d["scale"], tmp / "drivers.png")
            sections += ["<h2>What drove the score</h2><img src='drivers.png' width='560'>",
                         pd.DataFrame([{"part": k, "contribution": v} for k, v in d["parts"].items()]).to_html(
                             index=False, float_format=lambda v: f"{v:+.4f}", border=0)]
        if e.get("similar_in_history"):
            sections += ["<h2>Items in the user's history nearest in text</h2>",
                         pd.DataFrame(e["similar_in_history"]).to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)]
        m = e.get("mediation")
        if m is not None:
            share = m.get("share_mediated")
            sections += [f"<h2>The causal analysis for this user's segment ({_esc(m['segment_label'])})</h2>",
                         f"<p>Effect of <b>{_esc(m['treatment'])}</b> on <b>{_esc(m['outcome'])}</b> "
                         f"({_esc(m['estimator'])}, graph <i>{_esc(m['graph'])}</i>; refuters passed {_esc(m['refutations_passed'])}):</p>",
                         pd.DataFrame([{"effect": k, "estimate [95% CI]": _ci(m.get(k))} for k in ("total", "direct", "indirect")]
                                      ).to_html(index=False, border=0),
                         f"<p>Share through <b>{_esc(m['mediator'])}</b>: "
                         f"{'n/a' if share is None else f'{share:.0%}'} (a ratio of estimates: unstable when the "
                         f"total's interval covers 0).</p>"]
            if m.get("nuisance_models"):
                check = m.get("specification_check_passed")
                sections.append(f"<p>Nuisance models: {_esc(', '.join(f'{k}: {v}' for k, v in m['nuisance_models'].items()))}; "
                                "specification check of the linear form: "
                                f"{'not run' if check is None else 'passed' if check else '<b>failed</b>'}.</p>")
            sections += [f"<p style='color:#e4572e'><b>Warning:</b> {_esc(w)}</p>" for w in m.get("warnings") or []]
            if graph_png is not None:
                shutil.copy2(graph_png, tmp / "graph.png")
                sections.append("<img src='graph.png' width='640' alt='the causal graph'>")
        (tmp / "explanation.html").write_text(
            "<!doctype html><html><head><meta charset='utf-8'><title>explanation</title><style>body{font-family:sans-serif;"
            "max-width:960px;margin:2em auto} table{border-collapse:collapse} td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
            "</style></head><body>" + "\n".join(sections) + "</body></html>")
    return out_dir / "explanation.html"
