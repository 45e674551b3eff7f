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


class ClientErrorsOnOneLine(logging.Filter):
    """A request the client got wrong (pydantic validation, or an error with a 4xx code) is one
    WARNING line naming the fields and the rule, with no traceback and no input values (a traceback
    of a bad request repeats what was sent, e-mail addresses included). Server errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if exc is None:
            return True
        status = getattr(getattr(exc, "error_code", None), "value", None)
        if hasattr(exc, "errors") and hasattr(exc, "error_count"):  # pydantic.ValidationError
            fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                               for e in exc.errors(include_input=False, include_context=False))
            status, reason = 400, f"{exc.error_count()} validation error(s): {fields}"
        elif isinstance(status, int) and status < 500:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            return True
        record.msg, record.args = f"{record.getMessage()} -> {status} {reason}", ()
        record.levelno, record.levelname, record.exc_info, record.exc_text = logging.WARNING, "WARNING", None, None
        return True


def one_line_client_errors(logger: str = "bentoml._internal.server.http_app") -> None:
    """Install ClientErrorsOnOneLine on BentoML's request-exception logger (once)."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, ClientErrorsOnOneLine) for f in target.filters):
        target.addFilter(ClientErrorsOnOneLine())
