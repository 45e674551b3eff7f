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


def served_traffic(params: Params, held_out: bool = True) -> pd.DataFrame:
    """The replayable rows of the latest partitions (those whose slate is known); with
    promote.traffic = uniform, only the slates drawn uniformly at random: with `held_out` (the gate)
    at most promote.max_slates and promote.max_share of them, the ones ingest left out of training
    (data.feedback.gate_slates), as the candidate was trained on the rest; without (the rollback
    check) at most promote.max_slates whatever the share: neither the champion nor the one before it
    trained on this traffic."""
    from causalrec.data.feedback import gate_slates, read_partitions

    rows = read_partitions(params.paths.feedback_dir, last=params.promote.partitions)
    if not len(rows) or "slate_size" not in rows:
        return pd.DataFrame()
    keep = (rows["slate_size"] > 0) & (rows["request_id"].astype(str) != "")
    if "exposed" in rows and params.serve.rank_by != "uplift":  # a slate's controls count for the incremental value only
        keep &= rows["exposed"] == 1
    if params.promote.traffic == "uniform":
        keep &= gate_slates(rows, params.promote.max_slates, params.promote.max_share if held_out else 1.0)
    return rows[keep].reset_index(drop=True)


def replay(core, rows: pd.DataFrame) -> np.ndarray:
    """(rows,) the probability that `core`'s policy shows each row's item to its user in its slate size."""
    out = np.zeros(len(rows))
    for (user, k), idx in rows.groupby(["user_id", "slate_size"]).indices.items():
        pi = core.inclusion(str(user), int(k))
        pos = core.positions(rows["item_id"].to_numpy()[idx])
        out[idx] = np.where(pos >= 0, pi[np.maximum(pos, 0)], 0.0)
    return out


def compare(params: Params, candidate_dir: Path, champion_dir: Path, rows: pd.DataFrame,
            alpha: float | None = None) -> dict:
    """Candidate vs champion on the same served rows: each value, and the difference, with
    (1 - alpha) intervals (alpha: promote.alpha unless given)."""
    from causalrec.evaluation.ope import ESTIMATORS, paired_interval
    from causalrec.serving.core import RecommenderCore

    cfg = params.promote
    # each at its configured exploration: a drift boost is not part of a model's merit
    candidate, champion = (RecommenderCore(d, seed=0, exploration_boost=False) for d in (candidate_dir, champion_dir))
    # A uniform slate showed each item with probability k / n (n: the catalogue that served it, the
    # champion's); the logged marginal propensity is for all slates. SNIPS does not depend on n.
    logged = (rows["slate_size"].to_numpy(float) / champion.catalogue_size if cfg.traffic == "uniform"
              else rows["propensity"].to_numpy(float))
    shown = rows["exposed"].to_numpy() == 1 if "exposed" in rows else np.ones(len(rows), bool)
    incremental = not shown.all()
    if incremental:
        # Ranked by uplift, with the slates' controls: the incremental value, E[Y(1) - Y(0)] per shown item: a
        # shown row weighs Y(1) by pi / P(shown), a control Y(0) by pi / P(drawn as a control), with
        # P = (1 - P(shown)) c, c the request's control_rate; the gate's estimator on each arm (ope.paired_interval)
        from causalrec.data.feedback import request_control_rate

        logged = np.where(shown, logged, (1 - logged) * request_control_rate(rows))
    result = paired_interval(ESTIMATORS[cfg.estimator], rows["outcome"].to_numpy(float), logged, replay(candidate, rows),
                             replay(champion, rows), groups=rows["request_id"].astype(str).to_numpy(),
                             alpha=cfg.alpha if alpha is None else alpha, n_bootstrap=cfg.n_bootstrap,
                             random_state=params.seed, shown=shown if incremental else None)
    if incremental:
        result["estimator"] += " incremental value (shown items minus the slates' controls)"
    result["candidate"], result["champion"] = result.pop("a"), result.pop("b")
    result["slates"] = result.pop("groups")
    return result


def over_privacy_budget(params: Params, candidate: dict) -> str | None:
    """Why the candidate may not serve under train.privacy (None: it may): trained without privacy, or its
    recorded epsilon above the configured one."""
    budget = params.train.privacy
    if not budget.enabled:
        return None
    spent = (candidate.get("privacy") or {}).get("epsilon")
    if spent is None:
        return f"train.privacy is on (epsilon {budget.epsilon}) but the candidate records no privacy: trained without it"
    if spent > budget.epsilon * (1 + 1e-6):
        return f"privacy: the candidate spent epsilon {spent:.4g} > train.privacy.epsilon {budget.epsilon}"
    return None


def decide(params: Params, candidate: dict, candidate_dir: Path, champion: dict | None,
           champion_dir: Path | None) -> dict:
    """{"promote": bool, "reason": str, "ope": comparison or None} for a registered candidate."""
    over = over_privacy_budget(params, candidate)
    if over:
        return {"promote": False, "ope": None, "reason": over}
    if champion is None:
        return {"promote": True, "reason": "first model: no champion yet", "ope": None}
    if champion.get("trained_on_erased_data") and not candidate.get("trained_on_erased_data"):
        return {"promote": True, "ope": None, "reason": (
            f"the champion {champion['model_tag']} was trained on data a person was erased from (causalrec forget); "
            "the candidate was trained without them")}
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


def check_champion(params: Params, locate=None) -> dict:
    """After a promotion: on the latest served traffic, is the previous champion's value significantly
    above the current champion's? Both are replayed on the same slates with the gate's estimator, so a
    change of the world (interest drift) that lowers every policy's outcome rate is not read as the
    champion's fault, as comparing each one's own live outcome rate would (they served in different
    periods). Rolls back (recorded with its evidence in the registry) when the one-sided lower bound of
    previous - champion at level promote.rollback_alpha is above 0, once the champion has served
    promote.rollback_min_events events there. locate: model tag -> bundle directory or None (default:
    BentoML's store, or the model's export)."""
    from causalrec.data.feedback import read_partitions
    from causalrec.registry import Registry

    if locate is None:
        from causalrec.pipeline.store import model_path

        locate = lambda tag: model_path(params, tag, missing_ok=True)  # noqa: E731
    cfg, registry = params.promote, Registry(params.paths.registry)
    champion, previous = registry.champion, registry.previous_champion()
    if champion is None or previous is None:
        return {"checked": False, "reason": "no earlier champion to compare with", "rolled_back": False}
    latest = read_partitions(params.paths.feedback_dir, last=cfg.partitions)
    own = latest[latest["model_version"] == champion["model_tag"]] if len(latest) else latest
    if "exposed" in own:
        own = own[own["exposed"] == 1]  # what it showed (a slate's controls were not shown)
    out = {"champion": champion["model_tag"], "previous": previous["model_tag"], "champion_events": len(own),
           "champion_live_outcome_rate": float(own["outcome"].mean()) if len(own) else None}
    rows = served_traffic(params, held_out=False)
    n_slates = rows["request_id"].nunique() if len(rows) else 0
    dirs = {name: locate(e["model_tag"]) for name, e in (("champion", champion), ("previous", previous))}
    missing = [name for name, d in dirs.items() if d is None]
    if len(own) < cfg.rollback_min_events or n_slates < cfg.min_slates or missing:
        return {**out, "checked": False, "rolled_back": False, "reason": (
            f"not yet: the champion served {len(own)} events in the latest traffic (promote.rollback_min_events "
            f"{cfg.rollback_min_events}), {n_slates} replayable slates (promote.min_slates {cfg.min_slates})"
            + (f"; the {' and '.join(missing)} champion's model is not in this machine's store" if missing else ""))}
    ope = compare(params, dirs["previous"], dirs["champion"], rows, alpha=2 * cfg.rollback_alpha)
    ope["previous"], ope["champion"] = ope.pop("candidate"), ope.pop("champion")
    lo = ope["difference"]["ci"][0]
    rolled = lo > 0
    reason = (f"{ope['estimator']} on {n_slates} slates of the latest served traffic: previous champion "
              f"{ope['previous']['value']:.4f} vs champion {ope['champion']['value']:.4f} (its live outcome rate "
              f"{out['champion_live_outcome_rate']:.4f} on {len(own)} events); one-sided {1 - cfg.rollback_alpha:.0%} "
              f"lower bound of the drop {lo:+.4f} {'>' if rolled else '<='} 0")
    if rolled:
        registry.rollback(reason, by="monitor", ope=ope)
    return {**out, "checked": True, "ope": ope, "rolled_back": bool(rolled), "reason": reason}
