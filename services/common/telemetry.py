"""Logging set-up, done once in each service's `__main__`: text lines or JSON lines.

Every record names the service; one logged while a query is handled also carries
its query id and application (set by the query path with `set_query`) and, when
tracing is on, its trace id. JSON (`--log-format json`): one object per line, with
a record's structured `fields` (the access log's) as keys of their own. Inputs,
outputs and credentials are never put in a record.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

from opentelemetry import trace

from services.common import tracing

LOG_FORMATS = ("text", "json")

# (query id, application) of the query being handled in this task.
_query: ContextVar[tuple[str, str] | None] = ContextVar("clipper_query", default=None)


def set_query(query_id: str, application: str) -> None:
    """Name the query the current task handles, for the records it logs."""
    _query.set((query_id, application))


def setup_logging(service: str, level: str = "INFO", log_format: str = "text") -> None:
    """Log to stderr (stdout carries the readiness line) with the service's name."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_QueryFields())
    handler.setFormatter(JsonFormatter(service) if log_format == "json"
                         else TextFormatter(service))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class _QueryFields(logging.Filter):
    """Adds query_id, application and trace_id to every record ("" when none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        query = _query.get()
        record.query_id, record.application = query or ("", "")
        record.trace_id = _trace_id()
        return True


def _trace_id() -> str:
    if not tracing.enabled:
        return ""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


_QUERY_KEYS = ("query_id", "application", "trace_id")


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The query fields set on `record`, then its structured `fields`."""
    out: dict[str, Any] = {k: v for k in _QUERY_KEYS if (v := getattr(record, k, ""))}
    out.update(getattr(record, "fields", None) or {})
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL service logger: message key=value ...`."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _context(record)
        if not extra:
            return line
        head, newline, tail = line.partition("\n")  # a traceback stays below
        pairs = " ".join(f"{k}={_plain(v)}" for k, v in extra.items())
        return f"{head} {pairs}{newline}{tail}"


def _plain(value: Any) -> str:
    """A value as one token of a text log line: quoted when it holds spaces or control
    characters, so that no value can start a line of its own."""
    text = str(value)
    return text if text and all(c.isprintable() and not c.isspace() for c in text) \
        else repr(text)
