"""Refuters for a total-effect estimate: each re-runs the estimate on altered data and says pass/fail.

* placebo treatment (DoWhy's design): the estimate is repeated `placebo_simulations` times with the
  treatment permuted (across clusters when it is cluster-level); with the causal link severed the
  placebo estimates must centre on 0 (0 inside their distribution: DoWhy's two-sided percentile
  p-value >= 0.05). It catches an estimator that finds effects where there are none;
* randomization test, on the same permutations: the real estimate must lie outside the placebo
  distribution (p = (1 + #{|placebo| >= |estimate|}) / (1 + simulations) <= 0.05). It catches an
  effect no larger than what a random treatment gives (e.g. few treated units);
* random common cause: an independent random column added to the adjustment set: the estimate must
  move by less than one standard error;
* data subset: a random `subset` share of the clusters: the estimate must stay in the original interval;
* unobserved confounder (sensitivity): the robustness value of Cinelli & Hazlett (2020) from the
  linear model, the share of residual variance of both treatment and outcome a hidden confounder
  would have to explain to bring the effect to 0; it passes when that exceeds what the strongest
  observed confounder explains of the treatment (a hidden one as strong would not explain it away).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from causalrec.causal.effects import Estimate


def refute(df: pd.DataFrame, estimate: Callable[[pd.DataFrame, list[str]], Estimate], treatment: str, outcome: str,
           adjustment: list[str], cluster: str | None = None, subset: float = 0.8, seed: int = 0,
           placebo_simulations: int = 99) -> list[dict]:
    """`estimate(data, adjustment)` -> Estimate of the total effect; returns one row per refuter."""
    rng = np.random.default_rng(seed)
    base = estimate(df, adjustment)
    rows = []
    units = df[cluster].to_numpy() if cluster else np.arange(len(df))
    uniq, inverse = np.unique(units, return_inverse=True)

    unit_t = pd.Series(df[treatment].to_numpy()).groupby(inverse).first().to_numpy()
    placebos = [estimate(df.assign(**{treatment: rng.permutation(unit_t)[inverse]}), adjustment)
                for _ in range(placebo_simulations)]
    values = np.array([p.value for p in placebos])
    above = np.mean((values > 0) + 0.5 * (values == 0))
    centred = float(2 * min(above, 1 - above))  # DoWhy's perform_bootstrap_test with the estimate set to 0
    lo, hi = placebos[0].ci
    rows.append({"refuter": "placebo treatment", "new_effect": float(values.mean()), "placebo_sd": float(values.std(ddof=1)),
                 "p_value": centred, "simulations": len(values), "passed": bool(centred >= 0.05),
                 "first_placebo_interval_covers_0": bool(lo <= 0 <= hi), "expected": "placebo effects centre on 0 (p >= 0.05)"})
    p_value = float((1 + np.sum(np.abs(values) >= abs(base.value))) / (1 + len(values)))
    rows.append({"refuter": "randomization test", "new_effect": None, "p_value": p_value, "simulations": len(values),
                 "passed": bool(p_value <= 0.05), "expected": "estimate outside the placebo distribution (p <= 0.05)"})

    noisy = df.assign(_random_common_cause=rng.normal(size=len(df)))
    moved = estimate(noisy, [*adjustment, "_random_common_cause"])
    rows.append({"refuter": "random common cause", "new_effect": moved.value,
                 "passed": bool(abs(moved.value - base.value) < base.se), "expected": "moves < 1 SE"})

    keep = rng.random(len(uniq)) < subset
    part = estimate(df[keep[inverse]], adjustment)
    lo, hi = base.ci
    rows.append({"refuter": f"data subset ({subset:.0%} of {'clusters' if cluster else 'rows'})", "new_effect": part.value,
                 "passed": bool(lo <= part.value <= hi), "expected": "inside the original interval"})

    rv, strongest = robustness_value(df, treatment, outcome, adjustment)
    rows.append({"refuter": "unobserved confounder (robustness value)", "new_effect": None, "robustness_value": rv,
                 "strongest_observed_r2_with_treatment": strongest, "passed": bool(rv > strongest),
                 "expected": "RV above the strongest observed confounder's partial R2"})
    return rows


def robustness_value(df: pd.DataFrame, treatment: str, outcome: str, adjustment: list[str]) -> tuple[float, float]:
    """(RV_q=1 of the OLS treatment coefficient, max partial R2 of one adjustment column with T)."""
    import statsmodels.api as sm

    x = sm.add_constant(df[[treatment, *adjustment]].astype(float))
    fit = sm.OLS(df[outcome].astype(float), x).fit()
    f2 = float(fit.tvalues[treatment]) ** 2 / fit.df_resid
    rv = 0.5 * (np.sqrt(f2 * f2 + 4 * f2) - f2)
    strongest = 0.0
    for col in adjustment:
        others = sm.add_constant(df[[c for c in adjustment if c != col]].astype(float))
        full = sm.add_constant(df[adjustment].astype(float))
        t = df[treatment].astype(float)
        r_full, r_less = sm.OLS(t, full).fit().ssr, sm.OLS(t, others).fit().ssr
        strongest = max(strongest, float(1 - r_full / r_less))
    return float(rv), strongest
