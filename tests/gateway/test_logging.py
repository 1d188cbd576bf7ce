"""Secrets never reach a log line: by key, and inside values (JWTs, presigned signatures)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
import time
from typing import Any

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


def test_a_librarys_standard_logging_leaves_as_the_same_redacted_json() -> None:
    """bleak, aioesphomeapi, bleak-esphome and habluetooth log through the standard library:
    their warnings must be JSON lines in the journal like ours, with secrets redacted, and
    their chatter below WARNING stays out."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    library = logging.getLogger("aioesphomeapi.connection")
    try:
        library.info("handshake details")
        library.warning("proxy0 @ 10.0.0.5: Connection error occurred: %s", f"bad {JWT}")
        try:
            raise _raised("noise frame refused")
        except RuntimeError:
            library.exception("Unexpected error")
        lines = _lines_once(stream, 2)
    finally:
        structlog.reset_defaults()
        configure_root_reset()
    assert [line["level"] for line in lines] == ["warning", "error"]
    first, second = lines
    assert first["logger"] == "aioesphomeapi.connection"
    assert first["event"].startswith("proxy0 @ 10.0.0.5: Connection error occurred: bad ")
    assert JWT not in stream.getvalue()
    assert "noise frame refused" in second["exception"]


def configure_root_reset() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def _lines_once(stream: io.StringIO, count: int) -> list[dict[str, Any]]:
    """The JSON lines, once ``count`` are written (library records go through a thread)."""
    deadline = time.monotonic() + 5
    while len(stream.getvalue().splitlines()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class _FinalizerInTheWrite(io.StringIO):
    """A stream whose first write logs through the standard library, as a finalizer the
    garbage collector runs in the middle of one of our lines does (asyncio's "Task was
    destroyed but it is pending!")."""

    def __init__(self) -> None:
        super().__init__()
        self.fired = False

    def write(self, text: str) -> int:
        if not self.fired:
            self.fired = True
            logging.getLogger("asyncio").error("Task was destroyed but it is pending!")
        return super().write(text)


def test_a_library_record_logged_inside_one_of_our_lines_does_not_deadlock() -> None:
    stream = _FinalizerInTheWrite()
    configure_logging(stream=stream)
    try:
        writer = threading.Thread(
            target=lambda: structlog.get_logger("t").warning("radio_down", radio="garden"),
            daemon=True)
        writer.start()
        writer.join(5)
        assert not writer.is_alive(), "deadlocked on structlog's stream lock"
        lines = _lines_once(stream, 2)
    finally:
        structlog.reset_defaults()
        configure_root_reset()
    assert {line["event"] for line in lines} == {
        "radio_down", "Task was destroyed but it is pending!"}


def test_logging_configured_twice_exits_without_a_traceback() -> None:
    # The CLI configures logging once per command and tests many times: each old listener is
    # stopped when replaced, and the one stop at exit must not stop it again.
    script = ("from gateway.logging import configure_logging\n"
              "configure_logging()\nconfigure_logging(json_logs=False)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
