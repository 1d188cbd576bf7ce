"""Secrets never reach a log line: by key, and inside values (JWTs, presigned signatures)."""

from __future__ import annotations

import io
import json

import structlog

from gateway.logging import REDACTED, configure_logging, redact_secrets

JWT = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def test_secret_keys_and_values_are_redacted() -> None:
    event = redact_secrets(None, "info", {
        "refresh_token": "rt-abc", "Authorization": "Bearer x", "password": "hunter2",
        "error": f"refused {JWT} at https://s3/x?X-Amz-Expires=1&X-Amz-Signature=deadbeef01",
        "route": "GET /health"})
    assert event["refresh_token"] == event["Authorization"] == event["password"] == REDACTED
    assert JWT not in event["error"] and "deadbeef01" not in event["error"]
    assert "X-Amz-Signature=" + REDACTED in event["error"]
    assert event["route"] == "GET /health"


def test_a_traceback_is_redacted_too() -> None:
    """The guard logs a crashed part with its traceback: a token inside the exception's text
    must not reach the journal through it."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        structlog.get_logger("t").error("part_crashed", exc_info=_raised(f"refused {JWT}"))
        line = json.loads(stream.getvalue().splitlines()[-1])
    finally:
        structlog.reset_defaults()
    assert "Traceback" in line["exception"] and "RuntimeError" in line["exception"]
    assert JWT not in stream.getvalue()


def _raised(message: str) -> RuntimeError:
    """An exception with a traceback, as a crashed part's guard sees one."""
    try:
        _fail(message)
    except RuntimeError as exc:
        return exc
    raise AssertionError("unreachable")


def _fail(message: str) -> None:
    raise RuntimeError(message)
