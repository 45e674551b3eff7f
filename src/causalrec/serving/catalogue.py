"""Items added at serving time (POST /items): durable, shared by every worker, and data for the next
retrain.

One SQLite file (WAL mode: readers never block the writer; SQLite's own file locking serialises
writers across processes). Each worker applies the rows it has not seen yet before it answers
(`RecommenderCore.sync`), so an item added through one worker is served by all, and a restarted
service has every item it ever acknowledged. `causalrec export-feedback` appends these items (with
their texts) to data/items.parquet, so feedback on them is not a referential error.
"""
from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


class Conflict(ValueError):
    """A create that names an id which already exists (POST /items with a taken item_id)."""


class CatalogueStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged item survives a power cut
        self._db.execute("CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "item_id TEXT UNIQUE NOT NULL, title TEXT NOT NULL, description TEXT NOT NULL, "
                         "embedding BLOB, added_at TEXT NOT NULL)")

    def add(self, item_id: str, title: str, description: str, embedding: np.ndarray | None) -> int:
        """Store a new item; returns its sequence number. Conflict if the id is taken (by any worker)."""
        blob = None if embedding is None else np.asarray(embedding, np.float32).tobytes()
        with self._lock:
            try:
                cur = self._db.execute("INSERT INTO items (item_id, title, description, embedding, added_at) "
                                       "VALUES (?, ?, ?, ?, ?)", (item_id, title, description, blob,
                                                                  datetime.now(timezone.utc).isoformat()))
            except sqlite3.IntegrityError:
                raise Conflict("item_id already exists") from None
            return int(cur.lastrowid)

    def since(self, seq: int) -> list[dict]:
        """Items stored after sequence number `seq`, in order."""
        with self._lock:
            rows = self._db.execute("SELECT seq, item_id, title, description, embedding FROM items WHERE seq > ? "
                                    "ORDER BY seq", (seq,)).fetchall()
        return [{"seq": s, "item_id": i, "title": t, "description": d,
                 "embedding": None if e is None else np.frombuffer(e, np.float32)} for s, i, t, d, e in rows]

    def close(self) -> None:
        self._db.close()


def read_items(path: str | Path) -> list[dict]:
    """Every stored item (for export); an absent store holds none."""
    if not Path(path).exists():
        return []
    store = CatalogueStore(path)
    try:
        return store.since(0)
    finally:
        store.close()
