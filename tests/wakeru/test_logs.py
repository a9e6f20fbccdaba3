"""Structured logs: request ids from the context or from `extra`, JSON and text formats."""

from __future__ import annotations

import json
import logging

import pytest

from wakeru.logs import JsonFormatter, TextFormatter, _ContextFilter, current_request_id, request_context


def _record(msg="hello %s", args=("world",), **extra) -> logging.LogRecord:
    record = logging.LogRecord("wakeru.test", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_request_id_comes_from_the_context_and_extras_are_kept(fmt):
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    with request_context("abc123"):
        assert current_request_id() == "abc123"
        record = _record(outcome="ok")
        _ContextFilter("bot").filter(record)
    assert current_request_id() is None
    line = formatter.format(record)
    if fmt == "json":
        entry = json.loads(line)
        assert entry["message"] == "hello world" and entry["request_id"] == "abc123"
        assert entry["outcome"] == "ok" and entry["process"] == "bot" and entry["level"] == "info"
    else:
        assert "[bot] wakeru.test: hello world" in line and "request_id=abc123" in line and "outcome=ok" in line


def test_an_explicit_request_id_wins_and_exceptions_are_kept_in_json():
    with request_context("event"):
        record = _record(request_id="event-3")
        _ContextFilter("worker").filter(record)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "event-3" and "ValueError: boom" in entry["exception"]
