"""Secrets and pseudonyms for the services. Keys come from the environment, never the repo."""
from __future__ import annotations

import hashlib
import hmac
import os


def pseudonymize(user_id: str, key: bytes) -> str:
    """Keyed hash of a user id for logs: stable per key, not invertible without it."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def api_key_matches(provided: str | None, expected: str | None) -> bool:
    """Constant-time comparison; no configured key means write endpoints stay closed."""
    if not expected or provided is None:
        return False
    return hmac.compare_digest(provided.encode("utf-8"), expected.encode("utf-8"))


def pseudonym_key() -> bytes:
    """CAUSALREC_PSEUDONYM_KEY, or a random per-process key (pseudonyms then change on restart)."""
    key = os.environ.get("CAUSALREC_PSEUDONYM_KEY")
    return key.encode("utf-8") if key else os.urandom(32)
