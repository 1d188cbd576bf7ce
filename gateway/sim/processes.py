"""Stopping a child process the way systemd does: SIGTERM, a limit, then SIGKILL."""

from __future__ import annotations

import asyncio


async def terminate(proc: asyncio.subprocess.Process, limit_s: float) -> bool:
    """True if it exited by itself within ``limit_s`` of SIGTERM, False if it was killed."""
    if proc.returncode is not None:
        return True
    proc.terminate()
    try:
        async with asyncio.timeout(limit_s):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False
    return True
