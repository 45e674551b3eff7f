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
    """The same bundle with its relevance model's item side negated and ranking by relevance: a
    deliberately bad policy (it shows the items the model likes least)."""
    import shutil

    import torch

    from causalrec.persistence import load_model, save_model

    shutil.copytree(bundle, out)
    model = load_model(bundle / "model.pt")
    with torch.no_grad():
        model.net_.item.weight.neg_()
        model.net_.item_bias.weight.neg_()
        if model.net_.item_tower is not None:
            model.net_.item_tower.weight.neg_()
    save_model(model, out / "model.pt")
    (out / "uplift.pt").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["serve"]["rank_by"] = "relevance"
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_gate_on_served_traffic_promotes_the_better_policy_and_covers_the_truth(bundle, tmp_path):
    """Traffic served by a bad champion (epsilon-greedy, exact propensities), outcomes from the world's
    true Y(1): the candidate that ranks well is promoted over it, the reverse is blocked, and each
    policy's SNIPS interval covers its true value on those users."""
    from causalrec.config import load_params
    from causalrec.data.feedback import write_partition
    from causalrec.data.online import OnlineWorld
    from causalrec.data.simulate import World
    from causalrec.pipeline.promote import compare, decide, served_traffic
    from causalrec.serving.core import RecommenderCore

    import shutil

    shutil.copytree(bundle[0], tmp_path / "good")
    good, params = tmp_path / "good", bundle[1]
    bad = _reversed(good, tmp_path / "bad")
    # the serve settings travel in each bundle's manifest: both served and replayed with epsilon 0.5
    for d in (good, bad):
        m = json.loads((d / "manifest.json").read_text())
        m["serve"]["epsilon"] = 0.5
        (d / "manifest.json").write_text(json.dumps(m))
    champion = RecommenderCore(bad, seed=1)
    world = OnlineWorld(World.load(params.paths.artifacts_dir / "ground_truth" / "world"), seed=3)
    users = [f"u{u:06d}" for u in np.random.default_rng(0).integers(0, 120, 400)]
    served = [(n, user, champion.recommend(user, 5)) for n, user in enumerate(users)]
    pairs = [(n, user, j, it, slate) for n, user, slate in served for j, it in enumerate(slate["items"])]
    # one round, answered at once: a pair served twice gets two independent draws
    outcome = world.respond(1, [p[1] for p in pairs], [p[3]["item_id"] for p in pairs],
                            [p[3]["propensity"] for p in pairs], "bad")
    rows = [{"event_id": f"e{n}-{j}", "user_id": user, "item_id": it["item_id"], "outcome": float(y),
             "propensity": it["propensity"], "timestamp": pd.Timestamp("2026-11-01"), "position": j + 1,
             "policy": "serving:epsilon_greedy", "model_version": "bad", "request_id": slate["request_id"],
             "slate_size": slate["slate_size"], "uniform": int(slate["uniform"]), "exposed": 1, "treatment": 1}
            for (n, user, j, it, slate), y in zip(pairs, outcome)]
    fb = tmp_path / "feedback_data"
    write_partition(fb, {"interactions": pd.DataFrame(rows)}, {"test": True})
    params = load_params(params.root / "params.yaml").model_copy(deep=True)
    params.paths.feedback_dir = fb
    traffic = served_traffic(params)  # promote.traffic = uniform: the explored half of the 400 slates
    n_uniform = sum(s["uniform"] for _, _, s in served)
    assert 150 < n_uniform < 250 and traffic["request_id"].nunique() == n_uniform and len(traffic) == 5 * n_uniform

    up = decide(params, {"data_md5": "x"}, good, {"data_md5": "y"}, bad)
    down = decide(params, {"data_md5": "x"}, bad, {"data_md5": "y"}, good)
    assert up["promote"] and not down["promote"], (up["reason"], down["reason"])
    assert f"snipw on {n_uniform} served slates" in up["reason"]
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


@pytest.mark.parametrize("new_rate, rolled_back", [(0.20, True), (0.29, False)])
def test_monitor_rolls_back_a_champion_whose_live_outcome_rate_drops(tmp_path, new_rate, rolled_back):
    from causalrec.config import load_params
    from causalrec.data.feedback import write_partition
    from causalrec.pipeline.promote import check_champion
    from conftest import write_params

    params = load_params(write_params(tmp_path))
    reg = Registry(params.paths.registry)
    for tag in ("old", "new"):
        reg.register(_entry(tag))
        reg.promote(tag, "test", by="gate")
    assert check_champion(params)["reason"] == "no served feedback yet"
    rng = np.random.default_rng(0)

    def served(version, rate, n):
        return pd.DataFrame({"event_id": [f"{version}-{i}" for i in range(n)], "model_version": version,
                             "outcome": (rng.random(n) < rate).astype(float)})

    write_partition(params.paths.feedback_dir, {"interactions": served("old", 0.30, 2000)}, {})
    write_partition(params.paths.feedback_dir, {"interactions": served("new", new_rate, 300)}, {})
    early = check_champion(params)  # 300 < rollback_min_events: too early to judge
    assert not early["checked"] and not early["rolled_back"] and reg.champion["model_tag"] == "new"
    write_partition(params.paths.feedback_dir, {"interactions": served("new", new_rate, 900)}, {})
    check = check_champion(params)
    assert check["checked"] and check["champion"]["events"] == 1200 and check["rolled_back"] is rolled_back
    assert reg.champion["model_tag"] == ("old" if rolled_back else "new")
    if rolled_back:
        last = reg.state()["events"][-1]
        assert (last["action"], last["by"], last["rolled_back"]) == ("rollback", "monitor", "new")
        assert "live outcome rate" in last["reason"] and "p = " in last["reason"]
        assert not check_champion(params)["checked"]  # nothing earlier to compare with now: no second rollback
