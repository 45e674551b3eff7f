"""Causal analysis: the graph as data, identification, effects with intervals against known truth,
refutation, and the CLI's report."""
import json

import pytest
from typer.testing import CliRunner

from causalrec.causal.analysis import analyze
from causalrec.causal.graph import CausalGraph, GraphError, NotIdentifiable
from causalrec.cli import app
from causalrec.data.funnel import FunnelConfig, draw_funnel, true_effects
from conftest import REPO

FUNNEL = REPO / "graphs" / "funnel.yaml"


def _graph(edges, **roles):
    return CausalGraph({n: {"role": r.replace("latent_", ""), **({"observed": False} if r.startswith("latent_") else {})}
                        for n, r in roles.items()}, edges)


@pytest.mark.parametrize("nodes, edges, fragment", [
    ({"t": "treatment", "y": "outcome", "x": "cause"}, [], "unknown role"),
    ({"t": "treatment", "y": "outcome"}, [("t", "z")], "undeclared node(s) ['z']"),
    ({"t": "treatment", "y": "outcome", "m": "mediator"}, [("t", "m"), ("m", "y"), ("y", "t")], "cycle"),
    ({"t": "treatment", "u": "treatment", "y": "outcome"}, [], "exactly one node must have role 'treatment'"),
])
def test_malformed_graphs_are_named(nodes, edges, fragment):
    with pytest.raises(GraphError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _graph(edges, **nodes)


def test_identification_backdoor_frontdoor_or_a_clear_error():
    assert CausalGraph.load(FUNNEL).identify().adjustment == ("popularity", "segment")
    confounded = [("u", "t"), ("u", "y"), ("t", "m"), ("m", "y")]
    assert _graph(confounded, t="treatment", y="outcome", m="mediator", u="latent_confounder").identify().strategy == "frontdoor"
    with pytest.raises(NotIdentifiable, match="no observed backdoor set"):
        _graph([("u", "t"), ("u", "y"), ("t", "y")], t="treatment", y="outcome", u="latent_confounder").identify()


def test_effects_cover_the_truth_and_refuters_pass_on_the_right_graph():
    """12 independent samples of the funnel: each effect's 95% interval covers the truth in at least 9
    (P(fewer) < 0.3% at nominal coverage), and the mean estimate is within 3 Monte Carlo errors of it."""
    import numpy as np

    truth = true_effects(FunnelConfig())
    keys = ("total", "direct", "indirect", "segment=0", "segment=1")
    hits, errors, placebo_passed, consistent = {k: 0 for k in keys}, {k: [] for k in keys}, 0, 0
    for seed in range(12):
        # the cross-fitted logistic nuisances: what "auto" chose for every nuisance in all 200 home-funnel
        # replications of benchmarks/causal_effects.py (auto itself: the next test and the benchmark)
        report = analyze(draw_funnel(FunnelConfig(seed=100 + seed, n_impressions=4000)), CausalGraph.load(FUNNEL),
                         cluster="item_id", seed=seed, placebo_simulations=19, nuisance="logistic")
        effects = report["estimate"]["effects"]["doubly_robust"]
        for key in keys:
            lo, hi = effects[key]["ci95"]
            hits[key] += lo <= truth[key] <= hi
            errors[key].append(effects[key]["value"] - truth[key])
        consistent += report["model"]["graph_consistent_with_data"]
        placebo_passed += report["refute"][0]["passed"]
    for key in keys:
        err = np.array(errors[key])
        assert hits[key] >= 9, (key, hits[key])
        assert abs(err.mean()) < 3 * err.std(ddof=1) / np.sqrt(len(err)), (key, err.mean())
    assert placebo_passed >= 10 and consistent >= 10  # the right graph is rarely rejected
    assert np.mean(errors["segment=1"]) + truth["segment=1"] > np.mean(errors["segment=0"]) + truth["segment=0"]


def test_placebo_and_randomization_refuters_tell_a_null_effect_from_a_real_one():
    """The same permuted treatments serve two checks. In a world where the promotion does nothing, the
    placebo effects centre on 0 (DoWhy's placebo refuter passes: the estimator finds nothing where
    there is nothing) and the estimate is one of the crowd (the randomization test fails); with the
    real effect the estimate lies outside all 39 placebos (p = 1/40)."""
    null_world = FunnelConfig(seed=5, n_impressions=3000, click=(-1.0, 0.0, 0.5, 0.3, 0.0),
                              purchase=(-2.0, 0.0, 1.5, 0.6, 0.2, 0.0))
    assert true_effects(null_world)["total"] == 0
    graph = CausalGraph.load(FUNNEL)

    def refuters(cfg):
        rows = analyze(draw_funnel(cfg), graph, cluster="item_id", placebo_simulations=39)["refute"]
        return {r["refuter"]: r for r in rows}

    null, real = refuters(null_world), refuters(FunnelConfig(seed=5, n_impressions=3000))
    assert null["placebo treatment"]["simulations"] == 39 and null["placebo treatment"]["passed"]
    assert not null["randomization test"]["passed"] and null["randomization test"]["p_value"] > 0.05
    assert real["placebo treatment"]["passed"] and real["randomization test"]["passed"]
    assert real["randomization test"]["p_value"] == 1 / 40
    placebo = real["placebo treatment"]
    assert abs(placebo["new_effect"]) < 3 * placebo["placebo_sd"] / 39 ** 0.5 + 1e-3  # the placebos centre on 0


def test_a_graph_without_the_confounding_edge_is_flagged_by_its_implications():
    data = draw_funnel(FunnelConfig(seed=3))
    wrong = CausalGraph.load(FUNNEL).without_edge("popularity", "promoted")
    failed = [c["independence"] for c in wrong.check(data) if not c["holds"]]
    assert failed == ["popularity _||_ promoted"]


def test_cli_analyze_writes_the_report_and_names_bad_input(tmp_path):
    data = tmp_path / "funnel.parquet"
    draw_funnel(FunnelConfig(seed=1, n_impressions=3000)).to_parquet(data)
    runner = CliRunner()
    res = runner.invoke(app, ["analyze", "--spec", str(FUNNEL), "--data", str(data), "--cluster", "item_id",
                              "--out", str(tmp_path / "analysis"), "--placebo-simulations", "19"])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "analysis" / "report.html").read_text()
    for section in ("1. Model", "2. Identify", "3. Estimate", "4. Refute", "mediated", "forest.png", "graph.png"):
        assert section in page
    assert json.loads((tmp_path / "analysis" / "report.json").read_text())["identify"]["strategy"] == "backdoor"
    res = runner.invoke(app, ["analyze", "--spec", str(FUNNEL), "--data", str(data), "--cluster", "shop"])
    assert res.exit_code == 2 and "no column 'shop'" in res.output
    draw_funnel(FunnelConfig(seed=1, n_impressions=500)).drop(columns=["clicked"]).to_parquet(tmp_path / "less.parquet")
    res = runner.invoke(app, ["graph", "--spec", str(FUNNEL), "--data", str(tmp_path / "less.parquet"),
                              "--out", str(tmp_path / "g.svg")])
    assert res.exit_code == 2 and "['clicked'] are not columns" in res.output


@pytest.mark.slow
def test_causal_effects_benchmark_tiny(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "causal_effects.py", "--replications", "3", "--impressions", "2000",
                           "--placebo-simulations", "19", "--shapes", "home", "nonlinear_confounding", "--shape-replications", "1",
                           "--out", str(tmp_path)], cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "causal_effects.json").read_text())
    assert result["replications"] == 3 and {"total", "direct", "indirect", "segment=0", "segment=1",
                                            "segment=1 direct", "segment=1 indirect"} <= set(result["effects"])
    assert {"bias", "rmse", "coverage", "bias_over_se"} <= set(result["effects"]["total"])
    assert result["refuters"]["wrong_graph_detection_rate"] == 1.0
    shapes = result["shapes"]  # the coverage table over funnel shapes, with the specification check's rates
    assert set(shapes) == {"home", "nonlinear_confounding"} and {"bias", "coverage"} <= set(shapes["home"]["total"])
    assert result["summary"]["worst_coverage"] <= result["summary"]["best_coverage"]
    assert shapes["nonlinear_confounding"]["specification_flag_rate"] == result["misspecification"]["detection_rate"]
    assert shapes["home"]["specification_flag_rate"] == result["misspecification"]["false_alarm_rate"]


@pytest.mark.slow
def test_flexible_nuisances_survive_nonlinear_confounding_and_the_check_flags_the_linear_form():
    """Popularity entering promotion, click and purchase through thresholds, a curve and an interaction:
    the logit-linear nuisances are biased (the interval misses the truth) and the specification check
    flags them; "auto" (boosted trees where they predict held-out rows better) covers. In the home
    funnel, where the linear form is right, the check raises no alarm."""
    import numpy as np

    graph = CausalGraph.load(FUNNEL)
    world = FunnelConfig(shape="nonlinear_confounding")
    truth = true_effects(world)["total"]
    covered, flagged, linear_errors = 0, 0, []
    for seed in range(3):
        data = draw_funnel(FunnelConfig(**{**world.__dict__, "seed": 200 + seed}))
        auto = analyze(data, graph, cluster="item_id", seed=seed, placebo_simulations=19)
        lo, hi = auto["estimate"]["effects"]["doubly_robust"]["total"]["ci95"]
        covered += lo <= truth <= hi
        spec = auto["estimate"]["specification_check"]
        flagged += spec["ran"] and not spec["passed"]
        assert auto["estimate"]["nuisance_models"]["outcome"] == "boosting"
        assert any("misspecified" in w for w in auto["warnings"])
        linear = analyze(data, graph, cluster="item_id", seed=seed, placebo_simulations=19, nuisance="logistic")
        linear_errors.append(linear["estimate"]["effects"]["doubly_robust"]["total"]["value"] - truth)
    assert covered >= 2 and flagged == 3
    assert np.mean(linear_errors) > 0.03  # the linear nuisances' bias the flexible ones remove
    home = analyze(draw_funnel(FunnelConfig(seed=7)), graph, cluster="item_id", placebo_simulations=19)
    assert home["estimate"]["specification_check"]["passed"] and not home["warnings"]


def test_the_report_warns_when_the_graph_leaves_out_a_confounder():
    """The refuters re-use the graph's adjustment set, so a graph without popularity -> promoted passes
    them all; the report's warnings say that the data reject the graph's implications."""
    wrong = CausalGraph.load(FUNNEL).without_edge("popularity", "promoted")
    report = analyze(draw_funnel(FunnelConfig(seed=3)), wrong, cluster="item_id", placebo_simulations=19,
                     nuisance="logistic")
    assert not report["model"]["graph_consistent_with_data"]
    assert any("implied independences" in w and "confounder" in w for w in report["warnings"])


def test_poor_overlap_switches_to_the_grouped_jackknife_declared_up_front():
    """Under poor overlap (promotion nearly fixed by popularity: a fifth of rows at the propensity clip)
    the IF SE misses the nuisances' estimation error; the SE is then the delete-a-group jackknife over
    item groups with every nuisance refitted, and the interval uses t with groups - 1 df. With good
    overlap, nothing changes: the IF SE."""
    import numpy as np
    from scipy import stats

    from causalrec.causal.effects import JACKKNIFE_GROUPS, DoublyRobust

    data = draw_funnel(FunnelConfig(n_items=200, n_impressions=3000, shape="poor_overlap", seed=10_033))
    report = analyze(data, CausalGraph.load(FUNNEL), cluster="item_id", placebo_simulations=19, nuisance="logistic")
    assert report["estimate"]["variance"].startswith("grouped jackknife")
    assert any(w.startswith("poor overlap") and "jackknife" in w for w in report["warnings"])
    total = report["estimate"]["effects"]["doubly_robust"]["total"]
    assert total["df"] == JACKKNIFE_GROUPS - 1
    assert total["ci95"][1] - total["value"] == pytest.approx(stats.t.ppf(0.975, JACKKNIFE_GROUPS - 1) * total["se"])
    # the segment's leave-one-group-out estimates are the refits' own estimates on the rows they kept
    dr = DoublyRobust("promoted", "purchased", ["popularity"], "clicked", ["segment"], "item_id", nuisance="logistic").fit(data)
    keep, _ = dr.jackknife_[0]
    refit = DoublyRobust("promoted", "purchased", ["popularity"], "clicked", ["segment"], "item_id", nuisance="logistic",
                         jackknife=False)
    refit._fold_ids = dr.fold_ids_[keep]  # the same cross-fitting folds: only the deleted group differs
    refit.fit(data[keep].reset_index(drop=True))
    seg = data["segment"].to_numpy() == 1
    leave_out = [float((psi[(1, 1, "total")] - psi[(0, 0, "total")])[seg[k]].mean()) for k, psi in dr.jackknife_]
    assert leave_out[0] == pytest.approx(refit.total(seg[keep]).value)
    assert dr.total(seg).se == pytest.approx(np.sqrt((len(leave_out) - 1) / len(leave_out)
                                                     * np.sum((np.array(leave_out) - np.mean(leave_out)) ** 2)))
    home = DoublyRobust("promoted", "purchased", ["popularity"], "clicked", ["segment"], "item_id",
                        nuisance="logistic").fit(draw_funnel(FunnelConfig(seed=7)))
    assert home.variance == "influence function" and home.total().df is None
