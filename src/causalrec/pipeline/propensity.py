"""Stage propensity: the probability of exposure of every logged row, with diagnostics."""
from __future__ import annotations

import numpy as np
import pandas as pd

from causalrec.config import Params
from causalrec.data.schema import INTERACTIONS, read_table
from causalrec.io import atomic_dir, atomic_write_json
from causalrec.pipeline import plots
from causalrec.pipeline.embed import text_features
from causalrec.pipeline.paths import stage_paths

def propensity(params: Params) -> dict:
    """Propensity of exposure for every logged row, clipped; diagnostics and a histogram."""
    from causalrec.causal.propensity import calibration_table, effective_sample_size, estimate_propensities

    d = stage_paths(params)
    inter = read_table(d["data"], INTERACTIONS)
    text = None
    if params.propensity.method == "logistic" and (d["embeddings"] / "items.npy").exists():
        text = text_features(params)
    p = estimate_propensities(inter, params.propensity.method, params.propensity.clip_min, text,
                              calibrate=params.propensity.calibrate)
    exposed = inter["exposed"].to_numpy() == 1
    calibration, ece = calibration_table(p, exposed)
    weights = 1.0 / p[exposed]
    diag = {"method": params.propensity.method, "clip_min": params.propensity.clip_min, "rows": len(p),
            "exposed_rows": int(exposed.sum()), "mean": float(p.mean()), "min": float(p.min()), "max": float(p.max()),
            "clipped_share": float(np.mean(p <= params.propensity.clip_min)),
            "ess_exposed": effective_sample_size(weights), "ess_ratio": effective_sample_size(weights) / max(1, exposed.sum()),
            "expected_calibration_error": ece}
    with atomic_dir(d["propensity"]) as tmp:
        pd.DataFrame({"propensity": p}).to_parquet(tmp / "propensities.parquet", index=False)
        calibration.to_csv(tmp / "calibration.csv", index=False)
        atomic_write_json(tmp / "diagnostics.json", diag)
        counts, edges = np.histogram(p[exposed], bins=20, range=(0, 1))
        pd.DataFrame({"propensity": (edges[:-1] + edges[1:]) / 2, "exposed_rows": counts}).to_csv(tmp / "histogram.csv", index=False)
        plots.propensity_histogram(p[exposed], tmp / "propensity_hist.png")
    return diag
