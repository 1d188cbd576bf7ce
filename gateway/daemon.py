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
from gateway.ops.daemon import DaemonOperations, SupervisedHistory
from gateway.ops.models import Request, Result
from gateway.ops.protocol import dispatch
from gateway.ota.jobs import CloudUpdates
from gateway.relay.account import CloudAccount
from gateway.relay.cloud import OUTBOX_FILE, STATUS_FILE, CloudRelay
from gateway.relay.feed import SERIAL, StateFeed
from gateway.store.outbox import Outbox
from gateway.store.registry import Registry

log = structlog.get_logger(__name__)


async def _watchdog(interval_s: float) -> None:
    """Ping systemd while the event loop turns: a wedged loop stops the pings and systemd
    restarts the service (WatchdogSec= in systemd/awgw.service)."""
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


def _cloud(config: GatewayConfig, registry: Registry, manager: ConnectionManager,
           operations: DaemonOperations) -> tuple[CloudRelay, StateFeed, CloudUpdates] | None:
    """The cloud relay, its state feed and cloud-driven updates, when [cloud] is enabled."""
    if not config.cloud.enabled:
        return None
    account = CloudAccount(config)
    outbox = Outbox(config.state_dir / OUTBOX_FILE, account.gateway_id)

    def serials() -> list[str]:
        return [r.serial for r in registry.all() if r.serial and SERIAL.match(r.serial)]

    relay = CloudRelay(config.cloud, account.gateway_id, outbox, account.client, account.auth,
                       serials=serials, token_stamp=account.store.stamp,
                       status_path=config.cloud_dir / STATUS_FILE)
    feed = StateFeed(manager.store, registry, [relay], SupervisedHistory(manager),
                     config.cloud.history_period_s)
    updates = CloudUpdates(config, registry, account.client, account.gateway_id, operations,
                           relay, lambda: relay.mode)
    operations.cloud = relay
    operations.account = account
    return relay, feed, updates


async def run_daemon(config: GatewayConfig) -> None:
    registry = Registry(config.registry_path)
    manager = ConnectionManager(config, registry)
    operations = DaemonOperations(config, registry, manager)
    manager.repairer = operations.repair
    cloud = _cloud(config, registry, manager, operations)

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
            if cloud is not None:
                relay, feed, updates = cloud
                tasks.create_task(relay.run(), name="cloud relay")
                tasks.create_task(feed.run(), name="state feed")
                tasks.create_task(updates.run(), name="cloud updates")
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
