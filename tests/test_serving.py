"""Serving library: exploration propensities, durable feedback, privacy, the recommender core."""
import json
import re
import threading

import numpy as np
import pandas as pd
import pytest

from causalrec.policy import ExplorationPolicy, inclusion_probabilities
from causalrec.serving.feedback import FeedbackLog, export_feedback, read_events
from causalrec.serving.privacy import api_key_matches, pseudonymize
from conftest import make_project


@pytest.mark.parametrize("kind, diversity", [("greedy", 0.0), ("epsilon_greedy", 0.0), ("softmax", 0.0),
                                             ("epsilon_greedy", 0.5), ("thompson", 0.0)])
def test_logged_propensities_match_serving_frequencies(kind, diversity):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=30) * 0.2
    if kind == "thompson":  # three bootstrap members that agree on some items and not on others
        scores = scores + rng.normal(size=(3, 30)) * 0.2
    vectors = rng.normal(size=(30, 8))
    policy = ExplorationPolicy(kind, epsilon=0.2, temperature=0.1, diversity=diversity)
    k, n_draws = 5, 10_000
    counts, uniform_counts = np.zeros(30), np.zeros(30)
    logged, uniform = {}, 0
    for _ in range(n_draws):
        slate = policy.select(scores, k, rng, vectors)
        shown, prop = slate.items, slate.propensity
        uniform += slate.uniform
        assert len(shown) == k == len(set(shown.tolist()))
        counts[shown] += 1
        uniform_counts[shown] += slate.uniform
        logged.update(zip(shown.tolist(), prop.tolist()))
    freq = counts / n_draws
    pi = inclusion_probabilities(scores, k, kind, 0.2, 0.1, diversity, vectors)
    assert pi.sum() == pytest.approx(k)
    assert np.abs(freq - pi).max() < 0.02  # 10,000 draws: a frequency's sd is at most 0.005
    for item, p in logged.items():  # what was logged is exactly pi
        assert p == pytest.approx(pi[item])
    # the uniform share: epsilon of the slates, and within them every item at k / n, whatever its score
    assert uniform / n_draws == pytest.approx(0.2 if kind in ("epsilon_greedy", "thompson") else 0.0, abs=0.01)
    if uniform:
        assert np.abs(uniform_counts / uniform - k / 30).max() < 0.04


def test_diversity_spreads_the_slate_over_clusters_of_near_duplicates():
    """Three clusters of near-identical items, the best scores all in one: the top 3 is one cluster,
    the MMR slate takes the best of each; the logged probabilities follow the slate actually shown."""
    rng = np.random.default_rng(1)
    centres = np.eye(3)
    vectors = np.repeat(centres, 10, axis=0) + rng.normal(scale=0.01, size=(30, 3))
    scores = np.r_[np.linspace(0.9, 0.8, 10), np.linspace(0.7, 0.6, 10), np.linspace(0.5, 0.4, 10)]
    plain = ExplorationPolicy("greedy").select(scores, 3, rng, vectors).items
    diverse = ExplorationPolicy("greedy", diversity=0.5).select(scores, 3, rng, vectors).items
    assert sorted(plain // 10) == [0, 0, 0] and sorted(diverse // 10) == [0, 1, 2]
    assert diverse[0] == 0  # the best item first, then the best trade-off from each other cluster
    pi = inclusion_probabilities(scores, 3, "epsilon_greedy", 0.1, diversity=0.5, vectors=vectors)
    assert pi[diverse] == pytest.approx(0.9 + 0.1 * 3 / 30) and pi[1] == pytest.approx(0.1 * 3 / 30)
    assert pi.sum() == pytest.approx(3)
    with pytest.raises(ValueError, match="not softmax"):
        ExplorationPolicy("softmax", diversity=0.3)


def test_policy_errors():
    with pytest.raises(ValueError, match="unknown policy"):
        ExplorationPolicy("boltzmann-ish")
    with pytest.raises(ValueError, match="epsilon"):
        ExplorationPolicy("epsilon_greedy", epsilon=2)


def _event(i, **kw):
    return {"event_id": f"e{i}", "user_id": "u1", "item_id": "i000001", "outcome": 1.0, "propensity": 0.5,
            "timestamp": "2026-11-23T07:00:00+00:00", "position": 1, "policy": "softmax", "model_version": "m1", **kw}


def test_feedback_log_idempotent_durable_and_torn_tail(tmp_path):
    path = tmp_path / "fb.jsonl"
    log = FeedbackLog(path)
    assert log.append(_event(1)) and not log.append(_event(1))
    with open(path, "ab") as fh:  # a crash mid-write leaves half a line
        fh.write(b'{"event_id": "e2", "us')
    again = FeedbackLog(path)  # a restarted server
    assert not again.append(_event(1))
    assert again.append(_event(2))
    # a slate's events in one fsynced write: each written once, in order, repeats within the batch too
    assert again.append_many([_event(3), _event(1), _event(3), _event(4)]) == [True, False, False, True]
    assert [e["event_id"] for e in read_events(path)] == ["e1", "e2", "e3", "e4"]


def test_feedback_log_two_writers_no_duplicates(tmp_path):
    path = tmp_path / "fb.jsonl"
    a, b = FeedbackLog(path), FeedbackLog(path)  # e.g. two worker processes
    results = []

    def write(log):
        for i in range(200):
            results.append(log.append(_event(i)))

    threads = [threading.Thread(target=write, args=(x,)) for x in (a, b)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(results) == 200 and len(read_events(path)) == 200
    lines = path.read_text().splitlines()
    assert len(lines) == 200 and len({json.loads(x)["event_id"] for x in lines}) == 200


def test_export_writes_each_event_once_as_a_new_validated_partition(tmp_path):
    """Export never touches data/: each run writes the events no partition holds yet as the next
    partition (after the feedback suite), and ingest's merge appends them all to the base tables."""
    from causalrec.data.feedback import drift_mark, mark_drift, merge_into, partitions
    from causalrec.data.quarantine import Quarantine
    from causalrec.data.schema import DataError
    from causalrec.data.simulate import SimulationConfig, simulate
    from causalrec.serving.feedback import TooMuchQuarantined

    simulate(SimulationConfig(n_users=20, n_items=10, n_interactions=200), tmp_path / "data", tmp_path / "truth", progress=False)
    base = (tmp_path / "data" / "interactions.parquet").read_bytes()
    log = FeedbackLog(tmp_path / "fb.jsonl")
    for i in range(3):
        log.append(_event(i, user_id="u000001"))
    export = lambda **kw: export_feedback(tmp_path / "fb.jsonl", tmp_path / "data", tmp_path / "fbdata",  # noqa: E731
                                          tmp_path / "validation", **kw)
    first, second = export(), export()
    assert first["exported"] == 3 and second["exported"] == 0 and second["partition"] is None
    assert (tmp_path / "data" / "interactions.parquet").read_bytes() == base  # the serving side never writes data/
    log.append(_event(3, user_id="u000002", model_version="m-unknown"))
    with pytest.raises(TooMuchQuarantined, match="max_quarantine_share"):  # all of the batch is bad: stop, write nothing
        export(known_versions={"m1"}, max_quarantine_share=0.5)
    assert not (tmp_path / "fbdata" / "quarantine").exists()
    held = export(known_versions={"m1"})  # a version the registry does not know: set aside, not exported
    assert (held["exported"], held["quarantined"], held["partition"]) == (0, 1, None)
    assert held["quarantined_by_rule"] == {"model_version must be a model version the registry knows": 1}
    assert len(partitions(tmp_path / "fbdata")) == 1 and export(known_versions={"m1"})["quarantined"] == 0  # held once
    Quarantine(tmp_path / "fbdata").decide("release", ["e3"], "m-unknown was registered")
    log.append(_event(4, user_id="u000002", uniform=True, request_id="r4", slate_size=1))  # an explored slate
    third = export(known_versions={"m1", "m-unknown"})
    assert third["exported"] == 2 and third["partition"].endswith("part-00002") and third["retried_from_quarantine"] == 1
    # a training window of the last w logs, the base log counting as the oldest
    for window, rows, base_kept in ((1, 2, False), (2, 5, False), (3, 205, True)):
        (tmp_path / "data" / "interactions.parquet").write_bytes(base)  # ingest rewrites the base first
        counts = merge_into(tmp_path / "data", tmp_path / "fbdata", window=window)
        assert len(pd.read_parquet(tmp_path / "data" / "interactions.parquet")) == rows
        assert counts["base_interactions"] is base_kept and counts["partitions"] == min(window, 2)
    # the latest partition's uniformly drawn slates are the gate's evaluation set: never trained on
    (tmp_path / "data" / "interactions.parquet").write_bytes(base)
    held = merge_into(tmp_path / "data", tmp_path / "fbdata", holdout=1)
    assert held["interactions"] == 4 and held["held_out_for_the_gate"] == 1
    # after a drift mark: the partitions since the marked one only, the base log dropped
    (tmp_path / "data" / "interactions.parquet").write_bytes(base)
    since = merge_into(tmp_path / "data", tmp_path / "fbdata", since="part-00002")
    assert since["base_interactions"] is False and since["partitions"] == 1 and since["interactions"] == 2
    assert sorted(pd.read_parquet(tmp_path / "data" / "interactions.parquet")["event_id"]) == ["e3", "e4"]
    with pytest.raises(DataError, match="part-00009"):
        merge_into(tmp_path / "data", tmp_path / "fbdata", since="part-00009")
    assert drift_mark(tmp_path / "fbdata") is None
    with pytest.raises(DataError, match="part-00009"):
        mark_drift(tmp_path / "fbdata", "part-00009", {})
    assert mark_drift(tmp_path / "fbdata", "part-00002", {"why": "test"})["since_partition"] == "part-00002"
    assert drift_mark(tmp_path / "fbdata")["why"] == "test" and len(partitions(tmp_path / "fbdata")) == 2
    (tmp_path / "fbdata" / "drift.json").write_text('{"since_partition": "yesterday"}')
    with pytest.raises(DataError, match="drift.json is not a drift mark"):
        drift_mark(tmp_path / "fbdata")
    (tmp_path / "fbdata" / "drift.json").unlink()
    (tmp_path / "data" / "interactions.parquet").write_bytes(base)
    assert merge_into(tmp_path / "data", tmp_path / "fbdata")["interactions"] == 5
    inter = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    assert len(inter) == 205 and (inter.dropna(subset=["event_id"])["policy"] == "serving:softmax").all()
    assert sorted(inter["event_id"].dropna()) == ["e0", "e1", "e2", "e3", "e4"]


def test_the_gate_slates_are_capped_and_the_same_whatever_the_row_order():
    """The gate's evaluation set: uniform slates only, at most max_slates (and max_share) of them, chosen by request
    id alone (ingest and the gate read the rows in their own order and must leave out the same)."""
    from causalrec.data.feedback import gate_slates

    rows = pd.DataFrame({"request_id": [f"r{i // 3}" for i in range(60)], "uniform": [int(i // 3 % 2 == 0) for i in range(60)]})
    every = gate_slates(rows)
    assert every.sum() == 30 and (rows.loc[every, "uniform"] == 1).all()
    capped = gate_slates(rows, max_slates=4)
    assert rows.loc[capped, "request_id"].nunique() == 4 and capped.sum() == 12 and not (capped & ~every).any()
    shuffled = rows.sample(frac=1, random_state=1)
    assert set(shuffled.loc[gate_slates(shuffled, max_slates=4), "request_id"]) == set(rows.loc[capped, "request_id"])
    assert gate_slates(rows, max_slates=100).equals(every)
    half = gate_slates(rows, max_share=0.5)  # 10 uniform slates: 5 for the gate, 5 to train and validate on
    assert rows.loc[half, "request_id"].nunique() == 5 and not (half & ~every).any()
    assert gate_slates(rows, max_slates=100, max_share=0.5).equals(half)
    assert rows.loc[gate_slates(rows, max_slates=4, max_share=0.5), "request_id"].nunique() == 4


def test_privacy_helpers():
    assert pseudonymize("alice", b"k1") == pseudonymize("alice", b"k1") != pseudonymize("alice", b"k2")
    assert "alice" not in pseudonymize("alice", b"k1")
    assert api_key_matches("s3cret", "s3cret") and not api_key_matches("s3cre", "s3cret")
    assert not api_key_matches("anything", None) and not api_key_matches(None, "s3cret")


def test_core_recommend_explain_and_new_items(bundle):
    from causalrec.serving.core import NotFound, RecommenderCore
    from causalrec.text import TextEncoder

    path, params = bundle
    core = RecommenderCore(path, serve={"policy": "softmax", "temperature": 0.05}, seed=0)
    res = core.recommend("u000001", 5, exclude=["i000000"])
    assert len(res["items"]) == 5 and res["cold_start"] is False and res["rank_by"] == "uplift"
    assert all(0 < it["propensity"] <= 1 and -1 <= it["uplift"] <= 1 for it in res["items"])
    assert "i000000" not in [it["item_id"] for it in res["items"]]
    assert core.recommend("never-seen", 3)["cold_start"] is True
    exp = core.explain("u000001", res["items"][0]["item_id"])
    assert exp["uplift_interval"][0] <= exp["uplift"] + 1e-6 and exp["reasons"]
    with pytest.raises(NotFound):
        core.explain("u000001", "no-such-item")
    enc = TextEncoder(params.embed.model_path, progress=False).load()
    before = core.catalogue_size
    added = core.add_item("Trail tent", "a tent for the summit", enc.embed(["Trail tent. a tent for the summit"])[0])
    assert added["text_scored"] and core.catalogue_size == before + 1
    core.add_item("Blank", "no signal", np.zeros_like(core.embeddings[0]))
    s = core.relevance.scores("u000001")
    assert abs(s[-2] - s[-1]) > 1e-4  # the text-described item is scored from its text, not as a blank
    with pytest.raises(ValueError, match="dimension"):
        core.add_item("x", "y", np.zeros(7, np.float32))


def test_controls_name_unshown_items_with_exact_propensities_and_export_as_unexposed_rows(bundle, tmp_path):
    """/recommend's controls: unshown, drawn uniformly, each with the probability this policy would have
    shown it; their outcomes come back as unexposed feedback and export as untreated rows whose
    control_rate lets the uplift stage turn the policy's propensity into P(treated | logged)."""
    from datetime import datetime, timezone

    from causalrec.causal.uplift import logged_treatment_propensity
    from causalrec.serving.core import RecommenderCore

    path, params = bundle
    core = RecommenderCore(path, serve={"policy": "epsilon_greedy", "epsilon": 0.2}, seed=0)
    res = core.recommend("u000001", 5, controls=4)
    shown = {it["item_id"] for it in res["items"]}
    named = [c["item_id"] for c in res["controls"]]
    assert len(named) == 4 == len(set(named)) and not shown & set(named)
    pi = core.inclusion("u000001", 5)
    assert all(abs(c["propensity"] - pi[core._pos[c["item_id"]]]) < 1e-12 for c in res["controls"])
    assert res["control_rate"] == pytest.approx(4 / (core.catalogue_size - 5))
    counts = pd.Series([c["item_id"] for _ in range(300) for c in core.recommend("u000001", 5, controls=4)["controls"]])
    assert counts.nunique() > 0.8 * (core.catalogue_size - 5)  # drawn across the unshown items, not the top of a ranking
    greedy = RecommenderCore(path, serve={"policy": "greedy"}, seed=0).recommend("u000001", 5, controls=4)
    assert greedy["controls"] == []  # nothing unshown could have been shown: no control has a propensity
    now = datetime.now(timezone.utc)
    events = [core.feedback_event(f"e{j}", "u000001", it["item_id"], 1.0, it["propensity"], now, it["position"],
                                  res["policy"], res["request_id"], res["slate_size"], res["model_version"], res["uniform"])
              for j, it in enumerate(res["items"])]
    events += [core.feedback_event(f"c{j}", "u000001", c["item_id"], 0.0, c["propensity"], now, 0, res["policy"],
                                   res["request_id"], res["slate_size"], res["model_version"], res["uniform"],
                                   exposed=False, control_rate=res["control_rate"]) for j, c in enumerate(res["controls"])]
    with pytest.raises(ValueError, match="propensity must be below 1 for an unexposed event"):
        core.feedback_event("x", "u000001", named[0], 0.0, 1.0, now, exposed=False, control_rate=0.5)
    with pytest.raises(ValueError, match="control_rate must be a probability"):
        core.feedback_event("x", "u000001", named[0], 0.0, 0.1, now, exposed=False, control_rate=0.0)
    log = FeedbackLog(tmp_path / "fb.jsonl")
    log.append_many(events)
    export_feedback(tmp_path / "fb.jsonl", params.paths.data_dir, tmp_path / "fb", tmp_path / "v", key=core._pseudonym_key)
    rows = pd.read_parquet(next((tmp_path / "fb").glob("part-*")) / "interactions.parquet")
    controls = rows[rows["exposed"] == 0]
    assert len(controls) == 4 and (controls["treatment"] == 0).all() and (rows[rows["exposed"] == 1]["control_rate"] == 1).all()
    e = rows["propensity"].to_numpy()
    c = res["control_rate"]
    assert np.allclose(logged_treatment_propensity(rows, e), e / (e + (1 - e) * c))  # every row of the request
    base = rows.assign(request_id="")  # the logging policy's log records every candidate: its own propensity
    assert np.allclose(logged_treatment_propensity(base, e), e)


def test_core_logs_pseudonymised_user_ids(bundle, caplog, monkeypatch):
    import logging

    from causalrec.serving.core import RecommenderCore

    monkeypatch.setenv("CAUSALREC_PSEUDONYM_KEY", "k")
    core = RecommenderCore(bundle[0])
    with caplog.at_level(logging.INFO, logger="causalrec.serving"):
        core.recommend("u000001", 2)
    text = caplog.text
    assert "recommend" in text and "u000001" not in text and pseudonymize("u000001", b"k") in text


def test_export_feedback_command(tmp_path):
    from typer.testing import CliRunner

    from causalrec.cli import app
    from causalrec.data.simulate import SimulationConfig, simulate

    project = make_project(tmp_path / "p", git=False)
    simulate(SimulationConfig(n_users=20, n_items=10, n_interactions=100), project / "data", project / "truth", progress=False)
    log = FeedbackLog(project / "fb.jsonl")
    log.append(_event(1, user_id="u000003"))
    res = CliRunner().invoke(app, ["export-feedback", "--log", str(project / "fb.jsonl"), "--params", str(project / "params.yaml")])
    assert res.exit_code == 0 and '"exported": 1' in res.output
    assert (project / "feedback_data" / "part-00001" / "interactions.parquet").exists()
    res = CliRunner().invoke(app, ["export-feedback", "--log", str(project / "missing.jsonl"), "--params", str(project / "params.yaml")])
    assert res.exit_code == 2 and "not found" in res.output


@pytest.mark.parametrize("field, value, fragment", [
    ("timestamp", "9999-12-31T23:59:59+00:00", "timestamp must be an ISO 8601 time between"),
    ("timestamp", "1970-01-01T00:00:00", "timestamp must be an ISO 8601 time between"),
    ("timestamp", 1767225600, "timestamp must be an ISO 8601 time"),
    ("propensity", 0.0, "propensity must be a probability"),
    ("propensity", float("nan"), "propensity must be a probability"),
    ("outcome", float("inf"), "outcome must be one of [0, 1]"),
    ("outcome", 2.0, "outcome must be one of [0, 1]"),
    ("outcome", -1, "outcome must be one of [0, 1]"),
    ("outcome", 1e9, "outcome must be one of [0, 1]"),
    ("item_id", "i999999", "item_id must be an item of the catalogue"),
    ("model_version", "m-unknown", "model_version must be a model version the registry knows"),
    ("event_id", "alice@example.com", "event_id must be 1-256 letters"),
    ("request_id", "bob smith", "request_id must be empty or an id"),
    ("position", True, "position must be an integer"),
])
def test_the_rule_book_names_field_and_rule_never_the_value(field, value, fragment):
    from causalrec.data.rules import EventRules

    rules = EventRules(known_items={"i000001"}, known_versions={"m1"})
    good = _event(1)
    assert rules.broken(good) == []
    with pytest.raises(ValueError, match=re.escape(fragment)) as err:
        rules.check({**good, field: value})
    if isinstance(value, str):  # messages are logged: never the value sent (it may be personal data)
        assert value not in str(err.value)


def test_accepted_feedback_always_exports_and_validates(tmp_path):
    """Naive and zoned timestamps mixed, a tiny float64 propensity: acknowledged by the rules, then
    exported and accepted by the validation suite (one rule book)."""
    from datetime import datetime

    from causalrec.data.feedback import merge_into
    from causalrec.data.rules import utc_iso
    from causalrec.data.simulate import SimulationConfig, simulate
    from causalrec.serving.feedback import FeedbackLog, export_feedback
    from causalrec.validation import validate_data

    simulate(SimulationConfig(n_users=20, n_items=10, n_interactions=200, n_topics=3, n_test_pairs_per_user=2),
             tmp_path / "data", tmp_path / "truth", progress=False)
    log = FeedbackLog(tmp_path / "fb.jsonl")
    for i, (when, p) in enumerate([("2026-03-01T10:00:00", 0.2), ("2026-03-01T12:00:00+02:00", 1e-300),
                                   ("2026-03-01T10:00:00Z", 0.9)]):
        ts = utc_iso(datetime.fromisoformat(when.replace("Z", "+00:00")))
        log.append({"event_id": f"e{i}", "user_id": "u000001", "item_id": "i000002", "outcome": 1.0,
                    "propensity": p, "timestamp": ts, "position": 1, "policy": "epsilon_greedy", "model_version": "m1"})
    assert export_feedback(tmp_path / "fb.jsonl", tmp_path / "data", tmp_path / "fb", tmp_path / "v")["exported"] == 3
    merge_into(tmp_path / "data", tmp_path / "fb")
    report = validate_data(tmp_path / "data", tmp_path / "validation")
    assert report["success"]
    inter = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    assert (inter.loc[inter["event_id"] == "e1", "propensity"] > 0).all()


def test_the_feedback_suite_refuses_an_event_an_earlier_partition_holds(tmp_path):
    """Checked on a column computed in pandas: the suite, its results and the data docs do not carry
    every exported id (they did; in the closed-loop benchmark one export took minutes at 1.6M events)."""
    from causalrec.validation import ValidationFailed, validate_feedback

    rows = pd.DataFrame({"event_id": ["e0", "e1", "e2"], "user_id": "u000001", "item_id": ["i000001", "i000002", "i000003"],
                         "timestamp": pd.Timestamp("2026-03-01 10:00"), "exposed": 1, "treatment": 1, "outcome": 1.0,
                         "propensity": 0.5, "position": [1, 2, 3], "policy": "serving:epsilon_greedy", "model_version": "m1"})
    earlier = {f"old-{i}" for i in range(500)} | {"e1"}
    with pytest.raises(ValidationFailed) as err:
        validate_feedback(rows, tmp_path / "refused", earlier)
    assert [(f["column"], [e["event_id"] for e in f["examples"]]) for f in err.value.failures] == [
        ("event_id_in_earlier_partition", ["e1"])]
    validate_feedback(rows[rows["event_id"] != "e1"], tmp_path / "passed", earlier)
    written = [p.read_text(errors="ignore") for p in (tmp_path / "passed").rglob("*") if p.is_file()]
    assert written and not any("old-7" in text for text in written)


def test_items_added_at_serving_time_are_shared_durable_and_become_data(bundle, tmp_path):
    """Two workers on one catalogue store: an item one adds, the other serves; a restarted worker has it;
    the same id cannot be added twice; export puts the item (with its texts) and a new user into the data,
    and feedback on both validates (cold-start ids are data, not referential errors)."""
    from datetime import datetime

    from causalrec.data.rules import utc_iso
    from causalrec.data.simulate import SimulationConfig, simulate
    from causalrec.serving.catalogue import CatalogueStore
    from causalrec.serving.core import RecommenderCore
    from causalrec.validation import validate_data

    path, _ = bundle
    store = tmp_path / "catalogue.sqlite"
    a, b = RecommenderCore(path, catalogue=CatalogueStore(store)), RecommenderCore(path, catalogue=CatalogueStore(store))
    vector = np.ones_like(a.embeddings[0]) / np.sqrt(a.embeddings.shape[1])
    a.add_item("Summit tent", "a tent for the summit", vector, item_id="tent-1")
    assert b.explain("u000001", "tent-1")["title"] == "Summit tent"  # worker b never saw the request
    assert "tent-1" in [it["item_id"] for it in b.recommend("u000001", b.catalogue_size)["items"]]
    with pytest.raises(ValueError, match="already exists"):
        b.add_item("Other", "another", vector, item_id="tent-1")
    restarted = RecommenderCore(path, catalogue=CatalogueStore(store))
    assert restarted.catalogue_size == a.catalogue_size == b.catalogue_size

    simulate(SimulationConfig(n_users=20, n_items=10, n_interactions=200, n_topics=3, n_test_pairs_per_user=2),
             tmp_path / "data", tmp_path / "truth", progress=False)
    log = FeedbackLog(tmp_path / "fb.jsonl")
    log.append({"event_id": "e1", "user_id": "someone-new", "item_id": "tent-1", "outcome": 1.0, "propensity": 0.3,
                "timestamp": utc_iso(datetime(2026, 3, 1, 10)), "position": 1, "policy": "softmax",
                "model_version": "m1"})
    out = export_feedback(tmp_path / "fb.jsonl", tmp_path / "data", tmp_path / "fb", tmp_path / "v", store)
    assert (out["exported"], out["new_items"], out["new_users"]) == (1, 1, 1)
    from causalrec.data.feedback import merge_into

    merge_into(tmp_path / "data", tmp_path / "fb")
    items = pd.read_parquet(tmp_path / "data" / "items.parquet")
    assert items.set_index("item_id").loc["tent-1", "description"] == "a tent for the summit"
    assert validate_data(tmp_path / "data", tmp_path / "validation")["success"]
    again = export_feedback(tmp_path / "fb.jsonl", tmp_path / "data", tmp_path / "fb", tmp_path / "v", store)
    assert (again["exported"], again["new_items"], again["new_users"]) == (0, 0, 0)


def test_feedback_stores_pseudonyms_that_export_maps_back(bundle, tmp_path, monkeypatch):
    """The service stores pseudonyms only (key file beside the log, shared by every worker); export maps
    a known user back to their id and brings a new one in under the pseudonym, which the service then
    resolves for that person: no raw id of a new user is ever written."""
    from datetime import datetime

    from causalrec.data.rules import utc_iso
    from causalrec.data.simulate import SimulationConfig, simulate
    from causalrec.serving.core import RecommenderCore
    from causalrec.serving.privacy import is_pseudonym, pseudonym_key

    monkeypatch.delenv("CAUSALREC_PSEUDONYM_KEY", raising=False)
    key = pseudonym_key(tmp_path / "feedback")
    assert key == pseudonym_key(tmp_path / "feedback") and oct((tmp_path / "feedback" / "pseudonym.key").stat().st_mode)[-3:] == "600"
    core = RecommenderCore(bundle[0], pseudonym_key=key)
    simulate(SimulationConfig(n_users=20, n_items=10, n_interactions=200, n_topics=3, n_test_pairs_per_user=2),
             tmp_path / "data", tmp_path / "truth", progress=False)
    log = FeedbackLog(tmp_path / "feedback" / "fb.jsonl")
    for i, who in enumerate(["u000001", "alice@example.com"]):
        log.append({"event_id": f"e{i}", "user_id": core.pseudonym(who), "item_id": "i000002", "outcome": 1.0,
                    "propensity": 0.3, "timestamp": utc_iso(datetime(2026, 3, 1, 10)), "position": 1,
                    "model_version": "m1"})
    stored = (tmp_path / "feedback" / "fb.jsonl").read_text()
    assert "alice" not in stored and "u000001" not in stored
    out = export_feedback(tmp_path / "feedback" / "fb.jsonl", tmp_path / "data", tmp_path / "fb", tmp_path / "v")
    assert (out["exported"], out["new_users"]) == (2, 1)
    from causalrec.data.feedback import merge_into

    merge_into(tmp_path / "data", tmp_path / "fb")
    inter = pd.read_parquet(tmp_path / "data" / "interactions.parquet").set_index("event_id")
    assert inter.loc["e0", "user_id"] == "u000001" and is_pseudonym(inter.loc["e1", "user_id"])
    assert inter.loc["e1", "user_id"] == core.pseudonym("alice@example.com")
    core.known_users.add(core.pseudonym("alice@example.com"))  # as after a retrain on that data
    assert core.recommend("alice@example.com", 2)["cold_start"] is False


def test_feedback_log_rotates_and_dedups_across_segments_and_writers(tmp_path):
    """Two writers (workers) on one log with a small size limit, plus an operator's rotate: several
    segments, every event stored once across them, duplicates refused across segments, a restarted
    writer still refuses old ids, and read_events returns each event once, in order."""
    from typer.testing import CliRunner

    from causalrec.cli import app
    from causalrec.serving.feedback import segments

    path = tmp_path / "fb.jsonl"
    a, b = FeedbackLog(path, max_bytes=4096), FeedbackLog(path, max_bytes=4096)
    written = 0
    for i in range(120):
        writer = a if i % 2 else b
        written += writer.append(_event(i))
        assert not (b if i % 2 else a).append(_event(i))  # the other worker sees it, even after a rotation
        if i == 60:
            res = CliRunner().invoke(app, ["rotate-feedback", "--log", str(path)])
            assert res.exit_code == 0 and "rotated_to" in res.output
    assert written == 120 and len(segments(path)) >= 3
    restarted = FeedbackLog(path, max_bytes=4096)
    assert not restarted.append(_event(3)) and restarted.append(_event(500))
    ids = [e["event_id"] for e in read_events(path)]
    assert ids == [_event(i)["event_id"] for i in [*range(120), 500]]


def test_explanation_agrees_with_the_model(bundle):
    """The score's parts are the model's own: they sum to its logit, and removing a part from the
    model (the item's text features, or what its id learned) moves the model's score by that part."""
    import torch

    from causalrec.persistence import load_model
    from causalrec.serving.core import RecommenderCore

    path, _ = bundle
    core = RecommenderCore(path, seed=0)
    user, model = "u000001", load_model(path / "model.pt")
    u = torch.as_tensor(model.users_.encode([user]))
    checked = 0
    for item in core.recommend(user, 5)["items"]:
        exp = core.explain(user, item["item_id"])
        parts = exp["score_drivers"]["parts"]
        logit = sum(parts.values())
        assert exp["score_drivers"]["link"] == "sigmoid"
        assert 1 / (1 + np.exp(-logit)) == pytest.approx(exp["score"], abs=1e-5)
        i = torch.as_tensor(model.items_.encode([item["item_id"]]))
        if not model.trained_items_[i[0]]:
            continue
        net = model.net_
        with torch.no_grad():
            full = float(net(u, i)[0])
            assert full == pytest.approx(logit, abs=1e-4)
            saved = net.item_z[i].clone()
            net.item_z[i] = 0  # the item without its text / attribute features
            without_features = float(net(u, i)[0])
            net.item_z[i] = saved
            saved = net.item.weight[i].clone(), net.item_bias.weight[i].clone()
            net.item.weight[i], net.item_bias.weight[i] = 0, 0  # the item as if its id had learned nothing
            without_id = float(net(u, i)[0])
            net.item.weight[i], net.item_bias.weight[i] = saved
        assert full - without_features == pytest.approx(parts["item bias (features)"] + parts["match: user x item features"], abs=1e-4)
        assert full - without_id == pytest.approx(parts["item bias (id)"] + parts["match: user x item id"], abs=1e-4)
        assert abs(parts["match: user x item features"]) > 0  # the two-tower model does use the text
        checked += 1
    assert checked


def test_explanation_quotes_the_mediation_split_of_the_users_segment(bundle, tmp_path):
    from typer.testing import CliRunner

    from causalrec.cli import app
    from causalrec.pipeline import stage_paths
    from causalrec.serving.core import RecommenderCore

    path, params = bundle
    report = json.loads((stage_paths(params)["analysis"] / "report.json").read_text())["estimate"]["mediation_by_segment"]
    core = RecommenderCore(path, seed=0)
    returning, new = core.explain("u000001", "i000000")["mediation"], core.explain("never-seen", "i000000")["mediation"]
    # funnel.yaml: segment at serving = known_user (1: the model knows the user, 0: cold start)
    assert returning["segment_label"].startswith("segment=1") and new["segment_label"].startswith("segment=0")
    for got, want in ((returning, report["segment=1"]), (new, report["segment=0"])):
        assert {k: got[k] for k in ("total", "direct", "indirect")} == {k: want[k] for k in ("total", "direct", "indirect")}
        assert got["share_mediated"] == pytest.approx(want["indirect"]["value"] / want["total"]["value"])
        assert got["mediator"] == "clicked" and got["treatment"] == "promoted"
        # which nuisance models produced the split, and the specification check's verdict (logistic: not run)
        assert got["nuisance_models"] == {k: "logistic" for k in ("propensity", "outcome", "mediator", "outcome_given_mediator")}
        assert got["specification_check_passed"] is None and got["warnings"] == []
    assert any("goes through clicked" in r for r in core.explain("u000001", "i000000")["reasons"])

    out = tmp_path / "explain"
    run = CliRunner().invoke(app, ["explain", "--bundle", str(path), "--user", "u000001", "--item", "i000000", "--out", str(out)])
    assert run.exit_code == 0, run.output
    page = (out / "explanation.html").read_text()
    assert "graph.png" in page and "drivers.png" in page and "segment=1" in page
    assert (out / "graph.png").stat().st_size > 1000 and (out / "drivers.png").stat().st_size > 1000
    assert json.loads((out / "explanation.json").read_text())["mediation"] == returning
    bad = CliRunner().invoke(app, ["explain", "--bundle", str(path), "--user", "u000001", "--item", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown item_id" in bad.output


def test_acknowledged_feedback_always_exports_and_validates_property(bundle, tmp_path):
    """Property: whatever the core behind POST /feedback acknowledges (generated events, each field valid
    or broken), export takes whole (nothing quarantined, at max_quarantine_share 0) and the merged data
    passes the data suite. The three classes a hostile test got through before (unknown item, outcome
    outside {0, 1}, unknown model version) are among the generated values."""
    import shutil
    from datetime import datetime, timedelta, timezone

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from causalrec.data.feedback import merge_into
    from causalrec.serving.core import RecommenderCore
    from causalrec.validation import validate_data

    path, params = bundle
    core = RecommenderCore(path, seed=0)
    zones = st.sampled_from([None, timezone.utc, timezone(timedelta(hours=-7)), timezone(timedelta(hours=9))])
    good = {"item_id": st.sampled_from(core.item_ids[:30]), "outcome": st.sampled_from([0, 1, 0.0, 1.0]),
            "propensity": st.floats(1e-300, 1.0), "position": st.integers(0, 100), "slate_size": st.integers(0, 100),
            "timestamp": st.datetimes(datetime(1990, 1, 2), datetime(2026, 11, 30), timezones=zones),
            "policy": st.sampled_from(["", "softmax", "epsilon_greedy"]), "request_id": st.sampled_from(["", "r-1", "abc123"]),
            "model_version": st.sampled_from(["", core.version]), "uniform": st.booleans(),
            "event_prefix": st.sampled_from(["e", "ev.", "E_"])}
    bad = {"item_id": st.sampled_from(["i999999", "x@example.com", " ", "nope"]),
           "outcome": st.one_of(st.sampled_from([2, -1, 1e9, 0.5]), st.floats(allow_nan=True, allow_infinity=True)),
           "propensity": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True),
                                   st.just(float("nan"))),
           "position": st.integers(-5, -1) | st.integers(10_001, 10**9), "slate_size": st.integers(-5, -1),
           "timestamp": st.datetimes(datetime(1900, 1, 1), datetime(1989, 12, 31)) | st.datetimes(datetime(2100, 1, 1)),
           "policy": st.sampled_from(["a b", "x@y", "p" * 65]), "request_id": st.sampled_from(["r 1", "who@where"]),
           "model_version": st.sampled_from(["m-unknown", "causalrec-recommender:zzz", "a@b"]),
           "uniform": st.sampled_from([1, "yes", None]), "event_prefix": st.sampled_from(["x@", " ", "a/b"])}
    acknowledged, refused = [], []

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one_event(data):
        broken = data.draw(st.sets(st.sampled_from(sorted(good)), max_size=2))
        v = {f: data.draw((bad if f in broken else good)[f]) for f in good}
        n = len(acknowledged) + len(refused)
        try:
            event = core.feedback_event(f"{v['event_prefix']}{n}", f"user-{n % 7}", v["item_id"], v["outcome"],
                                        v["propensity"], v["timestamp"], v["position"], v["policy"], v["request_id"],
                                        v["slate_size"], v["model_version"], v["uniform"])
        except ValueError:
            refused.append(broken)
            return
        acknowledged.append(event)

    one_event()
    assert len(acknowledged) >= 30 and len(refused) >= 30  # both sides of the rule book were exercised
    log = FeedbackLog(tmp_path / "fb.jsonl")
    assert all(log.append_many(acknowledged))
    out = export_feedback(tmp_path / "fb.jsonl", params.paths.data_dir, tmp_path / "fb", tmp_path / "v",
                          known_versions={core.version}, max_quarantine_share=0.0)
    assert (out["exported"], out["quarantined"]) == (len(acknowledged), 0)
    shutil.copytree(params.paths.data_dir, tmp_path / "data")
    merge_into(tmp_path / "data", tmp_path / "fb")
    assert validate_data(tmp_path / "data", tmp_path / "validation")["success"]


def test_poison_in_the_log_is_quarantined_and_the_loop_goes_on(tmp_path):
    """Bad events that reached the log anyway (an older release, a flipped bit, a changed rule): export
    writes the good ones, holds each bad one with its rule, the data validates, and an operator lists,
    releases (checked again at the next export) or drops them."""
    from typer.testing import CliRunner

    from causalrec.cli import app
    from causalrec.data.feedback import merge_into
    from causalrec.data.simulate import SimulationConfig, simulate
    from causalrec.registry import Registry
    from causalrec.validation import validate_data

    project = make_project(tmp_path / "p", git=False)
    simulate(SimulationConfig(n_users=20, n_items=10, n_interactions=200, n_topics=3, n_test_pairs_per_user=2),
             project / "data", project / "truth", progress=False)
    Registry(project / "registry.json").register({"model_tag": "m1"})
    log = FeedbackLog(project / "fb.jsonl")
    good = [_event(i, user_id="u000001", item_id="i000002") for i in range(8)]
    poison = [_event(10, item_id="i999999"), _event(11, outcome=2.0), _event(12, outcome=-1), _event(13, outcome=1e9),
              _event(14, model_version="m-unknown")]
    log.append_many(good + poison)
    with open(project / "fb.jsonl", "ab") as fh:  # a flipped bit: a line that parses but is no event
        fh.write(b'{"event_id": "e15", "user_id": 7}\n')
    run = lambda *a: CliRunner().invoke(app, [*a, "--params", str(project / "params.yaml")])  # noqa: E731
    res = run("export-feedback", "--log", str(project / "fb.jsonl"))
    assert res.exit_code == 2 and "6 of 14 new feedback events" in res.output and "nothing was written" in res.output
    assert not (project / "feedback_data").exists()  # over feedback.max_quarantine_share (0.2): stop, write nothing
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace(
        "max_quarantine_share: 0.2", "max_quarantine_share: 0.5"))
    res = run("export-feedback", "--log", str(project / "fb.jsonl"))
    out = _printed_json(res.output)
    assert res.exit_code == 0 and (out["exported"], out["quarantined"]) == (8, 6)
    by_rule = out["quarantined_by_rule"]
    assert by_rule["outcome must be one of [0, 1] (the contract's binary outcome: a graded signal such as a rating "
                   "belongs in the data's `rating` column)"] == 3
    assert by_rule["item_id must be an item of the catalogue (the model's items or one added through POST /items)"] == 1
    assert by_rule["model_version must be a model version the registry knows"] == 1
    merge_into(project / "data", project / "feedback_data")
    assert validate_data(project / "data", tmp_path / "validation")["success"]
    listed = run("quarantine", "list")
    assert listed.exit_code == 0 and '"held": 6' in listed.output and "e14" in listed.output
    Registry(project / "registry.json").register({"model_tag": "m-unknown"})  # the version is registered after all
    assert run("quarantine", "release", "e14", "--reason", "registered").exit_code == 0
    assert run("quarantine", "drop", "e10", "e11", "--reason", "bad client").exit_code == 0
    assert run("quarantine", "drop", "e99", "--reason", "x").exit_code == 2  # not held: named, nothing written
    again = _printed_json(run("export-feedback", "--log", str(project / "fb.jsonl")).output)
    assert (again["exported"], again["quarantined"], again["retried_from_quarantine"]) == (1, 0, 1)
    final = run("quarantine", "list", "--status", "all").output
    assert '{"held": 3, "released": 1, "dropped": 2}' in final


def _printed_json(output: str) -> dict:
    """The JSON object a command printed last (GE's progress bars share the captured output)."""
    return json.loads(output[output.rindex("\n{\n") + 1:] if "\n{\n" in output else output[output.index("{"):])


@pytest.mark.slow
def test_the_same_inputs_give_the_same_data_bytes_in_any_process(tmp_path):
    """Ingest on identical inputs (the base data and a feedback partition with columns the base lacks),
    in two processes with different hash seeds: byte-identical data/ (it was not: the merged columns'
    order followed set iteration, so every retrain registered a new candidate)."""
    import hashlib
    import os
    import subprocess
    import sys

    project = make_project(tmp_path / "p", git=False, simulate={"n_users": 50, "n_items": 30, "n_interactions": 1500})
    log = FeedbackLog(project / "fb.jsonl")
    log.append_many([_event(i, user_id="u000003", item_id="i000004", request_id=f"r{i}", slate_size=3, uniform=i % 2 == 0)
                     for i in range(6)])
    _ingest(project)
    export_feedback(project / "fb.jsonl", project / "data", project / "feedback_data", tmp_path / "v")
    digests = []
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-m", "causalrec", "ingest", "--params", str(project / "params.yaml")], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True)
        digests.append({p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((project / "data").glob("*.parquet"))})
    assert digests[0] == digests[1] and len(digests[0]) == 3
    merged = pd.read_parquet(project / "data" / "interactions.parquet")
    assert {"event_id", "request_id", "slate_size", "uniform", "model_version"} <= set(merged.columns)


def _ingest(project):
    from causalrec import pipeline
    from causalrec.config import load_params

    pipeline.STAGES["ingest"](load_params(project / "params.yaml"))
    return project / "data"


def test_retention_drops_served_events_older_than_its_days_at_export_and_at_ingest(tmp_path):
    """privacy.retention_days: an event a minute past the edge is gone, one a minute inside it stays,
    both when the log is exported and when ingest merges partitions exported before the limit was set."""
    from causalrec.data.feedback import merge_into
    from causalrec.data.simulate import SimulationConfig, simulate

    simulate(SimulationConfig(n_users=20, n_items=10, n_interactions=200), tmp_path / "data", tmp_path / "truth", progress=False)
    now = pd.Timestamp("2026-12-01T12:00:00Z")
    log = FeedbackLog(tmp_path / "fb.jsonl")
    stamps = {"old": now - pd.Timedelta(days=30, minutes=1), "fresh": now - pd.Timedelta(days=30) + pd.Timedelta(minutes=1)}
    for name, t in stamps.items():
        log.append(_event(name, user_id="u000001", timestamp=t.isoformat()))
    export = lambda **kw: export_feedback(tmp_path / "fb.jsonl", tmp_path / "data", tmp_path / "fb_kept",  # noqa: E731
                                          tmp_path / "validation", **kw)
    counts = export(retention_days=30, now=now)
    assert (counts["exported"], counts["expired"]) == (1, 1)
    exported = pd.read_parquet(tmp_path / "fb_kept" / "part-00001" / "interactions.parquet")
    assert list(exported["event_id"]) == ["efresh"]
    # partitions written with no limit: ingest drops what has since aged out
    export_feedback(tmp_path / "fb.jsonl", tmp_path / "data", tmp_path / "fb_all", tmp_path / "validation")
    base = len(pd.read_parquet(tmp_path / "data" / "interactions.parquet"))
    merged = merge_into(tmp_path / "data", tmp_path / "fb_all", retention_days=30, now=now)
    inter = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    assert merged["expired"] == 1 and len(inter) == base + 1 and list(inter["event_id"].dropna()) == ["efresh"]


# ---------------------------------------------------------------- learning between retrains (serving.online)
@pytest.fixture()
def online_core(bundle, tmp_path):
    from causalrec.serving.core import RecommenderCore

    path, _ = bundle
    log = tmp_path / "feedback.jsonl"
    online = {"enabled": True, "max_events": 50, "max_users": 1000, "l2": 1.0, "weight_clip": 10.0, "scan_bytes": 2**20}

    def core(version="v1", **serve):
        return RecommenderCore(path, seed=0, version=version, feedback_log=log, pseudonym_key=b"k" * 32,
                               serve={"online": online, **serve})
    return core, log


def test_feedback_changes_the_next_slate_on_another_worker_with_exact_propensities(online_core):
    from datetime import datetime, timezone

    make, log_path = online_core
    a, b = make(policy="epsilon_greedy", epsilon=0.1), make(policy="epsilon_greedy", epsilon=0.1)  # two workers
    first = b.recommend("newcomer", 10)
    assert first["cold_start"] and not first["online_update"]
    cold = b.relevance.scores("newcomer")
    # the newcomer likes the items the cold-start slate ranked lowest: clicks on five of them, via worker a
    liked = [b.item_ids[i] for i in np.argsort(cold)[:5]]
    now = datetime.now(timezone.utc)
    log = FeedbackLog(log_path)
    log.append_many([a.feedback_event(f"e{j}", "newcomer", item, 1.0, 0.01, now, model_version="v1")
                     for j, item in enumerate(liked)])
    after = b.recommend("newcomer", 10)
    assert after["online_update"]
    online = b._online_users("newcomer", b.pseudonym("newcomer"))
    warm = b.relevance.scores("newcomer", users=online["relevance"])
    pos = b.positions(liked)
    assert warm[pos].mean() - cold[pos].mean() > 0.1  # what they clicked now scores higher
    # what was logged is exact for the policy over the scores that drew it
    rank = b._ranking("newcomer", online.get("uplift"))
    pi = b._inclusion(rank, 10, b.embeddings)
    for item in after["items"]:
        assert item["propensity"] == pytest.approx(pi[b._pos[item["item_id"]]])
    # the promotion gate replays the model without anyone's online state
    assert np.allclose(b.inclusion("newcomer", 10), b._inclusion(b._ranking("newcomer"), 10, b.embeddings))
    # a returning user's trained vector weighs as the rows it was learned from: the same clicks move it less
    assert b.user_rows["u000001"] > 5
    log.append_many([a.feedback_event(f"r{j}", "u000001", item, 1.0, 0.01, now, model_version="v1")
                     for j, item in enumerate(liked)])
    before = b.relevance.scores("u000001")
    moved = b.relevance.scores("u000001", users=b._online_users("u000001", b.pseudonym("u000001"))["relevance"])
    assert 0 < moved[pos].mean() - before[pos].mean() < warm[pos].mean() - cold[pos].mean()
    # another user, or a model version that did not serve those slates (its training data had them), change nothing
    assert not b.recommend("someone-else", 10)["online_update"]
    assert not make(version="v2").recommend("newcomer", 10)["online_update"]


def test_thompson_over_bootstrap_members_logs_its_exact_inclusion(online_core, bundle):
    """The logged propensities are exact for the draw over members (the frequencies themselves:
    test_serving.test_logged_propensities_match_serving_frequencies)."""
    from causalrec.serving.core import RecommenderCore

    make, _ = online_core
    core = make(policy="thompson", epsilon=0.1)
    res = core.recommend("u000001", 5, controls=3)
    members = core.uplift.member_scores("u000001")
    pi = core._inclusion(members, 5, core.embeddings)
    assert pi.sum() == pytest.approx(5)
    for item in res["items"] + res["controls"]:
        assert item["propensity"] == pytest.approx(pi[core._pos[item["item_id"]]])
    # a model without bootstrap members (e.g. ranking by relevance) is one member: exactly epsilon-greedy
    one = RecommenderCore(bundle[0], serve={"policy": "thompson", "rank_by": "relevance"})
    two = RecommenderCore(bundle[0], serve={"policy": "epsilon_greedy", "rank_by": "relevance"})
    assert np.allclose(one.inclusion("u000001", 5), two.inclusion("u000001", 5))


def test_traffic_bandit_shares_follow_rewards_keep_the_floor_and_log_the_mixtures_exact_propensity(online_core):
    from causalrec.policy.traffic import TrafficBandit
    from causalrec.serving.mixture import ServingMixture

    bandit = TrafficBandit(["a", "b", "c"], floor=0.3, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        for arm, mean in enumerate((0.2, 0.5, 0.21)):
            bandit.observe(arm, float(rng.random() < mean))
    shares = bandit.update()
    assert shares.sum() == pytest.approx(1) and shares.min() >= 0.1 - 1e-12 and shares.argmax() == 1 and shares[1] > 0.7
    # two policies side by side: each item's logged probability is sum_m w_m pi_m(i), and it matches how often
    # the mixture shows it
    make, _ = online_core
    first, second = make(version="v1", policy="epsilon_greedy", epsilon=0.3), make(version="v2", policy="softmax")
    mix = ServingMixture([first, second], TrafficBandit(["v1", "v2"], floor=1.0), seed=1)
    mix.bandit.shares = np.array([0.25, 0.75])
    pi = 0.25 * first.inclusion("u000001", 4) + 0.75 * second.inclusion("u000001", 4)
    counts, n = np.zeros(len(pi)), 300
    for _ in range(n):
        res = mix.recommend("u000001", 4, controls=2)
        for item in res["items"] + res["controls"]:
            assert item["propensity"] == pytest.approx(pi[first._pos[item["item_id"]]])
        counts[first.positions([it["item_id"] for it in res["items"]])] += 1
    assert res["policy"] == "mixture" and res["shares"] == {"v1": 0.25, "v2": 0.75}
    assert np.abs(counts / n - pi).max() < 0.09  # 300 draws: a share misapplied moves the top items by more


def test_a_waiting_challenger_shares_the_traffic_when_the_bandit_is_on(online_core, bundle, tmp_path):
    from causalrec.registry import Registry
    from causalrec.serving.mixture import with_challenger

    make, log = online_core
    registry = Registry(tmp_path / "registry.json")
    registry.register({"model_tag": "v2"})
    bandit = {"enabled": True, "floor": 0.5, "batch": 10}
    champion = make(version="v1", bandit=bandit)
    mixture = with_challenger(champion, registry.path, lambda tag: bundle[0], log, seed=0)
    assert [c.version for c in mixture.cores] == ["v1", "v2"]
    res = mixture.recommend("u000001", 5, exclude=["i000000"], controls=2)
    assert res["policy"] == "mixture" and "i000000" not in {it["item_id"] for it in res["items"]}
    assert with_challenger(make(version="v1"), registry.path, lambda tag: bundle[0], log) is None  # bandit off
    registry.block("v2", "the gate said no")  # decided: it no longer shares the traffic
    assert with_challenger(champion, registry.path, lambda tag: bundle[0], log) is None
