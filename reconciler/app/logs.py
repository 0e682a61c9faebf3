"""Logging for the daemon and the CLI: JSON lines or readable text, always redacted.

Every record carries ``workflow``, ``run`` and ``step`` (null when they do
not apply), taken from the record's ``extra`` or from ``log_context``. The
format is JSON when asked, or when stderr is not a terminal (a container, a
pipe); text on a terminal. Secret values the daemon knows (the local secret
store) and token shapes are replaced with ``[REDACTED]`` in the message and
in every field, whatever the format.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from reconciler.core.redaction import LiveRedactor

LogFormat = Literal["auto", "json", "text"]
CONTEXT_FIELDS = ("workflow", "run", "step")
# Attributes every LogRecord has; anything else came from ``extra``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "reconciler_log_context", default=None
)


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Fields added to every record logged inside the block (in this thread)."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Sets workflow/run/step on every record: from extra, else the context, else None."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get() or {}
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, context.get(name))
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        redact = _for_one_record(self.redact)
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            document[name] = None if value is None else redact(str(value))
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in CONTEXT_FIELDS and not name.startswith("_"):
                document[name] = _clean(value, redact)
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        where = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if getattr(record, n, None)]
        return self.redact(f"{text} [{' '.join(where)}]" if where else text)


def _for_one_record(redact: Callable[[str], str]) -> Callable[[str], str]:
    """The redactor for one record's fields: a live one checks its secret store once per
    record rather than once per field (``LiveRedactor.snapshot``)."""
    return redact.snapshot() if isinstance(redact, LiveRedactor) else redact


def _clean(value: Any, redact: Callable[[str], str]) -> Any:
    """A field as JSON: mappings and lists stay structured, every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {redact(str(k)): _clean(v, redact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, redact) for v in value]
    return redact(str(value))


def configure_logging(
    *,
    level: str = "info",
    log_format: LogFormat = "auto",
    redact: Callable[[str], str] = lambda text: text,
    stream: Any = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one that formats and redacts as configured."""
    out = stream if stream is not None else sys.stderr
    chosen = log_format
    if chosen == "auto":
        chosen = "text" if getattr(out, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter(redact) if chosen == "json" else TextFormatter(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
