"""Logging for both processes: text or one JSON object per line, with request ids.

A Discord event gets an id when it arrives (`request_context`); every log line
written while handling it carries that id, and the ids of its images
("<event>-<n>") travel to the worker inside the requests, whose log lines name
them too. So `grep <id>` (or a JSON log query) follows a picture from the
gateway event to the model and back.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("wakeru_request_id", default=None)

# Attributes every LogRecord has; anything else was passed with `extra=` and is worth showing.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "process_name"}


def new_event_id() -> str:
    return uuid.uuid4().hex[:12]


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(event_id: str) -> None:
    """For the rest of the current task (a handler running in its own task)."""
    _request_id.set(event_id)


@contextmanager
def request_context(event_id: str) -> Iterator[str]:
    token = _request_id.set(event_id)
    try:
        yield event_id
    finally:
        _request_id.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_name = self.process
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": getattr(record, "process_name", None),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The usual one-line format, with the request id and any extras appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(process_name)s] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            tail = " ".join(f"{k}={v}" for k, v in extras.items())
            head, sep, rest = line.partition("\n")  # keep tracebacks below the line
            line = f"{head} [{tail}]{sep}{rest}"
        return line


def setup_logging(fmt: str = "text", level: int = logging.INFO, *, process: str = "bot") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
