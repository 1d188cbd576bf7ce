"""Small asyncio helpers shared by the protocol code."""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    """True when the running task has been asked to stop: a CancelledError seen now is ours to
    propagate, not a library's stray one to absorb."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
