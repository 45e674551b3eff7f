"""The simulator as an online environment: outcomes from the true Y(1), deterministic, drift on cue,
bad input named."""
import numpy as np
import pytest

from causalrec.data.online import OnlineWorld
from causalrec.data.simulate import SimulationConfig, make_world


@pytest.fixture(scope="module")
def world():
    return make_world(SimulationConfig(n_users=200, n_items=60, n_interactions=1000, n_topics=4))


def _slates(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    return ([f"u{u:06d}" for u in rng.integers(0, 200, n)], [f"i{i:06d}" for i in rng.integers(0, 60, n)],
            np.full(n, 0.1))


def test_outcomes_follow_the_true_y1_and_are_deterministic(world):
    env = OnlineWorld(world, seed=3)
    users, items, props = _slates()
    y = env.respond(1, users, items, props, policy="v1")
    assert np.array_equal(y, OnlineWorld(world, seed=3).respond(1, users, items, props, policy="v1"))
    assert not np.array_equal(y, OnlineWorld(world, seed=4).respond(1, users, items, props, policy="v1"))
    p1 = env.expected(1, users, items)
    assert abs(y.mean() - p1.mean()) < 4 * np.sqrt(p1.mean() * (1 - p1.mean()) / len(y))
    high, low = p1 > np.quantile(p1, 0.8), p1 < np.quantile(p1, 0.2)
    assert y[high].mean() > y[low].mean() + 0.2
    # an impression's outcome does not depend on what else was served that round
    other, served = OnlineWorld(world, seed=3), set(zip(users[:50], items[:50]))
    unrelated = next((f"u{u:06d}", "i000000") for u in range(200) if (f"u{u:06d}", "i000000") not in served)
    other.respond(1, [unrelated[0]] * 5, [unrelated[1]] * 5, np.full(5, 0.1), policy="v2")
    assert other.respond(1, users[:50], items[:50], props[:50], policy="v2").tolist() == y[:50].tolist()


def test_every_impression_is_a_fresh_draw_across_calls(world):
    """Showing the same pairs again in a round draws again (the n-th impression gets the n-th draw,
    whether it came in one call or two): outcomes of two impressions agree only as often as two
    independent draws would."""
    users, items, props = _slates(n=5_000, seed=1)
    env = OnlineWorld(world, seed=3)
    first, second = env.respond(1, users, items, props, "v1"), env.respond(1, users, items, props, "v1")
    both = OnlineWorld(world, seed=3).respond(1, users + users, items + items, np.r_[props, props], "v1")
    assert np.array_equal(both, np.r_[first, second])  # one call or two: the same draws
    p1 = env.expected(1, users, items)
    agree = np.mean(first == second)
    independent = np.mean(p1 ** 2 + (1 - p1) ** 2)
    assert abs(agree - independent) < 0.03 and agree < 0.99, (agree, independent)
    assert env.respond(2, users, items, props, "v1").tolist() != first.tolist()  # a new round, new draws


def test_interest_drift_starts_at_the_configured_round(world):
    env = OnlineWorld(world, seed=0, drift_from_round=6, drift_rounds=2)
    assert [env.progress(r) for r in (1, 5, 6, 7, 9)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    before, after = env.oracle(5, "u000001", 10), env.oracle(7, "u000001", 10)
    assert before == env.oracle(1, "u000001", 10) and len(set(before) & set(after)) < 10
    still = OnlineWorld(world, seed=0)
    assert still.oracle(9, "u000001", 10) == before


@pytest.mark.parametrize("args, fragment", [
    ((0, ["u000001"], ["i000001"], [0.5], "v1"), "round must be an integer >= 1"),
    ((1, ["u000001"], ["i000001"], [0.0], "v1"), "propensity must be in (0, 1]"),
    ((1, ["u000001"], ["new-1"], [0.5], "v1"), "item_id 'new-1' is not in this world"),
    ((1, ["u999999"], ["i000001"], [0.5], "v1"), "user_id 'u999999' is not in this world"),
    ((1, ["u000001"], ["i000001", "i000002"], [0.5], "v1"), "differ in length"),
    ((1, ["u000001"], ["i000001"], [0.5], ""), "policy"),
])
def test_bad_input_is_named(world, args, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace("]", r"\]")):
        OnlineWorld(world).respond(*args)


def test_unshown_items_answer_with_the_organic_outcome_on_their_own_stream(world):
    """exposed=False draws Y(0) (what a user does with an item no one recommended), from a stream of its
    own: the shown pairs' outcomes are the same with or without unshown pairs in the same call."""
    env = OnlineWorld(world, seed=5)
    users, items, props = _slates()
    y0 = env.respond(1, users, items, props, policy="v1", exposed=False)
    p1, p0 = env.expected(1, users, items), env.expected(1, users, items) - env.expected(1, users, items, "uplift")
    assert abs(y0.mean() - p0.mean()) < 4 * np.sqrt(p0.mean() * (1 - p0.mean()) / len(y0))
    assert abs(y0.mean() - p1.mean()) > 0.02  # not Y(1)
    mixed = np.arange(len(users)) % 2 == 0
    both = OnlineWorld(world, seed=5).respond(1, users, items, props, policy="v1", exposed=mixed)
    alone = OnlineWorld(world, seed=5).respond(1, np.array(users)[mixed], np.array(items)[mixed], props[mixed], policy="v1")
    assert both[mixed].tolist() == alone.tolist()
