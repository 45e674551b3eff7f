"""Erasure of one person: the forms of their id, keyed tombstones, and finding or scrubbing them in files.

A person has up to two ids in the system: the raw id the data came with, and the pseudonym the
service logs (serving.privacy: a keyed hash of the raw id, or the only id a user first seen at
serving time ever had). Both are needles. A tombstone is a third keyed hash of the pseudonym, with
its own domain ("forget:"), so the list of the erased can be kept (and versioned) without naming
anyone: ingest and export drop every row whose user hashes to one, so a source that still holds the
person (the simulator's seed regenerates them, a team's upstream table) never brings them back.

Finding is by content, not by file name or extension: parquet is read (its pages are compressed, a
byte search would miss a name inside), gzip and tar (BentoML exports) and zip (torch model files)
are opened and their members searched the same way, SQLite databases (Prefect's) are queried,
everything else is searched as bytes.
"""
from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import sqlite3
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from causalrec.io import atomic_write_bytes

TOMBSTONES = "tombstones.json"  # in paths.feedback_dir (versioned with the feedback)


@dataclass(frozen=True)
class Person:
    """The ids one person goes by: the raw id (None when only the pseudonym is known) and the pseudonym."""

    raw: str | None
    pseudonym: str

    @property
    def needles(self) -> tuple[str, ...]:
        return tuple(x for x in (self.raw, self.pseudonym) if x)

    @classmethod
    def resolve(cls, user_id: str, key: bytes, known_ids) -> "Person":
        """`user_id` raw or pseudonym; a pseudonym is mapped back to a raw id among `known_ids` when one hashes to it."""
        from causalrec.serving.privacy import is_pseudonym, pseudonymize

        user_id = str(user_id).strip()
        if not user_id:
            raise ValueError("forget: the user id is empty")
        if not is_pseudonym(user_id):
            return cls(user_id, pseudonymize(user_id, key))
        raw = next((u for u in map(str, known_ids) if not is_pseudonym(u) and pseudonymize(u, key) == user_id), None)
        return cls(raw, user_id)


def tombstone(pseudonym: str, key: bytes) -> str:
    return hmac.new(key, b"forget:" + pseudonym.encode("utf-8"), hashlib.sha256).hexdigest()


class Tombstones:
    """The keyed tombstones of erased people in a feedback directory (a JSON list, written atomically)."""

    def __init__(self, feedback_dir: str | Path):
        self.path = Path(feedback_dir) / TOMBSTONES

    def load(self) -> set[str]:
        if not self.path.exists():
            return set()
        try:
            return set(json.loads(self.path.read_text()))
        except ValueError as exc:
            raise ValueError(f"{self.path} is not a JSON list of tombstones ({exc}); restore it with `dvc checkout`") from None

    def add(self, stone: str) -> None:
        atomic_write_bytes(self.path, json.dumps(sorted(self.load() | {stone}), indent=1).encode())

    def erased(self, user_ids, key: bytes | None) -> np.ndarray:
        """Per user id: whether it belongs to an erased person (raw or pseudonym form)."""
        from causalrec.serving.privacy import pseudonymize

        ids = pd.Series(np.asarray(user_ids).astype(str))
        stones = self.load()
        if not stones:
            return np.zeros(len(ids), bool)
        if key is None:
            raise ValueError(f"{self.path} lists erased people, but no pseudonym key is here to recognise them "
                             "(CAUSALREC_PSEUDONYM_KEY or the key file beside the feedback log): refusing to bring them back")
        unique = ids.unique()
        hit = {u for u in unique if tombstone(pseudonymize(u, key), key) in stones}
        return ids.isin(hit).to_numpy()


# ------------------------------------------------------------------------------------------ finding
def _parquet_has(data: bytes, needles: tuple[str, ...]) -> bool:
    table = pq.read_table(io.BytesIO(data))
    for column in table.itercolumns():
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type):
            values = set(column.cast(pa.string()).to_pylist()) if not pa.types.is_dictionary(column.type) \
                else set(column.to_pylist())
            if values & set(needles):
                return True
    meta = table.schema.metadata or {}
    return any(n.encode() in v for v in meta.values() for n in needles)


def content_has(data: bytes, needles: tuple[str, ...], depth: int = 0) -> bool:
    """Whether `data` holds any needle, looking inside the containers this project writes."""
    raw = tuple(n.encode("utf-8") for n in needles)
    if depth > 4:
        return any(n in data for n in raw)
    if data[:4] == b"PAR1":
        return _parquet_has(data, needles)
    if data[:2] == b"\x1f\x8b":
        try:
            return content_has(gzip.decompress(data), needles, depth + 1)
        except OSError:
            pass
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                return any(content_has(z.read(n), needles, depth + 1) for n in z.namelist())
        except zipfile.BadZipFile:
            pass
    if len(data) > 262 and data[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            return any(content_has(t.extractfile(m).read(), needles, depth + 1) for m in t.getmembers() if m.isfile())
    if data[:16] == b"SQLite format 3\x00":
        return any(n in data for n in raw)  # a file on disk is queried by sqlite_places; bytes here
    return any(n in data for n in raw)


def sqlite_places(path: Path, needles: tuple[str, ...]) -> list[str]:
    """table.column of every text value in a SQLite database holding a needle."""
    out = []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            columns = [r[1] for r in db.execute(f'pragma table_info("{table}")')]
            for column in columns:
                for needle in needles:
                    hit = db.execute(f'select 1 from "{table}" where cast("{column}" as text) like ? limit 1',
                                     (f"%{needle}%",)).fetchone()
                    if hit:
                        out.append(f"{path}:{table}.{column}")
    return out


def find(roots, needles: tuple[str, ...]) -> list[str]:
    """Every file (or SQLite table.column) under `roots` that holds a needle."""
    found = []
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        for path in files:
            try:
                head = path.open("rb").read(16)
                if head == b"SQLite format 3\x00":
                    found += sqlite_places(path, needles)
                elif content_has(path.read_bytes(), needles):
                    found.append(str(path))
            except (OSError, sqlite3.Error, pa.ArrowInvalid) as exc:
                found.append(f"{path} (unreadable: {exc.__class__.__name__})")
    return found


def count_files(roots) -> int:
    """How many files `find` reads under `roots`."""
    return sum(1 if Path(r).is_file() else sum(1 for p in Path(r).rglob("*") if p.is_file() and not p.is_symlink())
               for r in roots)


# ----------------------------------------------------------------------------------------- scrubbing
def drop_rows(path: Path, which, column: str = "user_id") -> int:
    """Rewrite a parquet table without the rows for which `which(values of column as str)` is True
    (atomically); rows removed (0, the file untouched, without such a column or such rows)."""
    frame = pd.read_parquet(path)
    if column not in frame:
        return 0
    hit = np.asarray(which(frame[column].astype(str)), bool)
    if hit.any():
        buf = io.BytesIO()
        frame[~hit].to_parquet(buf, index=False)
        atomic_write_bytes(path, buf.getvalue())
    return int(hit.sum())


def scrub_parquet(path: Path, needles: tuple[str, ...], column: str = "user_id") -> int:
    """Rewrite a parquet table without the rows whose `column` is a needle (atomically); rows removed."""
    return drop_rows(path, lambda ids: ids.isin(needles), column)


def scrub_jsonl(path: Path, needles: tuple[str, ...]) -> int:
    """Rewrite a JSON-lines file without the lines whose user_id is a needle (atomically); lines removed.
    Lines that do not parse are kept as they are (a torn tail is the log's own business)."""
    kept, removed = [], 0
    for line in path.read_bytes().split(b"\n"):
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict) and str(event.get("user_id")) in needles:
            removed += 1
        else:
            kept.append(line)
    if removed:
        atomic_write_bytes(path, b"\n".join(kept))
    return removed


def is_text(data: bytes) -> bool:
    """Not one of the containers content_has opens, and decodes as UTF-8 (a log, a report)."""
    if data[:4] in (b"PAR1", b"PK\x03\x04") or data[:2] == b"\x1f\x8b" or data[:16] == b"SQLite format 3\x00":
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def scrub_lines(path: Path, needles: tuple[str, ...]) -> int:
    """Remove the lines of a text file that name a needle, rewriting it in place (a service appending to
    its log keeps its file; an atomic rename would leave it writing to an unlinked one). Lines removed."""
    raw = tuple(n.encode("utf-8") for n in needles)
    with open(path, "r+b") as fh:
        lines = fh.read().split(b"\n")
        kept = [line for line in lines if not any(n in line for n in raw)]
        if len(kept) != len(lines):
            fh.seek(0)
            fh.write(b"\n".join(kept))
            fh.truncate()
            fh.flush()
            import os

            os.fsync(fh.fileno())
    return len(lines) - len(kept)


def scrub_model_state(tree, needles: tuple[str, ...]) -> int:
    """In a saved model's state (causalrec.persistence): each fitted part that knows the person by id
    forgets them: the id becomes `erased`, their own vector, bias and features are zeroed. Returns the
    parts changed. (The shared parameters they helped train stay: the registry marks such models.)"""
    import torch

    changed = 0
    if isinstance(tree, dict):
        users = tree.get("users")
        if isinstance(users, list) and isinstance(tree.get("state"), dict):
            for j, u in enumerate(users):
                if str(u) in needles:
                    users[j] = f"erased-{j}"
                    state = tree["state"]
                    with torch.no_grad():
                        for name in ("user.weight", "user_bias.weight", "user_x"):
                            if name in state and state[name].shape[0] > j:
                                state[name][j] = 0
                    if isinstance(tree.get("trained_users"), torch.Tensor):
                        tree["trained_users"][j] = False
                    changed += 1
        for v in tree.values():
            changed += scrub_model_state(v, needles)
    elif isinstance(tree, list):
        for v in tree:
            changed += scrub_model_state(v, needles)
    return changed


def scrub_model_file(path: Path, needles: tuple[str, ...]) -> int:
    import torch

    blob = torch.load(path, weights_only=True)
    changed = scrub_model_state(blob, needles)
    if changed:
        buf = io.BytesIO()
        torch.save(blob, buf)
        atomic_write_bytes(path, buf.getvalue())
    return changed
