"""Learning between retrains (serving.online): the fold-in, the log-following state, and the core's use of it."""
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from causalrec.serving.online import OnlineUsers, fold_in, ips_weights


def test_fold_in_is_the_weighted_ridge_solution_and_recovers_a_logistic_user():
    rng = np.random.default_rng(0)
    Q, b = rng.normal(size=(40, 4)).astype(np.float32), rng.normal(size=40).astype(np.float32)
    y, w, p0 = rng.normal(size=40), rng.uniform(0.5, 2, 40), (rng.normal(size=4).astype(np.float32), 0.3)
    p, bu = fold_in(Q, b, 0.1, y, w, p0, l2=2.0, link="identity")
    # closed form: argmin sum w (X x + b + g - y)^2 / 2 + l2 ||x - x0||^2
    X, x0 = np.hstack([Q, np.ones((40, 1))]), np.append(*p0)
    exact = np.linalg.solve(X.T @ (w[:, None] * X) + 4.0 * np.eye(5), X.T @ (w * (y - b - 0.1)) + 4.0 * x0)
    assert np.allclose(np.append(p, bu), exact, atol=1e-5)
    # a logistic user seen through 400 outcomes: the direction of their vector comes back
    Q = rng.normal(size=(400, 6)).astype(np.float32)
    truth = np.array([2.0, -1.5, 0, 0, 1.0, 0])
    y = (rng.random(400) < 1 / (1 + np.exp(-(Q @ truth)))).astype(float)
    p, _ = fold_in(Q, np.zeros(400, np.float32), 0.0, y, np.ones(400), (np.zeros(6, np.float32), 0.0), 1.0, "sigmoid")
    assert p @ truth / np.linalg.norm(p) / np.linalg.norm(truth) > 0.95
    w = ips_weights(np.array([0.9, 0.9, 0.001]), clip=10.0)
    assert w.mean() == pytest.approx(1) and w[2] / w[0] == pytest.approx(10)


def _line(event_id, user, item, outcome, version="v1", propensity=0.5, **kw):
    return json.dumps({"event_id": event_id, "user_id": user, "item_id": item, "outcome": outcome,
                       "propensity": propensity, "model_version": version, **kw}) + "\n"


def test_online_state_follows_the_log_bounded_per_user_and_in_users_and_rebuilds_after_a_rewrite(tmp_path):
    from causalrec.serving.erasure import scrub_jsonl

    log = tmp_path / "feedback.jsonl"
    state = OnlineUsers(log, "v1", max_events=3, max_users=2)
    state.refresh()  # no log yet: nothing, no error
    with open(log, "a") as fh:
        fh.write("".join(_line(f"e{j}", "alice", f"i{j}", 1.0) for j in range(5)))
        fh.write(_line("x1", "alice", "i9", 1.0, version="v0"))  # another version served it: not this model's to learn
        fh.write(_line("x2", "alice", "i8", 1.0, exposed=False))  # a control: not a shown item
        fh.write('{"event_id": "torn", "user_')  # a write in progress
    state.refresh()
    assert [e[0] for e in state.events("alice")] == ["i2", "i3", "i4"]  # the last max_events
    before = state.version("alice")
    with open(log, "a") as fh:
        fh.write('x": 1}\n' + _line("b1", "bob", "i1", 0.0) + _line("c1", "carol", "i1", 1.0))
    state.refresh()
    assert len(state) == 2 and state.events("alice") == [] and state.version("alice") == 0  # the least recent dropped
    assert state.version("bob") > before
    scrub_jsonl(log, ("carol",))  # `causalrec forget` rewrites the log without her (a new file)
    state.refresh()
    assert state.events("carol") == [] and [e[0] for e in state.events("bob")] == ["i1"]


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
    from causalrec.serving.feedback import FeedbackLog

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
