"""The detector the daemon's tests run under catches a blocking call on the event loop (it
found one: the metrics server's shutdown, which now runs in a thread)."""

from __future__ import annotations

import asyncio
import time

import pytest
from blockbuster import BlockingError


async def test_a_sleep_on_the_loop_fails_the_test() -> None:
    with pytest.raises(BlockingError):
        time.sleep(0.001)  # noqa: ASYNC251 - the blocking call the detector must catch


async def test_the_same_sleep_in_a_thread_is_fine() -> None:
    await asyncio.to_thread(time.sleep, 0.001)
