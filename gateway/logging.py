"""structlog set-up: JSON lines with fields, and secrets redacted before anything is written."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEYS = re.compile(r"(token|secret|password|passkey|authorization|api_key|ltk)", re.I)
REDACTED = "[redacted]"
# Secrets that can hide inside a value (an error text, a URL): JWTs (Cognito ID and access
# tokens) and the signature of a presigned URL.
_SECRET_VALUES = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+|(X-Amz-Signature=)[0-9A-Fa-f]+")


def redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEYS.search(key):
            event[key] = REDACTED
        elif isinstance(value, str) and ("eyJ" in value or "X-Amz-Signature" in value):
            event[key] = _SECRET_VALUES.sub(lambda m: (m.group(1) or "") + REDACTED, value)
    return event


class _LibraryRecords(logging.Handler):
    """The radio libraries (bleak, aioesphomeapi, bleak-esphome, habluetooth) log through the
    standard library: their records leave as our own JSON lines, redacted the same way, named
    by their logger. Without this Python's last-resort handler prints them as bare text."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            method = getattr(log, record.levelname.lower(), log.error)
            method(record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - as logging's own handlers: reported, never raised
            self.handleError(record)


class _Handover(logging.handlers.QueueHandler):
    """Only queues the record; a thread of its own writes it. A record can be logged from a
    finalizer (asyncio's "Task was destroyed") that the garbage collector runs in the middle of
    one of our own lines, while structlog holds its (non-reentrant) lock on the stream: written
    there, it would deadlock the daemon."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # the same process reads it: no need to flatten it for pickling


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    """At exit: the records still queued are written before the process ends."""
    if _listener is not None:
        _listener.stop()


def _route_library_records(level: int) -> None:
    global _listener  # noqa: PLW0603 - one listener per process, replaced on reconfiguring
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handover)]:
        root.removeHandler(handler)
    if _listener is None:
        atexit.register(_stop_listener)  # once: it stops whichever listener is current
    else:
        _listener.stop()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, _LibraryRecords())
    _listener.start()
    root.addHandler(_Handover(records))
    # Libraries speak at WARNING and up only: their INFO is per-packet chatter on a busy hub.
    root.setLevel(max(level, logging.WARNING))


def configure_logging(*, json_logs: bool = True, level: str = "info",
                      stream: TextIO | None = None) -> None:
    numeric = logging.getLevelName(level.upper())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks are text before redaction, so a secret inside one is redacted too.
        structlog.processors.format_exc_info,
        redact_secrets,
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_library_records(numeric)
