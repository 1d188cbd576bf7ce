"""The rig's child processes: ended with the process that started them (``tied``), and
stopped the way systemd does (``terminate``: SIGTERM, a limit, then SIGKILL)."""

from __future__ import annotations

import asyncio
import shutil


def tied(args: list[str]) -> list[str]:
    """``args`` run so that the child gets SIGTERM when its parent dies, however it dies: a
    bench or test killed with SIGKILL (a CI timeout) otherwise leaves its D-Bus daemon,
    BlueZoo, controllers, broker and QEMU running, each eating CPU on the next run.
    util-linux's setpriv sets the parent-death signal and execs the program (preexec_fn is
    not safe in a process with threads); without it the child runs untied, as before."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *args] if setpriv else args


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
