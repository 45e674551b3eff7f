"""Secrets and pseudonyms for the services. Keys come from the environment or a key file beside
the data they protect, never from the repository.

A pseudonym is `anon-` + a keyed hash (HMAC-SHA256) of a user id: stable under one key, not
invertible without it. The service logs and stores only pseudonyms; `export-feedback` maps a
pseudonym back to a known user by hashing the known ids with the same key, and a user it cannot map
(first seen at serving time) enters the data under the pseudonym, which the service resolves again
when that person next asks for recommendations. A raw id of a new user is never written anywhere.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

KEY_ENV = "CAUSALREC_PSEUDONYM_KEY"
KEY_FILE = "pseudonym.key"
PREFIX = "anon-"


def pseudonymize(user_id: str, key: bytes) -> str:
    """Keyed hash of a user id (idempotent: a pseudonym maps to itself)."""
    if is_pseudonym(user_id):
        return user_id
    return PREFIX + hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


def is_pseudonym(user_id: str) -> bool:
    rest = user_id[len(PREFIX):]
    return user_id.startswith(PREFIX) and len(rest) == 24 and all(c in "0123456789abcdef" for c in rest)


def api_key_matches(provided: str | None, expected: str | None) -> bool:
    """Constant-time comparison; no configured key means write endpoints stay closed."""
    if not expected or provided is None:
        return False
    return hmac.compare_digest(provided.encode("utf-8"), expected.encode("utf-8"))


def existing_pseudonym_key(key_dir: str | Path) -> bytes | None:
    """The key pseudonym_key would return, without creating one: None when there is none yet."""
    key = os.environ.get(KEY_ENV)
    if key:
        return key.encode("utf-8")
    path = Path(key_dir) / KEY_FILE
    return pseudonym_key(key_dir) if path.exists() else None


def pseudonym_key(key_dir: str | Path | None = None) -> bytes:
    """$CAUSALREC_PSEUDONYM_KEY; else the key file in `key_dir` (created once, mode 0600, by whichever
    worker gets there first: every worker and the exporter then share it); else, with no `key_dir`, a
    random per-process key (pseudonyms change on restart: fine for logs, not for stored feedback)."""
    key = os.environ.get(KEY_ENV)
    if key:
        return key.encode("utf-8")
    if key_dir is None:
        return os.urandom(32)
    path = Path(key_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:  # write to a temp name first would race the O_EXCL winner; a short write is fsynced at once
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
            fh.flush()
            os.fsync(fh.fileno())
    for _ in range(100):  # another worker may be between its O_EXCL and its write
        text = path.read_text().strip()
        if len(text) == 64:
            return text.encode("utf-8")
        time.sleep(0.01)
    raise ValueError(f"{path}: the pseudonym key file is not 64 hex characters; restore it or remove it "
                     "(stored feedback pseudonyms then no longer map to known users)")
