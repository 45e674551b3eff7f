"""Logging for the CLI and the services: one JSON object per line, on stderr.

Every module logs through its own `logging.getLogger(__name__)`; `configure` is called once by an
entry point (the console script, the BentoML service), never at import. The level comes from the
argument or from CAUSALREC_LOG_LEVEL (default INFO).
"""
from __future__ import annotations

import json
import logging
import os
import sys

LEVEL_ENV = "CAUSALREC_LOG_LEVEL"
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", **extra}: `log.info("...", extra={"stage": "train"})`."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str | None = None) -> None:
    """Route the `causalrec` loggers to stderr as JSON lines at `level` (or $CAUSALREC_LOG_LEVEL)."""
    name = (level or os.environ.get(LEVEL_ENV, "INFO")).upper()
    if name not in logging.getLevelNamesMapping():
        raise ValueError(f"{LEVEL_ENV}={name!r} is not a logging level (DEBUG, INFO, WARNING, ERROR)")
    root = logging.getLogger("causalrec")
    root.setLevel(name)
    if not any(getattr(h, "_causalrec", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._causalrec = True
        root.addHandler(handler)
    root.propagate = False
