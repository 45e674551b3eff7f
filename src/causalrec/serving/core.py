"""What the Recommender service serves: a bundle directory written by the package stage.

Bundle: model.pt (relevance model), uplift.pt (optional), items.parquet (item_id, title),
item_embeddings.npy (row-aligned text embeddings), history.parquet (user_id, item_id of logged
positives, for explanations), manifest.json (model, metrics, data version, encoder, serve config).

Requests never fail for an unknown user: it gets the cold-start scores (biases and feature
towers only). Every slate is drawn by the exploration policy, and each item carries the exact
probability with which the policy showed it. With serve.online on and the feedback log given, a
user's vector is re-estimated from their recent served events before their slate is drawn
(serving.online): the probabilities stay exact for the scores that drew it.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from causalrec.persistence import load_model
from causalrec.policy import ExplorationPolicy, inclusion_probabilities
from causalrec.serving.catalogue import CatalogueStore, Conflict
from causalrec.serving.privacy import pseudonym_key as new_pseudonym_key
from causalrec.serving.privacy import pseudonymize
from causalrec.serving.scoring import CatalogueScorer

log = logging.getLogger(__name__)

class NotFound(KeyError):
    """An id the service does not know where knowing it is required (e.g. explain an unknown item)."""


class RecommenderCore:
    def __init__(self, bundle_dir: str | Path, serve: dict | None = None, seed: int | None = None,
                 catalogue: "CatalogueStore | None" = None, pseudonym_key: bytes | None = None,
                 version: str | None = None, exploration_boost: bool = True, registry: str | Path | None = None,
                 feedback_log: str | Path | None = None):
        """catalogue: the shared store of items added at serving time (none: added items live in this
        process only). pseudonym_key: the key of stored feedback's pseudonyms (none: a per-process key,
        see serving.privacy). version: the model version every slate and feedback event carries (the
        registry's tag; none: the bundle directory's name). exploration_boost: apply the bundle's
        boost after a drift mark (package.exploration_boost); False: its configured exploration, as
        the promotion gate compares policies (their rankings, at the same exploration). registry: the
        registry whose model versions feedback may name besides `version` (default: the bundle's; none:
        only `version`). feedback_log: the log this service's feedback goes to, followed for online
        updates when serve.online is on (none: no online updates, e.g. the promotion gate's replay)."""
        bundle_dir = Path(bundle_dir)
        self.version = version or bundle_dir.name
        self.manifest = self.read_manifest(bundle_dir)
        self.config = {**self.manifest["serve"], **(serve or {})}
        boost = self.manifest.get("exploration_boost")
        if exploration_boost and boost and "epsilon" not in (serve or {}):
            self.config["epsilon"] = max(self.config["epsilon"], boost["epsilon"])
        self.policy = ExplorationPolicy(self.config["policy"], self.config["epsilon"], self.config["temperature"],
                                        self.config.get("diversity", 0.0))
        items = pd.read_parquet(bundle_dir / "items.parquet")
        self.item_ids = items["item_id"].astype(str).tolist()
        self.titles = items["title"].astype(str).tolist()
        self._pos = {k: i for i, k in enumerate(self.item_ids)}
        emb = bundle_dir / "item_embeddings.npy"
        self.embeddings = np.load(emb) if emb.exists() else None
        model = load_model(bundle_dir / "model.pt")
        self.relevance = CatalogueScorer(model, self.item_ids)
        uplift_path = bundle_dir / "uplift.pt"
        self.uplift = CatalogueScorer(load_model(uplift_path), self.item_ids) if uplift_path.exists() else None
        if self.uplift is None and self.config["rank_by"] == "uplift":
            self.config["rank_by"] = "relevance"
        self.known_users = set(getattr(getattr(model, "users_", None), "ids", np.array([])).tolist())
        causal = bundle_dir / "causal.json"  # the causal analysis' mediation split (package stage), if run
        self.causal = json.loads(causal.read_text()) if causal.exists() else None
        self.causal_graph = bundle_dir / "causal_graph.png" if (bundle_dir / "causal_graph.png").exists() else None
        hist = bundle_dir / "history.parquet"
        self.history = (pd.read_parquet(hist).groupby("user_id")["item_id"].apply(list).to_dict() if hist.exists() else {})
        rows = bundle_dir / "user_rows.parquet"  # shown items each trained user vector was learned from (package)
        self.user_rows = (pd.read_parquet(rows).set_index("user_id")["rows"] if rows.exists() else pd.Series(dtype=np.int64))
        self._lock = threading.Lock()  # catalogue growth (POST /items) vs concurrent reads
        self._rng = np.random.default_rng(seed)
        self._pseudonym_key = pseudonym_key if pseudonym_key is not None else new_pseudonym_key()
        self.catalogue, self._synced = catalogue, 0
        self.sync()
        from collections import OrderedDict

        from causalrec.serving.online import OnlineUsers

        online = self.config.get("online") or {}
        self.online = (OnlineUsers(feedback_log, self.version, online["max_events"], online["max_users"], online["scan_bytes"])
                       if feedback_log is not None and online.get("enabled") else None)
        self._folded: OrderedDict[str, tuple[int, dict]] = OrderedDict()  # pseudonym -> (events' version, overrides)
        from causalrec.data.rules import EventRules
        from causalrec.registry import KnownVersions

        # the pipeline's rule book on what this server knows live: its catalogue (grown by POST /items in
        # any worker: sync first) and the registry's model versions
        self.rules = EventRules(known_items=self._pos,
                                known_versions=KnownVersions(registry or self.manifest.get("registry"), self.version))

    @staticmethod
    def read_manifest(bundle_dir: str | Path) -> dict:
        manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
        if "catalogue" not in manifest.get("serve", {}):
            raise ValueError(f"{Path(bundle_dir) / 'manifest.json'}: no 'serve' settings (or from an older release); "
                             "rebuild the bundle with `causalrec package`")
        return manifest

    def sync(self) -> int:
        """Apply the items other workers (or earlier runs) added to the shared catalogue; returns how many."""
        if self.catalogue is None:
            return 0
        new = self.catalogue.since(self._synced)
        with self._lock:
            for row in new:
                if row["item_id"] not in self._pos:  # a retrained bundle already has it
                    self._append(row["item_id"], row["title"], row["embedding"])
                self._synced = max(self._synced, row["seq"])
        return len(new)

    def pseudonym(self, user_id: str) -> str:
        """What logs and the feedback log hold instead of the user id."""
        return pseudonymize(user_id, self._pseudonym_key)

    def _resolve(self, user_id: str) -> tuple[str, str]:
        """(the id the models know this person by, their pseudonym): the id is their own, or the
        pseudonym under which feedback first brought them into the data (a cold-start user since
        retrained on). One keyed hash per request."""
        alias = self.pseudonym(user_id)
        return (user_id if user_id in self.known_users or alias not in self.known_users else alias), alias

    def _rankers(self) -> tuple[CatalogueScorer, CatalogueScorer | None]:
        """(the score the policy ranks by, the other one)."""
        return (self.uplift, self.relevance) if self.config["rank_by"] == "uplift" else (self.relevance, self.uplift)

    def _ranking(self, user_id: str, users: list | None = None) -> np.ndarray:
        """What the policy draws from: (catalogue,) scores, or (members, catalogue) for thompson; a ranker
        without bootstrap members is one member (thompson over one member is epsilon-greedy, exactly)."""
        ranker = self._rankers()[0]
        if self.policy.kind == "thompson":
            members = ranker.member_scores(user_id, users)
            return members if members is not None else ranker.scores(user_id, users=users)[None]
        return ranker.scores(user_id, users=users)

    def _online_users(self, user_id: str, alias: str) -> dict[str, list | None]:
        """Per scorer ("relevance", "uplift"), the parts' user vectors re-estimated from this person's recent
        served events (serving.online), or {} when there are none (or online updates are off). Recomputed only
        when their events changed. Caller holds the lock."""
        if self.online is None:
            return {}
        self.online.refresh()
        stamp = self.online.version(alias)
        if not stamp:
            self._folded.pop(alias, None)
            return {}
        cached = self._folded.get(alias)
        if cached is not None and cached[0] == stamp:
            self._folded.move_to_end(alias)
            return cached[1]
        from causalrec.serving.online import ips_weights

        events = [(self._pos[i], y, p) for i, y, p in self.online.events(alias) if i in self._pos]
        out = {}
        if events:
            pos, y, prop = (np.array(col) for col in zip(*events))
            cfg = self.config["online"]
            weight = ips_weights(prop, cfg["weight_clip"])
            # the trained vector weighs as the shown items it was learned from (0 for a new user), so a few
            # new events refine a returning user's vector instead of replacing it
            l2 = cfg["l2"] + float(self.user_rows.get(user_id, 0))
            for name, scorer in (("relevance", self.relevance), ("uplift", self.uplift)):
                if scorer is not None:
                    out[name] = scorer.fold_in(user_id, pos, y.astype(np.float64), weight, l2)
        self._folded[alias] = (stamp, out)
        if len(self._folded) > self.online.max_users:
            self._folded.popitem(last=False)
        return out

    # ------------------------------------------------------------------------------ recommend
    def recommend(self, user_id: str, k: int, exclude: list[str] | None = None, controls: int = 0) -> dict:
        """A slate of k items with the exact probability that this policy shows each. With `controls` > 0 the
        answer also names that many items the slate did not show, drawn uniformly from the unshown
        candidates (`control_rate`: the share of them drawn), each with its exact inclusion probability:
        the client reports what the user did with them anyway (feedback with exposed = false), the
        unexposed outcomes an uplift model learns what a recommendation adds from."""
        self.sync()
        user_id, shown_to = self._resolve(user_id)
        by_uplift = self.config["rank_by"] == "uplift"
        ranker, other = self._rankers()
        with self._lock:
            online = self._online_users(user_id, shown_to)
            rank = self._ranking(user_id, online.get(self.config["rank_by"]))
            n = rank.shape[-1]
            drop = self._excluded(exclude)
            if drop:
                candidates = np.delete(np.arange(n), drop)
                slate = self.policy.select(rank[..., candidates], min(k, len(candidates)), self._rng,
                                           None if self.embeddings is None else self.embeddings[candidates])
                chosen, propensity = candidates[slate.items], slate.propensity
            else:
                slate = self.policy.select(rank, min(k, n), self._rng, self.embeddings)
                chosen, propensity = slate.items, slate.propensity
            # The other score only for the items shown: one mat-vec over k rows, not the catalogue.
            secondary = (other.scores(user_id, chosen, online.get("uplift" if other is self.uplift else "relevance"))
                         if other is not None else None)
            control = self._controls(rank, drop, chosen, controls) if controls else None
        shown = rank[..., chosen] if rank.ndim == 1 else rank[:, chosen].mean(0)  # thompson: the members' mean
        relevance, uplift = (secondary, shown) if by_uplift else (shown, secondary)
        cold = user_id not in self.known_users
        request_id = uuid.uuid4().hex
        log.info("recommend request=%s user=%s cold=%s k=%d", request_id, shown_to, cold, k)
        out = {"request_id": request_id, "cold_start": cold, "online_update": bool(online),
               "policy": self.policy.kind, "rank_by": self.config["rank_by"],
               "model": self.manifest.get("model"), "model_version": self.version, "slate_size": len(chosen),
               "uniform": slate.uniform,
               "items": [{"item_id": self.item_ids[i], "title": self.titles[i], "position": pos + 1,
                          "score": float(relevance[j]), "uplift": None if uplift is None else float(uplift[j]),
                          "propensity": float(propensity[j])} for j, (pos, i) in enumerate(enumerate(chosen))]}
        if control is not None:
            out["controls"], out["control_rate"] = control
        return out

    def _controls(self, rank: np.ndarray, drop: list[int], chosen: np.ndarray, m: int) -> tuple[list[dict], float]:
        """m unshown candidates drawn uniformly (without replacement) and each one's exact probability of
        having been shown in this slate; the share of the eligible unshown candidates drawn. Eligible: the
        policy could have shown it (probability > 0); a greedy policy has none, so it names no controls."""
        pi = self._inclusion_over(rank, len(chosen), drop)
        eligible = np.setdiff1d(np.flatnonzero(pi > 0), chosen)  # the excluded have probability 0
        if not len(eligible):
            return [], 1.0
        picked = self._rng.choice(eligible, size=min(m, len(eligible)), replace=False)
        return [{"item_id": self.item_ids[i], "propensity": float(pi[i])} for i in picked], len(picked) / len(eligible)

    def feedback_event(self, event_id: str, user_id: str, item_id: str, outcome: float, propensity: float,
                       timestamp, position: int = 0, policy: str = "", request_id: str = "", slate_size: int = 0,
                       model_version: str = "", uniform: bool = False, exposed: bool = True,
                       control_rate: float = 1.0) -> dict:
        """The feedback log's line for one outcome of a served item, or (exposed = False) of one of the
        slate's controls (the pseudonym, never the user id),
        checked by the pipeline's own rule book (data.rules.EventRules) on the line as it will be stored,
        so nothing acknowledged can fail export or validation later. Raises ValueError naming every bad
        field and its rule (never a value)."""
        from causalrec.data.rules import utc_iso

        event = {"event_id": event_id, "user_id": self.pseudonym(user_id), "item_id": item_id, "outcome": outcome,
                 "propensity": propensity, "timestamp": utc_iso(timestamp), "position": position,
                 "policy": policy or self.policy.kind, "model_version": model_version or self.version,
                 # the slate's identity and size: what the promotion gate needs to replay the policies
                 "request_id": request_id, "slate_size": slate_size, "uniform": uniform}
        if not exposed:  # written only for controls: the log lines of shown items stay as they were
            event.update(exposed=False, control_rate=control_rate)
        if item_id not in self._pos:
            self.sync()  # an item another worker added since this one last looked
        self.rules.check(event)
        return event

    def positions(self, item_ids) -> np.ndarray:
        """Catalogue positions of `item_ids` (-1 for an item this service does not know)."""
        return np.array([self._pos.get(str(i), -1) for i in item_ids], dtype=int)

    def inclusion(self, user_id: str, k: int, online: bool = False, exclude: list[str] | None = None) -> np.ndarray:
        """(catalogue,) the exact probability that this service shows each item to `user_id` in a
        slate of k: the evaluation policy's side of an off-policy estimate (pipeline.promote: the model
        alone); with `online`, as its next slate would be drawn now (the user's online state included);
        `exclude`: items the request excluded (probability 0, the slate drawn from the rest)."""
        user_id, alias = self._resolve(user_id)
        with self._lock:
            users = self._online_users(user_id, alias) if online else {}
            scores = self._ranking(user_id, users.get(self.config["rank_by"]))
        return self._inclusion_over(scores, k, self._excluded(exclude))

    def _excluded(self, exclude: list[str] | None) -> list[int]:
        """Catalogue positions of the excluded items this service knows."""
        return [p for p in (self._pos.get(item) for item in exclude or []) if p is not None]

    def _inclusion_over(self, scores: np.ndarray, k: int, drop: list[int]) -> np.ndarray:
        """(catalogue,) the policy's exact inclusion probabilities with the positions `drop` excluded
        (probability 0; the slate drawn from the rest)."""
        if not drop:
            return self._inclusion(scores, k, self.embeddings)
        keep = np.delete(np.arange(scores.shape[-1]), drop)
        pi = np.zeros(scores.shape[-1])
        pi[keep] = self._inclusion(scores[..., keep], k, None if self.embeddings is None else self.embeddings[keep])
        return pi

    def _inclusion(self, scores: np.ndarray, k: int, vectors: np.ndarray | None) -> np.ndarray:
        """(candidates,) this service's exploration policy's exact inclusion probabilities over `scores`."""
        p = self.policy
        return inclusion_probabilities(scores, k, p.kind, p.epsilon, p.temperature, p.diversity, vectors)

    # -------------------------------------------------------------------------------- explain
    def explain(self, user_id: str, item_id: str, n_similar: int = 3) -> dict:
        self.sync()
        pos = self._pos.get(item_id)
        if pos is None:
            raise NotFound("unknown item_id (not in the catalogue)")
        asked_as, (user_id, _) = user_id, self._resolve(user_id)
        with self._lock:
            relevance = float(self.relevance.scores(user_id)[pos])
            drivers = self.relevance.contributions(user_id, pos, item_id)
            uplift = members = None
            if self.uplift is not None:
                uplift = float(self.uplift.scores(user_id)[pos])
                draws = self.uplift.member_scores(user_id)
                members = None if draws is None else draws[:, pos]
        out = {"user_id": asked_as, "item_id": item_id, "title": self.titles[pos], "cold_start": user_id not in self.known_users,
               "score": relevance, "uplift": uplift,
               "uplift_interval": (None if members is None else [float(np.quantile(members, 0.05)), float(np.quantile(members, 0.95))]),
               "uplift_members": None if members is None else len(members),
               "score_drivers": drivers, "mediation": self._mediation(user_id), "reasons": []}
        history = [h for h in self.history.get(user_id, []) if h in self._pos and h != item_id]
        if self.embeddings is not None and history:
            e = self.embeddings
            sims = e[[self._pos[h] for h in history]] @ e[pos]
            order = np.argsort(-sims)[:n_similar]
            out["similar_in_history"] = [{"item_id": history[j], "title": self.titles[self._pos[history[j]]],
                                          "text_similarity": float(sims[j])} for j in order]
            out["reasons"].append(f"similar to {len(order)} item(s) you liked (text similarity up to {sims[order[0]]:.2f})")
        if uplift is not None:
            out["reasons"].append(f"recommending it is estimated to change the outcome probability by {uplift:+.3f}")
        out["reasons"].append(f"estimated probability you like it if shown: {relevance:.3f}")
        if drivers is not None:
            name, value = max(drivers["parts"].items(), key=lambda kv: abs(kv[1]) if kv[0] != "base rate" else -1)
            out["reasons"].append(f"the largest part of the score: {name} ({value:+.2f} on the {drivers['scale']} scale)")
        m = out["mediation"]
        if m is not None and m["indirect"] is not None:
            out["reasons"].append(f"{m['segment_label']}: of the effect of {m['treatment']} on {m['outcome']} "
                                  f"({m['total']['value']:+.3f}), {m['indirect']['value']:+.3f} goes through {m['mediator']} "
                                  f"and {m['direct']['value']:+.3f} is direct")
        return out

    def _mediation(self, user_id: str) -> dict | None:
        """The analysis' split of the effect into direct and through-the-mediator parts, for this user's
        segment when the graph says how serving reads it (else the population's)."""
        c = self.causal
        if c is None:
            return None
        split, label = c["overall"], "all users"
        if c["segment"] is not None and c["segment"]["at_serving"] == "known_user":
            level = int(user_id in self.known_users)
            key = f"{c['segment']['node']}={level}"
            if key in c["by_segment"]:
                split, label = c["by_segment"][key], f"{c['segment']['node']}={level} ({'returning' if level else 'new'} user)"
        return {"graph": c["graph"], "treatment": c["treatment"], "mediator": c["mediator"], "outcome": c["outcome"],
                "estimator": c["estimator"], "segment_label": label, "total": split["total"],
                "direct": split.get("direct"), "indirect": split.get("indirect"),
                "share_mediated": split.get("share_mediated"), "refutations_passed": c["refutations_passed"],
                "nuisance_models": c.get("nuisance_models"), "specification_check_passed": c.get("specification_check_passed"),
                "warnings": c.get("warnings", [])}

    # ---------------------------------------------------------------------------------- items
    def add_item(self, title: str, description: str, embedding: np.ndarray | None, item_id: str | None = None) -> dict:
        """A new item, recommendable at once: scored from its text embedding through the item towers;
        stored in the shared catalogue first, so every worker (and the next retrain) has it."""
        self.sync()
        item_id = item_id or f"new-{uuid.uuid4().hex[:12]}"
        if item_id in self._pos:
            raise Conflict("item_id already exists")
        if self.embeddings is not None and embedding is not None and embedding.shape[-1] != self.embeddings.shape[1]:
            raise ValueError(f"embedding has dimension {embedding.shape[-1]}, the catalogue {self.embeddings.shape[1]}")
        if self.catalogue is not None:
            self.catalogue.add(item_id, title, description, embedding)  # raises if another worker took the id
            self.sync()
        else:
            with self._lock:
                self._append(item_id, title, embedding)
        scorers = [self.relevance] + ([self.uplift] if self.uplift is not None else [])
        text_scored = any(part.net.item_tower is not None for sc in scorers for part in sc.parts)
        return {"item_id": item_id, "catalogue_size": len(self.item_ids), "text_scored": text_scored}

    def _append(self, item_id: str, title: str, embedding: np.ndarray | None) -> None:
        """Add one item to the in-memory catalogue (caller holds the lock)."""
        self.relevance.add_item(embedding)
        if self.uplift is not None:
            self.uplift.add_item(embedding)
        self._pos[item_id] = len(self.item_ids)
        self.item_ids.append(item_id)
        self.titles.append(title)
        if self.embeddings is not None:
            row = embedding if embedding is not None else np.zeros(self.embeddings.shape[1], np.float32)
            self.embeddings = np.vstack([self.embeddings, np.asarray(row, np.float32)[None]])

    @property
    def catalogue_size(self) -> int:
        return len(self.item_ids)
