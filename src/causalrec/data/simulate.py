"""A semi-synthetic world with ground truth: the embedded default data of causalrec.

Generative model (documented in docs/simulator.md):

* K latent topics. User u has interests theta_u ~ Dirichlet(0.3) (and, with drift, a second
  interest vector theta'_u that the user moves towards over time). Item i has a topic mix
  z_i ~ Dirichlet(0.2), a quality q_i ~ N(0, 1) and a popularity log-score pop_i ~ N(0, 1).
* Affinity a_ui = K * <theta_u(t), z_i> (mean about 1).
* Potential outcomes: Y(1) ~ Bern(p1) if the item is recommended (exposed),
  p1 = sigmoid(-1.5 + 1.8 (a_ui - 1) + 0.6 q_i + b_u);  Y(0) ~ Bern(p0) if not (organic),
  p0 = p1 * s_i with s_i = sigmoid(-1 + pop_i): popular items are often bought anyway, so
  true uplift tau_ui = p1 - p0 differs from true relevance p1.
* Log: each row is a (user, item) visit, users drawn by activity, items uniformly; the logging
  policy recommends (exposed = treatment = 1) with propensity
  e_ui = clip(sigmoid(c + popularity_bias * pop_i + affinity_bias * (a_ui - 1)), 0.01, 0.99),
  with c solved so that mean(e) = exposure_rate. outcome = Y(exposed). Exposure therefore
  correlates with relevance: naive learning on exposed rows is biased (MNAR).
* Item titles/descriptions are rendered from the item's topics and quality, so text carries signal.

Shapes (a family of worlds; each a config field, the defaults give the world above byte for byte):
* policy_view: what the logging policy knows of preferences. exact (a_ui), noisy (a_ui + a rank-8
  Gaussian distortion of sd 1), low_rank (only the user's top topic: K * theta_u[top] * z_i[top]),
  nonlinear (a saturating view, 2 tanh(2 (a_ui - 1)) + 1, that cannot tell liked items apart).
* selection_on_outcome (MNAR): the exposure decision adds this x (2 Y(1) - 1) to the policy's logit,
  while the log records the policy's own propensity only (selection the log cannot see).
* confounding: a per-visit context z ~ N(0,1), unobserved, adds this x z to both the exposure logit
  and the outcome logit; the logged propensity is exact (includes z); truths average over z.
* uplift_shape: organic_share (p0 = p1 s_i, the default); interaction (the organic share depends
  on the user too: users find items of their own interests themselves, s_ui = sigmoid(-1 + pop_i +
  1.5 (a_ui - 1))); negative (as organic_share, but for a third of users a recommendation
  backfires: p0 = min(0.99, p1 (1.3 + s_i)) > p1); pair_effect (the recommendation moves the
  outcome's log-odds by d_ui = 1.2 tanh(1.5 (a2_ui - 1)) + 0.6, a2 the affinity to the user's interests
  other than the main one: logit p0 = logit p1 - d_ui, an effect that is a nonlinear function of
  user x item, largest for what a user would not look for, negative for part of the pairs, and
  invisible to the logging policy);
  saturating (a recommendation matters most to the undecided: p0 = p1 - 0.9 p1 (1 - p1), so the
  most relevant items, bought anyway, have little uplift).

Everything is deterministic per seed. The log is written in chunks (bounded memory at 10M rows).
Ground truth (latent factors + a randomized test set with both potential outcomes) goes to a
separate directory and is never read by training.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from causalrec.io import atomic_dir, atomic_write_text

TOPICS = {
    "hiking": ["trail", "backpack", "boots", "tent", "summit", "compass", "outdoor", "camping"],
    "cooking": ["skillet", "recipe", "spice", "knife", "oven", "kitchen", "chef", "pan"],
    "gaming": ["console", "controller", "arcade", "quest", "multiplayer", "joystick", "level", "pixel"],
    "gardening": ["seeds", "soil", "planter", "herb", "greenhouse", "pruning", "compost", "bloom"],
    "fitness": ["dumbbell", "yoga", "workout", "treadmill", "protein", "stretch", "gym", "cardio"],
    "music": ["guitar", "vinyl", "headphones", "amplifier", "melody", "drum", "piano", "studio"],
    "photography": ["camera", "lens", "tripod", "shutter", "portrait", "flash", "zoom", "film"],
    "travel": ["suitcase", "passport", "luggage", "adapter", "journey", "map", "carry-on", "itinerary"],
    "reading": ["novel", "paperback", "bookmark", "library", "poetry", "author", "chapter", "memoir"],
    "fashion": ["jacket", "denim", "scarf", "sneakers", "leather", "wool", "tailored", "coat"],
    "coffee": ["espresso", "grinder", "beans", "roast", "latte", "kettle", "brew", "mug"],
    "cycling": ["bicycle", "helmet", "pedal", "saddle", "gears", "tyre", "trailbike", "spokes"],
    "pets": ["leash", "kibble", "aquarium", "catnip", "collar", "kennel", "treats", "puppy"],
    "tech": ["laptop", "charger", "keyboard", "monitor", "router", "smartwatch", "tablet", "usb"],
    "art": ["canvas", "easel", "watercolor", "sketchbook", "brush", "acrylic", "charcoal", "gallery"],
    "baby": ["stroller", "diaper", "crib", "pacifier", "onesie", "bottle", "rattle", "nursery"],
    "home": ["sofa", "lamp", "cushion", "curtain", "rug", "shelf", "candle", "blanket"],
    "beauty": ["serum", "lipstick", "moisturizer", "perfume", "mascara", "cleanser", "nail", "lotion"],
    "sports": ["football", "racket", "jersey", "goalpost", "whistle", "stadium", "ball", "cleats"],
    "science": ["microscope", "telescope", "chemistry", "circuit", "robotics", "magnet", "lab", "experiment"],
    "wine": ["vineyard", "merlot", "corkscrew", "decanter", "vintage", "sommelier", "cellar", "glass"],
    "crafts": ["yarn", "knitting", "sewing", "beads", "quilt", "embroidery", "glue", "pattern"],
    "fishing": ["rod", "reel", "bait", "tackle", "lure", "waders", "net", "angler"],
    "tea": ["matcha", "oolong", "teapot", "infuser", "chamomile", "herbal", "steep", "leaves"],
}
GOOD_WORDS = ["premium", "durable", "award-winning", "handcrafted", "top-rated", "reliable"]
POOR_WORDS = ["basic", "budget", "flimsy", "generic", "no-frills", "lightweight"]
FILLER = ["with", "for", "and", "the", "a", "everyday", "new", "classic", "great", "set", "kit"]


POLICY_VIEWS = ("exact", "noisy", "low_rank", "nonlinear")
UPLIFT_SHAPES = ("organic_share", "interaction", "negative", "pair_effect", "saturating")
# Gauss-Hermite nodes for averaging over the per-visit context z ~ N(0, 1).
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(15)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


# A typed list of the simulator's knobs. (Same shape as other configs, e.g. text.finetune.FinetuneConfig:
# different concepts whose fields only look alike; nothing to share.)
@dataclass(frozen=True)
class SimulationConfig:
    n_users: int = 2000
    n_items: int = 1000
    n_interactions: int = 100_000
    n_topics: int = 12
    exposure_rate: float = 0.3
    popularity_bias: float = 1.2
    affinity_bias: float = 2.0
    drift: float = 0.0
    days: int = 90
    n_test_pairs_per_user: int = 20
    chunk_rows: int = 1_000_000
    policy_view: str = "exact"
    selection_on_outcome: float = 0.0
    confounding: float = 0.0
    uplift_shape: str = "organic_share"
    seed: int = 7

    def __post_init__(self):
        # The one rule book for a world's settings: params.yaml's `simulate` section is validated here too.
        bounds = {"n_users": (2, 10_000_000), "n_items": (2, 1_000_000), "n_interactions": (10, 2_000_000_000),
                  "days": (1, 36_500), "n_test_pairs_per_user": (1, 10_000), "chunk_rows": (1000, 50_000_000)}
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        for name, lo, hi in (("popularity_bias", -10, 10), ("affinity_bias", -10, 10), ("drift", 0, 1),
                             ("selection_on_outcome", 0, 10), ("confounding", 0, 10)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not lo <= value <= hi:  # NaN fails both comparisons
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
        if not 2 <= self.n_topics <= len(TOPICS):
            raise ValueError(f"n_topics must be in [2, {len(TOPICS)}], got {self.n_topics}")
        if not 0 < self.exposure_rate < 1:
            raise ValueError(f"exposure_rate must be in (0, 1), got {self.exposure_rate}")
        if self.policy_view not in POLICY_VIEWS:
            raise ValueError(f"policy_view must be one of {POLICY_VIEWS}, got {self.policy_view!r}")
        if self.uplift_shape not in UPLIFT_SHAPES:
            raise ValueError(f"uplift_shape must be one of {UPLIFT_SHAPES}, got {self.uplift_shape!r}")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class World:
    """Latent state of the simulated world; enough to compute every ground-truth quantity."""

    theta_early: np.ndarray   # (U, K) user interests at t=0
    theta_late: np.ndarray    # (U, K) user interests at t=1 (= early when drift=0)
    item_topics: np.ndarray   # (I, K)
    quality: np.ndarray       # (I,)
    popularity: np.ndarray    # (I,) standardised log-popularity
    user_bias: np.ndarray     # (U,)
    activity: np.ndarray      # (U,) probability of a visit coming from each user
    exposure_offset: float    # c in the logging policy
    config: SimulationConfig
    view_user: np.ndarray | None = None   # (U, 8) the noisy policy view's distortion factors
    view_item: np.ndarray | None = None   # (I, 8)
    backfire: np.ndarray | None = None    # (U,) users for whom a recommendation backfires (uplift_shape negative)

    def theta(self, users: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)[..., None] * self.config.drift
        mix = (1 - t) * self.theta_early[users] + t * self.theta_late[users]
        return mix / mix.sum(-1, keepdims=True)

    def affinity(self, users, items, t=1.0) -> np.ndarray:
        k = self.item_topics.shape[1]
        return k * np.einsum("nk,nk->n", self.theta(users, t), self.item_topics[items])

    def potential_outcome_probs(self, users, items, t=1.0, z=None) -> tuple[np.ndarray, np.ndarray]:
        """(p1, p0): P(Y=1 | recommended) and P(Y=1 | not recommended) for each (user, item) pair;
        at context z (per visit), or averaged over z when the world is confounded and z is None."""
        cfg = self.config
        if cfg.confounding and z is None:
            draws = [self.potential_outcome_probs(users, items, t, np.full(len(users), node)) for node in _GH_NODES]
            return tuple(sum(w * d[k] for w, d in zip(_GH_WEIGHTS, draws)) for k in (0, 1))
        a = self.affinity(users, items, t)
        logit = -1.5 + 1.8 * (a - 1.0) + 0.6 * self.quality[items] + self.user_bias[users]
        if cfg.confounding:
            logit = logit + cfg.confounding * z
        p1 = _sigmoid(logit)
        if cfg.uplift_shape == "pair_effect":
            d = 1.2 * np.tanh(1.5 * (self.secondary_affinity(users, items, t) - 1.0)) + 0.6
            return p1, _sigmoid(logit - d)
        if cfg.uplift_shape == "saturating":
            return p1, p1 - 0.9 * p1 * (1 - p1)
        if cfg.uplift_shape == "interaction":
            return p1, p1 * _sigmoid(-1.0 + self.popularity[items] + 1.5 * (a - 1.0))
        organic_share = _sigmoid(-1.0 + self.popularity[items])
        if cfg.uplift_shape == "negative":
            hurt = self.backfire[users]
            return p1, np.where(hurt, np.minimum(0.99, p1 * (1.3 + organic_share)), p1 * organic_share)
        return p1, p1 * organic_share

    def secondary_affinity(self, users, items, t=1.0) -> np.ndarray:
        """K <theta_u, z_i> over the user's interests other than the main one (renormalised): what a
        user would not go looking for by themselves."""
        theta = self.theta(users, t).copy()
        theta[np.arange(len(users)), theta.argmax(-1)] = 0.0
        theta /= np.maximum(theta.sum(-1, keepdims=True), 1e-12)
        return self.item_topics.shape[1] * np.einsum("nk,nk->n", theta, self.item_topics[items])

    def policy_affinity(self, users, items, t=1.0) -> np.ndarray:
        """What the logging policy knows of a_ui (policy_view)."""
        view = self.config.policy_view
        if view == "low_rank":
            theta = self.theta(users, t)
            top = theta.argmax(-1)
            return self.item_topics.shape[1] * theta[np.arange(len(users)), top] * self.item_topics[items, top]
        a = self.affinity(users, items, t)
        if view == "noisy":
            return a + np.einsum("nk,nk->n", self.view_user[users], self.view_item[items]) / np.sqrt(self.view_user.shape[1])
        if view == "nonlinear":
            return 2 * np.tanh(2 * (a - 1.0)) + 1.0
        return a

    def exposure_propensity(self, users, items, t=1.0, offset: float | None = None, z=None) -> np.ndarray:
        c = self.exposure_offset if offset is None else offset
        cfg = self.config
        logit = c + cfg.popularity_bias * self.popularity[items] + cfg.affinity_bias * (self.policy_affinity(users, items, t) - 1)
        if cfg.confounding and z is not None:
            logit = logit + cfg.confounding * z
        return np.clip(_sigmoid(logit), 0.01, 0.99)

    def truth_matrices(self, t: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Dense (U, I) true relevance p1 and true uplift p1 - p0 (only for evaluation-sized worlds)."""
        n_users, n_items = len(self.user_bias), len(self.quality)
        rel = np.empty((n_users, n_items), dtype=np.float32)
        upl = np.empty((n_users, n_items), dtype=np.float32)
        items = np.arange(n_items)
        for u in range(n_users):
            p1, p0 = self.potential_outcome_probs(np.full(n_items, u), items, t)
            rel[u], upl[u] = p1, p1 - p0
        return rel, upl

    def save(self, path: Path) -> None:
        arrays = {k: getattr(self, k) for k in
                  ("theta_early", "theta_late", "item_topics", "quality", "popularity", "user_bias", "activity",
                   "view_user", "view_item", "backfire")}
        with atomic_dir(path) as tmp:
            np.savez(tmp / "world.npz", **arrays)
            atomic_write_text(tmp / "config.json",
                              json.dumps({**asdict(self.config), "exposure_offset": self.exposure_offset}, indent=2))

    @classmethod
    def load(cls, path: Path) -> "World":
        arrays = dict(np.load(Path(path) / "world.npz"))
        meta = json.loads((Path(path) / "config.json").read_text())
        offset = meta.pop("exposure_offset")
        return cls(**arrays, exposure_offset=offset, config=SimulationConfig(**meta))


def make_world(cfg: SimulationConfig) -> World:
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    k = cfg.n_topics
    theta_early = rng.dirichlet(np.full(k, 0.3), size=cfg.n_users)
    theta_late = rng.dirichlet(np.full(k, 0.3), size=cfg.n_users) if cfg.drift > 0 else theta_early.copy()
    item_topics = rng.dirichlet(np.full(k, 0.2), size=cfg.n_items)
    quality = rng.normal(size=cfg.n_items)
    popularity = rng.normal(size=cfg.n_items)
    user_bias = rng.normal(scale=0.5, size=cfg.n_users)
    activity = rng.lognormal(sigma=0.8, size=cfg.n_users)
    activity /= activity.sum()
    # The shapes' latents come from their own stream, so the default world's draws never change.
    shape_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 4]))
    view_user = shape_rng.normal(size=(cfg.n_users, 8))
    view_item = shape_rng.normal(size=(cfg.n_items, 8))
    backfire = shape_rng.random(cfg.n_users) < 1 / 3
    world = World(theta_early, theta_late, item_topics, quality, popularity, user_bias, activity, 0.0, cfg,
                  view_user, view_item, backfire)
    # Solve for the logging policy's offset so that the mean exposure propensity hits the target.
    users = rng.choice(cfg.n_users, size=20_000, p=activity)
    items = rng.integers(cfg.n_items, size=20_000)
    lo, hi = -10.0, 10.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if world.exposure_propensity(users, items, 0.0, offset=mid).mean() < cfg.exposure_rate:
            lo = mid
        else:
            hi = mid
    world.exposure_offset = (lo + hi) / 2
    return world


def _item_text(rng: np.random.Generator, topic_mix: np.ndarray, quality: float, topic_names: list[str]):
    order = np.argsort(-topic_mix)
    main = topic_names[order[0]]
    words = TOPICS[main]
    tone = GOOD_WORDS if quality > 0.3 else POOR_WORDS if quality < -0.3 else ["practical", "versatile", "standard"]
    title = f"{rng.choice(tone).capitalize()} {rng.choice(words)} {rng.choice(words)}"
    n_words = int(rng.integers(12, 28))
    topics = rng.choice(len(topic_names), size=n_words, p=topic_mix)
    body = [rng.choice(TOPICS[topic_names[t]]) if rng.random() < 0.75 else rng.choice(FILLER) for t in topics]
    body.insert(int(rng.integers(len(body))), str(rng.choice(tone)))
    return title, " ".join(body).capitalize() + ".", main


def _catalogue(world: World, rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    cfg = world.config
    names = list(TOPICS)[: cfg.n_topics]
    titles, descs, cats = [], [], []
    for i in range(cfg.n_items):
        t, d, c = _item_text(rng, world.item_topics[i], world.quality[i], names)
        titles.append(t), descs.append(d), cats.append(c)
    price = np.round(np.exp(3 + 0.4 * world.quality + rng.normal(scale=0.3, size=cfg.n_items)), 2)
    items = pa.table({
        "item_id": [f"i{i:06d}" for i in range(cfg.n_items)],
        "title": titles, "description": descs, "category": cats, "price": price,
    })
    profiles = []
    for u in range(cfg.n_users):
        top = np.argsort(-world.theta_early[u])[:2]
        # Noisy self-description: one stated interest in four is random.
        stated = [names[t] if rng.random() > 0.25 else names[int(rng.integers(len(names)))] for t in top]
        profiles.append(f"Interested in {stated[0]} and {stated[1]}.")
    users = pa.table({"user_id": [f"u{u:06d}" for u in range(cfg.n_users)], "profile_text": profiles})
    return items, users


INTERACTIONS_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("exposed", pa.int8()), ("outcome", pa.float32()), ("propensity", pa.float32()),
    ("position", pa.int16()), ("policy", pa.string()), ("treatment", pa.int8()),
])
START = np.datetime64("2026-01-01T00:00:00", "ms")


def _interaction_chunk(world: World, rng: np.random.Generator, n: int, t0: float, t1: float,
                       shape_rng: np.random.Generator) -> pa.Table:
    cfg = world.config
    users = rng.choice(cfg.n_users, size=n, p=world.activity)
    items = rng.integers(cfg.n_items, size=n)
    t = np.sort(rng.uniform(t0, t1, size=n))
    z = shape_rng.normal(size=n) if cfg.confounding else None
    e = world.exposure_propensity(users, items, t, z=z)
    p1, p0 = world.potential_outcome_probs(users, items, t, z=z)
    if cfg.selection_on_outcome:
        # Y(1) is drawn first and moves the exposure decision; the log keeps the policy's e only.
        y1 = shape_rng.random(n) < p1
        shown = _sigmoid(np.log(e / (1 - e)) + cfg.selection_on_outcome * (2 * y1 - 1))
        exposed = rng.random(n) < shown
        outcome = np.where(exposed, y1, rng.random(n) < p0)
    else:
        exposed = rng.random(n) < e
        outcome = rng.random(n) < np.where(exposed, p1, p0)
    # The logging policy fills 10 slots; likelier recommendations sit higher. 0 = not shown.
    position = np.where(exposed, np.clip(1 + np.floor((1 - e) * 10 * rng.uniform(0.5, 1.0, n)), 1, 10), 0)
    ms = (t * cfg.days * 86_400_000).astype(np.int64)
    return pa.table({
        "user_id": pa.array(np.char.add("u", np.char.zfill(users.astype(str), 6))),
        "item_id": pa.array(np.char.add("i", np.char.zfill(items.astype(str), 6))),
        "timestamp": pa.array(START + ms.astype("timedelta64[ms]"), pa.timestamp("ms", tz="UTC")),
        "exposed": pa.array(exposed.astype(np.int8)),
        "outcome": pa.array(outcome.astype(np.float32)),
        "propensity": pa.array(e.astype(np.float32)),
        "position": pa.array(position.astype(np.int16)),
        "policy": pa.array(np.full(n, "logging_v1")),
        "treatment": pa.array(exposed.astype(np.int8)),
    }, schema=INTERACTIONS_SCHEMA)


def _test_pairs(world: World, rng: np.random.Generator) -> pd.DataFrame:
    """A randomized evaluation set: uniform items per user, both potential outcomes realised."""
    cfg = world.config
    n = min(cfg.n_test_pairs_per_user, cfg.n_items)
    users = np.repeat(np.arange(cfg.n_users), n)
    items = np.concatenate([rng.choice(cfg.n_items, size=n, replace=False) for _ in range(cfg.n_users)])
    p1, p0 = world.potential_outcome_probs(users, items, 1.0)
    return pd.DataFrame({
        "user_id": [f"u{u:06d}" for u in users], "item_id": [f"i{i:06d}" for i in items],
        "p1": p1, "p0": p0, "y1": (rng.random(len(users)) < p1).astype(np.int8),
        "y0": (rng.random(len(users)) < p0).astype(np.int8),
    })


def simulate(cfg: SimulationConfig, data_dir: str | Path, truth_dir: str | Path, progress: bool = True) -> dict:
    """Write interactions/items/users parquet to `data_dir` and the ground truth to `truth_dir`.

    Each directory is written to a temporary sibling and renamed into place, so an interrupted run
    never leaves half a data set. Returns a small summary.
    """
    world = make_world(cfg)
    text_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    items, users = _catalogue(world, text_rng)
    n_chunks = max(1, -(-cfg.n_interactions // cfg.chunk_rows))
    chunk_seeds = np.random.SeedSequence([cfg.seed, 2]).spawn(n_chunks)
    shape_seeds = np.random.SeedSequence([cfg.seed, 5]).spawn(n_chunks)
    n_exposed = n_positive = 0
    with atomic_dir(Path(data_dir)) as tmp:
        with pq.ParquetWriter(tmp / "interactions.parquet", INTERACTIONS_SCHEMA, compression="zstd") as writer:
            for c in tqdm(range(n_chunks), desc="simulate", unit="chunk", disable=not progress):
                lo = c * cfg.chunk_rows
                n = min(cfg.chunk_rows, cfg.n_interactions - lo)
                chunk = _interaction_chunk(world, np.random.default_rng(chunk_seeds[c]), n, c / n_chunks, (c + 1) / n_chunks,
                                           np.random.default_rng(shape_seeds[c]))
                writer.write_table(chunk, row_group_size=min(n, 250_000))
                n_exposed += int(pa.compute.sum(chunk["exposed"]).as_py())
                n_positive += int(pa.compute.sum(chunk["outcome"]).as_py())
        pq.write_table(items, tmp / "items.parquet", compression="zstd")
        pq.write_table(users, tmp / "users.parquet", compression="zstd")
    truth_dir = Path(truth_dir)
    world.save(truth_dir / "world")
    test = _test_pairs(world, np.random.default_rng(np.random.SeedSequence([cfg.seed, 3])))
    test.to_parquet(truth_dir / "test_pairs.parquet.tmp", index=False)
    (truth_dir / "test_pairs.parquet.tmp").replace(truth_dir / "test_pairs.parquet")
    return {"interactions": cfg.n_interactions, "exposed": n_exposed, "positives": n_positive,
            "users": cfg.n_users, "items": cfg.n_items, "chunks": n_chunks}
