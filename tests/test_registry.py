"""The model registry (registry.json) and the promotion gate on served traffic."""
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from causalrec.registry import Registry, RegistryError


def _entry(tag, score=0.5, data="d1"):
    return {"model_tag": tag, "encoder_tag": f"enc-{tag}", "bento_tag": f"bento-{tag}", "model": "tt_naive",
            "primary_metric": "ndcg@10", "score": score, "data_md5": data}


def test_registry_promotes_blocks_and_rolls_back_with_reasons(tmp_path):
    reg = Registry(tmp_path / "registry.json")
    assert reg.champion is None
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("x", by="test")
    for tag in ("a", "b", "c"):
        reg.register(_entry(tag))
    assert reg.alias("challenger")["model_tag"] == "c"
    reg.promote("a", "first model", by="gate")
    reg.promote("b", "better on served traffic", by="gate")
    reg.block("c", "worse on served traffic", value=0.1)
    with pytest.raises(RegistryError, match="champion already"):
        reg.promote("b", "again", by="manual")
    with pytest.raises(RegistryError, match="no model 'zzz'"):
        reg.promote("zzz", "typo", by="manual")
    event = reg.rollback("live outcome rate dropped", by="monitor")
    assert (event["tag"], event["rolled_back"], event["previous"]) == ("a", "b", "b")
    state = reg.state()
    assert state["aliases"]["champion"] == "a" and state["models"]["b"]["status"] == "rolled_back"
    assert state["models"]["c"]["status"] == "blocked" and state["events"][-2]["value"] == 0.1
    assert [e["action"] for e in state["events"]] == ["register"] * 3 + ["promote", "promote", "block", "rollback"]
    with pytest.raises(RegistryError, match="nothing to roll back to"):  # b was rolled back: never again
        reg.rollback("again", by="test")
    # every champion ever (rollback may need it) and the challenger are kept in the store
    assert reg.keep() == {f"{p}{t}" for t in ("a", "b", "c") for p in ("", "enc-", "bento-")}
    (tmp_path / "registry.json").write_text("{")
    with pytest.raises(RegistryError, match="not valid JSON"):
        reg.state()


def test_registry_cli_lists_shows_and_rolls_back(tmp_path):
    from causalrec.cli import app
    from conftest import write_params

    write_params(tmp_path, package={"build_bento": False})
    reg = Registry(tmp_path / "registry.json")
    for tag in ("m1", "m2"):
        reg.register(_entry(tag))
    run = lambda *a: CliRunner().invoke(app, [*a, "--params", str(tmp_path / "params.yaml")])  # noqa: E731
    promoted = run("registry", "promote", "m1", "--reason", "by hand")
    assert promoted.exit_code == 0, promoted.output
    assert run("registry", "promote", "m2").exit_code == 0
    listing = run("registry", "list")
    assert listing.exit_code == 0 and "m2" in listing.output and "champion" in listing.output
    shown = json.loads(run("registry", "show", "champion").output)
    assert shown["model_tag"] == "m2" and shown["events"][-1]["by"] == "manual"
    back = run("registry", "rollback", "--reason", "drop in live outcome rate")
    assert back.exit_code == 0 and json.loads(back.output)["tag"] == "m1"
    assert reg.champion["model_tag"] == "m1"
    bad = run("registry", "show", "nope")
    assert bad.exit_code == 2 and "no model 'nope'" in bad.output


def _reversed(bundle: "Path", out: "Path") -> "Path":  # noqa: F821
    """A copy of the bundle with its scores reversed (the closed-loop benchmark's bad model)."""
    import shutil

    from closed_loop import reverse_scores

    shutil.copytree(bundle, out)
    reverse_scores(out)
    return out


def _good_and_bad(bundle, tmp_path):
    """The pipeline's bundle and its reversed copy, both served and replayed with epsilon 0.5."""
    import shutil

    shutil.copytree(bundle[0], tmp_path / "good")
    good = tmp_path / "good"
    bad = _reversed(good, tmp_path / "bad")
    # the serve settings travel in each bundle's manifest
    for d in (good, bad):
        m = json.loads((d / "manifest.json").read_text())
        m["serve"]["epsilon"] = 0.5
        (d / "manifest.json").write_text(json.dumps(m))
    return good, bad


def _served_partition(champion_dir, version, params, feedback_dir, n_slates=400, k=5):
    """n_slates served by a champion (epsilon-greedy, exact propensities), outcomes from the world's
    true Y(1), written as a feedback partition. Returns (world, the users served, the slates)."""
    from causalrec.data.feedback import write_partition
    from causalrec.data.online import OnlineWorld
    from causalrec.data.simulate import World
    from causalrec.serving.core import RecommenderCore

    champion = RecommenderCore(champion_dir, seed=1, version=version)
    world = OnlineWorld(World.load(params.paths.artifacts_dir / "ground_truth" / "world"), seed=3)
    users = [f"u{u:06d}" for u in np.random.default_rng(0).integers(0, 120, n_slates)]
    slates = [champion.recommend(user, k) for user in users]
    pairs = [(n, user, j, it, slate) for n, (user, slate) in enumerate(zip(users, slates)) for j, it in enumerate(slate["items"])]
    # one round, answered at once: a pair served twice gets two independent draws
    outcome = world.respond(1, [p[1] for p in pairs], [p[3]["item_id"] for p in pairs],
                            [p[3]["propensity"] for p in pairs], version)
    rows = [{"event_id": f"{version}-{n}-{j}", "user_id": user, "item_id": it["item_id"], "outcome": float(y),
             "propensity": it["propensity"], "timestamp": pd.Timestamp("2026-11-01"), "position": j + 1,
             "policy": "serving:epsilon_greedy", "model_version": version, "request_id": slate["request_id"],
             "slate_size": slate["slate_size"], "uniform": int(slate["uniform"]), "exposed": 1, "treatment": 1}
            for (n, user, j, it, slate), y in zip(pairs, outcome)]
    write_partition(feedback_dir, {"interactions": pd.DataFrame(rows)}, {"test": True})
    return world, users, slates


def test_gate_on_served_traffic_promotes_the_better_policy_and_covers_the_truth(bundle, tmp_path):
    """Traffic served by a bad champion: the candidate that ranks well is promoted over it, the
    reverse is blocked, and each policy's SNIPS interval covers its true value on those users."""
    from causalrec.config import load_params
    from causalrec.pipeline.promote import compare, decide, served_traffic
    from causalrec.serving.core import RecommenderCore

    good, bad = _good_and_bad(bundle, tmp_path)
    params = load_params(bundle[1].root / "params.yaml").model_copy(deep=True)
    params.paths.feedback_dir = tmp_path / "feedback_data"
    # the gate on every explored slate: with params.yaml's promote.max_share 0.5, 92 slates leave the
    # good candidate's lower bound at -0.005, the price of the share on this little traffic
    params.promote = params.promote.model_copy(update={"max_share": 1.0})
    world, users, served = _served_partition(bad, "bad", params, params.paths.feedback_dir)
    traffic = served_traffic(params)  # promote.traffic = uniform: the explored half of the 400 slates ...
    n_uniform = sum(s["uniform"] for s in served)
    n_gate = int(n_uniform * params.promote.max_share)  # ... the gate's share of them (ingest trains on the rest)
    assert 150 < n_uniform < 250 and 0 < n_gate <= n_uniform
    assert traffic["request_id"].nunique() == n_gate and len(traffic) == 5 * n_gate
    # the rollback check replays every explored slate whatever the share: neither model it compares trained on them
    half = params.model_copy(update={"promote": params.promote.model_copy(update={"max_share": 0.5})})
    assert served_traffic(half)["request_id"].nunique() == int(n_uniform * 0.5)
    assert served_traffic(half, held_out=False)["request_id"].nunique() == n_uniform

    up = decide(params, {"data_md5": "x"}, good, {"data_md5": "y"}, bad)
    down = decide(params, {"data_md5": "x"}, bad, {"data_md5": "y"}, good)
    assert up["promote"] and not down["promote"], (up["reason"], down["reason"])
    assert f"snipw on {n_gate} served slates" in up["reason"]
    every = params.model_copy(update={"promote": params.promote.model_copy(update={"traffic": "all"})})
    assert len(served_traffic(every)) == 2000  # every served slate, with its marginal propensities
    assert decide(every, {"data_md5": "x"}, good, {"data_md5": "y"}, bad)["promote"]
    # truth: each policy's expected outcome per shown item on these users, from the world
    ope = compare(params, good, bad, traffic)
    for name, directory in (("candidate", good), ("champion", bad)):
        core = RecommenderCore(directory, seed=0)
        items = np.array(core.item_ids)
        value = np.mean([core.inclusion(u, 5) @ world.expected(1, [u] * len(items), items) / 5 for u in users])
        lo, hi = ope[name]["ci"]
        assert lo <= value <= hi, (name, value, ope[name])
    # a drift boost of the candidate's exploration changes what it serves, not how the gate judges it
    manifest = json.loads((good / "manifest.json").read_text())
    (good / "manifest.json").write_text(json.dumps({**manifest, "exploration_boost": {"epsilon": 0.9, "since_partition": "x"}}))
    assert RecommenderCore(good, seed=0).policy.epsilon == 0.9
    assert RecommenderCore(good, seed=0, exploration_boost=False).policy.epsilon == 0.5
    assert compare(params, good, bad, traffic)["candidate"] == ope["candidate"]


@pytest.mark.parametrize("max_slates, max_share", [(60, 1.0), (10_000, 0.25)])
def test_ingest_trains_on_the_explored_slates_the_gate_does_not_score(bundle, tmp_path, max_slates, max_share):
    """promote.max_slates and promote.max_share cap the gate's evaluation set; ingest leaves out
    exactly those rows and trains on the other uniformly drawn slates (an exploration boost's extra
    evidence, and after a drift mark the only unbiased rows the candidate can be validated on)."""
    import shutil

    from causalrec.config import load_params
    from causalrec.data.feedback import merge_into
    from causalrec.pipeline.promote import served_traffic

    good, _ = _good_and_bad(bundle, tmp_path)
    params = load_params(bundle[1].root / "params.yaml").model_copy(deep=True)
    params.paths.feedback_dir = tmp_path / "feedback_data"
    params.promote.max_slates, params.promote.max_share = max_slates, max_share
    _, _, served = _served_partition(good, "good", params, params.paths.feedback_dir)
    n_uniform = sum(s["uniform"] for s in served)
    n_gate = min(max_slates, int(n_uniform * max_share))
    assert 0 < n_gate < n_uniform
    gate = served_traffic(params)
    assert gate["request_id"].nunique() == n_gate and (gate["uniform"] == 1).all()
    shutil.copytree(params.paths.data_dir, tmp_path / "data")
    counts = merge_into(tmp_path / "data", params.paths.feedback_dir, window=1, holdout=1, holdout_slates=max_slates,
                        holdout_share=max_share)
    trained = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    assert counts["held_out_for_the_gate"] == len(gate) == 5 * n_gate and counts["interactions"] == 2000 - 5 * n_gate
    assert not set(gate["event_id"]) & set(trained["event_id"].dropna())
    assert (trained["uniform"] == 1).sum() == 5 * (n_uniform - n_gate)


@pytest.mark.parametrize("worse", ["champion", "previous"])
def test_monitor_rolls_back_a_champion_worse_than_the_previous_on_the_same_traffic(bundle, tmp_path, worse):
    """The monitor replays the champion and the one before it on the latest served traffic: the
    reversed model as champion is rolled back (the evidence recorded), the good one is kept."""
    from causalrec.config import load_params
    from causalrec.pipeline.promote import check_champion

    good, bad = _good_and_bad(bundle, tmp_path)
    params = load_params(bundle[1].root / "params.yaml").model_copy(deep=True)
    params.paths.feedback_dir, params.paths.registry = tmp_path / "feedback_data", tmp_path / "registry.json"
    order = ("good", "bad") if worse == "champion" else ("bad", "good")
    reg, dirs = Registry(params.paths.registry), {"good": good, "bad": bad}
    for tag in order:
        reg.register(_entry(tag))
        reg.promote(tag, "test", by="gate")
    assert check_champion(params, locate=dirs.get)["reason"] == "not yet: the champion served 0 events in the latest " \
        "traffic (promote.rollback_min_events 500), 0 replayable slates (promote.min_slates 50)"
    _served_partition(dirs[order[1]], order[1], params, params.paths.feedback_dir, n_slates=60)
    early = check_champion(params, locate=dirs.get)  # 300 events < rollback_min_events: too early to judge
    assert not early["checked"] and reg.champion["model_tag"] == order[1]
    _served_partition(dirs[order[1]], order[1], params, params.paths.feedback_dir)  # the latest traffic: 2000 events
    check = check_champion(params, locate=dirs.get)
    assert check["checked"] and check["champion_events"] == 2000 and check["rolled_back"] is (worse == "champion")
    assert reg.champion["model_tag"] == "good"
    if worse == "champion":
        last = reg.state()["events"][-1]
        assert (last["action"], last["by"], last["rolled_back"]) == ("rollback", "monitor", "bad")
        assert "lower bound of the drop" in last["reason"] and last["ope"]["previous"]["value"] > last["ope"]["champion"]["value"]
        assert not check_champion(params, locate=dirs.get)["checked"]  # nothing earlier to compare with now
