"""The rig's children end with the process that started them, however it ends: a bench or
test killed with SIGKILL (a CI timeout) must not leave a D-Bus daemon, BlueZoo, controllers or
QEMU running into the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gateway.sim.processes import tied

STARTER = """
import asyncio, sys
from gateway.sim.processes import tied

async def main():
    child = await asyncio.create_subprocess_exec(*tied(["sleep", "60"]),
                                                 start_new_session=True)
    print(child.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of an exited child still answers kill(0): read its state.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not tied(["x"])[0].endswith("setpriv"), reason="no setpriv on this host")
def test_a_child_of_a_killed_starter_ends_with_it() -> None:
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE,
                               text=True)
    assert starter.stdout is not None
    child = int(starter.stdout.readline())
    try:
        assert alive(child)
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        deadline = time.monotonic() + 5.0
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the child outlived its killed parent"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
