"""Secrets never reach a log line: by key, and inside values (JWTs, presigned signatures)."""

from __future__ import annotations

from gateway.logging import REDACTED, redact_secrets

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
