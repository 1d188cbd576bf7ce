"""Entry point of one virtual controller process: ``python -m gateway.sim.controller CONFIG``."""

from __future__ import annotations

import asyncio
import signal
import sys

from gateway.sim.controller.config import ControllerConfig
from gateway.sim.controller.device import VirtualController
from gateway.sim.logs import configure_sim_logging


async def _main(config: ControllerConfig) -> None:
    controller = VirtualController(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, controller.stop)
    ready = asyncio.Event()
    run = asyncio.create_task(controller.run(ready), name="controller")
    waiter = asyncio.create_task(ready.wait(), name="ready")
    await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        print("READY", flush=True)
    await run


def main() -> None:
    configure_sim_logging("warning")
    config = ControllerConfig.from_json(sys.argv[1])
    asyncio.run(_main(config))


if __name__ == "__main__":
    main()
