"""`awgw daemon`: the long-running gateway, and its composition root. Builds the registry, the
connection manager, the operations and the control socket, runs them in one TaskGroup, with
systemd readiness, structured shutdown on SIGTERM, and no single controller able to stop it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from gateway.config import GatewayConfig
from gateway.control.server import ControlServer
from gateway.daemon import systemd, watchdog
from gateway.daemon.health import AdapterProbe, HubHealth
from gateway.daemon.metrics import HubMetrics
from gateway.daemon.operations import DaemonOperations, SupervisedHistory
from gateway.link.manager import ConnectionManager
from gateway.ops.models import Request, Result
from gateway.ops.protocol import ProgressFn, dispatch
from gateway.ota.jobs import CloudUpdates
from gateway.relay.account import CloudAccount
from gateway.relay.cloud import OUTBOX_FILE, STATUS_FILE, VERSION, CloudRelay
from gateway.relay.feed import FanOut, StateFeed
from gateway.relay.mqtt import MQTT_OUTBOX_FILE, MqttRelay, read_password
from gateway.relay.topics import SERIAL
from gateway.store.credentials import gateway_id
from gateway.store.outbox import Outbox
from gateway.store.registry import Registry

log = structlog.get_logger(__name__)


def _relays(config: GatewayConfig, registry: Registry, manager: ConnectionManager,
            operations: DaemonOperations, mqtt_password: str | None
            ) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
    """What carries state out of the house, by task name: the cloud relay and cloud-driven
    updates ([cloud]), the MQTT relay ([mqtt]), and the state feed that serves them."""
    runs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {}
    sinks: list[CloudRelay | MqttRelay] = []
    cloud: CloudRelay | None = None
    account: CloudAccount | None = None
    if config.cloud.enabled:
        account = CloudAccount(config)

        def serials() -> list[str]:
            return [r.serial for r in registry.all() if r.serial and SERIAL.match(r.serial)]

        cloud = CloudRelay(config.cloud, account.gateway_id,
                           Outbox(config.state_dir / OUTBOX_FILE, account.gateway_id),
                           account.client, account.auth, serials=serials,
                           token_stamp=account.store.stamp,
                           status_path=config.cloud_dir / STATUS_FILE)
        operations.cloud, operations.account = cloud, account
        runs["cloud relay"] = cloud.run
        sinks.append(cloud)
    if config.mqtt.enabled:
        gid = gateway_id(config.cloud_dir)
        outbox = Outbox(config.state_dir / MQTT_OUTBOX_FILE, gid)

        def gateway_state() -> dict[str, object]:
            return {"cloud_outbox_depth": cloud.outbox.stats().depth if cloud else None,
                    "controllers": len(manager.supervisors), "sw_version": VERSION}

        def rssi_of(address: str) -> int | None:
            sighting = manager.scanner.seen.get(address)
            return sighting.rssi if sighting is not None else None

        mqtt = MqttRelay(config.mqtt, gid, outbox, operations,
                         radio_ok=manager.scanner.healthy, rssi_of=rssi_of,
                         gateway_state=gateway_state, password=mqtt_password,
                         staged_dir=config.state_dir / "firmware" / "staged")
        operations.mqtt = mqtt
        runs["mqtt relay"] = mqtt.run
        sinks.append(mqtt)
    if cloud is not None and account is not None:
        relay = cloud
        updates = CloudUpdates(config, registry, account.client, account.gateway_id,
                               operations, FanOut(sinks), lambda: relay.mode)
        runs["cloud updates"] = updates.run
        if operations.mqtt is not None:
            operations.mqtt.cloud_install = updates.install_offer
            updates.offer_listeners.append(operations.mqtt.offer)
    if sinks:
        history_s = config.cloud.history_period_s
        runs["state feed"] = StateFeed(manager.store, registry, sinks,
                                       SupervisedHistory(manager), history_s).run
    return runs


# BlueZ starts with the hub; until it answers there is nothing to supervise. systemd's
# TimeoutStartSec= (systemd/awgw.service) bounds the wait; this is how often we ask.
BLUEZ_RETRY_S = 2.0
async def _bluez_answers(health: HubHealth) -> None:
    """Until bluetoothd answers at all; what it says of the adapter is the watchdog's and
    `awgw doctor`'s business."""
    waited = False
    while True:
        await health.probe_once()
        if health.probe.bluez_answered:
            return
        if not waited:
            log.warning("waiting_for_bluez", reason=health.radio().reason,
                        remedy="sudo systemctl start bluetooth")
            waited = True
        await asyncio.sleep(BLUEZ_RETRY_S)


async def run_daemon(config: GatewayConfig) -> None:
    """READY=1 once BlueZ answers, the config is valid (it was parsed before this), the stores
    are open and the control socket listens; STOPPING=1 as soon as SIGTERM arrives, then every
    task is cancelled so each persists its own work (outbox writers flush, an update's session
    stays on disk and a cloud job stays in progress, to resume at the next start)."""
    # Secrets first: a missing one stops the start before any store is opened.
    mqtt_password = read_password(config.mqtt) if config.mqtt.enabled else None
    registry = Registry(config.registry_path)
    manager = ConnectionManager(config, registry)
    operations = DaemonOperations(config, registry, manager)
    manager.repairer = operations.repair
    relays = _relays(config, registry, manager, operations, mqtt_password)
    health = HubHealth(manager, AdapterProbe(config.link.adapter))
    operations.health = health
    metrics = HubMetrics(operations, operations.status_now)

    async def handle(request: Request, progress: ProgressFn | None) -> Result:
        return await dispatch(operations, request, progress)

    server = ControlServer(config.socket_path, handle)
    log.info("daemon_starting", state_dir=str(config.state_dir), adapter=config.link.adapter,
             max_links=config.link.max_links, policy=config.link.default_policy.value)
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            systemd.notify("STOPPING=1")
            log.info("daemon_stopping")
        stopping = True
        if main is not None:
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(manager.run(), name="connection manager")
            for name, run in relays.items():
                tasks.create_task(run(), name=name)
            tasks.create_task(health.run(), name="hub health")
            await _bluez_answers(health)
            await manager.ready.wait()
            await server.start()
            if config.metrics_port:
                operations.metrics_url = metrics.serve(config.metrics_port)
            operations.ready = True
            systemd.notify("READY=1")
            log.info("daemon_ready", controllers=len(manager.supervisors),
                     metrics=operations.metrics_url)
            tasks.create_task(watchdog.report(health, operations.status_now,
                                              systemd.watchdog_interval_s()),
                              name="systemd watchdog")
            if operations.metrics_url is not None:
                tasks.create_task(metrics.run(), name="metrics")
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        if not stopping:
            systemd.notify("STOPPING=1")  # stopping for another reason than a signal
        await server.close()
        metrics.close()
        health.probe.close()
        log.info("daemon_stopped")
