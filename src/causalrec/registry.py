"""The model registry: every candidate the pipeline trained, which one serves (`champion`), which one
waits (`challenger`), and every decision with its reason. One small JSON file, `registry.json` at
the project root, committed beside `dvc.lock` (the retrain workflow does), so a fresh CI runner, a
reviewer and `git log -p registry.json` all see the same champion and its history.

The artifacts themselves live in BentoML's model store and bentos (`model_tag`, `bento_tag`); this
file holds what BentoML's store does not: which entry is champion, on which data version (DVC md5),
params and code (git sha) it was trained, its offline metrics and its off-policy estimate on served
traffic, and the append-only list of promotions, blocked candidates and rollbacks.

    {"models": {model_tag: entry}, "aliases": {"champion": tag, "challenger": tag},
     "champions": [tag, ...],          # every champion in order; rollback steps back along it
     "events": [{"at", "action", "tag", "previous", "reason", "by"}]}

Writes are atomic (temp + rename) under an exclusive lock, so a CLI promotion and a pipeline run
never lose each other's update.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
from pathlib import Path

from causalrec.io import atomic_write_json

ACTIONS = ("register", "promote", "block", "rollback", "erase")


class RegistryError(ValueError):
    """An operation the registry's state does not allow (unknown tag, nothing to roll back to)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------------------ reading
    def state(self) -> dict:
        if not self.path.exists():
            return {"models": {}, "aliases": {"champion": None, "challenger": None}, "champions": [], "events": []}
        try:
            state = json.loads(self.path.read_text())
        except ValueError as exc:
            raise RegistryError(f"{self.path} is not valid JSON ({exc}); restore it from git") from None
        missing = {"models", "aliases", "champions", "events"} - set(state)
        if missing:
            raise RegistryError(f"{self.path} lacks {sorted(missing)}; restore it from git")
        return state

    def get(self, tag: str) -> dict:
        models = self.state()["models"]
        if tag not in models:
            raise RegistryError(f"no model {tag!r} in {self.path}; `causalrec registry list` shows the tags")
        return models[tag]

    def alias(self, name: str) -> dict | None:
        state = self.state()
        tag = state["aliases"].get(name)
        return None if tag is None else state["models"][tag]

    @property
    def champion(self) -> dict | None:
        return self.alias("champion")

    @staticmethod
    def _previous(state: dict) -> str | None:
        current = state["aliases"]["champion"]
        earlier = [t for t in state["champions"] if state["models"][t]["status"] != "rolled_back" and t != current]
        return earlier[-1] if earlier else None

    def previous_champion(self) -> dict | None:
        """The champion a rollback would restore (the last earlier one not rolled back)."""
        state = self.state()
        tag = self._previous(state)
        return None if tag is None else state["models"][tag]

    # ------------------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _update(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state()
            yield state
            atomic_write_json(self.path, state)

    @staticmethod
    def _event(state: dict, action: str, tag: str, reason: str, by: str, **extra) -> dict:
        event = {"at": _now(), "action": action, "tag": tag, "previous": state["aliases"]["champion"],
                 "reason": reason, "by": by, **extra}
        state["events"].append(event)
        return event

    def register(self, entry: dict) -> dict:
        """A new candidate (the challenger until a decision): `entry` needs `model_tag`."""
        tag = entry["model_tag"]
        with self._update() as state:
            if tag in state["models"]:
                raise RegistryError(f"{tag} is registered already")
            state["models"][tag] = {**entry, "registered_at": _now(), "status": "challenger"}
            state["aliases"]["challenger"] = tag
            return self._event(state, "register", tag, "trained by the pipeline", "pipeline")

    def update(self, tag: str, **fields) -> None:
        """Record what was learned about a model later (its bento tag, its off-policy estimate)."""
        with self._update() as state:
            if tag not in state["models"]:
                raise RegistryError(f"no model {tag!r} in {self.path}")
            state["models"][tag].update(fields)

    def promote(self, tag: str, reason: str, by: str) -> dict:
        with self._update() as state:
            if tag not in state["models"]:
                raise RegistryError(f"no model {tag!r} in {self.path}; `causalrec registry list` shows the tags")
            if state["aliases"]["champion"] == tag:
                raise RegistryError(f"{tag} is the champion already")
            event = self._event(state, "promote", tag, reason, by)
            old = state["aliases"]["champion"]
            if old is not None:
                state["models"][old]["status"] = "retired"
            state["models"][tag]["status"] = "champion"
            state["aliases"]["champion"] = tag
            state["champions"].append(tag)
            if state["aliases"]["challenger"] == tag:
                state["aliases"]["challenger"] = None
            return event

    def block(self, tag: str, reason: str, by: str = "gate", **evidence) -> dict:
        """The gate said no: the candidate stays challenger, the reason and evidence are kept."""
        with self._update() as state:
            state["models"][tag]["status"] = "blocked"
            return self._event(state, "block", tag, reason, by, **evidence)

    def rollback(self, reason: str, by: str, **evidence) -> dict:
        """The champion before the current one serves again; the current one is marked rolled back."""
        with self._update() as state:
            current, back = state["aliases"]["champion"], self._previous(state)
            if current is None or back is None:
                raise RegistryError("nothing to roll back to: the registry has no earlier champion")
            event = self._event(state, "rollback", back, reason, by, rolled_back=current, **evidence)
            state["models"][current]["status"] = "rolled_back"
            state["models"][back]["status"] = "champion"
            state["aliases"]["champion"] = back
            state["champions"].append(back)
            return event

    def mark_trained_on_erased(self, reason: str, by: str) -> list[str]:
        """A person was erased from the data: every registered model was trained on data that held them
        (their own vector is scrubbed from the stored models, what they taught the shared parameters is
        not). Each is marked; the gate replaces such a champion with the next candidate trained without them."""
        with self._update() as state:
            tags = list(state["models"])
            for tag in tags:
                state["models"][tag]["trained_on_erased_data"] = True
            self._event(state, "erase", state["aliases"]["champion"] or "", reason, by, models=tags)
            return tags

    def keep(self) -> set[str]:
        """Every BentoML tag (model, encoder, bento) a champion, past or present, or the challenger uses:
        what pruning the store must leave (a rollback may need any earlier champion)."""
        state = self.state()
        tags = [*state["champions"], state["aliases"]["challenger"]]
        return {state["models"][t].get(k) for t in tags if t for k in ("model_tag", "encoder_tag", "bento_tag")} - {None}


class KnownVersions:
    """`version in KnownVersions(path, own)`: the model versions feedback may name at serving time, the
    one this server serves and every model the registry at `path` knows (what export will accept). The
    file is read again only when it changed (a new candidate registered while the server runs)."""

    def __init__(self, path: str | Path | None, own: str):
        self.registry = None if path is None else Registry(path)
        self.own, self._stamp, self._known = own, None, frozenset()

    def __contains__(self, version: object) -> bool:
        if version == self.own:
            return True
        if self.registry is None:
            return False
        try:
            stat = self.registry.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            return False
        if stamp != self._stamp:
            try:
                self._known = frozenset(self.registry.state()["models"])
            except RegistryError:  # mid-repair: keep what was read last
                return version in self._known
            self._stamp = stamp
        return version in self._known
