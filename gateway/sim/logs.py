"""Logging for the rig's own processes (virtual controllers, BlueZoo): JSON lines on stderr,
warnings and up, so a test that reads a child's stderr sees only what went wrong."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_sim_logging(level: str = "warning") -> None:
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True)
