"""`awgw daemon`: the long-running gateway, and its composition root. Builds the registry, the
connection manager, the operations and the control socket, runs them in one TaskGroup, with
systemd readiness, structured shutdown on SIGTERM, and no single controller able to stop it."""

from __future__ import annotations

import asyncio
import signal

import structlog

from gateway import systemd
from gateway.config import GatewayConfig
from gateway.control import ControlServer
from gateway.link.manager import ConnectionManager
from gateway.ops.daemon import DaemonOperations
from gateway.ops.models import Request, Result
from gateway.ops.protocol import dispatch
from gateway.store.registry import Registry

log = structlog.get_logger(__name__)


async def _watchdog(interval_s: float) -> None:
    """Ping systemd while the event loop turns: a wedged loop stops the pings and systemd
    restarts the service (WatchdogSec= in systemd/awgw.service)."""
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


async def run_daemon(config: GatewayConfig) -> None:
    registry = Registry(config.registry_path)
    manager = ConnectionManager(config, registry)
    operations = DaemonOperations(config, registry, manager)
    manager.repairer = operations.repair

    async def handle(request: Request) -> Result:
        return await dispatch(operations, request)

    server = ControlServer(config.socket_path, handle)
    log.info("daemon_starting", state_dir=str(config.state_dir), adapter=config.link.adapter,
             max_links=config.link.max_links, policy=config.link.default_policy.value)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        if main is not None:
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(manager.run(), name="connection manager")
            await manager.ready.wait()
            await server.start()
            systemd.notify("READY=1")
            systemd.notify(f"STATUS=supervising {len(manager.supervisors)} controllers")
            interval = systemd.watchdog_interval_s()
            if interval is not None:
                tasks.create_task(_watchdog(interval), name="systemd watchdog")
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        systemd.notify("STOPPING=1")
        await server.close()
        log.info("daemon_stopped")
