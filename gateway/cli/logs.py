"""The CLI's logging, started only when a command needs it: structlog (and what it pulls in)
costs about a tenth of a second to import, which a command answered by the daemon over its
socket never pays. A command that acts on the radio itself, runs the daemon or talks to the
cloud starts it before it does."""

from __future__ import annotations

from typing import TextIO

from gateway.config import LogLevel


class _Logging:
    def __init__(self) -> None:
        # Set by `awgw`'s main only: code of the CLI used as a library (a test, the doctor)
        # never reconfigures the process's logging as a side effect.
        self.wanted: tuple[LogLevel, TextIO] | None = None
        self.started = False

    def start(self) -> None:
        if self.started or self.wanted is None:
            return
        from gateway.logging import configure_logging

        level, stream = self.wanted
        configure_logging(json_logs=True, level=level, stream=stream)
        self.started = True


_LOGGING = _Logging()


def want(level: LogLevel, stream: TextIO) -> None:
    _LOGGING.wanted = (level, stream)


def start() -> None:
    """Configure structlog as `awgw` was asked to (JSON lines at the level chosen); once."""
    _LOGGING.start()
