"""structlog set-up: JSON lines with fields, and secrets redacted before anything is written."""

from __future__ import annotations

import logging
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
