"""The promotion gate: does a trained candidate replace the champion? (run by the package stage)

The evidence is the latest served traffic (the last `promote.partitions` feedback partitions): rows
of (user, item shown, the served inclusion probability, the outcome, the slate's id and size), by
default only the slates the exploration drew uniformly at random (`promote.traffic: uniform`): an
unbiased sample for any policy, which needs no propensity model of the champion at all. Both
policies are replayed on those same rows, each as the service would run it (its ranking score and
the exploration policy over the catalogue, `RecommenderCore.inclusion`), and the declared estimator
(`promote.estimator`, SNIPS by default) gives each one's value per shown item; the paired percentile
bootstrap over slates gives the interval of candidate - champion. Promote iff its lower bound
exceeds `promote.margin`. With `traffic: all`, every served slate with its exact marginal
propensity (>= eps k / n for every item): more rows, but weights that depend on the champion.

Without enough served traffic, the offline metric decides only when both models were measured on
the same data version (DVC md5); otherwise there is no comparable evidence and the champion stays.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.config import Params


def served_traffic(params: Params) -> pd.DataFrame:
    """The replayable rows of the latest partitions (those whose slate is known); with
    promote.traffic = uniform, only the slates drawn uniformly at random."""
    from causalrec.data.feedback import read_partitions

    rows = read_partitions(params.paths.feedback_dir, last=params.promote.partitions)
    if not len(rows) or "slate_size" not in rows:
        return pd.DataFrame()
    keep = (rows["slate_size"] > 0) & (rows["request_id"].astype(str) != "")
    if params.promote.traffic == "uniform":
        keep &= rows["uniform"] == 1
    return rows[keep].reset_index(drop=True)


def replay(core, rows: pd.DataFrame) -> np.ndarray:
    """(rows,) the probability that `core`'s policy shows each row's item to its user in its slate size."""
    out = np.zeros(len(rows))
    for (user, k), idx in rows.groupby(["user_id", "slate_size"]).indices.items():
        pi = core.inclusion(str(user), int(k))
        pos = core.positions(rows["item_id"].to_numpy()[idx])
        out[idx] = np.where(pos >= 0, pi[np.maximum(pos, 0)], 0.0)
    return out


def compare(params: Params, candidate_dir: Path, champion_dir: Path, rows: pd.DataFrame) -> dict:
    """Candidate vs champion on the same served rows: each value, and the difference, with intervals."""
    from causalrec.evaluation.ope import ESTIMATORS, paired_interval
    from causalrec.serving.core import RecommenderCore

    cfg = params.promote
    candidate, champion = RecommenderCore(candidate_dir, seed=0), RecommenderCore(champion_dir, seed=0)
    # A uniform slate showed each item with probability k / n (n: the catalogue that served it, the
    # champion's); the logged marginal propensity is for all slates. SNIPS does not depend on n.
    logged = (rows["slate_size"].to_numpy(float) / champion.catalogue_size if cfg.traffic == "uniform"
              else rows["propensity"].to_numpy(float))
    result = paired_interval(ESTIMATORS[cfg.estimator], rows["outcome"].to_numpy(float), logged,
                             replay(candidate, rows), replay(champion, rows), groups=rows["request_id"].astype(str).to_numpy(),
                             alpha=cfg.alpha, n_bootstrap=cfg.n_bootstrap, random_state=params.seed)
    result["candidate"], result["champion"] = result.pop("a"), result.pop("b")
    result["slates"] = result.pop("groups")
    return result


def decide(params: Params, candidate: dict, candidate_dir: Path, champion: dict | None,
           champion_dir: Path | None) -> dict:
    """{"promote": bool, "reason": str, "ope": comparison or None} for a registered candidate."""
    if champion is None:
        return {"promote": True, "reason": "first model: no champion yet", "ope": None}
    rows = served_traffic(params)
    n_slates = rows["request_id"].nunique() if len(rows) else 0
    if n_slates >= params.promote.min_slates and champion_dir is None:
        return {"promote": False, "ope": None, "reason": (
            f"{n_slates} served slates, but the champion {champion['model_tag']} is not in this machine's BentoML "
            "store, so it cannot be replayed on them; import it (bentoml models import) or promote by hand")}
    if n_slates >= params.promote.min_slates:
        ope = compare(params, candidate_dir, champion_dir, rows)
        lo = ope["difference"]["ci"][0]
        verdict = lo > params.promote.margin
        return {"promote": bool(verdict), "ope": ope, "reason": (
            f"{ope['estimator']} on {n_slates} served slates: candidate {ope['candidate']['value']:.4f} vs champion "
            f"{ope['champion']['value']:.4f}; lower bound of the difference {lo:+.4f} "
            f"{'>' if verdict else '<='} margin {params.promote.margin}")}
    same_data = candidate.get("data_md5") == champion.get("data_md5")
    same_metric = candidate["primary_metric"] == champion.get("primary_metric")
    if same_data and same_metric:
        better = candidate["score"] > champion["score"]
        return {"promote": bool(better), "ope": None, "reason": (
            f"{n_slates} served slates (< promote.min_slates {params.promote.min_slates}): offline "
            f"{candidate['primary_metric']} on the same data version, candidate {candidate['score']:.4f} "
            f"{'>' if better else '<='} champion {champion['score']:.4f}")}
    return {"promote": False, "ope": None, "reason": (
        f"no comparable evidence: {n_slates} served slates (< promote.min_slates {params.promote.min_slates}) and "
        f"the champion was measured on data {champion.get('data_md5')}, the candidate on {candidate.get('data_md5')}; "
        "serve and export feedback, or promote by hand (causalrec registry promote)")}


def check_champion(params: Params) -> dict:
    """After a promotion: is the new champion's live outcome rate (its served feedback, all partitions)
    significantly below the previous champion's? A one-sided Welch test at promote.rollback_alpha,
    once the new champion has promote.rollback_min_events events; a drop rolls back (recorded with
    its evidence in the registry). Returns what was compared and whether it rolled back."""
    from scipy import stats

    from causalrec.data.feedback import read_partitions
    from causalrec.registry import Registry

    cfg, registry = params.promote, Registry(params.paths.registry)
    champion, previous = registry.champion, registry.previous_champion()
    if champion is None or previous is None:
        return {"checked": False, "reason": "no earlier champion to compare with", "rolled_back": False}
    events = read_partitions(params.paths.feedback_dir)
    if not len(events):
        return {"checked": False, "reason": "no served feedback yet", "rolled_back": False}
    by_version = events.groupby("model_version")["outcome"]
    live = {name: by_version.get_group(e["model_tag"]).to_numpy(float) if e["model_tag"] in by_version.groups else np.array([])
            for name, e in (("champion", champion), ("previous", previous))}
    out = {name: {"model_tag": e["model_tag"], "events": len(live[name]),
                  "outcome_rate": float(live[name].mean()) if len(live[name]) else None}
           for name, e in (("champion", champion), ("previous", previous))}
    if len(live["champion"]) < cfg.rollback_min_events or len(live["previous"]) < 2:
        return {**out, "checked": False, "rolled_back": False,
                "reason": f"{len(live['champion'])} live events for the champion (< promote.rollback_min_events "
                          f"{cfg.rollback_min_events}) or none for the previous one"}
    drop = out["previous"]["outcome_rate"] - out["champion"]["outcome_rate"]
    se = float(np.sqrt(live["previous"].var(ddof=1) / len(live["previous"]) + live["champion"].var(ddof=1) / len(live["champion"])))
    p_value = float(stats.norm.sf(drop / se)) if se > 0 else float(drop <= 0)
    rolled = p_value < cfg.rollback_alpha
    reason = (f"live outcome rate {out['champion']['outcome_rate']:.4f} ({out['champion']['events']} events) vs the previous "
              f"champion's {out['previous']['outcome_rate']:.4f} ({out['previous']['events']}): drop {drop:+.4f}, one-sided "
              f"p = {p_value:.2g} {'<' if rolled else '>='} promote.rollback_alpha {cfg.rollback_alpha}")
    if rolled:
        registry.rollback(reason, by="monitor")
    return {**out, "checked": True, "drop": drop, "p_value": p_value, "rolled_back": bool(rolled), "reason": reason}
