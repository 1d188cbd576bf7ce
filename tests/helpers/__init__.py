"""Helpers every test module shares: polling for a condition, and ending a task the way
structured concurrency wants it (cancelled AND awaited, with what it hid raised again)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable

# Polling a condition that has no event of its own: fine-grained enough for millisecond tests,
# coarse enough not to load a machine running the suite on both cores.
POLL_S = 0.01
# A cancelled task runs its cleanups (a broker's disconnect waits up to aiomqtt's 10 s): one
# still running after this has lost its cancellation, which is a defect to show, not to wait
# out until the test's own timeout hides where it hung.
CANCEL_WITHIN_S = 30.0


async def until(predicate: Callable[[], bool], limit_s: float = 5.0, what: str = "") -> None:
    """Until ``predicate()`` holds; TimeoutError naming ``what`` after ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            while not predicate():  # noqa: ASYNC110 - polls state that has no event
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise TimeoutError(f"not within {limit_s} s: {what or predicate}") from None


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel ``task`` and await it: an exception it ended with (other than the cancellation)
    is raised here instead of vanishing with the task."""
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=CANCEL_WITHIN_S)
    if not done:
        stacks = io.StringIO()
        for other in asyncio.all_tasks():  # its children hold the await that hangs
            if other is not asyncio.current_task():
                other.print_stack(file=stacks)
        raise AssertionError(f"task {task.get_name()!r} still runs {CANCEL_WITHIN_S:.0f} s "
                             f"after its cancellation; the tasks:\n{stacks.getvalue()}")
    with contextlib.suppress(asyncio.CancelledError):
        await task
