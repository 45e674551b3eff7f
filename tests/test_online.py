"""Learning between retrains (serving.online): the fold-in and the log-following state (the core's use of them: test_serving)."""
import json

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


def test_the_bandit_learns_each_policys_reward_from_the_log_and_keeps_the_floor(tmp_path):
    from causalrec.policy.traffic import TrafficBandit
    from causalrec.serving.mixture import PolicyRewards

    log = tmp_path / "feedback.jsonl"
    bandit = TrafficBandit(["a", "b"], floor=0.2, seed=0)
    rewards = PolicyRewards(log, bandit, batch=100)
    rng = np.random.default_rng(0)
    with open(log, "a") as fh:  # b's slates are clicked more, but its controls show users click those anyway
        for j in range(400):
            fh.write(_line(f"a{j}", "u", "i1", float(rng.random() < 0.3), version="a"))
            fh.write(_line(f"b{j}", "u", "i1", float(rng.random() < 0.5), version="b"))
            fh.write(_line(f"c{j}", "u", "i2", float(rng.random() < 0.5), version="b", propensity=0.5,
                           exposed=False, control_rate=1.0))
    rewards.refresh()
    assert bandit.n.tolist() == [400, 400]  # shown items only count as the denominator
    shares = bandit.shares
    assert shares.sum() == pytest.approx(1) and shares[0] > 0.85 and shares[1] == pytest.approx(0.1)  # the floor / 2
