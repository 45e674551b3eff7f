"""`causalrec forget --user ID`: erase one person from every place this project keeps data.

In order (each step atomic per file; a crash part-way leaves every file whole, and running the
command again finishes the job):
  1. a keyed tombstone (data.erasure) in paths.feedback_dir, first: from then on no export or ingest
     brings the person back, whatever a source still holds;
  2. the current data (data/), every feedback partition (rewritten in place of the old, whole) and
     the quarantine;
  3. the service's feedback log and its rotated segments (under the log's own lock: a running
     service keeps appending, and follows the rewrite as it follows a rotation);
  4. stage outputs that mention them (artifacts/: tables scrubbed, reports deleted; the next
     retrain writes them again);
  5. BentoML's store (models and bentos): in each stored model the person's id, own vector, bias and
     features are erased; the bundle's history of positives loses their rows; the registry's
     exports (paths.model_store) are written again from the scrubbed store;
  6. the registry marks every model as trained on erased data (the gate replaces such a champion
     with the next candidate; `--retrain` runs that retrain now);
  7. Prefect's database (SQLite): log lines and artifacts that name them are deleted; so are the lines
     of any other text file that names them (the service's own request log, by pseudonym);
  8. DVC: the scrubbed data, feedback and model exports are versioned again and pushed, and
     `dvc gc --workspace --cloud` deletes every object the workspace no longer uses from the cache
     and the remote. That is what makes erasure real, and it costs reproducibility: older git commits
     point at data versions that no longer exist (`dvc checkout` there fails). The audit trail is
     `privacy/erasures.jsonl` (committed): when, the tombstone (a keyed hash, not the person), what was
     removed where, the data versions before and after.
Then every place is searched by content (data.erasure.find) and the places still holding an id are
returned (`found_after`: empty when the erasure is complete).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from causalrec.config import Params
from causalrec.serving import erasure
from causalrec.io import append_line_durably
from causalrec.pipeline.paths import StageError

AUDIT_LOG = Path("privacy") / "erasures.jsonl"
SKIP_DIRS = {".git", ".venv", "node_modules"}


@contextlib.contextmanager
def _log_lock(log_path: Path):
    """The feedback log's own lock (serving.feedback.FeedbackLog): no event is appended while a segment is rewritten."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path.with_name(log_path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _known_ids(params: Params) -> set[str]:
    from causalrec.data.feedback import read_partitions
    from causalrec.data.schema import USERS, read_table

    ids = set()
    with contextlib.suppress(FileNotFoundError, ValueError):
        ids |= set(read_table(params.paths.data_dir, USERS)["user_id"].astype(str))
    with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
        ids |= set(read_partitions(params.paths.feedback_dir, USERS)["user_id"].astype(str))
    return ids


def _parquets(root: Path):
    return sorted(p for p in root.rglob("*.parquet") if p.is_file()) if root.is_dir() else []


def _scrub_tables(root: Path, needles: tuple[str, ...]) -> int:
    return sum(erasure.scrub_parquet(p, needles) for p in _parquets(root))


def _scrub_partitions(feedback_dir: Path, needles: tuple[str, ...]) -> dict:
    """Each partition that holds the person is written again without them, as a whole (io.atomic_dir)."""
    from causalrec.data.feedback import partitions
    from causalrec.io import atomic_dir

    rewritten, rows = [], 0
    for part in partitions(feedback_dir):
        if not any(erasure.content_has(p.read_bytes(), needles) for p in _parquets(part)):
            continue
        with atomic_dir(part) as tmp:
            shutil.copytree(part, tmp, dirs_exist_ok=True)
            rows += _scrub_tables(tmp, needles)
            manifest = tmp / "manifest.json"
            if manifest.exists():
                m = json.loads(manifest.read_text())
                m["rewritten_by_forget"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                manifest.write_text(json.dumps(m, indent=2, default=str))
        rewritten.append(part.name)
    quarantined = _scrub_tables(feedback_dir / "quarantine", needles)
    return {"partitions_rewritten": rewritten, "rows": rows, "quarantined_rows": quarantined}


def _scrub_feedback_log(log_path: Path, needles: tuple[str, ...]) -> int:
    from causalrec.serving.feedback import segments

    with _log_lock(log_path):
        return sum(erasure.scrub_jsonl(p, needles) for p in [*segments(log_path), log_path] if p.exists())


def _scrub_artifacts(artifacts: Path, needles: tuple[str, ...]) -> dict:
    """Tables lose the person's rows; any other stage output that names them (a report, a data doc) is
    deleted: the next retrain writes it again."""
    scrubbed, deleted = 0, []
    for place in erasure.find([artifacts], needles) if artifacts.is_dir() else []:
        path = Path(place.split(" (")[0])
        if path.suffix == ".parquet":
            scrubbed += erasure.scrub_parquet(path, needles)
        if path.suffix == ".pt":
            scrubbed += erasure.scrub_model_file(path, needles)
        if path.exists() and erasure.content_has(path.read_bytes(), needles):
            path.unlink()
            deleted.append(str(path))
    return {"rows": scrubbed, "deleted": deleted}


def _scrub_bentoml(home: Path, needles: tuple[str, ...]) -> dict:
    """Every stored model file and table in BentoML's store (models and built bentos)."""
    models = rows = 0
    if not home.is_dir():
        return {"models": 0, "rows": 0}
    for path in sorted(home.rglob("*.pt")):
        if erasure.content_has(path.read_bytes(), needles):
            models += erasure.scrub_model_file(path, needles)
    for path in _parquets(home):
        rows += erasure.scrub_parquet(path, needles)
    return {"models": models, "rows": rows}


def _scrub_prefect(db: Path | None, needles: tuple[str, ...]) -> dict:
    """Log lines and artifacts that name the person, deleted from Prefect's SQLite database."""
    if db is None or not db.is_file():
        return {"database": None}
    deleted = {}
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        for table, column in (("log", "message"), ("artifact", "data"), ("artifact", "description"),
                              ("artifact_collection", "data"), ("artifact_collection", "description")):
            if table not in tables:
                continue
            n = 0
            for needle in needles:
                n += con.execute(f'delete from "{table}" where cast("{column}" as text) like ?', (f"%{needle}%",)).rowcount
            deleted[f"{table}.{column}"] = n
    return {"database": str(db), "deleted": deleted}


def _scrub_text(where: list[Path], needles: tuple[str, ...]) -> dict:
    """Lines that name the person in any other text file (the service's own logs record requests by
    pseudonym; the reports of earlier runs): removed."""
    removed = {}
    for place in erasure.find(where, needles):
        path = Path(place.split(" (")[0])
        if path.is_file() and erasure.is_text(path.read_bytes()):
            removed[str(path)] = erasure.scrub_lines(path, needles)
    return removed


def _dvc_remote_dirs(root: Path) -> list[Path]:
    from causalrec.io import run_child

    proc = run_child([sys.executable, "-m", "dvc", "remote", "list"], cwd=root, capture_output=True, text=True)
    out = []
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        parts = line.split()
        if len(parts) >= 2 and "://" not in parts[1]:
            path = Path(parts[1])
            out.append(path if path.is_absolute() else (root / ".dvc" / path).resolve())
    return out


def _reversion(params: Params) -> dict:
    """Version the scrubbed directories again, push, and collect the objects nothing in the workspace uses."""
    from causalrec.pipeline.versioning import _dvc, data_hash, version_data

    root = params.root
    if not (root / ".dvc").is_dir() or not (root / "data.dvc").exists():
        return {"versioned": False, "why": "no DVC-tracked data here"}
    before = data_hash(params)
    remotes = _dvc_remote_dirs(root)
    version = version_data(params, push=bool(remotes))
    _dvc(root, "gc", "--workspace", "--force", *(["--cloud"] if remotes else []))
    return {"versioned": True, "data_md5_before": before, "data_md5_after": version["data_md5"],
            "remotes_collected": [str(r) for r in remotes]}


def places(params: Params) -> list[Path]:
    """Where a person's data may live: the project (but .git and the virtual environment), DVC's local
    remotes, BentoML's store, Prefect's home."""
    root = params.root
    out = [p for p in root.iterdir() if p.name not in SKIP_DIRS]
    out += _dvc_remote_dirs(root) if (root / ".dvc").is_dir() else []
    db = prefect_database()
    for home in (Path(os.environ.get("BENTOML_HOME", root / ".bentoml")),
                 Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")), db):
        if home is not None and home.exists() and not any(home.resolve().is_relative_to(p.resolve()) for p in out if p.is_dir()):
            out.append(home)
    return [p for p in out if p.exists()]


def prefect_database() -> Path | None:
    """Prefect's database when it is SQLite (the default, and what `causalrec retrain` starts); None for
    another database (PostgreSQL: erase there with its own tools, see README "Privacy")."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    return Path(url.split(":///", 1)[-1]) if url.startswith("sqlite") else None


def forget(params: Params, user_id: str) -> dict:
    """Erase the person `user_id` (raw id or pseudonym) everywhere (module docstring); returns what was
    done and `found_after`, the places still holding one of their ids."""
    from causalrec.pipeline.store import bentoml_env, export_models
    from causalrec.registry import Registry
    from causalrec.serving.privacy import pseudonym_key

    t0 = time.perf_counter()
    log_path = Path(params.serve.feedback_log)
    key = pseudonym_key(log_path.parent)
    person = erasure.Person.resolve(user_id, key, _known_ids(params))
    needles = person.needles
    stone = erasure.tombstone(person.pseudonym, key)
    erasure.Tombstones(params.paths.feedback_dir).add(stone)
    done = {"tombstone": stone, "known_as_raw_id": person.raw is not None}
    done["data_rows"] = _scrub_tables(params.paths.data_dir, needles)
    done["feedback"] = _scrub_partitions(params.paths.feedback_dir, needles)
    done["feedback_log_events"] = _scrub_feedback_log(log_path, needles)
    done["artifacts"] = _scrub_artifacts(params.paths.artifacts_dir, needles)
    bentoml_env(params)
    done["bentoml"] = _scrub_bentoml(Path(os.environ["BENTOML_HOME"]), needles)
    registry = Registry(params.paths.registry)
    if registry.path.exists():
        done["models_marked"] = registry.mark_trained_on_erased(f"person erased (tombstone {stone[:16]})", "forget")
        if params.paths.model_store.is_dir():  # the exports are archives of the store: written again from it
            for f in params.paths.model_store.iterdir():
                if f.is_file():
                    f.unlink()
            done["exports_rewritten"] = export_models(params, registry.keep())
    done["prefect"] = _scrub_prefect(prefect_database(), needles)
    where = places(params)
    done["text_lines"] = _scrub_text(where, needles)
    done["dvc"] = _reversion(params)
    done["found_after"] = erasure.find(where, needles)
    done["places_checked"] = erasure.count_files(where)
    done["seconds"] = time.perf_counter() - t0
    audit = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "tombstone": stone,
             **{k: v for k, v in done.items() if k not in ("tombstone",)}}
    append_line_durably(params.root / AUDIT_LOG, json.dumps(audit, default=str))
    if done["found_after"]:
        raise StageError(f"forget: the person is still found in {len(done['found_after'])} place(s) after erasure: "
                         f"{done['found_after'][:5]}; run `causalrec forget` again, or remove them by hand")
    return done
