"""A promotion funnel with known causal effects: the ground truth for the causal analysis.

Items have a popularity pop_i ~ N(0, 1). The intervention is item-level and confounded: an item is
promoted with probability sigmoid(-0.5 + promote_bias * pop_i) (popular items are promoted more).
Each row is one impression of an item to a user of segment s_u in {0: new, 1: returning}; the funnel:

    click    M ~ Bern(sigmoid(a0 + a_t T + a_p pop + a_s s + a_ts T s))
    purchase Y ~ Bern(sigmoid(b0 + b_t T + b_m M + b_p pop + b_s s + b_ts T s))

so the promotion acts on purchases directly (a price cut) and through the click (visibility), more
so for returning users. The effects are population quantities, computed exactly from the model by
integrating over pop and s (not from the sample):

    total    = E[Y(1, M(1))] - E[Y(0, M(0))]
    direct   = E[Y(1, M(0))] - E[Y(0, M(0))]     (natural direct effect)
    indirect = E[Y(1, M(1))] - E[Y(1, M(0))]     (natural indirect effect, through the click)

and the total effect within each segment (keys `segment=0`, `segment=1`), with its split
(`segment=0 direct`, `segment=0 indirect`, ...). `simulate_funnel` writes the rows to one directory and
the truth to another; nothing in the rows reveals the truth.
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.io import atomic_write_bytes, atomic_write_text

SEGMENTS = {0: "new", 1: "returning"}
# The home funnel above, and shapes it was not designed with (benchmarks/causal_effects.py --shapes):
# nonlinear_confounding  popularity enters promotion, click and purchase through thresholds, a curve and
#                        an interaction with the segment (no unmeasured confounder)
# continuous_heterogeneity  the promotion's effect on click and purchase grows with popularity
# poor_overlap           promotion nearly determined by popularity at both ends (propensities near 0, 1)
# segment_mediator       the promotion moves clicks almost only for returning users, and a click sells
#                        more for them
SHAPES = ("home", "nonlinear_confounding", "continuous_heterogeneity", "poor_overlap", "segment_mediator")


@dataclass(frozen=True)
class FunnelConfig:
    n_items: int = 400
    n_impressions: int = 8000
    promote_bias: float = 1.0
    click: tuple[float, float, float, float, float] = (-1.0, 0.8, 0.5, 0.3, 0.6)      # a0, a_t, a_p, a_s, a_ts
    purchase: tuple[float, float, float, float, float, float] = (-2.0, 0.4, 1.5, 0.6, 0.2, 0.3)  # b0, b_t, b_m, b_p, b_s, b_ts
    shape: str = "home"
    seed: int = 0

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def promote_prob(cfg: FunnelConfig, pop):
    if cfg.shape == "nonlinear_confounding":
        return _sig(-1.2 + 2.4 * (pop > 0.3) - 1.0 * (pop < -1.0) + 0.3 * pop)
    if cfg.shape == "poor_overlap":
        return _sig(-0.5 + 3.5 * pop)
    return _sig(-0.5 + cfg.promote_bias * pop)


def click_prob(cfg: FunnelConfig, t, pop, s):
    a0, at, ap, as_, ats = cfg.click
    if cfg.shape == "nonlinear_confounding":
        return _sig(a0 + at * t + 1.2 * (pop > 0.3) + 0.4 * pop ** 2 - 0.5 + as_ * s + ats * t * s + 0.6 * (pop > 0.3) * s)
    if cfg.shape == "continuous_heterogeneity":
        return _sig(a0 + (at + 0.6 * pop) * t + ap * pop + as_ * s + ats * t * s)
    if cfg.shape == "segment_mediator":
        return _sig(a0 + 0.1 * t + ap * pop + as_ * s + 1.6 * t * s)
    return _sig(a0 + at * t + ap * pop + as_ * s + ats * t * s)


def purchase_prob(cfg: FunnelConfig, t, m, pop, s):
    b0, bt, bm, bp, bs, bts = cfg.purchase
    if cfg.shape == "nonlinear_confounding":
        return _sig(b0 + bt * t + bm * m + 1.8 * (pop > 0.3) - 0.8 * (pop < -1.0) + 0.5 * pop * s + bs * s + bts * t * s)
    if cfg.shape == "continuous_heterogeneity":
        return _sig(b0 + (bt + 0.5 * pop) * t + bm * m + bp * pop + bs * s + bts * t * s)
    if cfg.shape == "segment_mediator":
        return _sig(b0 + bt * t + (bm - 0.6 + 1.2 * s) * m + bp * pop + bs * s + bts * t * s)
    return _sig(b0 + bt * t + bm * m + bp * pop + bs * s + bts * t * s)


def true_effects(cfg: FunnelConfig) -> dict:
    """Population effects, integrating over pop ~ N(0, 1) (4,000 equal-mass quantile points: exact to
    ~1e-4 also where a shape has thresholds in pop) and s ~ Bern(1/2)."""
    from scipy import stats

    nodes = stats.norm.ppf((np.arange(4000) + 0.5) / 4000)
    weights = np.full(len(nodes), 1 / len(nodes))

    def mean_y(t, t_m, s):  # E[Y(t, M(t_m)) | s]
        pm = click_prob(cfg, t_m, nodes, s)
        y = pm * purchase_prob(cfg, t, 1, nodes, s) + (1 - pm) * purchase_prob(cfg, t, 0, nodes, s)
        return float(weights @ y)

    def contrasts(seg):
        avg = lambda t, tm: np.mean([mean_y(t, tm, s) for s in seg])  # noqa: E731
        return {"total": avg(1, 1) - avg(0, 0), "direct": avg(1, 0) - avg(0, 0), "indirect": avg(1, 1) - avg(1, 0)}

    out = contrasts([0, 1])
    for s in SEGMENTS:
        within = contrasts([s])
        out[f"segment={s}"] = within["total"]
        out.update({f"segment={s} {k}": within[k] for k in ("direct", "indirect")})
    return out


def draw_funnel(cfg: FunnelConfig) -> pd.DataFrame:
    """One sample of impressions (deterministic per seed)."""
    rng = np.random.default_rng(cfg.seed)
    pop = rng.normal(size=cfg.n_items)
    promoted = (rng.random(cfg.n_items) < promote_prob(cfg, pop)).astype(int)
    item = rng.integers(0, cfg.n_items, cfg.n_impressions)
    s = rng.integers(0, 2, cfg.n_impressions)
    t, p = promoted[item], pop[item]
    m = (rng.random(cfg.n_impressions) < click_prob(cfg, t, p, s)).astype(int)
    y = (rng.random(cfg.n_impressions) < purchase_prob(cfg, t, m, p, s)).astype(int)
    return pd.DataFrame({"item_id": [f"i{j:06d}" for j in item], "popularity": p, "segment": s,
                         "promoted": t, "clicked": m, "purchased": y})


def simulate_funnel(cfg: FunnelConfig, data_dir: str | Path, truth_dir: str | Path) -> dict:
    """Rows to data_dir/funnel.parquet; config and true effects to truth_dir/funnel_truth.json."""
    data_dir, truth_dir = Path(data_dir), Path(truth_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    draw_funnel(cfg).to_parquet(buf, index=False)
    atomic_write_bytes(data_dir / "funnel.parquet", buf.getvalue())
    truth = {"config": asdict(cfg), "effects": true_effects(cfg)}
    atomic_write_text(truth_dir / "funnel_truth.json", json.dumps(truth, indent=2))
    return truth
