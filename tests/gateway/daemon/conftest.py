"""The daemon's tests run with a blocking-call detector on the event loop (blockbuster): a
sleep, a socket read or a lock wait on the loop thread fails the test that made it. The
registry's and the state directory's small SQLite and file calls stay allowed: they are local
and short (the outbox's commits, which fsync, already run in a thread)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster

# Local storage the daemon touches on the loop on purpose (see the module's docstring).
ALLOWED_PREFIXES = ("sqlite3.", "io.", "os.")


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[BlockBuster]:
    detector = BlockBuster()
    detector.activate()
    for name, function in detector.functions.items():
        if name.startswith(ALLOWED_PREFIXES):
            function.deactivate()
    try:
        yield detector
    finally:
        detector.deactivate()
